"""CIFAR VGGs with BatchNorm of the knowledge-distillation benchmark.

Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale
Image Recognition" (2015), in the CIFAR form of the CRD and DKD code bases:
five blocks of 3x3 conv-BN-ReLU (the convolutions keep their bias), no fully
connected hidden layers, global average pooling and one linear classifier.
On 32x32 inputs only the first three blocks are followed by max pooling, so
the last two blocks run at 4x4. `vgg8` is the extra-small configuration
("S", one convolution per block) those code bases add; the usual pair is
vgg13 -> vgg8.
"""

import functools

import keras

from tllm_tf.models import common

# Output channels of the convolutions of each of the five blocks.
_CONFIGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": (
        (64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)
    ),
    "vgg19": (
        (64, 64),
        (128, 128),
        (256, 256, 256, 256),
        (512, 512, 512, 512),
        (512, 512, 512, 512),
    ),
}


def vgg(num_classes, input_shape, weight_decay=0.0, *, blocks, name="vgg"):
    """Builds a CIFAR VGG with BatchNorm.

    Args:
        num_classes: number of logits.
        input_shape: shape of one image, e.g. `(32, 32, 3)`.
        weight_decay: PyTorch-style weight decay. Defaults to `0.0`.
        blocks: five tuples, the output channels of each block's convolutions.
        name: name of the model. Defaults to `"vgg"`.

    Returns:
        A `keras.Model` mapping images to logits.
    """
    # The reference pools after the fourth block only for its 64x64
    # (Tiny-ImageNet) variant; larger inputs are treated the same way.
    pooled_blocks = (0, 1, 2, 3) if input_shape[0] >= 64 else (0, 1, 2)
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for block, widths in enumerate(blocks):
        for index, filters in enumerate(widths):
            layer_name = f"block{block}_{index}"
            x = common.conv2d(
                x, filters, 3, use_bias=True, weight_decay=weight_decay,
                name=f"{layer_name}_conv",
            )
            x = common.batch_norm(x, weight_decay=weight_decay, name=f"{layer_name}_bn")
            x = keras.layers.ReLU(name=f"{layer_name}_relu")(x)
        if block in pooled_blocks:
            x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    outputs = common.classifier_head(
        x, num_classes, init="normal", weight_decay=weight_decay
    )
    return keras.Model(inputs, outputs, name=name)


BUILDERS = {
    name: functools.partial(vgg, blocks=blocks, name=name)
    for name, blocks in _CONFIGS.items()
}
