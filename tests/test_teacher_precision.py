"""A teacher distilling in bfloat16 / float16: the copy, and the Distiller using it."""

from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf

import tllm_tf
from conftest import IMAGE_SHAPE, NUM_CLASSES, make_mlp
from tllm_tf.models import build_model
from tllm_tf.teacher_precision import copy_policy
from tllm_tf.teacher_precision import inference_copy


def _rounded(weights, dtype):
    return [np.asarray(tf.cast(tf.cast(w, dtype), "float32")) for w in weights]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_copy_rounds_the_weights_and_leaves_the_teacher_alone(teacher, tiny_data, dtype):
    x, _ = tiny_data
    original = [np.array(w) for w in teacher.get_weights()]
    copy = inference_copy(teacher, dtype)

    assert copy is not teacher and not copy.trainable
    assert [layer.name for layer in copy.layers] == [layer.name for layer in teacher.layers]
    assert {w.dtype for w in copy.weights} == {dtype}
    for got, want in zip(copy.get_weights(), _rounded(original, dtype)):
        np.testing.assert_array_equal(np.asarray(got, np.float32), want)
    assert {w.dtype for w in teacher.weights} == {"float32"}
    for got, want in zip(teacher.get_weights(), original):
        np.testing.assert_array_equal(got, want)

    logits = np.asarray(teacher(x, training=False))
    copy_logits = np.asarray(tf.cast(copy(x, training=False), "float32"))
    assert copy(x).dtype == dtype
    np.testing.assert_allclose(copy_logits, logits, atol=0.02 * np.abs(logits).max())


def test_copy_of_a_zoo_network_with_batch_norm_agrees_with_it():
    keras.utils.set_random_seed(0)
    teacher = build_model("resnet8", NUM_CLASSES, (16, 16, 3))
    x = tf.random.normal((8, 16, 16, 3), seed=1)
    logits = np.asarray(teacher(x, training=False))
    copy_logits = np.asarray(tf.cast(inference_copy(teacher, "bfloat16")(x), "float32"))
    assert np.abs(copy_logits - logits).max() < 0.05 * np.abs(logits).max()


def test_a_teacher_already_in_the_dtype_is_returned_as_is(teacher):
    copy = inference_copy(teacher, "bfloat16")
    assert inference_copy(copy, "bfloat16") is copy
    assert inference_copy(teacher, "float32") is teacher


def test_rejects_an_unknown_dtype(teacher):
    with pytest.raises(ValueError, match="Unknown teacher_dtype: 'int8'"):
        inference_copy(teacher, "int8")
    with pytest.raises(ValueError, match="Unknown teacher_dtype"):
        tllm_tf.Distiller(make_mlp("student"), teacher, teacher_dtype="half")


def test_rejects_a_subclassed_teacher_and_says_what_to_do():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__(name="subclassed")
            self.dense = keras.layers.Dense(NUM_CLASSES)

        def call(self, inputs):
            return self.dense(keras.ops.reshape(inputs, (keras.ops.shape(inputs)[0], -1)))

    with pytest.raises(ValueError, match="subclassed.*set_dtype_policy"):
        inference_copy(Subclassed(), "bfloat16")


