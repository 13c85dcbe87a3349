"""Per-class comparison of the reference, KD and TLLM students of a workdir."""

import json
import os

import numpy as np

from tllm_tf import stages

COLUMNS = ("reference", "student_kd", "student_tllm")


def _read_json(path):
    with open(path) as handle:
        return json.load(handle)


def load_results(workdir):
    """Reads each stage's test per-class accuracy and TLLM's last mask.

    Args:
        workdir: a `tools/train.py` workdir.

    Returns:
        A dict with `class_names`, `per_class` (stage -> array, NaN where a
        class has no test example), `accuracy` (stage -> overall test
        accuracy) and `final_mask` (array, or None without a TLLM run).
    """
    per_class, accuracy, class_names = {}, {}, None
    for stage in ("teacher",) + COLUMNS:
        path = os.path.join(workdir, stage, stages.PER_CLASS_FILE)
        if not os.path.exists(path):
            continue
        record = _read_json(path)
        class_names = record["class_names"]
        per_class[stage] = np.array(
            [np.nan if a is None else a for a in record["per_class_accuracy"]])
        accuracy[stage] = record["accuracy"]
    final_mask = None
    mask_log = os.path.join(workdir, "student_tllm", "mask_log.jsonl")
    if os.path.exists(mask_log):
        with open(mask_log) as handle:
            lines = [line for line in handle if line.strip()]
        if lines:
            final_mask = np.array(json.loads(lines[-1])["class_mask"])
    return {"class_names": class_names, "per_class": per_class,
            "accuracy": accuracy, "final_mask": final_mask}


def markdown_table(results):
    """Per-class test accuracy (%) table with the undistillable marks.

    `KD<ref` marks a class the KD student got wrong more often than the
    label-only reference on the test split; `masked` marks a class TLLM had
    stopped distilling at the end of training (chosen on the held-out split).
    """
    per_class = results["per_class"]
    shown = [stage for stage in COLUMNS if stage in per_class]
    header = ["class"] + shown + ["KD<ref", "masked"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    mask = results["final_mask"]
    for index, name in enumerate(results["class_names"] or []):
        cells = [name] + [f"{100 * per_class[s][index]:.1f}" for s in shown]
        worse = ("reference" in per_class and "student_kd" in per_class
                 and per_class["student_kd"][index] < per_class["reference"][index])
        cells.append("x" if worse else "")
        cells.append("x" if mask is not None and mask[index] <= 0 else "")
        rows.append("| " + " | ".join(cells) + " |")
    overall = ["**overall**"] + [f"{100 * results['accuracy'][s]:.1f}" for s in shown]
    rows.append("| " + " | ".join(overall + ["", ""]) + " |")
    return "\n".join(rows)


def summary_lines(results):
    """One line per stage with its overall test accuracy."""
    lines = []
    for stage, value in results["accuracy"].items():
        lines.append(f"{stage:>13}: test accuracy {100 * value:.2f}%")
    mask = results["final_mask"]
    if mask is not None:
        masked = [results["class_names"][i] for i in np.flatnonzero(mask <= 0)]
        lines.append(f"TLLM undistillable classes at the end: {masked or 'none'}")
    return lines
