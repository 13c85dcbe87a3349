"""Per-class accuracy, computed in one compiled pass over a data set; the masked-class count."""

import contextlib

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tllm_tf import model_checks

# The message of the in-graph check of class ids, by which `_refused_labels` knows it.
_BAD_CLASS_IDS = "Labels must be class ids in [0, num_classes)"


def as_dataset(data, batch_size=256):
    """Returns a batched `tf.data.Dataset` of `(x, y)` from data or a dataset.

    Args:
        data: a batched `tf.data.Dataset` yielding `(x, y)` or
            `(x, y, sample_weight)`, or a tuple or list `(x, y)` (or
            `(x, y, sample_weight)`) of arrays.
        batch_size: batch size used for arrays. Defaults to `256`.

    Returns:
        A dataset given is returned as it is; arrays become a
        `tf.data.Dataset` of `(x, y)` batches, in order (sample weights are
        dropped).

    Raises:
        ValueError: if `data` is neither.
    """
    if isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        return tf.data.Dataset.from_tensor_slices(tuple(data[:2])).batch(batch_size)
    raise ValueError(
        "Expected a batched tf.data.Dataset of (x, y) or a tuple (x, y) of "
        f"arrays. Received: {type(data).__name__}"
    )


class PerClassCounter:
    """Counts correct predictions and examples per class for one model.

    The counting loop is one `tf.function` over the whole data set, traced
    once per model, so calling it every epoch costs one inference pass.

    Args:
        model: a `keras.Model` returning logits (a `Distiller` returns the
            student's).
        num_classes: number of classes.
        labels_name: what the labels are, to open the message that refuses
            them. Defaults to `"Labels"`.
    """

    def __init__(self, model, num_classes, labels_name="Labels"):
        self.model = model
        self.num_classes = int(num_classes)
        self.labels_name = labels_name
        self._count = tf.function(self._count_all, reduce_retracing=True)

    def _count_all(self, dataset):
        correct = tf.zeros((self.num_classes,), tf.float64)
        total = tf.zeros((self.num_classes,), tf.float64)
        # An explicit iterator, not `for batch in dataset`, which AutoGraph
        # turns into a dataset reduction whose body runs inside tf.data: on 2
        # CPU cores this loop made a pass 3.5x faster for a small CNN and 11%
        # faster for resnet8x4 (tools/bench_throughput.py, docs/benchmarks.md).
        iterator = iter(dataset)
        next_batch = iterator.get_next_as_optional()
        while next_batch.has_value():
            batch = next_batch.get_value()
            next_batch = iterator.get_next_as_optional()
            x, y = batch[0], batch[1]
            labels = _class_ids(y, self.num_classes)
            logits = self.model(x, training=False)
            predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
            hits = tf.cast(tf.equal(predicted, labels), tf.float64)
            correct += tf.math.unsorted_segment_sum(hits, labels, self.num_classes)
            total += tf.math.unsorted_segment_sum(
                tf.ones_like(hits), labels, self.num_classes)
        return correct, total

    def __call__(self, data):
        """Returns `(correct, total)`, two float64 arrays of shape `(num_classes,)`.

        Args:
            data: what `as_dataset` takes.

        Raises:
            ValueError: on labels that are not class ids of the model's
                classes, nor label vectors of shape `(n, num_classes)`.
        """
        with _refused_labels(data, self.num_classes, self.labels_name):
            correct, total = self._count(as_dataset(data))
        return correct.numpy(), total.numpy()


class PerImageCorrectness:
    """Which images of a data set a model classifies correctly, in order.

    The paired identification rule compares the student and the reference
    image by image, so it needs more than per-class counts. One `tf.function`
    over the whole data set, traced once per model, like `PerClassCounter`.

    Args:
        model: a `keras.Model` returning logits.
        num_classes: number of classes (soft or one-hot labels are reduced
            to their arg-max).
        labels_name: what the labels are, to open the message that refuses
            them. Defaults to `"Labels"`.
    """

    def __init__(self, model, num_classes, labels_name="Labels"):
        self.model = model
        self.num_classes = int(num_classes)
        self.labels_name = labels_name
        self._run = tf.function(self._run_all, reduce_retracing=True)

    def _run_all(self, dataset):
        hits = tf.TensorArray(tf.bool, size=0, dynamic_size=True, infer_shape=False)
        labels_out = tf.TensorArray(tf.int32, size=0, dynamic_size=True, infer_shape=False)
        index = tf.constant(0)
        # An explicit iterator, as in `PerClassCounter` (faster on CPUs).
        iterator = iter(dataset)
        next_batch = iterator.get_next_as_optional()
        while next_batch.has_value():
            batch = next_batch.get_value()
            next_batch = iterator.get_next_as_optional()
            labels = _class_ids(batch[1], self.num_classes)
            predicted = tf.argmax(self.model(batch[0], training=False), axis=-1,
                                  output_type=tf.int32)
            hits = hits.write(index, tf.equal(predicted, labels))
            labels_out = labels_out.write(index, labels)
            index += 1
        return hits.concat(), labels_out.concat()

    def __call__(self, data):
        """Returns `(correct, labels)`: a bool and an int32 array `(num_images,)`.

        Args:
            data: what `as_dataset` takes, in a fixed order.

        Raises:
            ValueError: as `PerClassCounter`.
        """
        with _refused_labels(data, self.num_classes, self.labels_name):
            correct, labels = self._run(as_dataset(data))
        return correct.numpy(), labels.numpy()


