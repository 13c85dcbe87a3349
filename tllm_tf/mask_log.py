"""The mask log: one JSON line per mask update of `UndistillableClassCallback`.

Read by the report (`tllm_tf.analysis.reporting`, tools/report.py) and by a
later run's `--masked_classes_from` (`tllm_tf.pipeline.stage_inputs`). Imports
no TensorFlow.
"""

import json

import numpy as np


def load_mask_history(path):
    """Reads the mask updates of a TLLM run, one dict per line of `path`.

    Args:
        path: a `mask_log.jsonl` written by `UndistillableClassCallback`.

    Returns:
        A list of dicts with `epoch` (1-based), `class_mask` (float array,
        0 = masked) and `num_undistillable_classes`, in file order. A paired
        look's record also has `paired_test`: `behind_counts`, `ahead_counts` and
        `num_samples` (int arrays), `p_values` (float array, NaN for a class
        not tested), and, when the log was written since 2026-12-05,
        `significance_per_look` and `correction`.
    """
    history = []
    with open(path) as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                mask = np.asarray(record["class_mask"], dtype=np.float64)
                entry = {"epoch": int(record["epoch"]), "class_mask": mask,
                         "num_undistillable_classes": int(np.sum(mask <= 0))}
                if "behind_counts" in record:
                    entry["paired_test"] = {
                        **{key: np.asarray(record[key], dtype=np.int64)
                           for key in ("behind_counts", "ahead_counts", "num_samples")},
                        "p_values": np.array([np.nan if p is None else p
                                              for p in record["p_values"]], dtype=np.float64),
                        **{key: record[key] for key in ("significance_per_look", "correction")
                           if key in record}}
                history.append(entry)
    return history
