"""Small CNN and MLP models for the digits demo, Fashion-MNIST and the tests.

They are fast on two CPU cores; `width` or `filters` sets the capacity, so a
family of teachers of growing size (for the capacity-gap study) is one name
each. `cnn_*` keeps full resolution through two convolutions (made for 8x8
digits); `lenet_*` pools after each convolution, which suits 28x28 images.
"""

import functools

import keras

from tllm_tf.models.common import l2_regularizer as _l2


def cnn(num_classes, input_shape, weight_decay=0.0, filters=32, name="cnn"):
    """Two conv blocks, global pooling and a linear head (logits)."""
    reg = _l2(weight_decay)
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for multiplier in (1, 2):
        x = keras.layers.Conv2D(
            filters * multiplier, 3, padding="same", activation="relu",
            kernel_regularizer=reg,
        )(x)
    x = keras.layers.MaxPooling2D(2)(x) if min(input_shape[:2]) >= 4 else x
    x = keras.layers.Conv2D(
        filters * 2, 3, padding="same", activation="relu", kernel_regularizer=reg
    )(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, kernel_regularizer=reg)(x)
    return keras.Model(inputs, outputs, name=name)


def lenet(num_classes, input_shape, weight_decay=0.0, filters=16, name="lenet"):
    """Conv-pool, conv-pool, a hidden layer and a linear head (logits), LeNet's shape."""
    reg = _l2(weight_decay)
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for multiplier in (1, 2):
        x = keras.layers.Conv2D(filters * multiplier, 3, padding="same", activation="relu",
                                kernel_regularizer=reg)(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(filters * 4, activation="relu", kernel_regularizer=reg)(x)
    outputs = keras.layers.Dense(num_classes, kernel_regularizer=reg)(x)
    return keras.Model(inputs, outputs, name=name)


def mlp(num_classes, input_shape, weight_decay=0.0, width=16, name="mlp"):
    """Flatten, one hidden ReLU layer of `width` units, a linear head."""
    reg = _l2(weight_decay)
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(width, activation="relu", kernel_regularizer=reg)(x)
    outputs = keras.layers.Dense(num_classes, kernel_regularizer=reg)(x)
    return keras.Model(inputs, outputs, name=name)


BUILDERS = {
    "cnn_tiny": functools.partial(cnn, filters=4, name="cnn_tiny"),
    "cnn_small": functools.partial(cnn, filters=8, name="cnn_small"),
    "cnn_medium": functools.partial(cnn, filters=16, name="cnn_medium"),
    "cnn_large": functools.partial(cnn, filters=32, name="cnn_large"),
    "cnn_xlarge": functools.partial(cnn, filters=64, name="cnn_xlarge"),
    "lenet_2": functools.partial(lenet, filters=2, name="lenet_2"),
    "lenet_4": functools.partial(lenet, filters=4, name="lenet_4"),
    "lenet_8": functools.partial(lenet, filters=8, name="lenet_8"),
    "lenet_16": functools.partial(lenet, filters=16, name="lenet_16"),
    "lenet_32": functools.partial(lenet, filters=32, name="lenet_32"),
    "lenet_64": functools.partial(lenet, filters=64, name="lenet_64"),
    "mlp_4": functools.partial(mlp, width=4, name="mlp_4"),
    "mlp_8": functools.partial(mlp, width=8, name="mlp_8"),
    "mlp_16": functools.partial(mlp, width=16, name="mlp_16"),
    "mlp_32": functools.partial(mlp, width=32, name="mlp_32"),
    "mlp_64": functools.partial(mlp, width=64, name="mlp_64"),
    "mlp_256": functools.partial(mlp, width=256, name="mlp_256"),
    "mlp_1024": functools.partial(mlp, width=1024, name="mlp_1024"),
}
