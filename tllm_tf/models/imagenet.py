"""ImageNet-size models: ResNet18/34, ResNet50 and MobileNet v1.

The ImageNet setting of the knowledge-distillation benchmark pairs
resnet34 -> resnet18 and resnet50 -> mobilenet_v1. ResNet18 and ResNet34
(He et al., 2016) are written here in the torchvision layout: a 7x7 stride-2
stem, 3x3 max pooling, and four stages of basic blocks with 1x1 projection
shortcuts. ResNet50 and MobileNet v1 (Howard et al., 2017) wrap
`keras.applications` without pretrained weights (nothing is downloaded),
with a linear `logits` head and the zoo's BatchNorm and weight-decay
conventions. Note that Keras's ResNet50 places the downsampling stride on the
first 1x1 convolution of a block and gives its convolutions biases, unlike
torchvision's; the images it expects are preprocessed by the caller.
"""

import functools

import keras

from tllm_tf.models import common
from tllm_tf.models.resnet import basic_block


def imagenet_resnet(
    num_classes, input_shape, weight_decay=0.0, *, blocks, name="resnet"
):
    """Builds an ImageNet ResNet of basic blocks (ResNet18, ResNet34).

    Args:
        num_classes: number of logits.
        input_shape: shape of one image, e.g. `(224, 224, 3)`.
        weight_decay: PyTorch-style weight decay. Defaults to `0.0`.
        blocks: number of blocks of each of the four stages.
        name: name of the model. Defaults to `"resnet"`.

    Returns:
        A `keras.Model` mapping images to logits.
    """
    inputs = keras.Input(shape=input_shape)
    x = common.conv_bn(
        inputs, 64, 7, strides=2, activation="relu", weight_decay=weight_decay,
        name="stem",
    )
    # Zero padding equals PyTorch's -inf padding here: the input is a ReLU
    # output, so a padded zero never exceeds the window's maximum.
    x = keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    for stage, (filters, stage_blocks) in enumerate(
        zip((64, 128, 256, 512), blocks), start=1
    ):
        for block in range(stage_blocks):
            x = basic_block(
                x,
                filters,
                strides=2 if stage > 1 and block == 0 else 1,
                weight_decay=weight_decay,
                name=f"stage{stage}_block{block}",
            )
    outputs = common.classifier_head(x, num_classes, weight_decay=weight_decay)
    return keras.Model(inputs, outputs, name=name)


def _with_zoo_conventions(model, weight_decay):
    """Clones a `keras.applications` model with the zoo's layer settings."""
    regularizer = common.l2_regularizer(weight_decay)

    def clone_layer(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config.update(
                momentum=common.BATCH_NORM_MOMENTUM,
                epsilon=common.BATCH_NORM_EPSILON,
                gamma_regularizer=regularizer,
                beta_regularizer=regularizer,
            )
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            config.update(depthwise_regularizer=regularizer)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            config.update(kernel_regularizer=regularizer)
        if config.get("use_bias"):
            config.update(bias_regularizer=regularizer)
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone_layer)


def _applications_model(
    num_classes, input_shape, weight_decay=0.0, *, application, dropout, name
):
    """Wraps a headless `keras.applications` model with a linear head.

    Args:
        num_classes: number of logits.
        input_shape: shape of one image, at least 32x32.
        weight_decay: PyTorch-style weight decay. Defaults to `0.0`.
        application: a `keras.applications` constructor.
        dropout: dropout rate before the head (MobileNet's own top has one).
        name: name of the model.

    Returns:
        A `keras.Model` mapping images to logits.
    """
    # The applications' own tops are not used: MobileNet's ends in a 1x1
    # convolution and a reshape, and every model of the zoo ends in a linear
    # Dense layer named "logits" after pooled "features".
    backbone = application(
        include_top=False, weights=None, input_shape=input_shape, pooling=None
    )
    backbone = _with_zoo_conventions(backbone, weight_decay)
    x = keras.layers.GlobalAveragePooling2D(name="features")(backbone.output)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = common.dense_logits(x, num_classes, weight_decay=weight_decay)
    return keras.Model(backbone.input, outputs, name=name)


BUILDERS = {
    "resnet18": functools.partial(
        imagenet_resnet, blocks=(2, 2, 2, 2), name="resnet18"
    ),
    "resnet34": functools.partial(
        imagenet_resnet, blocks=(3, 4, 6, 3), name="resnet34"
    ),
    "resnet50": functools.partial(
        _applications_model,
        application=keras.applications.ResNet50,
        dropout=0.0,
        name="resnet50",
    ),
    "mobilenet_v1": functools.partial(
        _applications_model,
        application=keras.applications.MobileNet,
        dropout=1e-3,
        name="mobilenet_v1",
    ),
}
