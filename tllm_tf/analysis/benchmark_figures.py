"""The throughput benchmark's figures: paired ratios inside round groups, their medians and spreads.

Pure arithmetic on the images/s that the timers of `benchmark` measure, and its text (no
TensorFlow): each ratio is computed inside one round group, timed back to
back, and the figure is the median over the groups with its interquartile
range (docs/benchmarks.md).
"""

import numpy as np


def quartiles(values):
    """`(lower quartile, median, upper quartile)` of `values`, linearly interpolated."""
    return tuple(float(q) for q in np.percentile(np.asarray(values, np.float64), (25, 50, 75)))


def paired_summary(per_group, ratio_keys):
    """Medians over round groups of figures computed inside each group.

    Args:
        per_group: list of dicts of figures, one per round group, with the
            same keys.
        ratio_keys: the keys that are ratios; they also get `<key>_iqr`.

    Returns:
        A dict from every key to its median over the groups, plus
        `<key>_iqr` = `[lower quartile, upper quartile]` for each ratio key
        and `pairs`, the number of groups.
    """
    summary = {}
    for key in per_group[0]:
        lower, median, upper = quartiles([figures[key] for figures in per_group])
        summary[key] = median
        if key in ratio_keys:
            summary[f"{key}_iqr"] = [lower, upper]
    summary["pairs"] = len(per_group)
    return summary


def combined_limit(student_train, teacher_infer):
    """Images/s of a step doing nothing but one student update and one teacher pass.

    The two costs per image add up: `1 / (1 / student_train + 1 / teacher_infer)`.
    """
    return 1.0 / (1.0 / student_train + 1.0 / teacher_infer)


def distillation_figures(rates, callback_share, teacher_dtype=None):
    """The distillation benchmark's figures from the variants' images/s.

    Args:
        rates: dict with the images/s of `student_train`, `teacher_infer`,
            `keras_distiller` and `tllm_distiller`, and, with `teacher_dtype`,
            of `teacher_infer_<dtype>`, `keras_distiller_<dtype>` and
            `tllm_distiller_<dtype>` (the teacher as a copy in that dtype).
        callback_share: share of an epoch spent in the class-finding callback.
        teacher_dtype: e.g. `"bfloat16"`, or `None` (no 16-bit variants).

    Returns:
        `rates` with `limit`, `tllm_over_limit`, `tllm_over_keras` and
        `callback_share` added; with `store_distiller` and `store_build` (a
        distillation epoch from a `SoftLabelStore`, and building one epoch of
        it) in `rates`, also `store_over_student_train`, `store_over_keras`
        and `store_build_teacher_passes` (the build's time in teacher
        passes over the same images); with `teacher_dtype`, also `limit_<dtype>`
        (from the 16-bit teacher's pass), `tllm_<dtype>_over_limit_<dtype>`,
        `tllm_<dtype>_over_keras` (against Keras's Distiller as it ships,
        with the float32 teacher) and `tllm_<dtype>_over_keras_<dtype>` (both
        with the 16-bit teacher).
    """
    figures = dict(rates)
    figures["limit"] = combined_limit(figures["student_train"], figures["teacher_infer"])
    figures["tllm_over_limit"] = figures["tllm_distiller"] / figures["limit"]
    figures["tllm_over_keras"] = figures["tllm_distiller"] / figures["keras_distiller"]
    figures["callback_share"] = callback_share
    if "store_distiller" in figures:
        figures["store_over_student_train"] = (
            figures["store_distiller"] / figures["student_train"])
        figures["store_over_keras"] = figures["store_distiller"] / figures["keras_distiller"]
        # The build's time over a teacher pass's, on the same images.
        figures["store_build_teacher_passes"] = figures["teacher_infer"] / figures["store_build"]
    if teacher_dtype:
        tllm, limit = f"tllm_distiller_{teacher_dtype}", f"limit_{teacher_dtype}"
        figures[limit] = combined_limit(
            figures["student_train"], figures[f"teacher_infer_{teacher_dtype}"])
        figures[f"tllm_{teacher_dtype}_over_{limit}"] = figures[tllm] / figures[limit]
        figures[f"tllm_{teacher_dtype}_over_keras"] = figures[tllm] / figures["keras_distiller"]
        figures[f"tllm_{teacher_dtype}_over_keras_{teacher_dtype}"] = (
            figures[tllm] / figures[f"keras_distiller_{teacher_dtype}"])
    return figures


# How a round group turns a variant's rounds into one images/s figure.
GROUP_RATES = {
    # Images over the fastest round: load only slows a round down, so a
    # variant's undisturbed speed shows in one fast round of its pass.
    "best": lambda result: result.best_images_per_second,
    "median": lambda result: result.images_per_second,
}


