"""The reference student's per-class accuracy, as a JSON file.

TLLM compares the distilled student with a student trained on labels alone.
The reference stage writes its held-out per-class accuracy here; the
`UndistillableClassCallback` of a later run reads it back.
"""

import json
import math
import os
import tempfile

import numpy as np

FORMAT = "tllm_tf.reference"
VERSION = 1


def _to_json_list(values):
    return [None if math.isnan(v) else float(v) for v in np.asarray(values, float)]


def save_reference(path, per_class_accuracy, num_samples=None):
    """Writes a reference file atomically (temp file + rename).

    Args:
        path: destination `.json` path.
        per_class_accuracy: array `(num_classes,)`; NaN for a class with no
            held-out samples (written as `null`).
        num_samples: optional array `(num_classes,)` of held-out counts.
            Defaults to `None`.
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
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=directory, suffix=".tmp", delete=False
    ) as handle:
        json.dump(record, handle, indent=1)
        temporary = handle.name
    os.replace(temporary, path)


def load_reference(path):
    """Reads a reference file written by `save_reference`.

    Args:
        path: path of the `.json` file.

    Returns:
        A float64 array `(num_classes,)`, NaN where the file has `null`.

    Raises:
        ValueError: if the file is missing, not JSON, or not a reference file.
    """
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
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
