"""Tests of the model zoo: architecture sizes, logits heads, weight decay."""

import keras
import numpy as np
import pytest

from tllm_tf.models import available_models
from tllm_tf.models import build_model
from tllm_tf.models import common
from tllm_tf.models.shufflenet import ChannelShuffle
from tllm_tf.models.shufflenet import ChannelSplit

NUM_CLASSES = 100
WEIGHT_DECAY = 5e-4
CIFAR_SHAPE = (32, 32, 3)
IMAGENET_SHAPE = (224, 224, 3)
IMAGENET_MODELS = ("resnet18", "resnet34", "resnet50", "mobilenet_v1")

# Trainable parameters for 100 classes, i.e. PyTorch's parameter count
# (BatchNorm running statistics are buffers there, non-trainable here).
# The CRD/DKD figures (resnet8x4, resnet32x4, wrn_40_2, vgg13), the
# torchvision ResNet18/34 counts with a 100-way head, the Keras ResNet50 and
# MobileNet counts with a 100-way head, and the others derived by hand from
# the reference PyTorch definitions all agree with these to the parameter.
EXACT_PARAMS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "mobilenetv2": 812_836,
    "shufflenetv1": 949_258,
    "shufflenetv2": 1_355_528,
    "resnet50_cifar": 23_705_252,
    "resnet18": 11_227_812,
    "resnet34": 21_335_972,
    "resnet50": 23_739_492,
    "mobilenet_v1": 3_309_476,
}

# Sizes in millions as the benchmark's papers and READMEs round them (one or
# two significant digits, hence the loose tolerance below).
BENCHMARK_MILLIONS = {
    "resnet20": 0.27,
    "resnet32": 0.47,
    "resnet56": 0.86,
    "resnet110": 1.7,
    "resnet8x4": 1.2,
    "resnet32x4": 7.4,
    "wrn_16_2": 0.7,
    "wrn_40_1": 0.57,
    "wrn_40_2": 2.2,
    "vgg8": 3.9,
    "vgg13": 9.4,
    "mobilenetv2": 0.8,
    "shufflenetv1": 0.9,
    "shufflenetv2": 1.3,
    "resnet50_cifar": 23.7,
}

# On 32x32 inputs the reference models end at these feature-map sizes.
LAST_FEATURE_MAPS = {
    "resnet8": ("stage3_block0_out", (8, 8, 64)),
    "resnet8x4": ("stage3_block0_out", (8, 8, 256)),
    "wrn_16_2": ("final_relu", (8, 8, 128)),
    "vgg8": ("block4_0_relu", (4, 4, 512)),
    "mobilenetv2": ("last_relu", (2, 2, 1280)),
    "shufflenetv1": ("stage3_unit3_out", (4, 4, 960)),
    "shufflenetv2": ("last_relu", (4, 4, 1024)),
    "resnet50_cifar": ("stage4_block2_out", (4, 4, 2048)),
}

# The smallest model of each family module.
ONE_PER_FAMILY = (
    "resnet8", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv1",
    "resnet50_cifar", "resnet18", "mobilenet_v1",
)


def _input_shape(name):
    return IMAGENET_SHAPE if name in IMAGENET_MODELS else CIFAR_SHAPE


def _trainable_params(model):
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


def test_registry_lists_the_zoo():
    assert set(EXACT_PARAMS) <= set(available_models())


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="Unknown model name: 'resnet9'"):
        build_model("resnet9", NUM_CLASSES, CIFAR_SHAPE)


@pytest.mark.parametrize("name", sorted(EXACT_PARAMS))
def test_model_contract(name):
    # One build per model checks the whole contract, to keep the file fast.
    model = build_model(name, NUM_CLASSES, _input_shape(name), WEIGHT_DECAY)

    assert model.name == name
    assert tuple(model.output.shape) == (None, NUM_CLASSES)
    num_params = _trainable_params(model)
    assert num_params == EXACT_PARAMS[name]
    if name in BENCHMARK_MILLIONS:
        assert num_params / 1e6 == pytest.approx(BENCHMARK_MILLIONS[name], rel=0.06)

    head = model.layers[-1]
    assert isinstance(head, keras.layers.Dense)
    assert head.activation is keras.activations.linear

    # SGD's weight decay reaches every parameter, BatchNorm's included.
    assert len(model.losses) == len(model.trainable_weights)
    batch_norms = [layer for layer in model.layers
                   if isinstance(layer, keras.layers.BatchNormalization)]
    # Every BatchNorm of the model is one of its own layers, so the loop below sees them all.
    assert len(batch_norms) == sum(weight.name == "moving_mean" for weight in model.weights)
    for layer in batch_norms:
        assert layer.momentum == pytest.approx(0.9)
        assert layer.epsilon == pytest.approx(1e-5)


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_zero_weight_decay_adds_no_losses(name):
    model = build_model(name, NUM_CLASSES, _input_shape(name), weight_decay=0.0)
    assert model.losses == []


