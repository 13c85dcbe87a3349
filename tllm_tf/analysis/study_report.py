"""The accuracy study's report: Markdown tables, JSON and a plot of its summaries.

Renders what `tllm_tf.analysis.study_summary.summarise` computes from the
records `tllm_tf.analysis.study.run_study` wrote (no TensorFlow): per setting
(student, teacher), each arm's accuracy and paired differences, its masks,
false alarms, where its gain over KD comes from and what it did for the
classes KD hurts beyond noise; and which finished arms no table shows.
"""

import collections
import os

import numpy as np

from tllm_tf import atomic
from tllm_tf.analysis import study_stats
from tllm_tf.analysis import study_summary
from tllm_tf.analysis.study_arms import KD_ARM, LABELS_ARM, TEACHER_ARM
from tllm_tf.analysis.study_summary import FALSE_ALARM_BOUND


PLOT_FILE = "study_kd_minus_labels.png"


def _points(difference, scale=100.0):
    if difference["seeds"] < 2:
        spread = "(one seed: no interval)"
    elif study_stats.has_no_spread(difference["std"]):  # No width would read as certainty.
        spread = "± 0.00 (every seed alike: no interval)"
    else:
        spread = (f"± {scale * difference['std']:.2f} [{scale * difference['ci_low']:+.2f}, "
                  f"{scale * difference['ci_high']:+.2f}]")
    return (f"{scale * difference['mean']:+.2f} {spread} "
            f"{difference['better']}/{difference['worse']}")


def _seeds_text(seeds):
    """`0-9, 10` for a run of seeds, `0, 2, 5 (3)` otherwise."""
    if len(seeds) > 1 and list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}-{seeds[-1]}, {len(seeds)}"
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"seeds {', '.join(map(str, seeds))} ({len(seeds)})"


def _accuracy(summary, scale=100.0):
    return f"{scale * summary['mean']:.2f} ± {scale * summary['std']:.2f}"


def _teacher_accuracy(summary):
    """The teachers' accuracy, or why there is none: records that hold no teacher's run."""
    if np.isnan(summary["mean"]):  # `study_summary` gives NaN for a setting with no teacher run.
        return "not in these records"
    return _accuracy(summary)


def _false_alarm_cell(entry, seeds):
    cell = f"{100 * entry['not_hurt_masked_update_rate']:.1f}%"
    low, high = entry["not_hurt_masked_update_rate_ci"]
    if not np.isfinite(high):  # One seed: no interval.
        return cell
    return (f"{cell} [{100 * low:.1f}, {100 * high:.1f}]; "
            f"{entry['seeds_above_false_alarm_bound']}/{seeds} seeds > "
            f"{100 * FALSE_ALARM_BOUND:.0f}%")


def _percent(rate):
    return "-" if rate is None else f"{100 * rate:.1f}%"


def _after_holm(setting):
    """The hurt classes that survive Holm's correction across classes (summaries since
    2026-12-06 carry them)."""
    if "hurt_classes_holm" not in setting:
        return ""
    return ("; of them, after Holm's correction across the classes (paired t-test, 5% for the "
            "whole table): " + (", ".join(setting["hurt_classes_holm"]) or "none"))


