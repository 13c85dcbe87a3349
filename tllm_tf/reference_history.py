"""`ReferenceHistory`: the label-only student's held-out per-class accuracy after every epoch.

What an epoch-matched `UndistillableClassCallback` compares the distilled
student of epoch `e` with. The file it writes: `tllm_tf.reference`.
"""

import json
import os

import keras
import numpy as np

from tllm_tf import atomic
from tllm_tf import json_checks
from tllm_tf import metrics as metrics_lib
from tllm_tf.reference import save_reference


def read_history_log(path, epochs, num_classes):
    """Reads the per-epoch rows a `ReferenceHistory` appended to its `log_path`.

    Args:
        path: the log file (one JSON line per epoch); may be missing.
        epochs: number of rows to return.
        num_classes: number of classes.

    Returns:
        A float64 array `(epochs, num_classes)`; row `i` is epoch `i + 1`'s
        last line in the log, NaN where the log has none.

    Raises:
        ValueError: naming the file, if it is not a regular file (a FIFO, a
            device) or is over `json_checks.MAX_LOG_BYTES`.
    """
    history = np.full((epochs, num_classes), np.nan)
    if not os.path.exists(path):
        return history
    text = json_checks.read_log_text(
        path, kind="per-epoch accuracy log",
        remedy=("Train the reference again (delete its folder and re-run tools/train.py with "
                "the same flags)."))
    for line in text.splitlines():
        try:
            record = json.loads(line)
            epoch, row = record["epoch"], atomic.floats_from_json(record["per_class_accuracy"])
        except (KeyError, TypeError, ValueError, RecursionError):
            continue  # A line torn by a kill.
        if (isinstance(epoch, int) and 1 <= epoch <= epochs
                and row.shape == (num_classes,)):
            history[epoch - 1] = row
    return history


class ReferenceHistory(keras.callbacks.Callback):
    """Records a label-only student's held-out per-class accuracy every epoch.

    Add it to the `fit` of the reference student. At each epoch end it counts
    the model's correct predictions per class on `validation_data` (one
    compiled pass); at train end it writes, if `path` is set, a reference
    file whose `per_class_accuracy` is the last epoch's and whose
    `per_epoch_accuracy` holds every epoch's, for an epoch-matched
    `UndistillableClassCallback(..., epoch_matched=True)`.

    As for the callback that reads it, `validation_data` must be a held-out
    split of the *training* data, never the test split.

    Args:
        validation_data: batched `tf.data.Dataset` of `(x, y)`, or a tuple
            `(x, y)` of arrays, of held-out training examples.
        num_classes: number of classes. Defaults to the model's output size.
        path: where to write the reference file at train end. Defaults to
            `None` (keep it in `per_epoch_accuracy` only).
        log_path: if set, one JSON line per epoch is appended there (`epoch`
            counted from 1, `per_class_accuracy`, `num_samples`), so that the
            epochs of a killed fit survive it; `read_history_log` reads them
            back. Defaults to `None`.

    A `fit` resumed at `initial_epoch` (e.g. by `BackupAndRestore`) records
    the epochs it runs; the rows of the epochs before it are NaN, which the
    epoch-matched callback treats as "no reference" (the class is not
    judged at those epochs), unless they are read back from `log_path`.

    Attributes:
        per_epoch_accuracy: float64 array `(epochs, num_classes)` after
            training (NaN for a class with no held-out examples).
        num_samples: held-out count per class.

    Example:

    >>> history = ReferenceHistory(held_out_ds, path="reference.json")
    >>> reference_student.fit(train_ds, epochs=30, callbacks=[history])
    """

    def __init__(self, validation_data, num_classes=None, path=None, log_path=None):
        super().__init__()
        if num_classes is not None and num_classes < 2:
            raise ValueError(
                f"Expected num_classes >= 2. Received: num_classes={num_classes}")
        self.validation_data = metrics_lib.as_dataset(validation_data)
        self.num_classes = num_classes
        self.path = path
        self.log_path = log_path
        self.per_epoch_accuracy = None
        self.num_samples = None
        self._rows = {}
        self._counter = None

    def on_train_begin(self, logs=None):
        num_classes = self.num_classes or self.model.outputs[0].shape[-1]
        self._counter = metrics_lib.PerClassCounter(self.model, num_classes)
        self._rows = {}
        if self.log_path:
            os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        correct, total = self._counter(self.validation_data)
        self._rows[epoch] = metrics_lib.accuracy_from_counts(correct, total)
        self.num_samples = total
        if self.log_path:
            record = {"epoch": epoch + 1,
                      "per_class_accuracy": atomic.json_floats(self._rows[epoch]),
                      "num_samples": [int(n) for n in total]}
            atomic.append_line(self.log_path, json.dumps(record))

    def on_train_end(self, logs=None):
        if not self._rows:
            return
        width = len(next(iter(self._rows.values())))
        history = np.full((max(self._rows) + 1, width), np.nan)
        for epoch, row in self._rows.items():
            history[epoch] = row
        self.per_epoch_accuracy = history
        if self.path:
            save_reference(self.path, self.per_epoch_accuracy[-1], self.num_samples,
                           per_epoch_accuracy=self.per_epoch_accuracy)

    def get_config(self):
        return {"num_classes": self.num_classes, "path": self.path,
                "log_path": self.log_path}
