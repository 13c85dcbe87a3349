"""Layer helpers shared by the model families of the zoo.

The CIFAR zoo of the knowledge-distillation benchmark (CRD, Tian et al. 2020;
DKD, Zhao et al. 2022) is defined in PyTorch. These helpers give the Keras
versions the same numerics where they matter for training: PyTorch's
symmetric padding of strided convolutions, its BatchNorm defaults, its
`kaiming_normal_(mode="fan_out")` convolution init, and SGD's coupled weight
decay on every parameter.
"""

import keras

# PyTorch's BatchNorm2d(momentum=0.1) updates the running statistics with
# weight 0.1 on the new batch; Keras's `momentum` is the weight of the old
# value, so 0.1 there is 0.9 here.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5


def l2_regularizer(weight_decay):
    """Returns the Keras regularizer equivalent to PyTorch's weight decay.

    Args:
        weight_decay: coefficient in the PyTorch/SGD sense: the gradient of a
            weight `w` gets `weight_decay * w`.

    Returns:
        A `keras.regularizers.L2`, or `None` when `weight_decay` is 0 so that
        no regularization loss is created at all.
    """
    # Keras's L2(l) adds l * sum(w^2) to the loss, whose gradient is 2 l w:
    # half the coefficient gives PyTorch's `weight_decay * w` gradient term.
    return keras.regularizers.L2(weight_decay / 2) if weight_decay else None


def _conv_initializer(mode="fan_out"):
    # The reference models draw conv kernels from N(0, 2 / (k * k * c_out)).
    return keras.initializers.VarianceScaling(
        scale=2.0, mode=mode, distribution="untruncated_normal"
    )


def _pad_for_stride(x, kernel_size, strides, name):
    # Keras's "same" padding of a strided convolution pads only the bottom and
    # right of an even-sized input; PyTorch's `padding=k // 2` pads both sides.
    # Explicit symmetric padding keeps the sampling grid of the reference.
    if strides > 1 and kernel_size > 1:
        x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        return x, "valid"
    return x, "same"


def conv2d(
    x,
    filters,
    kernel_size,
    *,
    name,
    strides=1,
    groups=1,
    use_bias=False,
    weight_decay=0.0,
):
    """Applies a PyTorch-style `Conv2d(padding=kernel_size // 2)`.

    Args:
        x: input tensor, channels last.
        filters: number of output channels.
        kernel_size: side of the square kernel (odd).
        name: name of the convolution layer.
        strides: stride of the convolution. Defaults to `1`.
        groups: number of channel groups. Defaults to `1`.
        use_bias: whether to add a bias. Defaults to `False`, as every
            convolution followed by BatchNorm in the reference models.
        weight_decay: PyTorch-style weight decay of kernel and bias.
            Defaults to `0.0`.

    Returns:
        The output tensor.
    """
    x, padding = _pad_for_stride(x, kernel_size, strides, name)
    regularizer = l2_regularizer(weight_decay)
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        groups=groups,
        use_bias=use_bias,
        kernel_initializer=_conv_initializer(),
        kernel_regularizer=regularizer,
        bias_regularizer=regularizer if use_bias else None,
        name=name,
    )(x)


def depthwise_conv2d(x, kernel_size, *, name, strides=1, weight_decay=0.0):
    """Applies a PyTorch-style depthwise `Conv2d(groups=channels, bias=False)`.

    Args:
        x: input tensor, channels last.
        kernel_size: side of the square kernel (odd).
        name: name of the convolution layer.
        strides: stride of the convolution. Defaults to `1`.
        weight_decay: PyTorch-style weight decay of the kernel.
            Defaults to `0.0`.

    Returns:
        The output tensor, with as many channels as `x`.
    """
    x, padding = _pad_for_stride(x, kernel_size, strides, name)
    return keras.layers.DepthwiseConv2D(
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        # A Keras depthwise kernel is (k, k, c, 1): its "fan_in" is the
        # k * k * c that the reference divides by.
        depthwise_initializer=_conv_initializer(mode="fan_in"),
        depthwise_regularizer=l2_regularizer(weight_decay),
        name=name,
    )(x)


def batch_norm(x, *, name, weight_decay=0.0):
    """Applies BatchNorm with PyTorch's defaults over the channel axis.

    Args:
        x: input tensor, channels last.
        name: name of the layer.
        weight_decay: PyTorch-style weight decay of gamma and beta.
            Defaults to `0.0`.

    Returns:
        The normalized tensor.
    """
    regularizer = l2_regularizer(weight_decay)
    return keras.layers.BatchNormalization(
        momentum=BATCH_NORM_MOMENTUM,
        epsilon=BATCH_NORM_EPSILON,
        gamma_regularizer=regularizer,
        beta_regularizer=regularizer,
        name=name,
    )(x)


def conv_bn(
    x,
    filters,
    kernel_size,
    *,
    name,
    strides=1,
    groups=1,
    activation=None,
    weight_decay=0.0,
):
    """Applies convolution, BatchNorm and an optional activation.

    Args:
        x: input tensor, channels last.
        filters: number of output channels.
        kernel_size: side of the square kernel (odd).
        name: prefix of the layer names (`_conv`, `_bn`, `_relu`).
        strides: stride of the convolution. Defaults to `1`.
        groups: number of channel groups. Defaults to `1`.
        activation: `"relu"` or `None`. Defaults to `None`.
        weight_decay: PyTorch-style weight decay. Defaults to `0.0`.

    Returns:
        The output tensor.
    """
    x = conv2d(
        x, filters, kernel_size, strides=strides, groups=groups,
        weight_decay=weight_decay, name=f"{name}_conv",
    )
    x = batch_norm(x, weight_decay=weight_decay, name=f"{name}_bn")
    if activation is not None:
        x = keras.layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def classifier_head(x, num_classes, *, weight_decay=0.0):
    """Global average pooling and the linear classifier (logits).

    The reference models pool with a fixed window equal to the last feature
    map on 32x32 inputs; global pooling is the same there and also accepts
    other input sizes.

    Args:
        x: last feature map, channels last.
        num_classes: number of logits.
        weight_decay: PyTorch-style weight decay of kernel and bias.
            Defaults to `0.0`.

    Returns:
        The logits tensor, produced by a linear `Dense` layer named `logits`.
    """
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return dense_logits(x, num_classes, weight_decay=weight_decay)


def dense_logits(x, num_classes, *, weight_decay=0.0):
    """The linear output layer of every model of the zoo.

    Args:
        x: pooled features, shape `(batch, channels)`.
        num_classes: number of logits.
        weight_decay: PyTorch-style weight decay of kernel and bias.
            Defaults to `0.0`.

    Returns:
        The logits tensor.
    """
    regularizer = l2_regularizer(weight_decay)
    return keras.layers.Dense(
        num_classes,
        kernel_regularizer=regularizer,
        bias_regularizer=regularizer,
        name="logits",
    )(x)
