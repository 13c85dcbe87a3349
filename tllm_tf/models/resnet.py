"""CIFAR ResNets of the knowledge-distillation benchmark (resnet8 ... resnet110).

He et al., "Deep Residual Learning for Image Recognition" (2016), in the
CIFAR form used by the CRD and DKD code bases: a 3x3 stem and three stages of
basic blocks at strides 1, 2, 2, with `(depth - 2) / 6` blocks per stage.
`resnet8x4` and `resnet32x4` widen every stage four times (stem 32, stages
64, 128, 256); the usual teacher/student pair is resnet32x4 -> resnet8x4.
"""

import functools

import keras

from tllm_tf.models import common


def basic_block(x, filters, *, name, strides=1, weight_decay=0.0):
    """Post-activation residual block: two 3x3 convolutions and a shortcut.

    The shortcut is a 1x1 convolution with BatchNorm when the stride or the
    number of channels changes, the identity otherwise.

    Args:
        x: input tensor, channels last.
        filters: number of output channels.
        name: prefix of the layer names; `{name}_out` is the block's output.
        strides: stride of the first convolution and of the shortcut.
            Defaults to `1`.
        weight_decay: PyTorch-style weight decay. Defaults to `0.0`.

    Returns:
        The output tensor.
    """
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = common.conv_bn(
            x, filters, 1, strides=strides, weight_decay=weight_decay,
            name=f"{name}_shortcut",
        )
    y = common.conv_bn(
        x, filters, 3, strides=strides, activation="relu",
        weight_decay=weight_decay, name=f"{name}_1",
    )
    y = common.conv_bn(y, filters, 3, weight_decay=weight_decay, name=f"{name}_2")
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def cifar_resnet(
    num_classes,
    input_shape,
    weight_decay=0.0,
    *,
    depth,
    widths=(16, 16, 32, 64),
    name="resnet",
):
    """Builds a CIFAR ResNet of basic blocks.

    Args:
        num_classes: number of logits.
        input_shape: shape of one image, e.g. `(32, 32, 3)`.
        weight_decay: PyTorch-style weight decay. Defaults to `0.0`.
        depth: number of weighted layers, `6 n + 2` for `n` blocks per stage.
        widths: channels of the stem and of the three stages.
            Defaults to `(16, 16, 32, 64)`.
        name: name of the model. Defaults to `"resnet"`.

    Returns:
        A `keras.Model` mapping images to logits.

    Raises:
        ValueError: if `depth` is not of the form `6 n + 2`.
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"Expected depth = 6 n + 2 with n >= 1. Received: depth={depth}"
        )
    blocks_per_stage = (depth - 2) // 6
    inputs = keras.Input(shape=input_shape)
    x = common.conv_bn(
        inputs, widths[0], 3, activation="relu", weight_decay=weight_decay,
        name="stem",
    )
    for stage, filters in enumerate(widths[1:], start=1):
        for block in range(blocks_per_stage):
            x = basic_block(
                x,
                filters,
                strides=2 if stage > 1 and block == 0 else 1,
                weight_decay=weight_decay,
                name=f"stage{stage}_block{block}",
            )
    outputs = common.classifier_head(x, num_classes, weight_decay=weight_decay)
    return keras.Model(inputs, outputs, name=name)


def _variant(depth, widths=(16, 16, 32, 64), suffix=""):
    name = f"resnet{depth}{suffix}"
    return name, functools.partial(cifar_resnet, depth=depth, widths=widths, name=name)


BUILDERS = dict(
    [_variant(depth) for depth in (8, 14, 20, 32, 44, 56, 110)]
    + [_variant(depth, (32, 64, 128, 256), "x4") for depth in (8, 32)]
)
