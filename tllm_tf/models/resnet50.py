"""CIFAR ResNet50 of the knowledge-distillation benchmark (`resnet50_cifar`).

He et al., "Deep Residual Learning for Image Recognition" (2016), in the
CIFAR form of the CRD and DKD code bases (their `ResNet50`): the ImageNet
ResNet50's four stages of bottleneck blocks (3, 4, 6, 3 blocks of 64, 128,
256, 512 planes, expansion 4) behind a 3x3 stride-1 stem without max
pooling. The stride of a downsampling block sits on its 3x3 convolution
(the torchvision "v1.5" placement). The usual students are mobilenetv2 and
the ShuffleNets.
"""

import keras

from tllm_tf.models import common

_EXPANSION = 4


def bottleneck_block(x, planes, *, name, strides=1, weight_decay=0.0):
    """Post-activation bottleneck block: 1x1, 3x3, 1x1 convolutions.

    Args:
        x: input tensor, channels last.
        planes: channels of the inner convolutions; the block outputs
            `4 * planes` channels.
        name: prefix of the layer names; `{name}_out` is the block's output.
        strides: stride of the 3x3 convolution and of the shortcut.
            Defaults to `1`.
        weight_decay: PyTorch-style weight decay. Defaults to `0.0`.

    Returns:
        The output tensor.
    """
    filters = planes * _EXPANSION
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = common.conv_bn(
            x, filters, 1, strides=strides, weight_decay=weight_decay,
            name=f"{name}_shortcut",
        )
    y = common.conv_bn(
        x, planes, 1, activation="relu", weight_decay=weight_decay, name=f"{name}_1"
    )
    y = common.conv_bn(
        y, planes, 3, strides=strides, activation="relu",
        weight_decay=weight_decay, name=f"{name}_2",
    )
    y = common.conv_bn(y, filters, 1, weight_decay=weight_decay, name=f"{name}_3")
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def resnet50_cifar(
    num_classes, input_shape, weight_decay=0.0, name="resnet50_cifar"
):
    """Builds the CIFAR ResNet50 of the benchmark.

    Args:
        num_classes: number of logits.
        input_shape: shape of one image, e.g. `(32, 32, 3)`.
        weight_decay: PyTorch-style weight decay. Defaults to `0.0`.
        name: name of the model. Defaults to `"resnet50_cifar"`.

    Returns:
        A `keras.Model` mapping images to logits.
    """
    inputs = keras.Input(shape=input_shape)
    x = common.conv_bn(
        inputs, 64, 3, activation="relu", weight_decay=weight_decay, name="stem"
    )
    stages = ((64, 3), (128, 4), (256, 6), (512, 3))
    for stage, (planes, blocks) in enumerate(stages, start=1):
        for block in range(blocks):
            x = bottleneck_block(
                x,
                planes,
                strides=2 if stage > 1 and block == 0 else 1,
                weight_decay=weight_decay,
                name=f"stage{stage}_block{block}",
            )
    outputs = common.classifier_head(x, num_classes, weight_decay=weight_decay)
    return keras.Model(inputs, outputs, name=name)


BUILDERS = {"resnet50_cifar": resnet50_cifar}
