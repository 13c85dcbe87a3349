"""`UndistillableClassCallback`: finds undistillable classes during training.

Teach Less, Learn More (Zhu et al., NeurIPS 2022): a class is undistillable
when the distilled student is less accurate on it than a student trained on
labels alone. Every few epochs this callback measures the student's per-class
accuracy on a held-out split of the *training* data, compares it with the
reference, and sets the `Distiller`'s class mask so those classes stop being
distilled.

Held-out per-class accuracy is coarse (one image of fifty is two points) and
noisy from epoch to epoch, so the rule has optional guards: a fixed margin, a
margin in standard errors, smoothing over updates, a number of consecutive
updates a class must stay behind, and an epoch-matched reference (the
student's epoch `e` against the reference's epoch `e`, see
`tllm_tf.ReferenceHistory`).
"""

import json
import os

import keras
import numpy as np

from tllm_tf import metrics as metrics_lib
from tllm_tf import reference as reference_lib


def _json_list(values):
    return [None if np.isnan(v) else round(float(v), 6) for v in values]


class UndistillableClassCallback(keras.callbacks.Callback):
    """Updates a `Distiller`'s class mask from held-out per-class accuracy.

    At the end of epoch `e` (counted from 1), when `e > warmup_epochs` and
    `(e - warmup_epochs) % update_every == 0`, the callback measures the
    student's per-class accuracy `s` on `validation_data` and takes the
    reference's `r` (its final accuracy, or with `epoch_matched=True` its
    accuracy after epoch `e`). With `smoothing > 0` both are replaced by their
    exponential moving averages over the updates so far. Class `c` is behind
    when

        s[c] < r[c] - margin - margin_standard_errors * se[c],
        se[c] = sqrt(2 * p * (1 - p) / n[c]),  p = (n[c] * (s[c] + r[c]) / 2 + 1) / (n[c] + 2)

    (`se` is the standard error of a difference of two accuracies measured on
    `n[c]` held-out examples, `p` their pooled accuracy with one pseudo-count
    each way so that a perfect class still has a non-zero error). A class
    behind on `patience` consecutive updates is marked undistillable (mask
    0); every other class is distilled (mask 1). A class with fewer than
    `min_samples` held-out examples, or with no reference accuracy, keeps
    being distilled. With `sticky=True` a class once masked stays masked; the
    sticky set is read from the mask at train begin, so it survives a resume
    from a checkpoint. With the defaults the rule is the plain comparison
    `s[c] < r[c]` at every epoch.

    `validation_data` must be a held-out split of the *training* data. Never
    pass the test split: the classes chosen on it would shape training, and
    the test accuracy would no longer measure generalisation.

    Every epoch's logs get `num_undistillable_classes` (progress bar,
    `History`, `CSVLogger`, TensorBoard).

    Args:
        validation_data: batched `tf.data.Dataset` of `(x, y)`, or a tuple
            `(x, y)` of arrays, of held-out *training* examples.
        reference: the label-only student's per-class accuracy on the same
            split: an array `(num_classes,)`, the path of a JSON file written
            by `tllm_tf.save_reference`, or a `keras.Model` (evaluated once on
            `validation_data` at train begin). With `epoch_matched=True`: an
            array `(epochs, num_classes)` (row `i` after epoch `i + 1`) or the
            path of a file written by `tllm_tf.ReferenceHistory`.
        margin: how far below the reference a class must fall, in accuracy
            units (0.02 = 2 points), `>= 0`. Defaults to `0.0`.
        warmup_epochs: epochs before the first update, `>= 0`. Defaults
            to `0`.
        update_every: epochs between updates, `>= 1`. Defaults to `1`.
        sticky: whether a masked class stays masked. Defaults to `False`.
        min_samples: fewest held-out examples a class needs to be judged,
            `>= 1`. Defaults to `1`.
        log_path: if set, one JSON line per update is appended there: epoch,
            student and reference per-class accuracy, sample counts, mask.
            Defaults to `None`.
        epoch_matched: whether to compare with the reference's accuracy at
            the same epoch (the last recorded epoch once the student trains
            longer than the reference). Defaults to `False`.
        smoothing: weight of the past in the moving average of the per-class
            accuracies over updates, in `[0, 1)`; `0` uses each update's
            values alone. Defaults to `0.0`.
        patience: consecutive updates a class must be behind before it is
            masked, `>= 1`. Defaults to `1`.
        margin_standard_errors: extra margin in standard errors `se[c]` of
            the accuracy difference, `>= 0`. Defaults to `0.0`.

    Raises:
        ValueError: on an argument out of range; at train begin, on a
            reference of the wrong shape or, with `epoch_matched=True`, one
            without per-epoch accuracy.

    Example:

    >>> distiller.fit(train_ds, epochs=30, callbacks=[
    ...     UndistillableClassCallback(held_out_ds, "reference.json",
    ...                                epoch_matched=True, patience=2)])
    """

    def __init__(
        self,
        validation_data,
        reference,
        margin=0.0,
        warmup_epochs=0,
        update_every=1,
        sticky=False,
        min_samples=1,
        log_path=None,
        epoch_matched=False,
        smoothing=0.0,
        patience=1,
        margin_standard_errors=0.0,
    ):
        super().__init__()
        if not margin >= 0:
            raise ValueError(f"Expected margin >= 0. Received: margin={margin}")
        if warmup_epochs < 0:
            raise ValueError(
                f"Expected warmup_epochs >= 0. Received: warmup_epochs={warmup_epochs}")
        if update_every < 1:
            raise ValueError(
                f"Expected update_every >= 1. Received: update_every={update_every}")
        if min_samples < 1:
            raise ValueError(
                f"Expected min_samples >= 1. Received: min_samples={min_samples}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(
                f"Expected 0 <= smoothing < 1. Received: smoothing={smoothing}")
        if patience < 1:
            raise ValueError(f"Expected patience >= 1. Received: patience={patience}")
        if not margin_standard_errors >= 0:
            raise ValueError(
                "Expected margin_standard_errors >= 0. Received: "
                f"margin_standard_errors={margin_standard_errors}")
        self.validation_data = metrics_lib.as_dataset(validation_data)
        self.reference = reference
        self.margin = float(margin)
        self.warmup_epochs = int(warmup_epochs)
        self.update_every = int(update_every)
        self.sticky = bool(sticky)
        self.min_samples = int(min_samples)
        self.log_path = log_path
        self.epoch_matched = bool(epoch_matched)
        self.smoothing = float(smoothing)
        self.patience = int(patience)
        self.margin_standard_errors = float(margin_standard_errors)
        self.reference_accuracy = None
        self.student_accuracy = None
        self._reference_history = None
        self._smoothed_student = None
        self._smoothed_reference = None
        self._behind_streak = None
        self._counter = None
        self._sticky_mask = None

    def _resolve_reference(self, num_classes):
        """Returns the reference as `(epochs, num_classes)` rows."""
        if isinstance(self.reference, keras.Model):
            if self.epoch_matched:
                raise ValueError(
                    "epoch_matched=True needs the reference's per-epoch accuracy: "
                    "pass a ReferenceHistory file or an (epochs, num_classes) "
                    "array, not a model.")
            return metrics_lib.per_class_accuracy(
                self.reference, self.validation_data, num_classes)[np.newaxis]
        if isinstance(self.reference, (str, os.PathLike)):
            if self.epoch_matched:
                values = reference_lib.load_reference_history(self.reference)
            else:
                values = reference_lib.load_reference(self.reference)
        else:
            values = np.asarray(self.reference, dtype=np.float64)
        expected_rank = 2 if self.epoch_matched else 1
        if values.ndim != expected_rank:
            raise ValueError(
                f"Expected a reference of rank {expected_rank} "
                f"({'(epochs, num_classes)' if self.epoch_matched else '(num_classes,)'}) "
                f"with epoch_matched={self.epoch_matched}. Received shape {values.shape}."
            )
        if values.shape[-1] != num_classes or values.size == 0:
            raise ValueError(
                f"The reference has {values.shape[-1]} "
                f"per-class accuracies but the model has num_classes={num_classes}. "
                "Pass the reference of a student trained on the same classes."
            )
        return values.reshape(-1, num_classes)

    def on_train_begin(self, logs=None):
        if not hasattr(self.model, "class_mask"):
            raise ValueError(
                "UndistillableClassCallback needs a tllm_tf.Distiller (a model "
                f"with a `class_mask`). Received: {type(self.model).__name__}"
            )
        num_classes = self.model.num_classes
        self._reference_history = self._resolve_reference(num_classes)
        self.reference_accuracy = self._reference_history[-1]
        self.student_accuracy = None
        self._smoothed_student = None
        self._smoothed_reference = None
        self._behind_streak = np.zeros(num_classes, dtype=np.int64)
        if self._counter is None or self._counter.model is not self.model:
            # Kept across `fit` calls on the same model: its traced pass is reused.
            self._counter = metrics_lib.PerClassCounter(self.model, num_classes)
        current_mask = keras.ops.convert_to_numpy(self.model.class_mask)
        self._sticky_mask = current_mask <= 0.0 if self.sticky else None

    def _is_update_epoch(self, epoch):
        epoch_number = epoch + 1
        return (epoch_number > self.warmup_epochs
                and (epoch_number - self.warmup_epochs) % self.update_every == 0)

    def _reference_at(self, epoch):
        row = min(epoch, len(self._reference_history) - 1)
        return self._reference_history[row]

    def _smooth(self, previous, current):
        if previous is None or self.smoothing == 0.0:
            return current
        # A NaN (an empty class) must not poison the average for good.
        blended = self.smoothing * previous + (1.0 - self.smoothing) * current
        return np.where(np.isnan(previous), current, blended)

    def compute_mask(self, student_accuracy, num_samples):
        """Returns the new mask (float32, 1 = distil) from held-out results.

        Compares with `reference_accuracy` (the current epoch's row when
        epoch-matched) and advances the smoothing and patience state, so call
        it once per update.

        Args:
            student_accuracy: array `(num_classes,)`, NaN for empty classes.
            num_samples: array `(num_classes,)` of held-out counts.

        Returns:
            A float32 array `(num_classes,)`.
        """
        num_samples = np.asarray(num_samples, dtype=np.float64)
        self._smoothed_student = self._smooth(self._smoothed_student, student_accuracy)
        self._smoothed_reference = self._smooth(
            self._smoothed_reference, self.reference_accuracy)
        student, reference = self._smoothed_student, self._smoothed_reference
        threshold = reference - self.margin
        if self.margin_standard_errors > 0:
            with np.errstate(invalid="ignore", divide="ignore"):
                pooled = (num_samples * (student + reference) / 2 + 1) / (num_samples + 2)
                standard_error = np.sqrt(2 * pooled * (1 - pooled) / np.maximum(num_samples, 1))
            threshold = threshold - self.margin_standard_errors * standard_error
        with np.errstate(invalid="ignore"):
            behind = student < threshold
        judged = (num_samples >= self.min_samples) & ~np.isnan(reference)
        behind &= judged
        self._behind_streak = np.where(behind, self._behind_streak + 1, 0)
        undistillable = self._behind_streak >= self.patience
        if self._sticky_mask is not None:
            undistillable |= self._sticky_mask
            self._sticky_mask = undistillable
        return np.where(undistillable, 0.0, 1.0).astype(np.float32)

    def on_epoch_end(self, epoch, logs=None):
        if self._is_update_epoch(epoch):
            if self.epoch_matched:
                self.reference_accuracy = self._reference_at(epoch)
            correct, total = self._counter(self.validation_data)
            self.student_accuracy = metrics_lib.accuracy_from_counts(correct, total)
            mask = self.compute_mask(self.student_accuracy, total)
            self.model.set_class_mask(mask)
            if self.log_path:
                self._append_log(epoch, total, mask)
        if logs is not None:
            logs["num_undistillable_classes"] = len(self.model.undistillable_classes)

    def _append_log(self, epoch, num_samples, mask):
        record = {
            "epoch": epoch + 1,
            "student_accuracy": _json_list(self.student_accuracy),
            "reference_accuracy": _json_list(self.reference_accuracy),
            "num_samples": [int(n) for n in num_samples],
            "class_mask": [float(m) for m in mask],
            "num_undistillable_classes": int(np.sum(mask <= 0.0)),
        }
        if self.smoothing > 0:
            record["smoothed_student_accuracy"] = _json_list(self._smoothed_student)
            record["smoothed_reference_accuracy"] = _json_list(self._smoothed_reference)
        directory = os.path.dirname(os.path.abspath(self.log_path))
        os.makedirs(directory, exist_ok=True)
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def get_config(self):
        return {
            "margin": self.margin,
            "warmup_epochs": self.warmup_epochs,
            "update_every": self.update_every,
            "sticky": self.sticky,
            "min_samples": self.min_samples,
            "log_path": self.log_path,
            "epoch_matched": self.epoch_matched,
            "smoothing": self.smoothing,
            "patience": self.patience,
            "margin_standard_errors": self.margin_standard_errors,
        }