def markdown(summaries):
    """The report's tables as Markdown text."""
    lines = []
    for setting in summaries:
        seeds = setting["seeds"]
        lines += [
            f"### {setting['student']} student, {setting['teacher']} teacher "
            f"({_seeds_text(seeds)})", "",
            f"Teacher {_teacher_accuracy(setting['teacher_accuracy'])}; labels only "
            f"{_accuracy(setting['labels'])}; KD {_accuracy(setting['kd'])}; KD minus labels "
            f"{_points(setting['kd_minus_labels'])} (mean ± std [95% CI] seeds better/worse, "
            "points).", "",
            "Classes KD hurts beyond noise (paired 95% CI below 0, each class on its own, no "
            "correction across classes): "
            + (", ".join(setting["hurt_classes"]) or "none") + _after_holm(setting) + ".", "",
        ]
        paired, rows = [], []
        for arm, entry in setting["arms"].items():
            if entry["baseline"] != KD_ARM:
                on_hurt = entry.get("hurt_classes_minus_baseline")
                paired.append(
                    f"- {arm} minus {entry['baseline']}: {_points(entry['minus_baseline'])}"
                    + (f"; on the classes KD hurt (that seed): {_points(on_hurt)}"
                       if on_hurt else ""))
            if "hurt_classes" in entry:
                paired.append(f"- {arm} minus labels: {_points(entry['minus_labels'])}; "
                              "classes it hurts beyond noise (each class on its own): "
                              + (", ".join(entry["hurt_classes"]) or "none"))
            hurt = entry.get("hurt_classes_minus_kd")
            rows.append([arm, _accuracy(entry["accuracy"]), _points(entry["minus_kd"]),
                         _points(entry["minus_labels"]), f"{entry['masked_at_end']:.1f}",
                         f"{entry['flips_per_100_updates']:.1f}",
                         _false_alarm_cell(entry, len(seeds)),
                         _percent(entry["helped_masked_update_rate"]),
                         _points(hurt) if hurt else "-"])
        lines += [] if not rows else _markdown_table(  # A study of kd alone has no arm.
            ["arm", "test accuracy", "minus KD", "minus labels", "classes masked at end",
             "mask changes / class / 100 updates",
             "updates masking a class KD did not hurt (that seed): mean [95% CI]; seeds above "
             f"{100 * FALSE_ALARM_BOUND:.0f}%",
             "updates masking a class KD helps beyond noise",
             "on the classes KD hurt (that seed): minus KD"], rows)
        handed_over = setting.get("handed_over_to_labels")
        if handed_over:
            lines += ["", f"Seeds (of {len(seeds)}) whose student is the label-only one, "
                      "handed over by the reference's fallback (--reference_fallback): "
                      + ", ".join(f"{arm} {count}" for arm, count in handed_over.items()) + "."]
        timed = setting.get("minutes_per_run")
        if timed:
            lines += ["", "Wall time per run, mean over the seeds (minutes): " + ", ".join(
                f"{arm} {minutes:.2f}" for arm, minutes in timed.items()) + "."]
        if paired:
            lines += ["", "Arms against their own baseline, paired by seed (a TLLM arm of "
                      "another loss against that loss without masking; a second pass against "
                      "its first):", *paired]
        per_class = setting["kd_minus_labels_per_class"]
        rows = []
        for index, name in enumerate(setting["class_names"]):
            difference = {key: (value[index] if isinstance(value, list) else value)
                          for key, value in per_class.items()}
            rows.append([name, _points(difference), *(
                f"{entry['masked_at_end_per_class'][index]:.0%}"
                for entry in setting["arms"].values())])
        lines += ["", *_markdown_table(
            ["class", "KD minus labels (points)",
             *(f"{arm}: masked at end" for arm in setting["arms"])], rows)]
        lines += _masked_by_harm_lines(setting)
        lines += _gain_by_mask_lines(setting)
        lines += _recovery_table(setting)
        lines.append("")
    return "\n".join(lines)


def _markdown_table(header, rows):
    """Lines of a Markdown table: the header, its rule, one line per row of cells."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def _masked_by_harm_lines(setting):
    """Lines saying how often each masking arm names a class, by KD's harm to it that seed."""
    named = {arm: entry["masked_by_harm"] for arm, entry in setting["arms"].items()
             if entry.get("masked_by_harm")}
    if not named:
        return []
    bands = next(iter(named.values()))
    return ["", "Classes masked at the end, by KD minus labels on that class in that seed (test "
            "split, points; (seed, class) pairs in brackets):", "",
            *_markdown_table(
                ["arm", *(f"({100 * band['low']:+.0f}, {100 * band['high']:+.0f}] "
                          f"({band['pairs']})" for band in bands)],
                [[arm, *(_percent(band["masked"]) for band in arm_bands)]
                 for arm, arm_bands in named.items()])]


def _gain_by_mask_lines(setting):
    """Lines saying where each masking arm's gain over KD comes from."""
    split = {arm: entry["gain_by_mask"] for arm, entry in setting["arms"].items()
             if entry.get("gain_by_mask")}
    if not split:
        return []

    def cell(when_masked, when_not, seeds_masked, seeds):
        return " / ".join("-" if value is None else f"{100 * value:+.1f}"
                          for value in (when_masked, when_not)) + f" ({seeds_masked}/{seeds})"

    seeds = len(setting["seeds"])
    return ["", "Where each masking arm's gain over KD comes from (points of overall accuracy, "
            "paired by seed: from the classes it masked at its end, from the others; and the "
            "label-only student minus KD on those masked classes):", *(
                f"- {arm}: masked {_points(gain['masked'])}; others "
                f"{_points(gain['not_masked'])}; labels on the masked "
                f"{_points(gain['labels_on_masked'])}" for arm, gain in split.items()),
            "", "Per class, minus KD (points) in the seeds where the arm masked it at its end / "
            "in the others (seeds masked/all):", "",
            *_markdown_table(
                ["arm", *setting["class_names"]],
                [[arm, *(cell(*values, seeds) for values in zip(
                    gain["per_class_when_masked"], gain["per_class_when_not_masked"],
                    gain["seeds_masked_per_class"]))] for arm, gain in split.items()])]


