"""Wide residual networks of the knowledge-distillation benchmark (WRN-d-k).

Zagoruyko and Komodakis, "Wide Residual Networks" (2016), as used by the CRD
and DKD code bases: pre-activation basic blocks (BN-ReLU-conv), three stages
of `(depth - 4) / 6` blocks with 16k, 32k and 64k channels, no dropout, and a
final BN-ReLU before pooling. The usual pair is wrn_40_2 -> wrn_16_2.
"""

import functools

import keras

from tllm_tf.models import common


def _bn_relu(x, *, name, weight_decay):
    x = common.batch_norm(x, weight_decay=weight_decay, name=f"{name}_bn")
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def preact_block(x, filters, *, name, strides=1, weight_decay=0.0):
    """Pre-activation residual block of a wide ResNet.

    When the number of channels changes, the pre-activation is shared by the
    residual branch and a 1x1 convolution shortcut; otherwise the shortcut is
    the raw input (identity), as in the reference.

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
    activated = _bn_relu(x, weight_decay=weight_decay, name=f"{name}_pre")
    if x.shape[-1] == filters and strides == 1:
        shortcut = x
    else:
        shortcut = common.conv2d(
            activated, filters, 1, strides=strides, weight_decay=weight_decay,
            name=f"{name}_shortcut_conv",
        )
    y = common.conv2d(
        activated, filters, 3, strides=strides, weight_decay=weight_decay,
        name=f"{name}_1_conv",
    )
    y = _bn_relu(y, weight_decay=weight_decay, name=f"{name}_1")
    y = common.conv2d(y, filters, 3, weight_decay=weight_decay, name=f"{name}_2_conv")
    return keras.layers.Add(name=f"{name}_out")([y, shortcut])


def wide_resnet(
    num_classes,
    input_shape,
    weight_decay=0.0,
    *,
    depth,
    widen_factor,
    name="wrn",
):
    """Builds a WRN-`depth`-`widen_factor`.

    Args:
        num_classes: number of logits.
        input_shape: shape of one image, e.g. `(32, 32, 3)`.
        weight_decay: PyTorch-style weight decay. Defaults to `0.0`.
        depth: number of weighted layers, `6 n + 4` for `n` blocks per stage.
        widen_factor: channel multiplier `k` of the three stages.
        name: name of the model. Defaults to `"wrn"`.

    Returns:
        A `keras.Model` mapping images to logits.

    Raises:
        ValueError: if `depth` is not of the form `6 n + 4`.
    """
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(
            f"Expected depth = 6 n + 4 with n >= 1. Received: depth={depth}"
        )
    blocks_per_stage = (depth - 4) // 6
    inputs = keras.Input(shape=input_shape)
    # The stem is a bare convolution: the first block's pre-activation
    # normalizes it.
    x = common.conv2d(inputs, 16, 3, weight_decay=weight_decay, name="stem_conv")
    for stage, base_width in enumerate((16, 32, 64), start=1):
        for block in range(blocks_per_stage):
            x = preact_block(
                x,
                base_width * widen_factor,
                strides=2 if stage > 1 and block == 0 else 1,
                weight_decay=weight_decay,
                name=f"stage{stage}_block{block}",
            )
    x = _bn_relu(x, weight_decay=weight_decay, name="final")
    outputs = common.classifier_head(
        x, num_classes, init="pytorch_default_zero_bias", weight_decay=weight_decay
    )
    return keras.Model(inputs, outputs, name=name)


BUILDERS = {
    f"wrn_{depth}_{width}": functools.partial(
        wide_resnet, depth=depth, widen_factor=width, name=f"wrn_{depth}_{width}"
    )
    for depth, width in ((16, 1), (16, 2), (40, 1), (40, 2))
}
