"""The reference student's per-class accuracy, as a JSON file.

TLLM compares the distilled student with a student trained on labels alone.
The reference stage writes its held-out per-class accuracy here; the
`UndistillableClassCallback` of a later run reads it back.

A reference file may also hold the accuracy after *every* epoch of the
reference's training (`ReferenceHistory` records it). An epoch-matched
comparison then sets the student of epoch `e` against the reference of epoch
`e`, instead of an unfinished student against a finished reference, which
flags almost every class early in training.
"""

import json
import math
import os
import tempfile

import keras
import numpy as np

from tllm_tf import metrics as metrics_lib

FORMAT = "tllm_tf.reference"
VERSION = 1


class MissingHistoryError(ValueError):
    """A reference file without the per-epoch accuracy an epoch-matched run needs."""


def _to_json_list(values):
    return [None if math.isnan(v) else float(v) for v in np.asarray(values, float)]


def _from_json_list(values):
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def save_reference(path, per_class_accuracy, num_samples=None, per_epoch_accuracy=None):
    """Writes a reference file atomically (temp file + rename).

    Args:
        path: destination `.json` path.
        per_class_accuracy: array `(num_classes,)`; NaN for a class with no
            held-out samples (written as `null`).
        num_samples: optional array `(num_classes,)` of held-out counts.
            Defaults to `None`.
        per_epoch_accuracy: optional array `(epochs, num_classes)`: row `i`
            is the accuracy after epoch `i + 1`. Defaults to `None`.

    Raises:
        ValueError: if `per_epoch_accuracy` has the wrong number of classes.
    """
    accuracy = np.asarray(per_class_accuracy, dtype=np.float64)
    record = {
        "format": FORMAT,
        "version": VERSION,
        "num_classes": int(accuracy.shape[0]),
        "per_class_accuracy": _to_json_list(accuracy),
    }
    if num_samples is not None:
        record["num_samples"] = [int(n) for n in np.asarray(num_samples)]
    if per_epoch_accuracy is not None:
        history = np.asarray(per_epoch_accuracy, dtype=np.float64)
        if history.ndim != 2 or history.shape[1] != accuracy.shape[0]:
            raise ValueError(
                f"Expected per_epoch_accuracy of shape (epochs, {accuracy.shape[0]}). "
                f"Received shape {history.shape}."
            )
        record["per_epoch_accuracy"] = [_to_json_list(row) for row in history]
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=directory, suffix=".tmp", delete=False
    ) as handle:
        json.dump(record, handle, indent=1)
        temporary = handle.name
    os.replace(temporary, path)


def _read_record(path):
    try:
        with open(path) as handle:
            record = json.load(handle)
    except FileNotFoundError:
        raise ValueError(
            f"Reference file not found: {path!r}. Run the `reference` stage "
            "first, or pass the reference accuracies or model directly."
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"Reference file {path!r} is not valid JSON ({error}); it may be "
            "truncated. Re-run the `reference` stage to rewrite it."
        ) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(
            f"{path!r} is not a tllm_tf reference file (expected "
            f"format={FORMAT!r})."
        )
    values = record.get("per_class_accuracy")
    if not isinstance(values, list) or len(values) != record.get("num_classes"):
        raise ValueError(
            f"Reference file {path!r} is inconsistent: per_class_accuracy has "
            f"{len(values) if isinstance(values, list) else 'no'} entries, "
            f"num_classes is {record.get('num_classes')}."
        )
    return record


def load_reference(path):
    """Reads the final per-class accuracy of a reference file.

    Args:
        path: path of the `.json` file written by `save_reference`.

    Returns:
        A float64 array `(num_classes,)`, NaN where the file has `null`.

    Raises:
        ValueError: if the file is missing, not JSON, or not a reference file.
    """
    return _from_json_list(_read_record(path)["per_class_accuracy"])


def load_reference_history(path):
    """Reads the per-epoch accuracy of a reference file.

    Args:
        path: path of a `.json` file written with `per_epoch_accuracy`
            (e.g. by `ReferenceHistory`).

    Returns:
        A float64 array `(epochs, num_classes)`; row `i` is after epoch
        `i + 1`.

    Raises:
        MissingHistoryError: if the file holds no per-epoch accuracy.
        ValueError: if the file is not a reference file.
    """
    record = _read_record(path)
    rows = record.get("per_epoch_accuracy")
    if not rows:
        raise MissingHistoryError(
            f"Reference file {path!r} has no per-epoch accuracy, which an "
            "epoch-matched comparison needs. Record it with "
            "`tllm_tf.ReferenceHistory` while training the reference."
        )
    if any(len(row) != record["num_classes"] for row in rows):
        raise ValueError(
            f"Reference file {path!r} is inconsistent: a per_epoch_accuracy row "
            f"does not have num_classes={record['num_classes']} entries."
        )
    return np.stack([_from_json_list(row) for row in rows])


def read_history_log(path, epochs, num_classes):
    """Reads the per-epoch rows a `ReferenceHistory` appended to its `log_path`.

    Args:
        path: the log file (one JSON line per epoch); may be missing.
        epochs: number of rows to return.
        num_classes: number of classes.

    Returns:
        A float64 array `(epochs, num_classes)`; row `i` is epoch `i + 1`'s
        last line in the log, NaN where the log has none.
    """
    history = np.full((epochs, num_classes), np.nan)
    if not os.path.exists(path):
        return history
    with open(path) as handle:
        for line in handle:
            try:
                record = json.loads(line)
                epoch, row = record["epoch"], _from_json_list(record["per_class_accuracy"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # A line torn by a kill.
            if 1 <= epoch <= epochs and row.shape == (num_classes,):
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
                      "per_class_accuracy": _to_json_list(self._rows[epoch]),
                      "num_samples": [int(n) for n in total]}
            with open(self.log_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")

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