def _recovery_table(setting):
    """Lines of the table of what each masking arm did for the classes KD hurts."""
    recovering = {arm: entry["hurt_class_recovery"] for arm, entry in setting["arms"].items()
                  if entry.get("hurt_class_recovery")}
    if not recovering:
        return []
    rows = [[name, f"{100 * accuracy['labels']:.1f}", f"{100 * accuracy['kd']:.1f}", arm,
             f"{100 * recovery[name]['accuracy']:.1f}", _points(recovery[name]["minus_kd"]),
             _points(recovery[name]["minus_labels"])]
            for name, accuracy in setting["hurt_class_accuracy"].items()
            for arm, recovery in recovering.items()]
    return ["", "The classes KD hurts beyond noise, arm by arm (accuracy on the class, %; "
            "differences in points; recovered = minus KD above 0 beyond noise):", "",
            *_markdown_table(
                ["class", "labels", "KD", "arm", "accuracy", "minus KD", "minus labels"], rows)]


def _panels(summaries):
    """`(title, per-class difference)` of KD, and of every other loss, minus labels."""
    for setting in summaries:
        where = (f"{setting['student']} student, {setting['teacher']} teacher, "
                 f"{len(setting['seeds'])} seeds")
        yield f"KD minus labels per class: {where}", setting["kd_minus_labels_per_class"]
        for arm, entry in setting["arms"].items():
            if "minus_labels_per_class" in entry:
                yield f"{arm} minus labels per class: {where}", entry["minus_labels_per_class"]


def plot(summaries, path):
    """Per class, each distilled student minus labels (95% CI): KD's and other losses'."""
    import matplotlib  # Imported here: only the plot needs it.

    matplotlib.use("Agg")
    from matplotlib import pyplot

    panels = list(_panels(summaries))
    class_names = summaries[0]["class_names"]
    figure, axes = pyplot.subplots(len(panels), 1, figsize=(9, 2.6 * len(panels)),
                                   squeeze=False)
    for axis, (title, per_class) in zip(axes[:, 0], panels):
        mean = 100 * np.array(per_class["mean"])
        low, high = 100 * np.array(per_class["ci_low"]), 100 * np.array(per_class["ci_high"])
        colours = ["tab:red" if h < 0 else "tab:blue" for h in high]
        positions = np.arange(len(mean))
        axis.bar(positions, mean, color=colours)
        axis.errorbar(positions, mean, yerr=[mean - low, high - mean], fmt="none", color="k")
        axis.axhline(0, color="k", linewidth=0.8)
        axis.set_xticks(positions, class_names, fontsize=7)
        axis.set_ylabel("points")
        axis.set_title(f"{title} (red: CI below 0)", fontsize=9)
    figure.tight_layout()
    with atomic.atomic_open(path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=90)
    pyplot.close(figure)


def left_out(records, summaries):
    """Lines naming the finished arms no table shows, and why.

    A setting needs the `kd` arm and the label-only runs of a seed; an arm is
    compared on the seeds where both are, and only when it finished on all of
    them.
    """
    shown = {(s["student"], s["teacher"]): set(s["arms"]) | {KD_ARM} for s in summaries}
    finished = collections.defaultdict(set)
    for record in records:
        if record["arm"] not in (LABELS_ARM, TEACHER_ARM):
            finished[(record["student"], record["teacher"])].add(record["arm"])
    lines = []
    for (student, teacher), arms in sorted(finished.items()):
        missing = sorted(arms - shown.get((student, teacher), set()))
        if (student, teacher) not in shown:
            lines.append(f"- {student} student, {teacher} teacher: no table ({', '.join(missing)}"
                         " finished): it needs the kd arm and the label-only runs of a seed.")
        elif missing:
            lines.append(f"- {student} student, {teacher} teacher: {', '.join(missing)} left out: "
                         "not finished on every seed the table compares.")
    return lines


def write(records, results_dir, command, baselines=None):
    """Writes study.md, study.json and the per-class plot of every loss.

    Args:
        records: the result records to report.
        results_dir: where the files go.
        command: the command line that made them, for the report's head.
        baselines: as `study_summary.summarise`'s. Defaults to `None`.

    Returns:
        `(text, paths)`: the Markdown, and the paths of the files written.
    """
    summaries = study_summary.summarise(records, baselines)
    omitted = left_out(records, summaries)
    text = (f"# Accuracy study\n\nGenerated by `{command}` from {len(records)} runs.\n\n"
            + ("Not in the tables:\n" + "\n".join(omitted) + "\n\n" if omitted else "")
            + markdown(summaries))
    markdown_path, json_path = (os.path.join(results_dir, name)
                                for name in ("study.md", "study.json"))
    paths = [markdown_path, json_path]
    if summaries:
        text += f"\n![KD minus labels per class]({PLOT_FILE})\n"
        paths.append(os.path.join(results_dir, PLOT_FILE))
        plot(summaries, paths[-1])
    atomic.write_json(json_path, {"command": command, "settings": summaries})
    with atomic.atomic_open(markdown_path) as stream:
        stream.write(text)
    return text, paths
