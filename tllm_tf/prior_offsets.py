"""Per-class logit offsets fitted on held-out images: where a student puts its class boundaries.

Between confused classes (Pullover, Coat and Shirt on Fashion-MNIST) a small
student's per-class accuracy depends much on where its boundaries fall, and
they fall differently from seed to seed and between a distilled student and
one trained on labels. One offset per class, added to the logits, moves them:
`fit_offsets` chooses the offsets under which the model's mean predicted
probability of every class on the held-out images equals that class's share of
those images (the class-prior adjustment of Saerens, Latinne and Decaestecker,
2002, with the held-out frequencies as the prior). docs/study.md measures what
it does to labels-only, KD and TLLM students ("Where the students put their
class boundaries").

`add_to_output_bias` folds the offsets into the bias of the model's last,
linear layer, so the saved model and its export carry them; `apply_prior_offsets`
does the three steps, as `--prior_offsets` does after each student trains.

Example:

```python
distiller.fit(train_batches, epochs=20, callbacks=[identification])
offsets = tllm_tf.apply_prior_offsets(student, held_out_batches, num_classes=10)
```
"""

import logging

import numpy as np
import tensorflow as tf

from tllm_tf import metrics as metrics_lib
from tllm_tf import model_checks


def logits_and_labels(model, dataset):
    """The model's logits and the labels of `dataset`, in order.

    Args:
        model: a `keras.Model` returning logits.
        dataset: `(images, labels)` batches, or a pair of arrays; one-hot or
            soft labels are reduced to their arg-max.

    Returns:
        `(logits, labels)`: float64 `(num_images, num_classes)` and int64
        `(num_images,)` arrays.

    Raises:
        ValueError: if `dataset` has no images, or is neither a dataset nor
            a pair of arrays.
    """
    return _logits_and_labels(lambda images: model(images, training=False), dataset)


def _logits_and_labels(forward, dataset):
    logits, labels = [], []
    for batch in metrics_lib.as_dataset(dataset):
        batch_logits = forward(batch[0]).numpy()
        logits.append(batch_logits)
        labels.append(model_checks.batch_class_ids(batch[1].numpy(), batch_logits.shape[-1]))
    if not logits:
        raise ValueError("Expected held-out images to measure the model on; the data set given "
                         "is empty.")
    return (np.concatenate(logits).astype(np.float64),
            model_checks.checked_class_ids(labels, logits[0].shape[-1]))


def _log_mean_probabilities(logits):
    """Per class, the log of the mean softmax probability over the images.

    In logs throughout: a class whose probability underflows to 0 on every
    image (a logit 745 below the others) still has a finite log mean.
    """
    return _logsumexp(log_softmax(logits), axis=0)[0] - np.log(len(logits))


def log_softmax(logits):
    """The log of the softmax of each row of `logits`, computed without overflow.

    Args:
        logits: float array `(num_images, num_classes)`.

    Returns:
        A float array of the same shape.
    """
    return logits - _logsumexp(logits, axis=1)


def _logsumexp(values, axis):
    largest = values.max(axis=axis, keepdims=True)
    return largest + np.log(np.exp(values - largest).sum(axis=axis, keepdims=True))


def _newton_direction(logits, residual):
    """The offsets' change that Newton's method takes to cancel `residual`.

    `residual` is the log of the target mean probabilities minus the log of
    the model's (`logits`, offsets included). The derivative of the log mean
    probability of class `k` by the offset of class `j` is `[k == j]` minus
    the mean of `p_j` over the images weighted by `p_k`. A class whose
    probability underflows on every image moves one for one with its offset.
    The matrix is singular along a shift common to every class (which changes
    no probability), so the least-squares solution is taken, then centred.
    """
    probabilities = np.exp(log_softmax(logits))
    sums = probabilities.sum(axis=0)[:, None]
    cross = probabilities.T @ probabilities  # No second (num_images, num_classes) array.
    jacobian = np.eye(logits.shape[1]) - np.divide(cross, sums, out=np.zeros_like(cross),
                                                   where=sums > 0)
    direction = np.linalg.lstsq(jacobian, residual, rcond=None)[0]
    return direction - direction.mean()


# How far (in log) the mean predicted probabilities may stay from their targets when the
# iterations run out before `fit_offsets` warns: 1e-5 is a relative 0.001%, which no
# accuracy figure could show.
WARNED_RESIDUAL = 1e-5