def paired_distillation_figures(groups, teacher_dtype=None, group_rate="best"):
    """`distillation_figures` per round group, then their medians and spreads.

    Each group's rates come from its own rounds (`group_rate`); its limit
    from its own `student_train` and `teacher_infer`, so a change of load
    between groups cancels out of every ratio.

    Args:
        groups: round groups from `interleave`, with the variants that
            `distillation_figures` needs; `tllm_distiller` has timed its
            callback.
        teacher_dtype: e.g. `"bfloat16"`, or `None`. Defaults to `None`.
        group_rate: `"best"` (images over a variant's fastest round of the
            group) or `"median"` (over its median round); `GROUP_RATES`.
            Defaults to `"best"` (docs/benchmarks.md: how the two compare
            from run to run).

    Returns:
        `paired_summary` of the groups' figures: the keys of
        `distillation_figures` (medians over groups), `<ratio>_iqr` for every
        `*_over_*` ratio and `store_build_teacher_passes`, and `pairs`.
    """
    if group_rate not in GROUP_RATES:
        raise ValueError(f"Expected group_rate in {sorted(GROUP_RATES)}. "
                         f"Received: group_rate={group_rate!r}")
    rate = GROUP_RATES[group_rate]
    per_group = [
        distillation_figures(
            {name: rate(result) for name, result in group.items()},
            group["tllm_distiller"].callback_share, teacher_dtype)
        for group in groups
    ]
    return paired_summary(per_group, [key for key in per_group[0]
                                      if "_over_" in key or key == "store_build_teacher_passes"])


def _ratio_line(name, figures, width, note):
    lower, upper = figures[f"{name}_iqr"]
    return (f"{name:>{width}}: {figures[name]:9.3f}  [{lower:.3f}, {upper:.3f}]  {note}")


def _target_line(name, figures, width, target):
    lower, upper = figures[f"{name}_iqr"]
    verdict = ("met beyond the spread" if lower >= target else
               "missed beyond the spread" if upper < target else "within the spread")
    return _ratio_line(name, figures, width, f"(target >= {target}: {verdict})")


def report_lines(figures, best, *, targets, store_targets, max_callback_share,
                 teacher_dtype=None, store=False, clock="wall"):
    """The figures as text lines: rates, ratios against their targets, the callback's share.

    A target (an "at least") is met beyond the spread when the ratio's lower
    quartile reaches it, missed beyond it when the upper quartile does not.

    Args:
        figures: from `paired_distillation_figures`.
        best: variant name -> its best round's images/s.
        targets: ratio name -> the least it should be, for the float32 teacher;
            with `teacher_dtype` the 16-bit ratios get the same targets.
        store_targets: the same for the store's ratios (with `store`).
        max_callback_share: the most the callback's share of an epoch should be.
        teacher_dtype: the 16-bit teacher's dtype, if measured. Defaults to `None`.
        store: whether the store's variants ran. Defaults to `False`.
        clock: `"wall"` or `"cpu"`, for the unit. Defaults to `"wall"`.
    """
    rates = ["student_train", "teacher_infer", "limit", "keras_distiller", "tllm_distiller"]
    targets = dict(targets)
    dtype = teacher_dtype
    if dtype:
        rates += [f"teacher_infer_{dtype}", f"limit_{dtype}", f"keras_distiller_{dtype}",
                  f"tllm_distiller_{dtype}"]
        targets.update({f"tllm_{dtype}_over_limit_{dtype}": targets["tllm_over_limit"],
                        f"tllm_{dtype}_over_keras": targets["tllm_over_keras"]})
    width = max(map(len, rates + list(targets) + [f"tllm_{dtype}_over_keras_{dtype}"]
                    + (["store_build_teacher_passes"] if store else [])))
    unit = "images/s" if clock == "wall" else "images per CPU-second"
    lines = []
    for name in rates:
        best_round = f"  (best round {best[name]:.1f})" if name in best else ""
        lines.append(f"{name:>{width}}: {figures[name]:9.1f}  {unit}{best_round}")
    lines += [_target_line(name, figures, width, target) for name, target in targets.items()]
    if dtype:
        lines.append(_ratio_line(f"tllm_{dtype}_over_keras_{dtype}", figures, width,
                                 "(both with the 16-bit teacher)"))
    if store:
        lines += [f"{name:>{width}}: {figures[name]:9.1f}  {unit}  (best round {best[name]:.1f})"
                  for name in ("store_build", "store_distiller")]
        lines += [_target_line(name, figures, width, target)
                  for name, target in store_targets.items()]
        lines.append(_ratio_line("store_build_teacher_passes", figures, width,
                                 "(an epoch's build, in teacher passes over it)"))
        lines.append(f"{'store_bytes_per_1000':>{width}}: "
                     f"{figures['store_bytes_per_1000_images_epoch']:9.0f}  bytes per 1,000 "
                     "images and epoch")
    share = figures["callback_share"]
    verdict = "met" if share <= max_callback_share else "missed"
    lines.append(f"{'callback_share':>{width}}: {share:9.2%}  "
                 f"(target <= {max_callback_share:.0%}: {verdict})")
    return lines