def test_regularization_matches_pytorch_weight_decay():
    # PyTorch adds wd * w to each gradient, i.e. a loss of wd / 2 * ||w||^2.
    model = build_model("resnet8", 10, CIFAR_SHAPE, weight_decay=WEIGHT_DECAY)
    squared_norm = sum(
        float(np.sum(np.square(keras.ops.convert_to_numpy(weight))))
        for weight in model.trainable_weights
    )
    total = sum(float(keras.ops.convert_to_numpy(loss)) for loss in model.losses)
    assert total == pytest.approx(WEIGHT_DECAY / 2 * squared_norm, rel=1e-5)


@pytest.mark.parametrize("name", sorted(LAST_FEATURE_MAPS))
def test_resolution_schedule_matches_reference(name):
    layer_name, shape = LAST_FEATURE_MAPS[name]
    model = build_model(name, NUM_CLASSES, CIFAR_SHAPE)
    assert tuple(model.get_layer(layer_name).output.shape) == (None, *shape)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "shufflenetv1", "mobilenetv2"])
def test_forward_pass_returns_finite_logits(name):
    keras.utils.set_random_seed(0)
    model = build_model(name, 10, CIFAR_SHAPE, WEIGHT_DECAY)
    images = np.random.default_rng(0).normal(size=(2, *CIFAR_SHAPE))
    logits = keras.ops.convert_to_numpy(model(images.astype("float32"), training=False))
    assert logits.shape == (2, 10)
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize(
    "name, fan_in, normal_kernel, zero_bias",
    [
        ("resnet8", 64, False, False),
        ("wrn_16_1", 64, False, True),
        ("vgg8", 512, True, True),
    ],
)
def test_classifier_init_follows_reference(name, fan_in, normal_kernel, zero_bias):
    keras.utils.set_random_seed(0)
    model = build_model(name, NUM_CLASSES, CIFAR_SHAPE)
    kernel, bias = model.get_layer("logits").get_weights()
    bound = fan_in**-0.5
    if normal_kernel:
        assert kernel.std() == pytest.approx(0.01, rel=0.05)
    else:
        # U(-b, b) has standard deviation b / sqrt(3).
        assert np.abs(kernel).max() <= bound
        assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.05)
    if zero_bias:
        assert not bias.any()
    else:
        assert bias.any() and np.abs(bias).max() <= bound


def test_unknown_init_raises():
    inputs = keras.Input(shape=(4, 4, 1))
    with pytest.raises(ValueError, match="Received: init='xavier'"):
        common.conv2d(inputs, 1, 3, init="xavier", name="conv")


def test_strided_conv_pads_symmetrically_like_pytorch():
    # With a kernel of ones, each output counts the real pixels under it:
    # PyTorch's padding=1 puts the first window at rows/cols -1..1.
    inputs = keras.Input(shape=(4, 4, 1))
    outputs = common.conv2d(inputs, 1, 3, strides=2, name="conv")
    model = keras.Model(inputs, outputs)
    model.get_layer("conv").set_weights([np.ones((3, 3, 1, 1), "float32")])
    counts = keras.ops.convert_to_numpy(model(np.ones((1, 4, 4, 1), "float32")))
    np.testing.assert_allclose(counts[0, :, :, 0], [[4.0, 6.0], [6.0, 9.0]])


def test_channel_shuffle_matches_pytorch_view_transpose():
    # PyTorch: view(g, c / g) -> transpose -> flatten, for c = 6, g = 3.
    channels = np.arange(6, dtype="float32").reshape(1, 1, 1, 6)
    shuffled = keras.ops.convert_to_numpy(ChannelShuffle(3)(channels))
    np.testing.assert_array_equal(shuffled.ravel(), [0, 2, 4, 1, 3, 5])


def test_channel_split_returns_halves():
    channels = np.arange(4, dtype="float32").reshape(1, 1, 1, 4)
    first, second = ChannelSplit()(channels)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(first).ravel(), [0, 1])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(second).ravel(), [2, 3])


def test_shufflenet_round_trips_through_serialization():
    keras.utils.set_random_seed(0)
    model = build_model("shufflenetv2", 10, CIFAR_SHAPE, WEIGHT_DECAY)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(model)
    )
    restored.set_weights(model.get_weights())
    images = np.random.default_rng(0).normal(size=(2, *CIFAR_SHAPE)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(images, training=False)),
        keras.ops.convert_to_numpy(model(images, training=False)),
        rtol=1e-5,
        atol=1e-5,
    )
    assert len(restored.losses) == len(restored.trainable_weights)