def fit_offsets(logits, labels, num_classes, *, max_iterations=1000, tolerance=1e-7):
    """Offsets that make the mean predicted probabilities match the class frequencies.

    A class with no image in `labels` keeps the share of the predictions the
    model gives it without offsets (its target frequency is that share).

    Args:
        logits: `(num_images, num_classes)` array of a model's logits.
        labels: `(num_images,)` integer class ids of the same images.
        num_classes: number of classes.
        max_iterations: most iterations (Newton's, or fixed-point steps
            where Newton's does no better). Defaults to `1000`.
        tolerance: stop when every class's mean probability is within this
            factor (in log) of its target. Defaults to `1e-7`. Where
            `max_iterations` end before, a warning says so if one is still
            `WARNED_RESIDUAL` (1e-5) or more off.

    Returns:
        A float64 `(num_classes,)` array with mean 0 (a shift common to every
        logit changes no prediction).

    Raises:
        ValueError: if the shapes disagree, there are no labels, or a label
            is out of range.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or logits.shape[1] != num_classes or len(labels) != len(logits):
        raise ValueError(
            f"Expected logits of shape (num_images, {num_classes}) and as many labels. "
            f"Received: logits {logits.shape}, labels {labels.shape}.")
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"Expected labels in [0, {num_classes}). Received: "
                         f"{'none' if len(labels) == 0 else (labels.min(), labels.max())}.")
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    # Absent classes keep their share; the present ones split the rest by their counts.
    log_kept = _log_mean_probabilities(logits)
    kept_share = np.exp(log_kept[~present]).sum()
    with np.errstate(divide="ignore"):
        log_target = np.where(present, np.log(counts / counts.sum()) + np.log1p(-kept_share),
                              log_kept)
    offsets = np.zeros(num_classes)
    residual = log_target - log_kept
    for _ in range(max_iterations):
        if np.max(np.abs(residual)) < tolerance:
            break
        offsets, residual = _step(logits, offsets, residual, log_target)
    else:
        if np.max(np.abs(residual)) >= WARNED_RESIDUAL:
            logging.warning(
                "fit_offsets: after max_iterations=%d the mean predicted probabilities are "
                "still up to %.2g off their targets (in log; tolerance %g). The offsets are "
                "kept as they are; pass a larger max_iterations to fit them closer.",
                max_iterations, float(np.max(np.abs(residual))), tolerance)
    return offsets - offsets.mean()


def _step(logits, offsets, residual, log_target):
    """One iteration of `fit_offsets`: `(offsets, residual)` after it.

    Newton's step, where it brings the mean probabilities closer to their
    targets (it does within a few steps, quadratically after); otherwise the
    fixed-point step, which adds the residual itself. That one alone needed
    over a thousand iterations on confident logits, where a class's mean
    probability moves much less than its offset.
    """
    newton = offsets + _newton_direction(logits + offsets, residual)
    newton_residual = log_target - _log_mean_probabilities(logits + newton)
    if np.max(np.abs(newton_residual)) < np.max(np.abs(residual)):
        return newton, newton_residual
    fixed_point = offsets + residual
    return fixed_point, log_target - _log_mean_probabilities(logits + fixed_point)


def output_layer(model):
    """The last layer of `model`, looking inside nested models: the one that makes the logits."""
    layer = model
    while getattr(layer, "layers", None):
        layer = layer.layers[-1]
    return layer


def add_to_output_bias(model, offsets):
    """Adds `offsets` to the bias of the model's last layer (a linear `Dense` layer).

    Args:
        model: a `keras.Model` whose last layer (inside nested models too) is a
            `Dense` layer with a bias and no activation, as every model of the
            zoo has.
        offsets: one number per class.

    Raises:
        ValueError: if the last layer is not a linear `Dense` layer with a bias
            of `len(offsets)` units.
    """
    layer = output_layer(model)
    linear = getattr(getattr(layer, "activation", None), "__name__", "") == "linear"
    bias = getattr(layer, "bias", None)
    if not linear or bias is None or bias.shape[-1] != len(offsets):
        raise ValueError(
            "Prior offsets are added to the bias of the model's last layer, which must be a "
            f"linear Dense layer with a bias of {len(offsets)} units. Received: "
            f"{type(layer).__name__} {layer.name!r}. Train without --prior_offsets, or give "
            "the model such a head.")
    bias.assign(bias + tf.constant(offsets, dtype=bias.dtype))


class OffsetLogits:
    """A model's logits on a data set, with the prior offsets fitted on the same images added.

    What the rule's per-image judges measure at each look: one compiled pass
    over the data, then (with `with_offsets`) `fit_offsets` on its logits.
    The model is left as it is.

    Args:
        model: a `keras.Model` returning logits.
        num_classes: number of classes.
        with_offsets: whether to fit and add the offsets. Defaults to `True`.
    """

    def __init__(self, model, num_classes, with_offsets=True):
        self.model = model
        self.num_classes = int(num_classes)
        self.with_offsets = bool(with_offsets)
        # Compiled once: it runs at every look and, for the reference, after every epoch.
        self._forward = tf.function(lambda images: model(images, training=False),
                                    reduce_retracing=True)

    def __call__(self, data):
        """Returns `(logits, labels)`: float64 `(num_images, num_classes)` and int64 `(num_images,)`.

        Args:
            data: `(images, labels)` batches, or a pair of arrays.

        Raises:
            ValueError: as `fit_offsets`, or if `data` has no images.
        """
        logits, labels = _logits_and_labels(self._forward, data)
        if self.with_offsets:
            logits = logits + fit_offsets(logits, labels, self.num_classes)
        return logits, labels


class PerImageCorrectnessWithOffsets:
    """Which images a model gets right once its prior offsets, fitted on the same images, are added.

    The drop-in for `metrics.PerImageCorrectness` that `UndistillableClassCallback`
    uses with `prior_offsets=True`: the identification rule then compares the
    student and the reference after each has had its boundaries moved to the
    held-out class frequencies, so a class is judged behind for what the
    boundaries do not explain. The model is left as it is.

    Args:
        model: a `keras.Model` returning logits.
        num_classes: number of classes.
    """

    def __init__(self, model, num_classes):
        self.model = model
        self._logits = OffsetLogits(model, num_classes)

    def __call__(self, data):
        """Returns `(correct, labels)`: a bool and an int64 array `(num_images,)`.

        Args:
            data: `(images, labels)` batches, or a pair of arrays.

        Raises:
            ValueError: as `fit_offsets`, or if `data` has no images.
        """
        logits, labels = self._logits(data)
        return logits.argmax(axis=1) == labels, labels


def judge_class(with_offsets):
    """The per-image judge's class: `metrics.PerImageCorrectness`, or with prior offsets.

    Args:
        with_offsets: whether the judge fits and adds prior offsets first.

    Returns:
        `PerImageCorrectnessWithOffsets` or `metrics.PerImageCorrectness`,
        both built as `judge(model, num_classes)`.
    """
    return PerImageCorrectnessWithOffsets if with_offsets else metrics_lib.PerImageCorrectness


def per_image_correctness(model, num_classes, with_offsets=False):
    """The per-image judge of `model` (`judge_class`), ready to call on a data set.

    Args:
        model: a `keras.Model` returning logits.
        num_classes: number of classes.
        with_offsets: whether the judge fits and adds prior offsets on the
            images it is called on. Defaults to `False`.

    Returns:
        A callable `data -> (correct, labels)`: a bool and an integer array
        `(num_images,)` (int32 without offsets, int64 with).
    """
    return judge_class(with_offsets)(model, num_classes)


def apply_prior_offsets(model, held_out, num_classes):
    """Fits the offsets on `held_out` and adds them to the model's output bias.

    Args:
        model: the trained `keras.Model` (logits out, a linear `Dense` head).
        held_out: `(images, labels)` batches or arrays the model did not train
            on: the held-out split of the training data, never the test split.
        num_classes: number of classes.

    Returns:
        A dict: `offsets` (the list added), `held_out_accuracy_before` and
        `held_out_accuracy_after`.

    Raises:
        ValueError: for a `Distiller` (its last layer is the teacher's, so the
            offsets would change the teacher; pass `distiller.student`), and
            as `logits_and_labels`, `fit_offsets` and `add_to_output_bias`.
    """
    if hasattr(model, "student") and hasattr(model, "class_mask"):
        raise ValueError(
            "Expected the trained classifier, not the Distiller that trained it: pass "
            "`distiller.student`. Received: a tllm_tf.Distiller, whose last layer is the "
            "teacher's, so the offsets would change the teacher and leave the student as "
            "it is.")
    logits, labels = logits_and_labels(model, held_out)
    offsets = fit_offsets(logits, labels, num_classes)
    add_to_output_bias(model, offsets)
    return {
        "offsets": [float(o) for o in offsets],
        "held_out_accuracy_before": float(np.mean(logits.argmax(axis=1) == labels)),
        "held_out_accuracy_after": float(np.mean((logits + offsets).argmax(axis=1) == labels)),
    }
