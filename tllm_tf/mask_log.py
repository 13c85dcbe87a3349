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
        0 = masked) and `num_undistillable_classes`, in file order.
    """
    history = []
    with open(path) as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                mask = np.asarray(record["class_mask"], dtype=np.float64)
                history.append({"epoch": int(record["epoch"]), "class_mask": mask,
                                "num_undistillable_classes": int(np.sum(mask <= 0))})
    return history
