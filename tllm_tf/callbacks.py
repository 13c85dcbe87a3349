"""`UndistillableClassCallback`: finds undistillable classes during training.

Teach Less, Learn More (Zhu et al., NeurIPS 2022): a class is undistillable
when the distilled student is less accurate on it than a student trained on
labels alone. Every few epochs this callback measures the student's per-class
accuracy on a held-out split of the *training* data, compares it with the
reference, and sets the `Distiller`'s class mask so those classes stop being
distilled.
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
    `(e - warmup_epochs) % update_every == 0`, class `c` is marked
    undistillable (mask 0) when

        student_accuracy[c] < reference_accuracy[c] - margin

    and every other class is distilled (mask 1). A class with fewer than
    `min_samples` held-out examples, or with no reference accuracy, keeps
    being distilled. With `sticky=True` a class once masked stays masked; the
    sticky set is read from the mask at train begin, so it survives a resume
    from a checkpoint.

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
            `validation_data` at train begin).
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
        self.validation_data = metrics_lib.as_dataset(validation_data)
        self.reference = reference
        self.margin = float(margin)
        self.warmup_epochs = int(warmup_epochs)
        self.update_every = int(update_every)
        self.sticky = bool(sticky)
        self.min_samples = int(min_samples)
        self.log_path = log_path
        self.reference_accuracy = None
        self.student_accuracy = None
        self._counter = None
        self._sticky_mask = None

    def _resolve_reference(self, num_classes):
        if isinstance(self.reference, keras.Model):
            return metrics_lib.per_class_accuracy(
                self.reference, self.validation_data, num_classes)
        if isinstance(self.reference, (str, os.PathLike)):
            values = reference_lib.load_reference(self.reference)
        else:
            values = np.asarray(self.reference, dtype=np.float64)
        if values.shape != (num_classes,):
            raise ValueError(
                f"The reference has {values.shape[0] if values.ndim == 1 else values.shape} "
                f"per-class accuracies but the model has num_classes={num_classes}. "
                "Pass the reference of a student trained on the same classes."
            )
        return values

    def on_train_begin(self, logs=None):
        if not hasattr(self.model, "class_mask"):
            raise ValueError(
                "UndistillableClassCallback needs a tllm_tf.Distiller (a model "
                f"with a `class_mask`). Received: {type(self.model).__name__}"
            )
        num_classes = self.model.num_classes
        self.reference_accuracy = self._resolve_reference(num_classes)
        self.student_accuracy = None
        self._counter = metrics_lib.PerClassCounter(self.model, num_classes)
        current_mask = keras.ops.convert_to_numpy(self.model.class_mask)
        self._sticky_mask = current_mask <= 0.0 if self.sticky else None

    def _is_update_epoch(self, epoch):
        epoch_number = epoch + 1
        return (epoch_number > self.warmup_epochs
                and (epoch_number - self.warmup_epochs) % self.update_every == 0)

    def compute_mask(self, student_accuracy, num_samples):
        """Returns the new mask (float32, 1 = distil) from held-out results.

        Args:
            student_accuracy: array `(num_classes,)`, NaN for empty classes.
            num_samples: array `(num_classes,)` of held-out counts.

        Returns:
            A float32 array `(num_classes,)`.
        """
        with np.errstate(invalid="ignore"):
            behind = student_accuracy < self.reference_accuracy - self.margin
        judged = (num_samples >= self.min_samples) & ~np.isnan(self.reference_accuracy)
        undistillable = behind & judged
        if self._sticky_mask is not None:
            undistillable |= self._sticky_mask
            self._sticky_mask = undistillable
        return np.where(undistillable, 0.0, 1.0).astype(np.float32)

    def on_epoch_end(self, epoch, logs=None):
        if self._is_update_epoch(epoch):
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
        }
