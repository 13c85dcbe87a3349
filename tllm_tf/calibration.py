"""Calibrated per-image scores: each held-out image's probability of its true class.

The calibrated identification rule (`rule="paired_calibrated"`,
`tllm_tf.identification`) compares the distilled student with the label-only
reference on every held-out image, not only on the images one of them gets
wrong: per class, a paired t-test on the probability each model gives the
image's true class. A distilled student is softer than one trained on labels
(its targets are), so the raw probabilities would put it behind on every class
for its softness alone; each model is first given the one temperature that
minimises its log-loss on the same images (temperature scaling, Guo et al.,
2017), and its probabilities are read after it.

`PerImageScores` measures a model on a held-out split (with its prior offsets
first, as the paired rule judges: `tllm_tf.prior_offsets`); `fit_temperature`
and `true_class_probabilities` are the pure steps.
"""

import numpy as np

from tllm_tf import prior_offsets as prior_offsets_lib

# The temperatures searched: a model that classifies every image right with room to spare
# lowers its log-loss without end as the temperature falls, so the search stops here.
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 100.0


def fit_temperature(logits, labels, *, max_iterations=100, tolerance=1e-10):
    """The temperature `T` that minimises the mean log-loss of `softmax(logits / T)`.

    The log-loss is convex in `1 / T`: Newton's method on `1 / T`, kept inside
    a bracket that shrinks around the minimum (a bisection step where Newton's
    leaves it).

    Args:
        logits: float array `(num_images, num_classes)`.
        labels: int array `(num_images,)` of class ids.
        max_iterations: the most steps. Defaults to `100`.
        tolerance: stop when the derivative of the mean log-loss in `1 / T`
            is this small. Defaults to `1e-10`.

    Returns:
        A float in `[MIN_TEMPERATURE, MAX_TEMPERATURE]`.

    Raises:
        ValueError: if there are no images, or the shapes disagree.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    if logits.ndim != 2 or len(logits) == 0 or labels.shape != (len(logits),):
        raise ValueError(
            "Expected logits (num_images, num_classes) and labels (num_images,) of at least "
            f"one image. Received shapes {logits.shape} and {labels.shape}.")
    true_logits = logits[np.arange(len(labels)), labels]
    low, high = 1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE
    inverse = 1.0
    for _ in range(max_iterations):
        probabilities = np.exp(prior_offsets_lib.log_softmax(inverse * logits))
        expected = (probabilities * logits).sum(axis=1)
        slope = np.mean(expected - true_logits)
        curvature = np.mean((probabilities * logits ** 2).sum(axis=1) - expected ** 2)
        if abs(slope) <= tolerance:
            break
        if slope > 0:
            high = inverse
        else:
            low = inverse
        step = inverse - slope / curvature if curvature > 0 else np.nan
        inverse = step if low < step < high else (low + high) / 2
        if high - low <= tolerance * high:
            break
    return float(1.0 / np.clip(inverse, 1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE))


def true_class_probabilities(logits, labels, temperature=1.0):
    """Each image's probability of its true class under `softmax(logits / temperature)`.

    Args:
        logits: float array `(num_images, num_classes)`.
        labels: int array `(num_images,)` of class ids.
        temperature: a positive float. Defaults to `1.0`.

    Returns:
        A float64 array `(num_images,)`.
    """
    logits = np.asarray(logits, np.float64)
    log_probabilities = prior_offsets_lib.log_softmax(logits / temperature)
    return np.exp(log_probabilities[np.arange(len(logits)), np.asarray(labels, np.int64)])


def calibrated_scores(logits, labels):
    """`true_class_probabilities` at the temperature fitted on the same images.

    Args:
        logits: float array `(num_images, num_classes)`.
        labels: int array `(num_images,)` of class ids.

    Returns:
        A float64 array `(num_images,)`.
    """
    return true_class_probabilities(logits, labels, fit_temperature(logits, labels))


class PerImageScores:
    """Per image of a data set: whether a model gets it right, and its calibrated score.

    The judge `UndistillableClassCallback` and `PredictionRecorder` use where
    calibrated scores are needed: the logits of one pass over the data, with
    the prior offsets fitted on the same images added where asked
    (`prior_offsets.OffsetLogits`, as the paired rule's judge sees them), then
    `calibrated_scores` of those logits. The model is left as it is.

    Args:
        model: a `keras.Model` returning logits.
        num_classes: number of classes.
        with_offsets: whether to add the prior offsets first. Defaults to `False`.
    """

    def __init__(self, model, num_classes, with_offsets=False):
        self.model = model
        self._logits = prior_offsets_lib.OffsetLogits(model, num_classes, with_offsets)

    @property
    def with_offsets(self):
        """Whether the prior offsets are added before the scores are read."""
        return self._logits.with_offsets

    def __call__(self, data):
        """Returns `(correct, labels, scores)`: bool, int64 and float64 arrays `(num_images,)`.

        Args:
            data: `(images, labels)` batches, or a pair of arrays.

        Raises:
            ValueError: as `prior_offsets.fit_offsets`, or if `data` has no images.
        """
        logits, labels = self._logits(data)
        return logits.argmax(axis=1) == labels, labels, calibrated_scores(logits, labels)
