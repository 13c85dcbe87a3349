"""CIFAR ShuffleNetV1 and ShuffleNetV2 of the knowledge-distillation benchmark.

Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network
for Mobile Devices" (2018) and Ma et al., "ShuffleNet V2: Practical
Guidelines for Efficient CNN Architecture Design" (2018), in the CIFAR form
of the CRD and DKD code bases: a 1x1 stem of 24 channels with no pooling,
three stages that each halve the resolution (32 -> 16 -> 8 -> 4), global
average pooling and a linear classifier. ShuffleNetV1 uses 3 groups and
stages of 240, 480 and 960 channels; ShuffleNetV2 is the 1x size (116, 232,
464 channels, then a 1x1 convolution to 1024).
"""

import functools

import keras
import numpy as np

from tllm_tf.models import common

# Unlike the other reference models, the ShuffleNets keep PyTorch's default
# initialization.
_conv_bn = functools.partial(common.conv_bn, init="pytorch_default")
_depthwise_conv2d = functools.partial(common.depthwise_conv2d, init="pytorch_default")


@keras.saving.register_keras_serializable(package="tllm_tf")
class ChannelShuffle(keras.layers.Layer):
    """Interleaves the channels of `groups` groups (channels last).

    Channel `a * groups + b` of the output is channel `b * (c / groups) + a`
    of the input, so that the next grouped convolution sees every group.

    Args:
        groups: number of channel groups; must divide the channel count.
        **kwargs: base layer keyword arguments, e.g. `name`.
    """

    def __init__(self, groups, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels % self.groups:
            raise ValueError(
                f"Expected channels divisible by groups={self.groups}. "
                f"Received: input_shape={input_shape}"
            )
        per_group = channels // self.groups
        # A gather with a fixed permutation needs no knowledge of the spatial
        # size, so the layer also works on inputs of unknown height and width.
        grid = np.arange(channels).reshape(self.groups, per_group)
        self._permutation = grid.T.ravel()

    def call(self, inputs):
        return keras.ops.take(inputs, self._permutation, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


@keras.saving.register_keras_serializable(package="tllm_tf")
class ChannelSplit(keras.layers.Layer):
    """Splits the channels (last axis) into two equal halves.

    Args:
        **kwargs: base layer keyword arguments, e.g. `name`.
    """

    def call(self, inputs):
        half = inputs.shape[-1] // 2
        return inputs[..., :half], inputs[..., half:]

    def compute_output_shape(self, input_shape):
        half_shape = (*input_shape[:-1], input_shape[-1] // 2)
        return half_shape, half_shape


def _relu(x, name):
    return keras.layers.ReLU(name=name)(x)


def _stem(inputs, weight_decay):
    return _conv_bn(
        inputs, 24, 1, activation="relu", weight_decay=weight_decay, name="stem"
    )


def _shufflenet_v1_unit(x, filters, *, groups, strides, weight_decay, name):
    in_channels = x.shape[-1]
    # A stride-2 unit concatenates its input (pooled), so its branch only
    # produces the missing channels.
    branch_channels = filters - in_channels if strides == 2 else filters
    mid_channels = branch_channels // 4
    # The stem has too few channels (24) to split into groups.
    first_groups = 1 if in_channels == 24 else groups
    y = _conv_bn(
        x, mid_channels, 1, groups=first_groups, activation="relu",
        weight_decay=weight_decay, name=f"{name}_1",
    )
    if first_groups > 1:
        y = ChannelShuffle(first_groups, name=f"{name}_shuffle")(y)
    y = _depthwise_conv2d(
        y, 3, strides=strides, weight_decay=weight_decay, name=f"{name}_dw_conv"
    )
    y = common.batch_norm(y, weight_decay=weight_decay, name=f"{name}_dw_bn")
    # Unlike the paper, the reference has a ReLU after the depthwise
    # convolution; kept so that results are comparable with the benchmark.
    y = _relu(y, f"{name}_dw_relu")
    y = _conv_bn(
        y, branch_channels, 1, groups=groups, weight_decay=weight_decay,
        name=f"{name}_2",
    )
    if strides == 2:
        # PyTorch's AvgPool2d(3, 2, padding=1) counts the zero padding in the
        # mean; explicit padding and "valid" pooling do the same.
        shortcut = keras.layers.ZeroPadding2D(1, name=f"{name}_pool_pad")(x)
        shortcut = keras.layers.AveragePooling2D(
            3, strides=2, name=f"{name}_pool"
        )(shortcut)
        y = keras.layers.Concatenate(name=f"{name}_concat")([y, shortcut])
    else:
        y = keras.layers.Add(name=f"{name}_add")([y, x])
    return _relu(y, f"{name}_out")


def shufflenetv1(num_classes, input_shape, weight_decay=0.0, name="shufflenetv1"):
    """Builds the CIFAR ShuffleNetV1 (3 groups) of the benchmark.

    Args:
        num_classes: number of logits.
        input_shape: shape of one image, e.g. `(32, 32, 3)`.
        weight_decay: PyTorch-style weight decay. Defaults to `0.0`.
        name: name of the model. Defaults to `"shufflenetv1"`.

    Returns:
        A `keras.Model` mapping images to logits.
    """
    inputs = keras.Input(shape=input_shape)
    x = _stem(inputs, weight_decay)
    for stage, (filters, units) in enumerate(((240, 4), (480, 8), (960, 4)), start=1):
        for unit in range(units):
            x = _shufflenet_v1_unit(
                x,
                filters,
                groups=3,
                strides=2 if unit == 0 else 1,
                weight_decay=weight_decay,
                name=f"stage{stage}_unit{unit}",
            )
    outputs = common.classifier_head(x, num_classes, weight_decay=weight_decay)
    return keras.Model(inputs, outputs, name=name)


def _shufflenet_v2_down_unit(x, filters, *, weight_decay, name):
    half = filters // 2
    left = _depthwise_conv2d(
        x, 3, strides=2, weight_decay=weight_decay, name=f"{name}_left_dw_conv"
    )
    left = common.batch_norm(left, weight_decay=weight_decay, name=f"{name}_left_dw_bn")
    left = _conv_bn(
        left, half, 1, activation="relu", weight_decay=weight_decay,
        name=f"{name}_left",
    )
    right = _conv_bn(
        x, half, 1, activation="relu", weight_decay=weight_decay,
        name=f"{name}_right_1",
    )
    right = _depthwise_conv2d(
        right, 3, strides=2, weight_decay=weight_decay, name=f"{name}_right_dw_conv"
    )
    right = common.batch_norm(
        right, weight_decay=weight_decay, name=f"{name}_right_dw_bn"
    )
    right = _conv_bn(
        right, half, 1, activation="relu", weight_decay=weight_decay,
        name=f"{name}_right_2",
    )
    y = keras.layers.Concatenate(name=f"{name}_concat")([left, right])
    return ChannelShuffle(2, name=f"{name}_out")(y)


def _shufflenet_v2_unit(x, *, weight_decay, name):
    kept, branch = ChannelSplit(name=f"{name}_split")(x)
    channels = branch.shape[-1]
    branch = _conv_bn(
        branch, channels, 1, activation="relu", weight_decay=weight_decay,
        name=f"{name}_1",
    )
    branch = _depthwise_conv2d(
        branch, 3, weight_decay=weight_decay, name=f"{name}_dw_conv"
    )
    branch = common.batch_norm(branch, weight_decay=weight_decay, name=f"{name}_dw_bn")
    branch = _conv_bn(
        branch, channels, 1, activation="relu", weight_decay=weight_decay,
        name=f"{name}_2",
    )
    y = keras.layers.Concatenate(name=f"{name}_concat")([kept, branch])
    return ChannelShuffle(2, name=f"{name}_out")(y)


def shufflenetv2(num_classes, input_shape, weight_decay=0.0, name="shufflenetv2"):
    """Builds the CIFAR ShuffleNetV2 (1x) of the benchmark.

    Each stage is one stride-2 unit followed by 3, 7 and 3 basic units.

    Args:
        num_classes: number of logits.
        input_shape: shape of one image, e.g. `(32, 32, 3)`.
        weight_decay: PyTorch-style weight decay. Defaults to `0.0`.
        name: name of the model. Defaults to `"shufflenetv2"`.

    Returns:
        A `keras.Model` mapping images to logits.
    """
    inputs = keras.Input(shape=input_shape)
    x = _stem(inputs, weight_decay)
    for stage, (filters, units) in enumerate(((116, 3), (232, 7), (464, 3)), start=1):
        x = _shufflenet_v2_down_unit(
            x, filters, weight_decay=weight_decay, name=f"stage{stage}_down"
        )
        for unit in range(units):
            x = _shufflenet_v2_unit(
                x, weight_decay=weight_decay, name=f"stage{stage}_unit{unit}"
            )
    x = _conv_bn(
        x, 1024, 1, activation="relu", weight_decay=weight_decay, name="last"
    )
    outputs = common.classifier_head(x, num_classes, weight_decay=weight_decay)
    return keras.Model(inputs, outputs, name=name)


BUILDERS = {"shufflenetv1": shufflenetv1, "shufflenetv2": shufflenetv2}
