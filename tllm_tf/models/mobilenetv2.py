"""Half-width CIFAR MobileNetV2 of the knowledge-distillation benchmark.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks"
(2018), in the form of the CRD and DKD code bases (`mobile_half`, taken from
"Knowledge Distillation via Route Constrained Optimization"): width
multiplier 0.5 and expansion 6, a stride-2 stem even on 32x32 inputs, a
1x1 expansion convolution in every block (also the first, whose expansion is
1), and a 1280-channel last convolution that the width multiplier does not
shrink. The usual teachers are vgg13 and resnet50_cifar.
"""

import keras

from tllm_tf.models import common

# (expansion, output channels, blocks, stride of the first block) per stage,
# before the width multiplier; the first stage never expands.
_STAGES = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)
_LAST_CHANNELS = 1280


def inverted_residual(x, filters, *, name, expansion, strides=1, weight_decay=0.0):
    """Inverted residual block: 1x1 expand, 3x3 depthwise, linear 1x1 project.

    Args:
        x: input tensor, channels last.
        filters: number of output channels.
        name: prefix of the layer names; `{name}_out` is the block's output.
        expansion: ratio of the hidden to the input channels.
        strides: stride of the depthwise convolution. Defaults to `1`.
        weight_decay: PyTorch-style weight decay. Defaults to `0.0`.

    Returns:
        The output tensor; the input is added when the shapes agree.
    """
    in_channels = x.shape[-1]
    y = common.conv_bn(
        x, in_channels * expansion, 1, activation="relu",
        weight_decay=weight_decay, name=f"{name}_expand",
    )
    y = common.depthwise_conv2d(
        y, 3, strides=strides, weight_decay=weight_decay, name=f"{name}_dw_conv"
    )
    y = common.batch_norm(y, weight_decay=weight_decay, name=f"{name}_dw_bn")
    y = keras.layers.ReLU(name=f"{name}_dw_relu")(y)
    y = common.conv_bn(y, filters, 1, weight_decay=weight_decay, name=f"{name}_project")
    if strides == 1 and in_channels == filters:
        return keras.layers.Add(name=f"{name}_out")([x, y])
    return keras.layers.Identity(name=f"{name}_out")(y)


def mobilenetv2(
    num_classes,
    input_shape,
    weight_decay=0.0,
    *,
    width_multiplier=0.5,
    expansion=6,
    name="mobilenetv2",
):
    """Builds the CIFAR MobileNetV2 of the benchmark.

    Args:
        num_classes: number of logits.
        input_shape: shape of one image, e.g. `(32, 32, 3)`.
        weight_decay: PyTorch-style weight decay. Defaults to `0.0`.
        width_multiplier: scale of every channel count but the last
            convolution's. Defaults to `0.5`.
        expansion: expansion ratio of the blocks after the first stage.
            Defaults to `6`.
        name: name of the model. Defaults to `"mobilenetv2"`.

    Returns:
        A `keras.Model` mapping images to logits.
    """
    inputs = keras.Input(shape=input_shape)
    x = common.conv_bn(
        inputs, int(32 * width_multiplier), 3, strides=2, activation="relu",
        weight_decay=weight_decay, name="stem",
    )
    for stage, (stage_expansion, channels, blocks, stride) in enumerate(_STAGES):
        for block in range(blocks):
            x = inverted_residual(
                x,
                int(channels * width_multiplier),
                expansion=stage_expansion or expansion,
                strides=stride if block == 0 else 1,
                weight_decay=weight_decay,
                name=f"stage{stage}_block{block}",
            )
    last_channels = _LAST_CHANNELS
    if width_multiplier > 1.0:
        last_channels = int(_LAST_CHANNELS * width_multiplier)
    x = common.conv_bn(
        x, last_channels, 1, activation="relu", weight_decay=weight_decay,
        name="last",
    )
    outputs = common.classifier_head(
        x, num_classes, init="normal", weight_decay=weight_decay
    )
    return keras.Model(inputs, outputs, name=name)


BUILDERS = {"mobilenetv2": mobilenetv2}
