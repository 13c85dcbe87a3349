"""The mask log: one JSON line per mask update of `UndistillableClassCallback`.

Read by the report (`tllm_tf.analysis.reporting`, tools/report.py) and by a
later run's `--masked_classes_from` (`tllm_tf.pipeline.stage_inputs`). Imports
no TensorFlow.
"""

import json

import numpy as np

from tllm_tf import atomic
from tllm_tf import json_checks


def load_mask_history(path, skip_torn_last_line=False):
    """Reads the mask updates of a TLLM run, one dict per line of `path`.

    Args:
        path: a `mask_log.jsonl` written by `UndistillableClassCallback`.
        skip_torn_last_line: whether a last line cut short (no line end, not
            complete JSON) is left out: what a run killed while writing it
            leaves, and a resumed run repairs. Defaults to `False`: it is
            refused, as any damaged line is (a finished run's log has none).

    Returns:
        A list of dicts with `epoch` (1-based), `class_mask` (float array,
        0 = masked) and `num_undistillable_classes`, in file order. A paired
        look's record also has `paired_test`: `behind_counts`, `ahead_counts` and
        `num_samples` (int arrays), `p_values` (float array, NaN for a class
        not tested), and, when the log was written since 2026-12-05,
        `significance_per_look` and `correction`.

    Raises:
        ValueError: naming the file and the line, for a line that is not a
            mask update; naming the file, if it is not a regular file (a
            FIFO, a device) or is over `json_checks.MAX_LOG_BYTES`.
    """
    lines = json_checks.read_log_text(
        path, kind="mask log",
        remedy=("Train the tllm student again (delete its folder and re-run tools/train.py "
                "with the same flags).")).splitlines(keepends=True)
    history = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            history.append(_mask_update(json.loads(line)))
        except json.JSONDecodeError as error:
            if skip_torn_last_line and number == len(lines) and not line.endswith("\n"):
                continue
            raise _damaged(path, number, f"{error.msg}: column {error.colno}") from None
        except (KeyError, TypeError, ValueError) as error:
            problem = f"no {error}" if isinstance(error, KeyError) else str(error)
            raise _damaged(path, number, problem) from None
    return history


def _damaged(path, number, problem):
    return ValueError(
        f"{path}, line {number}, is not a mask update ({problem}): the log is damaged. "
        "Delete that line to read the other updates, or train the tllm student again "
        "(delete its folder and re-run tools/train.py with the same flags).")


def _mask_update(record):
    """One line's record as `load_mask_history` returns it."""
    mask = np.asarray(record["class_mask"], dtype=np.float64)
    entry = {"epoch": int(record["epoch"]), "class_mask": mask,
             "num_undistillable_classes": int(np.sum(mask <= 0))}
    if "behind_counts" in record:
        entry["paired_test"] = {
            **{key: np.asarray(record[key], dtype=np.int64)
               for key in ("behind_counts", "ahead_counts", "num_samples")},
            "p_values": atomic.floats_from_json(record["p_values"]),
            **{key: record[key] for key in ("significance_per_look", "correction")
               if key in record}}
    return entry
