"""The reference student's per-class accuracy, as a JSON file.

TLLM compares the distilled student with a student trained on labels alone.
The reference stage writes its held-out per-class accuracy here; the
`UndistillableClassCallback` of a later run reads it back.

A reference file may also hold the accuracy after *every* epoch of the
reference's training (`ReferenceHistory` records it). An epoch-matched
comparison then sets the student of epoch `e` against the reference of epoch
`e`, instead of an unfinished student against a finished reference, which
flags almost every class early in training. The callback that records it:
`tllm_tf.reference_history`.
"""

import logging
import math

import numpy as np

from tllm_tf import atomic
from tllm_tf import json_checks

FORMAT = "tllm_tf.reference"
VERSION = 1
# A reference file is read as data, every field checked (docs/security.md).
# A run's file is small (1000 classes over 240 epochs: about 6 MB); a bigger
# one than the cap is refused before it is parsed.
MAX_FILE_BYTES = 64 * 2**20
MAX_CLASSES = 1_000_000
# What a file may say it was made from: a few named scalars.
MAX_PROVENANCE_FIELDS = 64
MAX_PROVENANCE_TEXT = 1000


class MissingHistoryError(ValueError):
    """A reference file without the per-epoch accuracy an epoch-matched run needs."""


def save_reference(path, per_class_accuracy, num_samples=None, per_epoch_accuracy=None,
                   provenance=None):
    """Writes a reference file atomically (temp file + rename).

    Args:
        path: destination `.json` path.
        per_class_accuracy: array `(num_classes,)`; NaN for a class with no
            held-out samples (written as `null`).
        num_samples: optional array `(num_classes,)` of held-out counts.
            Defaults to `None`.
        per_epoch_accuracy: optional array `(epochs, num_classes)`: row `i`
            is the accuracy after epoch `i + 1`. Defaults to `None`.
        provenance: optional dict of what the reference was made from, names
            to JSON scalars (the pipeline records `dataset`, `seed`,
            `holdout_fraction`, `num_train`, `image_size`, `student_model`);
            `check_provenance` compares it with a later run's. Defaults to
            `None`.

    Raises:
        ValueError: if `per_epoch_accuracy` has the wrong number of classes,
            or `provenance` is not such a dict.
    """
    accuracy = np.asarray(per_class_accuracy, dtype=np.float64)
    record = {
        "format": FORMAT,
        "version": VERSION,
        "num_classes": int(accuracy.shape[0]),
        "per_class_accuracy": atomic.json_floats(accuracy),
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
        record["per_epoch_accuracy"] = [atomic.json_floats(row) for row in history]
    if provenance is not None:
        _check_provenance_field(path, provenance)
        record["provenance"] = dict(provenance)
    atomic.write_json(path, record)


def _check_accuracies(path, field, values, num_classes):
    """`values` is a list of `num_classes` accuracies in [0, 1], null (or NaN) for none."""
    if not isinstance(values, list):
        raise ValueError(
            f"Reference file {path!r}: {field} must be a list of {num_classes} "
            f"accuracies. Received: {type(values).__name__}.")
    if len(values) != num_classes:
        raise ValueError(
            f"Reference file {path!r} is inconsistent: {field} has {len(values)} "
            f"entries, num_classes is {num_classes}.")
    problem = json_checks.accuracy_problem(field, values)
    if problem:
        raise ValueError(f"Reference file {path!r}: {problem}.")


def check_accuracy_rows(rows, held_out_counts=None):
    """Refuses per-class reference accuracies a student could not be judged against.

    Args:
        rows: float array `(num_rows, num_classes)`: one row, or one per
            epoch, of accuracies in [0, 1]; NaN marks a class without
            held-out images.
        held_out_counts: held-out images per class, or `None` (a reference
            file, whose null marks a class its own split had none of).

    Raises:
        ValueError: on a value outside [0, 1], or a NaN for a class that
            `held_out_counts` says has images (the student could never be
            judged behind it there, so it would never be masked).
    """
    with np.errstate(invalid="ignore"):
        outside = (rows < 0.0) | (rows > 1.0)
    if outside.any():
        classes = np.flatnonzero(outside.any(axis=0))
        raise ValueError(
            f"The reference's per-class accuracies must lie in [0, 1]. Received values "
            f"outside at classes {classes.tolist()}: {rows[outside][:5].tolist()}. Pass "
            "fractions (0.9, not 90).")
    if held_out_counts is None:
        return
    nan_classes = np.flatnonzero(np.isnan(rows).any(axis=0) & (np.asarray(held_out_counts) > 0))
    if nan_classes.size:
        raise ValueError(
            f"The reference's per-class accuracy is NaN for classes {nan_classes.tolist()}, "
            "which have held-out images: the student could never be judged behind it there. "
            "NaN stands for a class with no held-out images; pass the reference's accuracy "
            "on this held-out split (tllm_tf.per_class_accuracy(reference_model, held_out, "
            "num_classes)).")


def _read_record(path):
    """A reference file's record, every field checked before it is used."""
    record = json_checks.read_json(
        path, MAX_FILE_BYTES, kind="reference file",
        missing_message=(f"Reference file not found: {path!r}. Run the `reference` stage "
                         "first, or pass the reference accuracies or model directly."),
        remedy=("Delete it (a stage whose file exists counts as done) and re-run the "
                "`reference` stage to rewrite it."))
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(
            f"{path!r} is not a tllm_tf reference file (expected "
            f"format={FORMAT!r})."
        )
    version = record.get("version", VERSION)
    if version != VERSION or isinstance(version, bool):
        raise ValueError(
            f"Reference file {path!r} has version={version!r:.40}; this tllm_tf reads "
            f"version {VERSION}. Re-run the `reference` stage with this version.")
    num_classes = record.get("num_classes")
    if not (isinstance(num_classes, int) and not isinstance(num_classes, bool)
            and 2 <= num_classes <= MAX_CLASSES):
        raise ValueError(
            f"Reference file {path!r}: num_classes must be an integer in "
            f"[2, {MAX_CLASSES}]. Received: {num_classes!r:.40}.")
    _check_accuracies(path, "per_class_accuracy", record.get("per_class_accuracy"),
                      num_classes)
    counts = record.get("num_samples")
    if counts is not None:
        if not isinstance(counts, list) or len(counts) != num_classes:
            raise ValueError(
                f"Reference file {path!r} is inconsistent: num_samples must be a list "
                f"of num_classes={num_classes} counts.")
        problem = json_checks.count_problem("num_samples", counts)
        if problem:
            raise ValueError(f"Reference file {path!r}: {problem}.")
    if record.get("provenance") is not None:
        _check_provenance_field(path, record["provenance"])
    rows = record.get("per_epoch_accuracy")
    if rows is not None:
        if not isinstance(rows, list):
            raise ValueError(
                f"Reference file {path!r}: per_epoch_accuracy must be a list of rows "
                f"(one per epoch). Received: {type(rows).__name__}.")
        for epoch, row in enumerate(rows):
            _check_accuracies(path, f"per_epoch_accuracy[{epoch}]", row, num_classes)
    return record


def _check_provenance_field(path, provenance):
    """`provenance` is a small dict of names to JSON scalars."""
    def scalar(value):
        return (value is None or isinstance(value, (bool, int))
                or (isinstance(value, float) and math.isfinite(value))
                or (isinstance(value, str) and len(value) <= MAX_PROVENANCE_TEXT))

    if not (isinstance(provenance, dict) and len(provenance) <= MAX_PROVENANCE_FIELDS
            and all(isinstance(key, str) and len(key) <= MAX_PROVENANCE_TEXT
                    and scalar(value) for key, value in provenance.items())):
        raise ValueError(
            f"Reference file {path!r}: provenance must be a dict of at most "
            f"{MAX_PROVENANCE_FIELDS} names to numbers, strings, booleans or null. "
            f"Received: {provenance!r:.80}.")


def check_provenance(path, provenance, num_samples=None):
    """Refuses a reference file made from another split, data set or model.

    The reference's per-class accuracies describe *its* held-out images and
    *its* student: compared with another split or another student, the
    differences are not the distillation's, and TLLM masks classes for them.

    Args:
        path: the reference file.
        provenance: what this run's reference should have been made from,
            as `save_reference` records it. A field the file does not record
            is not compared.
        num_samples: this run's held-out count per class, compared with the
            file's `num_samples` (which files of every version have).
            Defaults to `None` (not compared).

    Raises:
        ValueError: naming every field that differs, with both values; or
            if the file is not a valid reference file.

    A file without a provenance (written before it was recorded) is
    accepted, with a warning, once its counts agree.
    """
    record = _read_record(path)
    recorded = record.get("provenance")
    differences = []
    if recorded is not None:
        differences = [f"{name}: {recorded[name]!r} in the reference, {value!r} now"
                       for name, value in provenance.items()
                       if name in recorded and recorded[name] != value]
    counts = record.get("num_samples")
    if num_samples is not None and counts is not None:
        now = [int(n) for n in num_samples]
        if counts != now:
            differences.append(
                f"num_samples (held-out images per class): {counts} in the reference, "
                f"{now} now")
    if differences:
        raise ValueError(
            f"The reference {path!r} was made from another split, data set or student "
            "than this run's, so its per-class accuracies do not describe this run's "
            "held-out images:\n  " + "\n  ".join(differences) + "\nUse a reference made "
            "with this run's settings (the reference stage of a run with the same flags).")
    if recorded is None:
        logging.warning(
            "The reference %r does not record what it was made from (it predates "
            "that), so it cannot be checked against this run%s. Re-run the reference "
            "stage to record it.", path,
            "" if counts is None or num_samples is None
            else " beyond its held-out counts, which agree")


def load_reference(path):
    """Reads the final per-class accuracy of a reference file.

    Args:
        path: path of the `.json` file written by `save_reference`.

    Returns:
        A float64 array `(num_classes,)`, NaN where the file has `null`.

    Raises:
        ValueError: if the file is missing, over `MAX_FILE_BYTES`, not JSON,
            not a reference file, or has a field of the wrong type, length or
            range (a NaN count, an accuracy of 2); the message names the file
            and the field.
    """
    return atomic.floats_from_json(_read_record(path)["per_class_accuracy"])


def load_reference_history(path):
    """Reads the per-epoch accuracy of a reference file.

    Args:
        path: path of a `.json` file written with `per_epoch_accuracy`
            (e.g. by `ReferenceHistory`).

    Returns:
        A float64 array `(epochs, num_classes)`; row `i` is after epoch
        `i + 1`.

    Raises:
        MissingHistoryError: (`tllm_tf.reference.MissingHistoryError`, a
            `ValueError`) if the file holds no per-epoch accuracy.
        ValueError: if the file is not a valid reference file (as for
            `load_reference`).
    """
    record = _read_record(path)
    rows = record.get("per_epoch_accuracy")
    if not rows:
        raise MissingHistoryError(
            f"Reference file {path!r} has no per-epoch accuracy, which an "
            "epoch-matched comparison needs. Record it with "
            "`tllm_tf.ReferenceHistory` while training the reference."
        )
    return np.stack([atomic.floats_from_json(row) for row in rows])
