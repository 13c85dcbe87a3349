import keras
import numpy as np
import pytest
import tensorflow as tf

from tllm_tf import metrics


def _identity_model(num_classes):
    """Its logits are its inputs, so predictions are chosen by the test."""
    inputs = keras.Input((num_classes,))
    return keras.Model(inputs, keras.layers.Identity()(inputs))


def test_per_class_accuracy_counts_each_class_and_marks_empty_ones_nan():
    logits = np.eye(4, dtype=np.float32)[[0, 0, 1, 2, 2, 2, 0]]
    labels = np.array([0, 1, 1, 2, 2, 0, 0])
    accuracy = metrics.per_class_accuracy(_identity_model(4), (logits, labels), 4)
    np.testing.assert_allclose(accuracy[:3], [2 / 3, 1 / 2, 2 / 2])
    assert np.isnan(accuracy[3])


def test_per_class_accuracy_accepts_batched_datasets_with_one_hot_and_weights():
    logits = np.eye(3, dtype=np.float32)[[0, 1, 1, 2]]
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 2]]
    weights = np.ones(4, np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((logits, labels, weights)).batch(3)
    accuracy = metrics.per_class_accuracy(_identity_model(3), dataset, 3)
    np.testing.assert_allclose(accuracy, [1.0, 1.0, 0.5])


def test_integer_one_hot_labels_count_as_their_class():
    # As the Distiller reads them: label vectors of any dtype.
    logits = np.eye(3, dtype=np.float32)[[0, 1, 1, 2]]
    labels = np.eye(3, dtype=np.int64)[[0, 1, 2, 2]]
    accuracy = metrics.per_class_accuracy(_identity_model(3), (logits, labels), 3)
    np.testing.assert_allclose(accuracy, [1.0, 1.0, 0.5])


def test_counter_traces_once_for_repeated_passes():
    counter = metrics.PerClassCounter(_identity_model(2), 2)
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.eye(2, dtype=np.float32), np.array([0, 0]))).batch(1)
    for _ in range(3):
        correct, total = counter(dataset)
    np.testing.assert_array_equal(correct, [1, 0])
    np.testing.assert_array_equal(total, [2, 0])
    assert counter._count.experimental_get_tracing_count() == 1


def test_as_dataset_rejects_other_inputs():
    with pytest.raises(ValueError, match="tf.data.Dataset"):
        metrics.as_dataset(np.zeros(3))


@pytest.mark.parametrize("labels, message", [
    ([0, 1, 2, 2.7], "whole numbers"),
    ([0, 1, 2, 4], r"\[0, (num_classes=)?3\)"),
    ([-1, -1, -1, -1], r"\[0, (num_classes=)?3\)"),
])
@pytest.mark.parametrize("as_arrays", [True, False])
def test_labels_that_are_not_class_ids_are_refused(labels, message, as_arrays):
    # They were truncated (2.7 counted as 2), counted in no class (-1: NaN everywhere), or
    # failed deep in TensorFlow (4).
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    x, y = np.zeros((4, 2), np.float32), np.asarray(labels)
    data = (x, y) if as_arrays else tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    with pytest.raises(ValueError, match=message):
        metrics.per_class_accuracy(model, data, 3)
    with pytest.raises(ValueError, match=message):
        metrics.PerImageCorrectness(model, 3)(data)


def test_small_integer_labels_are_checked_against_more_classes_than_their_type_holds():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(300)])
    labels = np.array([0, 40, 250, 255], np.uint8)  # 300 does not fit a uint8.
    data = tf.data.Dataset.from_tensor_slices((np.zeros((4, 2), np.float32), labels)).batch(2)
    _, total = metrics.PerClassCounter(model, 300)(data)
    assert total[[0, 40, 250, 255]].tolist() == [1, 1, 1, 1]
