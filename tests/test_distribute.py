"""A Distiller step under MirroredStrategy equals a single-device step."""

import keras
import numpy as np
import tensorflow as tf

import tllm_tf
from conftest import NUM_CLASSES, make_mlp


def _trained_student(strategy, x, y, initial_student, initial_teacher, steps):
    with strategy.scope():
        student = make_mlp("student", width=6, weight_decay=1e-3)
        teacher = make_mlp("teacher", width=16)
        student.set_weights(initial_student)
        teacher.set_weights(initial_teacher)
        distiller = tllm_tf.Distiller(student, teacher)
        distiller.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), alpha=0.3, beta=0.7)
        distiller.set_class_mask([1.0, 0.0, 1.0, 0.0])
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    distiller.fit(dataset, epochs=steps, verbose=0)
    return [np.array(w) for w in student.get_weights()]


def test_mirrored_step_equals_single_device_step():
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "conftest splits the CPU into two logical devices"
    keras.utils.set_random_seed(0)
    initial_student = make_mlp("student", width=6, weight_decay=1e-3).get_weights()
    initial_teacher = make_mlp("teacher", width=16).get_weights()
    rng = np.random.default_rng(0)
    x = rng.random((16, 8, 8, 3), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, 16).astype(np.int32)

    single = _trained_student(tf.distribute.get_strategy(), x, y,
                              initial_student, initial_teacher, steps=3)
    mirrored_strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
    assert mirrored_strategy.num_replicas_in_sync == 2
    mirrored = _trained_student(mirrored_strategy, x, y,
                                initial_student, initial_teacher, steps=3)
    moved = max(np.abs(a - b).max() for a, b in zip(single, initial_student))
    assert moved > 1e-3
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, atol=1e-5)
