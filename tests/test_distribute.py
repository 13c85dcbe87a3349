"""A Distiller under MirroredStrategy gives the single-device updates and logs.

Two logical CPUs (conftest) stand in for two accelerators. The uneven cases
are the ones that went wrong: 11 samples in batches of 8 end with a batch of
3 that splits 2/1, and 49 in batches of 16 end with one sample, which leaves
one replica an empty batch. A first batch that splits unevenly is refused:
Keras builds the model from it (up front where its size is known, else
Keras's own failure on it explained).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tllm_tf
from conftest import NUM_CLASSES, make_mlp
from tllm_tf.data.pipeline import training_batches
from tllm_tf.data.soft_label_store import SoftLabelStore


def _distiller(strategy, initial_student, initial_teacher):
    with strategy.scope():
        student = make_mlp("student", width=6, weight_decay=1e-3)
        teacher = make_mlp("teacher", width=16)
        student.set_weights(initial_student)
        teacher.set_weights(initial_teacher)
        distiller = tllm_tf.Distiller(student, teacher)
        distiller.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), alpha=0.3,
                          beta=0.7, metrics=["accuracy"])
        distiller.set_class_mask([1.0, 0.0, 1.0, 0.0])
    return distiller


def _train_and_evaluate(strategy, x, y, batch_size, initial_student, initial_teacher):
    distiller = _distiller(strategy, initial_student, initial_teacher)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    history = distiller.fit(dataset, epochs=3, verbose=0).history
    evaluation = distiller.evaluate(dataset, verbose=0, return_dict=True)
    weights = [np.array(w) for w in distiller.student.get_weights()]
    return weights, history, evaluation


@pytest.fixture(scope="module")
def mirrored_strategy():
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "conftest splits the CPU into two logical devices"
    # Not collectives: TensorFlow's MirroredStrategy objects share their
    # collective keys, so another test's strategy would clash with this one.
    return tf.distribute.MirroredStrategy(
        [d.name for d in devices[:2]], cross_device_ops=tf.distribute.ReductionToOneDevice())


@pytest.mark.parametrize("num_samples, batch_size", [(16, 16), (11, 8), (49, 16)])
def test_mirrored_run_equals_single_device_run(mirrored_strategy, num_samples, batch_size):
    keras.utils.set_random_seed(0)
    initial_student = make_mlp("student", width=6, weight_decay=1e-3).get_weights()
    initial_teacher = make_mlp("teacher", width=16).get_weights()
    rng = np.random.default_rng(0)
    x = rng.random((num_samples, 8, 8, 3), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, num_samples).astype(np.int32)

    single = _train_and_evaluate(tf.distribute.get_strategy(), x, y, batch_size,
                                 initial_student, initial_teacher)
    assert mirrored_strategy.num_replicas_in_sync == 2
    mirrored = _train_and_evaluate(mirrored_strategy, x, y, batch_size,
                                   initial_student, initial_teacher)

    (single_weights, single_history, single_evaluation) = single
    (mirrored_weights, mirrored_history, mirrored_evaluation) = mirrored
    moved = max(np.abs(a - b).max() for a, b in zip(single_weights, initial_student))
    assert moved > 1e-3
    for a, b in zip(single_weights, mirrored_weights):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert set(mirrored_history) == set(single_history) == {
        "loss", "student_loss", "distillation_loss", "num_undistillable_classes", "accuracy"}
    for name, values in single_history.items():
        assert np.all(np.isfinite(mirrored_history[name])), name
        np.testing.assert_allclose(mirrored_history[name], values, rtol=1e-5, err_msg=name)
    assert mirrored_history["num_undistillable_classes"] == [2, 2, 2]
    assert set(mirrored_evaluation) == set(single_evaluation)
    for name, value in single_evaluation.items():
        assert mirrored_evaluation[name] == pytest.approx(value, rel=1e-5), name
    # The truth, counted by hand: the student's accuracy on every sample.
    student = make_mlp("student", width=6)
    student.set_weights(single_weights)
    predicted = np.argmax(student.predict(x, verbose=0), axis=-1)
    assert single_evaluation["accuracy"] == pytest.approx(np.mean(predicted == y), abs=1e-6)


def _shuffled_mixed_epochs(x, y):
    # Three epochs, each shuffled and augmented by its own seed, as the pipeline trains on.
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    return training_batches(dataset, batch_size=8, epoch_seeds=[1, 2, 3], steps=4,
                            randaugment=True)


def test_a_mirrored_run_on_drawn_epochs_trains_on_the_single_device_batches(
        mirrored_strategy):
    # Keras' fit under a strategy reads a batch, then trains on a second pass. Epochs drawn
    # again on each pass trained the mirrored run on other batches than the single device's.
    keras.utils.set_random_seed(0)
    initial_student = make_mlp("student", width=6, weight_decay=1e-3).get_weights()
    initial_teacher = make_mlp("teacher", width=16).get_weights()
    rng = np.random.default_rng(0)
    x = rng.random((32, 8, 8, 3), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, 32).astype(np.int32)
    losses = {}
    for name, strategy in (("single", tf.distribute.get_strategy()),
                           ("mirrored", mirrored_strategy)):
        distiller = _distiller(strategy, initial_student, initial_teacher)
        losses[name] = distiller.fit(_shuffled_mixed_epochs(x, y), epochs=3,
                                     steps_per_epoch=4, verbose=0).history["loss"]
    np.testing.assert_allclose(losses["mirrored"], losses["single"], rtol=1e-5)


def test_a_mirrored_run_trains_from_a_soft_label_store(mirrored_strategy, tmp_path):
    # The store holds the teacher's logits on the first pass's views; the mirrored
    # run's pass after Keras' read of one batch failed its check (image sums differ).
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    x = rng.random((32, 8, 8, 3), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, 32).astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    teacher = make_mlp("teacher", width=16)

    def views(epoch):
        return training_batches(dataset, batch_size=8, epoch_seeds=[100 + epoch], steps=4)

    store = SoftLabelStore(str(tmp_path), teacher, views, num_classes=NUM_CLASSES,
                           views_fingerprint={"seed": 0})
    store.build(epochs=2)
    with mirrored_strategy.scope():
        distiller = tllm_tf.Distiller(make_mlp("student", width=6), make_mlp("teacher", width=16))
        distiller.compile(optimizer=keras.optimizers.SGD(0.1), alpha=0.3, beta=0.7)
    batches = store.attach(
        training_batches(dataset, batch_size=8, epoch_seeds=[100, 101], steps=4), 0, 2)
    history = distiller.fit(batches, epochs=2, steps_per_epoch=4, verbose=0).history
    assert np.all(np.isfinite(history["loss"])) and len(history["loss"]) == 2


def _seeded_distiller(strategy):
    """A Distiller of seeded weights, and its student's weights before any step."""
    keras.utils.set_random_seed(0)
    distiller = _distiller(strategy, make_mlp("student", width=6).get_weights(),
                           make_mlp("teacher", width=16).get_weights())
    return distiller, distiller.student.get_weights()