@contextlib.contextmanager
def _refused_labels(data, num_classes, name):
    """Labels that are not the model's class ids as one `ValueError`, not a graph error.

    Arrays are checked before the pass; a data set's labels by `_class_ids`
    as it reads them (an id out of range was counted in no class, or failed
    deep in TensorFlow; a float id was truncated), then read again to name them.
    """
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        model_checks.check_label_array(data[1], num_classes, name=name)
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        if _BAD_CLASS_IDS not in error.message:
            raise
        labels = np.concatenate([np.asarray(batch[1]).reshape(-1)
                                 for batch in as_dataset(data).as_numpy_iterator()])
        model_checks.check_label_array(labels, num_classes, name=name)
        raise ValueError(
            f"{name} must be class ids in [0, {num_classes}) (whole numbers), or label "
            f"vectors of shape (n, {num_classes}). Fix the data set's labels (or "
            "num_classes).") from None


def _class_ids(y, num_classes):
    # Label vectors of any dtype (one-hot integers too), as the Distiller reads them.
    if y.shape.rank == 2 and y.shape[-1] == num_classes:
        return tf.argmax(y, axis=-1, output_type=tf.int32)
    ids = tf.reshape(y, (-1,))
    # Compared in a wide type: num_classes may not fit the labels' own (uint8 ids, 1000 classes).
    wide = tf.cast(ids, tf.float64 if ids.dtype.is_floating else tf.int64)
    checks = [
        tf.debugging.assert_greater_equal(wide, tf.zeros_like(wide), message=_BAD_CLASS_IDS),
        tf.debugging.assert_less(wide, tf.cast(num_classes, wide.dtype), message=_BAD_CLASS_IDS)]
    if ids.dtype.is_floating:
        checks.append(tf.debugging.assert_equal(wide, tf.round(wide), message=_BAD_CLASS_IDS))
    with tf.control_dependencies(checks):
        return tf.cast(ids, tf.int32)


def counts_from_correctness(correct, labels, num_classes):
    """Per-class `(correct, total)` counts from per-image results.

    Args:
        correct: boolean array `(num_images,)`: whether each image is
            classified correctly.
        labels: int array `(num_images,)` of class ids, `>= 0`; ids at or
            above `num_classes` are not counted.
        num_classes: number of classes.

    Returns:
        `(correct, total)`: two float64 arrays of shape `(num_classes,)`.
    """
    labels = np.asarray(labels, dtype=np.int64)
    total = np.bincount(labels, minlength=num_classes)[:num_classes]
    hits = np.bincount(labels[np.asarray(correct, bool)], minlength=num_classes)[:num_classes]
    return hits.astype(np.float64), total.astype(np.float64)


def accuracy_from_counts(correct, total):
    """Per-class accuracy from per-class counts.

    Args:
        correct: array-like of correct predictions per class.
        total: array-like of examples per class, the same shape.

    Returns:
        A float64 array `correct / total`, NaN where `total` is 0.
    """
    correct = np.asarray(correct, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def per_class_accuracy(model, dataset, num_classes):
    """Accuracy of `model` on each class of `dataset`, in one pass.

    Args:
        model: a `keras.Model` returning logits or probabilities.
        dataset: a batched `tf.data.Dataset` of `(x, y)` (class ids or
            one-hot labels), or a tuple `(x, y)` of arrays.
        num_classes: number of classes.

    Returns:
        A float64 numpy array of shape `(num_classes,)`; a class with no
        examples in `dataset` is NaN, not 0.
    """
    correct, total = PerClassCounter(model, num_classes)(dataset)
    return accuracy_from_counts(correct, total)


class MaskedClassCount(keras.metrics.Metric):
    """`num_undistillable_classes`: the classes a class mask stops distilling now.

    It reads the mask rather than accumulating, so it needs no update and is
    the same on every replica.

    Args:
        read_mask: callable returning the class mask (1 = distil).
        name: the metric's name. Defaults to `"num_undistillable_classes"`.
    """

    def __init__(self, read_mask, name="num_undistillable_classes"):
        super().__init__(name=name, dtype="int32")
        self._read_mask = read_mask

    def update_state(self, *args, **kwargs):
        """Does nothing: the count is read from the mask, not accumulated."""
        pass

    def result(self):
        """The number of classes whose mask is `<= 0`, as an int32 scalar."""
        return ops.sum(ops.cast(self._read_mask() <= 0.0, "int32"))
