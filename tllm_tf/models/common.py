"""Layer helpers shared by the model families of the zoo.

The CIFAR zoo of the knowledge-distillation benchmark (CRD, Tian et al. 2020;
DKD, Zhao et al. 2022) is defined in PyTorch. These helpers give the Keras
versions the same numerics where they matter for training: PyTorch's
symmetric padding of strided convolutions, its BatchNorm defaults, the
reference models' initializations, and SGD's coupled weight decay on every
parameter.
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


def _kernel_initializer(init, depthwise=False):
    # Keras computes the fans of a depthwise kernel (k, k, c, 1) as
    # fan_in = k * k * c and fan_out = k * k, the reverse of PyTorch's view of
    # the same weight (c, 1, k, k), so the modes swap for depthwise kernels.
    if init == "he_fan_out":
        # N(0, 2 / (k * k * c_out)): PyTorch's kaiming_normal_(mode="fan_out").
        mode = "fan_in" if depthwise else "fan_out"
        return keras.initializers.VarianceScaling(2.0, mode, "untruncated_normal")
    if init == "pytorch_default":
        # U(+-1 / sqrt(fan_in)): PyTorch's default for Conv2d and Linear.
        mode = "fan_out" if depthwise else "fan_in"
        return keras.initializers.VarianceScaling(1.0 / 3.0, mode, "uniform")
    raise ValueError(
        f"Expected init in ('he_fan_out', 'pytorch_default'). Received: init={init!r}"
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
    init="he_fan_out",
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
        use_bias: whether to add a bias (initialized to zero). Defaults to
            `False`, as every convolution followed by BatchNorm in the
            reference models.
        init: kernel initialization, `"he_fan_out"` (PyTorch's
            `kaiming_normal_(mode="fan_out")`, what most reference models
            use) or `"pytorch_default"` (PyTorch's default,
            U(+-1/sqrt(fan_in))). Defaults to `"he_fan_out"`.
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
        kernel_initializer=_kernel_initializer(init),
        kernel_regularizer=regularizer,
        bias_regularizer=regularizer if use_bias else None,
        name=name,
    )(x)


def depthwise_conv2d(
    x, kernel_size, *, name, strides=1, init="he_fan_out", weight_decay=0.0
):
    """Applies a PyTorch-style depthwise `Conv2d(groups=channels, bias=False)`.

    Args:
        x: input tensor, channels last.
        kernel_size: side of the square kernel (odd).
        name: name of the convolution layer.
        strides: stride of the convolution. Defaults to `1`.
        init: kernel initialization, as in `conv2d`. Defaults to
            `"he_fan_out"`.
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
        depthwise_initializer=_kernel_initializer(init, depthwise=True),
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
    init="he_fan_out",
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
        init: kernel initialization, as in `conv2d`. Defaults to
            `"he_fan_out"`.
        weight_decay: PyTorch-style weight decay. Defaults to `0.0`.

    Returns:
        The output tensor.
    """
    x = conv2d(
        x, filters, kernel_size, strides=strides, groups=groups, init=init,
        weight_decay=weight_decay, name=f"{name}_conv",
    )
    x = batch_norm(x, weight_decay=weight_decay, name=f"{name}_bn")
    if activation is not None:
        x = keras.layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def classifier_head(x, num_classes, *, init="pytorch_default", weight_decay=0.0):
    """Global average pooling and the linear classifier (logits).

    The reference models pool with a fixed window equal to the last feature
    map on 32x32 inputs; global pooling is the same there and also accepts
    other input sizes.

    Args:
        x: last feature map, channels last.
        num_classes: number of logits.
        init: initialization of the classifier, as in `dense_logits`.
            Defaults to `"pytorch_default"`.
        weight_decay: PyTorch-style weight decay of kernel and bias.
            Defaults to `0.0`.

    Returns:
        The logits tensor, produced by a linear `Dense` layer named `logits`
        from the pooled tensor named `features`.
    """
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return dense_logits(x, num_classes, init=init, weight_decay=weight_decay)


def _head_initializers(init, fan_in):
    bound = fan_in**-0.5
    if init == "pytorch_default":
        return (
            _kernel_initializer("pytorch_default"),
            keras.initializers.RandomUniform(-bound, bound),
        )
    if init == "pytorch_default_zero_bias":
        return _kernel_initializer("pytorch_default"), "zeros"
    if init == "normal":
        return keras.initializers.RandomNormal(stddev=0.01), "zeros"
    raise ValueError(
        "Expected init in ('pytorch_default', 'pytorch_default_zero_bias', "
        f"'normal'). Received: init={init!r}"
    )


def dense_logits(x, num_classes, *, init="pytorch_default", weight_decay=0.0):
    """The linear output layer of every model of the zoo.

    Args:
        x: pooled features, shape `(batch, channels)`.
        num_classes: number of logits.
        init: initialization as in the reference model: `"pytorch_default"`
            (PyTorch's `Linear`: kernel and bias from U(+-1/sqrt(fan_in))),
            `"pytorch_default_zero_bias"` (the same kernel, zero bias) or
            `"normal"` (kernel from N(0, 0.01^2), zero bias).
            Defaults to `"pytorch_default"`.
        weight_decay: PyTorch-style weight decay of kernel and bias.
            Defaults to `0.0`.

    Returns:
        The logits tensor.
    """
    kernel_initializer, bias_initializer = _head_initializers(init, x.shape[-1])
    regularizer = l2_regularizer(weight_decay)
    return keras.layers.Dense(
        num_classes,
        kernel_initializer=kernel_initializer,
        bias_initializer=bias_initializer,
        kernel_regularizer=regularizer,
        bias_regularizer=regularizer,
        name="logits",
    )(x)