def test_distiller_step_uses_the_rounded_teacher(student, teacher, tiny_data):
    x, y = tiny_data
    expected = keras.models.clone_model(student)
    expected.set_weights(student.get_weights())
    distiller = tllm_tf.Distiller(student, teacher, teacher_dtype="bfloat16")
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), alpha=0.1, beta=0.9)
    distiller.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)

    teacher_logits = tf.cast(inference_copy(teacher, "bfloat16")(x, training=False), "float32")
    with tf.GradientTape() as tape:
        logits = expected(x, training=True)
        loss = tf.reduce_mean(
            0.1 * keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            + 0.9 * tllm_tf.kd_loss(teacher_logits, logits, temperature=4.0))
    gradients = tape.gradient(loss, expected.trainable_variables)
    for variable, gradient in zip(expected.trainable_variables, gradients):
        variable.assign_sub(0.1 * gradient)
    for got, want in zip(student.get_weights(), expected.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert {w.dtype for w in student.weights} == {"float32"}


def test_bfloat16_teacher_survives_keras_file_and_weights_files(student, teacher, tiny_data,
                                                               tmp_path):
    x, y = tiny_data
    distiller = tllm_tf.Distiller(student, teacher, teacher_dtype="bfloat16")
    distiller.compile(optimizer="sgd")
    distiller.fit(x, y, epochs=1, verbose=0)
    distiller.set_class_mask([1, 0, 1, 1])

    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.teacher_dtype == "bfloat16"
    assert {w.dtype for w in loaded.teacher.weights} == {"bfloat16"}
    assert loaded.undistillable_classes == [1]
    loaded.fit(x, y, epochs=1, verbose=0)

    weights = str(tmp_path / "distiller.weights.h5")
    distiller.save_weights(weights)
    fresh = tllm_tf.Distiller(make_mlp("student", width=6), make_mlp("teacher", width=16),
                              teacher_dtype="bfloat16")
    fresh.load_weights(weights)
    for got, want in zip(fresh.teacher.get_weights(), distiller.teacher.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert fresh.undistillable_classes == [1]


def test_bfloat16_teacher_under_mirrored_strategy_matches_one_device(tiny_data):
    x, y = tiny_data
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    keras.utils.set_random_seed(0)
    initial_student = make_mlp("student", width=6).get_weights()
    initial_teacher = make_mlp("teacher", width=16).get_weights()
    devices = [d.name for d in tf.config.list_logical_devices("CPU")[:2]]

    def train(strategy):
        with strategy.scope():
            student, teacher = make_mlp("student", width=6), make_mlp("teacher", width=16)
            student.set_weights(initial_student)
            teacher.set_weights(initial_teacher)
            distiller = tllm_tf.Distiller(student, teacher, teacher_dtype="bfloat16")
            distiller.compile(optimizer=keras.optimizers.SGD(0.1))
        distiller.fit(dataset, epochs=2, verbose=0)
        return student.get_weights()

    single = train(tf.distribute.OneDeviceStrategy(devices[0]))
    mirrored = train(tf.distribute.MirroredStrategy(devices))
    assert max(np.abs(a - b).max() for a, b in zip(single, initial_student)) > 1e-3
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _multi_worker_strategy():
    # A stand-in: a real MultiWorkerMirroredStrategy needs a cluster to
    # broadcast, and its collectives would clash with other tests' strategies.
    return mock.create_autospec(tf.distribute.MultiWorkerMirroredStrategy, instance=True)


def test_a_multi_worker_strategy_gets_the_mixed_bfloat16_copy():
    multi_worker = _multi_worker_strategy()
    assert copy_policy("bfloat16", multi_worker) == "mixed_bfloat16"
    assert copy_policy("float16", multi_worker) == "float16"
    devices = [d.name for d in tf.config.list_logical_devices("CPU")[:2]]
    mirrored = tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    assert copy_policy("bfloat16", mirrored) == "bfloat16"
    assert copy_policy("bfloat16") == "bfloat16"


@pytest.mark.parametrize("name", ["mlp", "resnet8"])
def test_mixed_bfloat16_copy_gives_the_plain_copy_s_logits_bit_for_bit(name):
    keras.utils.set_random_seed(0)
    if name == "mlp":
        teacher, x = make_mlp("teacher", width=16), tf.random.normal((16,) + IMAGE_SHAPE, seed=1)
    else:
        teacher, x = build_model("resnet8", NUM_CLASSES, (16, 16, 3)), tf.random.normal(
            (8, 16, 16, 3), seed=1)
        # Moving statistics far from 0 and 1, which the mixed policy does not round.
        for layer in teacher.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.moving_mean.assign(tf.random.normal(layer.moving_mean.shape, seed=2))
                layer.moving_variance.assign(
                    tf.random.uniform(layer.moving_variance.shape, 0.5, 2.0, seed=3))
    plain = inference_copy(teacher, "bfloat16")
    mixed = inference_copy(teacher, "bfloat16", strategy=_multi_worker_strategy())

    assert {w.dtype for w in plain.weights} == {"bfloat16"}
    assert {w.dtype for w in mixed.weights} == {"float32"} and not mixed.trainable
    assert inference_copy(mixed, "bfloat16", strategy=_multi_worker_strategy()) is mixed
    for got, want in zip(mixed.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(got, np.asarray(want, np.float32))
    plain_logits, mixed_logits = plain(x, training=False), mixed(x, training=False)
    assert mixed_logits.dtype == plain_logits.dtype == "bfloat16"
    np.testing.assert_array_equal(np.asarray(tf.cast(mixed_logits, "float32")),
                                  np.asarray(tf.cast(plain_logits, "float32")))


def test_image_shape_of_the_copy_is_unchanged(teacher):
    assert inference_copy(teacher, "bfloat16").input_shape[1:] == IMAGE_SHAPE