def _arrays(num_samples):
    rng = np.random.default_rng(0)
    return (rng.random((num_samples, 8, 8, 3), dtype=np.float32),
            rng.integers(0, NUM_CLASSES, num_samples).astype(np.int32))


def test_a_first_batch_that_splits_unevenly_is_refused_before_any_step(mirrored_strategy):
    distiller, initial = _seeded_distiller(mirrored_strategy)
    x, y = _arrays(66)
    uneven = r"batch_size=33 .*does not split evenly over the 2 replicas.*multiple of 2"
    with pytest.raises(ValueError, match=uneven):
        distiller.fit(x, y, batch_size=33, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"A batch of 33 samples .*multiple of 2"):
        distiller.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(33, drop_remainder=True),
                      epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"all of its 11 samples .*batch_size=16.*at most 11"):
        distiller.fit(x[:11], y[:11], batch_size=16, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="batch_size=33 .*validation_data"):
        distiller.fit(x, y, batch_size=32, validation_data=(x, y), validation_batch_size=33,
                      epochs=1, verbose=0)
    with pytest.raises(ValueError, match="validation_split holds all of its 7 samples"):
        distiller.fit(x, y, batch_size=32, validation_split=0.1, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="batch_size=33 "):
        distiller.evaluate(x, y, batch_size=33, verbose=0)
    # Without drop_remainder the size is unknown up front: Keras's failure on the batch, explained.
    unknown = (r"first batch of x does not split evenly over the 2 replicas .*shares hold 17 and "
               r"16 samples.*multiple of 2.*drop_remainder=True")
    without_drop = tf.data.Dataset.from_tensor_slices((x, y)).batch(33)
    with pytest.raises(ValueError, match=unknown + ".*No step was trained"):
        distiller.fit(without_drop, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=unknown):
        distiller.evaluate(without_drop, verbose=0)
    for got, want in zip(distiller.student.get_weights(), initial):
        np.testing.assert_array_equal(got, want)


def test_an_uneven_first_validation_batch_is_explained_and_the_epoch_trained_is_kept(
        mirrored_strategy):
    distiller, initial = _seeded_distiller(mirrored_strategy)
    x, y = _arrays(66)
    even = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    with pytest.raises(ValueError, match=r"first batch of the validation data does not split "
                       r"evenly .*17 and 16 samples.*The 3 steps trained before it are kept"):
        distiller.fit(even, validation_data=tf.data.Dataset.from_tensor_slices((x, y)).batch(33),
                      epochs=2, verbose=0)
    assert int(distiller.optimizer.iterations.numpy()) == 3
    assert any(not np.array_equal(got, want)
               for got, want in zip(distiller.student.get_weights(), initial))


def test_a_first_batch_that_splits_evenly_trains_with_an_uneven_last_batch(
        mirrored_strategy):
    distiller, initial = _seeded_distiller(mirrored_strategy)
    x, y = _arrays(67)  # Batches of 34 and 33.
    history = distiller.fit(x, y, batch_size=34, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["loss"])) and len(history["loss"]) == 2
    assert max(np.abs(a - b).max()
               for a, b in zip(distiller.student.get_weights(), initial)) > 1e-4
    assert np.isfinite(distiller.evaluate(x, y, batch_size=34, verbose=0)[0])
