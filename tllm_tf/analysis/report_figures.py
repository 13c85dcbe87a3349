"""The report's figures: per class, where distillation hurt and what TLLM's mask changed.

Each takes a results dict (its keys: `workdir_results`, which reads it from a
workdir) and returns plain data, which `reporting` renders as markdown and JSON;
`class_share`, the arithmetic of `gain_by_mask`, takes arrays (the study uses it too).
`gain_by_mask` splits each TLLM student's gain over KD between the classes
it masked and the others; `detection_limit` says how large a per-class gap
the paired rule's test could find at its last look.

It imports no TensorFlow (tools/report.py reads a workdir without it).
"""

import numpy as np

from tllm_tf import atomic
from tllm_tf import identification
from tllm_tf.analysis.workdir_results import COLUMNS
from tllm_tf.pipeline import workdir_files


def evaluated_split(results):
    """The split the accuracies of `results` are on: `"test"`, or its `split` (`"held_out"`).

    Args:
        results: a results dict (a workdir's, or `tools/report.py`'s from
            `--model_paths`, which sets `split`).

    Returns:
        The split's name as `tools/evaluate.py`'s `--split` takes it.
    """
    return results.get("split", "test")


def split_name(results):
    """`evaluated_split` in words: `"test"` or `"held-out"`."""
    return evaluated_split(results).replace("_", "-")


def class_names_where(results, flags):
    """The names of the classes where `flags` is true.

    Args:
        results: a results dict.
        flags: `(num_classes,)` booleans.

    Returns:
        A list of class names, in class order.
    """
    return [results["class_names"][i] for i in np.flatnonzero(flags)]


def holding_reference_weights(results):
    """The student stages whose reference fallback gave them the label-only reference's weights.

    Their test figures are then the reference's (`reference_check.json` keeps their own).
    """
    return [stage for stage, check in results.get("reference_checks", {}).items()
            if check["kept"] == "reference"]


def below_baseline(results):
    """Per compared model, the classes it got wrong more often than the baseline."""
    models = results["models"]
    per_class = results["per_class"]
    return {model: class_names_where(results, per_class[model] < per_class[models[0]])
            for model in models[1:]}


def undistillable_classes(results):
    """The undistillable classes and where they come from.

    TLLM's final mask when there is one (chosen on the held-out split during
    training); otherwise the classes where the first distilled model is below
    the baseline on the evaluated split.

    Returns:
        `(names, source)`; `source` is `None` with fewer than two models and
        no mask.
    """
    if results["final_mask"] is not None:
        return class_names_where(results, results["final_mask"] <= 0), "tllm_mask"
    models = results["models"]
    if len(models) < 2:
        return [], None
    return below_baseline(results)[models[1]], f"{models[1]} below {models[0]}"


def class_share(per_class, num_samples, classes):
    """The part of overall accuracy that some classes contribute.

    Args:
        per_class: `(..., num_classes)` per-class accuracy (NaN, for a class
            with no example, counts as 0).
        num_samples: `(num_classes,)` examples of each class.
        classes: `(..., num_classes)` booleans, the classes counted.

    Returns:
        `(...)`: the counted classes' accuracy weighted by their share of
        the examples. The parts of complementary sets of classes add up to
        the overall accuracy.
    """
    weights = np.asarray(num_samples, np.float64)
    return (np.nan_to_num(per_class) * weights * classes).sum(axis=-1) / weights.sum()


def gain_by_mask(results):
    """Each TLLM student's gain over the KD student, split by TLLM's final mask.

    Masking a class can give it back what KD cost it, and can also take
    accuracy from the classes it is confused with (docs/study.md, "Where the
    gain comes from"). The two parts show which happened.

    Returns:
        `{stage: {"masked": ..., "not_masked": ..., "num_masked": n}}`, the
        parts of the student minus KD in overall test accuracy (0-1) from
        the classes masked at the end and from the others; empty without a
        KD student, a masked class or per-class counts.
    """
    kd = workdir_files.student_stage("distilled")
    final_mask, counts = results["final_mask"], results["num_samples"]
    if kd not in results["per_class"] or final_mask is None or counts is None:
        return {}
    masked = np.asarray(final_mask) <= 0
    if not masked.any():
        return {}
    per_class = results["per_class"]
    gains = {}
    for stage in COLUMNS[2:]:
        if stage in per_class:
            difference = per_class[stage] - per_class[kd]
            gains[stage] = {"masked": float(class_share(difference, counts, masked)),
                            "not_masked": float(class_share(difference, counts, ~masked)),
                            "num_masked": int(masked.sum())}
    return gains


def detection_limit(results):
    """What the paired rule could see at its last look, per class.

    A class is found behind when the student is behind the reference on at
    least `smallest_gap` more of its discordant held-out images than it is
    ahead (`identification.smallest_detectable_gap`, at the level one class
    alone must reach: the look's significance over the classes it tested,
    under Holm's or Benjamini-Hochberg's correction). A per-class harm smaller than
    that, in points of the class's held-out images, is below what the rule
    can tell from noise; a larger held-out split lowers it.

    Returns:
        None when no look of the paired rule recorded its level (the unpaired
        rule, or a mask log from before 2026-12-05). Otherwise a dict:
        `epoch`, `significance_per_look`, `correction`, `level` (what one
        class's p-value must reach), and `classes`: one
        dict per class with `name`, `held_out_images`, `discordant`,
        `student_minus_reference` and `smallest_harm` (fractions of the
        class's held-out images; `smallest_harm` None where no gap suffices).
    """
    looks = [r for r in results["mask_history"]
             if "significance_per_look" in r.get("paired_test", {})]
    if not looks:
        return None
    epoch, test = looks[-1]["epoch"], looks[-1]["paired_test"]
    images = test["num_samples"]
    discordant = test["behind_counts"] + test["ahead_counts"]
    level = test["significance_per_look"]
    if test["correction"] != "none":
        # The classes the look tested (the rule leaves a p-value out for the others).
        level /= max(1, int(np.sum(~np.isnan(test["p_values"]))))
    smallest_gap = identification.smallest_detectable_gap(discordant, level)
    with np.errstate(invalid="ignore", divide="ignore"):
        smallest_harm = smallest_gap / images
        gap = (test["ahead_counts"] - test["behind_counts"]) / images
    names = results["class_names"] or [str(c) for c in range(len(images))]
    return {"epoch": epoch, "significance_per_look": test["significance_per_look"],
            "correction": test["correction"], "level": level,
            "classes": [{"name": name, "held_out_images": int(images[c]),
                         "discordant": int(discordant[c]),
                         "student_minus_reference": atomic.json_floats([gap[c]])[0],
                         "smallest_harm": atomic.json_floats([smallest_harm[c]])[0]}
                        for c, name in enumerate(names)]}
