"""The accuracy study's report: tables, JSON and plots from its result records.

Reads the records `tllm_tf.analysis.study.run_study` wrote (no TensorFlow). For each
setting (student, teacher): every arm's test accuracy over seeds; each arm
minus the label-only student and minus KD, paired by seed (mean, std, 95%
confidence interval, seeds better/worse); per class, KD minus labels with
its interval (the classes KD hurts beyond noise); and for each TLLM arm which
classes it masked, how often, how often the mask flipped, how often it
masked a class that KD did not hurt, where its gain over KD comes from (the
classes it masked, the others), and what it did for each class KD hurts
beyond noise (minus KD and minus labels on that class).
"""

import collections
import functools
import json
import os

import numpy as np

from tllm_tf import atomic
from tllm_tf.analysis import reporting, study_stats

LABELS_ARM = "labels"
KD_ARM = "kd"
# `<loss>_tllm`: TLLM on top of the distillation loss `<loss>` (tllm_tf.analysis.study.ARMS).
TLLM_SUFFIX = "_tllm"


def _by_setting(records):
    labels = {(r["seed"], r["student"]): r for r in records if r["arm"] == LABELS_ARM}
    settings = collections.defaultdict(lambda: collections.defaultdict(dict))
    for record in records:
        if record["arm"] in (LABELS_ARM, "teacher"):
            continue
        settings[(record["student"], record["teacher"])][record["arm"]][record["seed"]] = record
    teachers = {(r["seed"], r["teacher"]): r["accuracy"] for r in records if r["arm"] == "teacher"}
    return labels, settings, teachers


def _baseline(arm, arms, baselines):
    """The student an arm is compared with, if it ran on every seed of KD.

    `baselines[arm]` when given (a second pass: its first), `<loss>` for
    `<loss>_tllm`, else KD.
    """
    loss = arm[:-len(TLLM_SUFFIX)] if arm.endswith(TLLM_SUFFIX) else None
    complete = lambda name: set(arms[KD_ARM]) <= set(arms.get(name, {}))  # noqa: E731
    for candidate in (baselines.get(arm), loss):
        if candidate and complete(candidate):
            return candidate
    return KD_ARM


def _summary(values):
    values = np.asarray(values, float)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1
            else 0.0}


def _difference(a, b):
    stats = study_stats.paired_difference(a, b)
    return {key: (value.tolist() if isinstance(value, np.ndarray) else
                  (int(value) if isinstance(value, (np.integer,)) else float(value)))
            for key, value in stats.items()}


def _mean_on_hurt_classes(per_class, seed_hurt):
    """Per seed, the mean accuracy over the classes KD hurt in that seed."""
    return np.array([accuracy[hurt].mean() for accuracy, hurt in zip(per_class, seed_hurt)])


def _gain_by_mask(arm_pc, kd_pc, labels_pc, masked):
    """An arm's gain over KD, split between the classes it masked at its end and the others.

    Per seed, the mean over classes of the per-class difference, counting only the classes in
    one part: the two parts add up to the arm minus KD in overall accuracy on a test split with
    as many images of each class (Fashion-MNIST's). The label-only student minus KD on the same
    masked classes is what masking them could give back if nothing else changed.
    """
    def part(per_class, where):  # As many test images of each class.
        return reporting.class_share(per_class, np.ones(masked.shape[1]), where)

    def class_means(where):  # Per class, minus KD averaged over the seeds in `where`.
        counts = where.sum(axis=0)
        sums = ((arm_pc - kd_pc) * where).sum(axis=0)
        return [float(total / count) if count else None for total, count in zip(sums, counts)]

    return {"masked": _difference(part(arm_pc, masked), part(kd_pc, masked)),
            "not_masked": _difference(part(arm_pc, ~masked), part(kd_pc, ~masked)),
            "labels_on_masked": _difference(part(labels_pc, masked), part(kd_pc, masked)),
            "per_class_when_masked": class_means(masked),
            "per_class_when_not_masked": class_means(~masked),
            "seeds_masked_per_class": masked.sum(axis=0).tolist()}


# The bound on false alarms: a class that is not behind masked on at most 5% of updates.
FALSE_ALARM_BOUND = 0.05
# Bands of KD minus labels on one class in one seed (test split, accuracy), worst first.
HARM_BANDS = ((-1.0, -0.10), (-0.10, -0.05), (-0.05, -0.02), (-0.02, 0.02), (0.02, 1.0))


def _false_alarms(masked_rate, seed_hurt):
    """How often an arm masks a class the KD student is not below labels on, in that seed.

    Per seed, the share of updates masking such a class (test split: masking it is a false
    alarm), then its mean over the seeds with a 95% interval (Student's t, clipped at 0) and
    the seeds above the issue's bound: ten seeds' mean alone cannot say whether the bound holds.
    The interval is clipped to [0, 1], the range of a rate.
    """
    per_seed = np.array([rate[~hurt_here].mean() if (~hurt_here).any() else 0.0
                         for rate, hurt_here in zip(masked_rate, seed_hurt)])
    spread = study_stats.paired_difference(per_seed, np.zeros_like(per_seed))
    return {"not_hurt_masked_update_rate": float(per_seed.mean()),
            "not_hurt_masked_update_rate_ci": [max(0.0, float(spread["ci_low"])),
                                               float(np.minimum(1.0, spread["ci_high"]))],
            "seeds_above_false_alarm_bound": int((per_seed > FALSE_ALARM_BOUND).sum())}


def _masked_by_harm(kd_minus_labels, masked):
    """How often an arm ends with a class masked, by how much KD hurt it in that seed."""
    bands = []
    for low, high in HARM_BANDS:
        inside = (kd_minus_labels > low) & (kd_minus_labels <= high)
        bands.append({"low": low, "high": high, "pairs": int(inside.sum()),
                      "masked": float(masked[inside].mean()) if inside.any() else None})
    return bands


def summarise(records, baselines=None):
    """Summaries of every setting; see the module docstring.

    Args:
        records: result records of `run_study` (dicts).
        baselines: dict from an arm to the arm it is also compared with, paired by
            seed (`study.paired_baselines()`: a second pass and its first). Defaults
            to none: `<loss>_tllm` against `<loss>`, every other arm against KD only.

    Returns:
        A list of per-setting dicts, JSON-ready.
    """
    labels, settings, teachers = _by_setting(records)
    summaries = []
    for (student, teacher), arms in sorted(settings.items()):
        if KD_ARM not in arms:
            continue
        seeds = sorted(seed for seed in arms[KD_ARM] if (seed, student) in labels)
        if not seeds:
            continue
        label_records = [labels[(seed, student)] for seed in seeds]
        kd_records = [arms[KD_ARM][seed] for seed in seeds]
        class_names = kd_records[0]["class_names"]
        labels_acc = np.array([r["accuracy"] for r in label_records])
        kd_acc = np.array([r["accuracy"] for r in kd_records])
        labels_pc = np.array([r["per_class_accuracy"] for r in label_records], float)
        kd_pc = np.array([r["per_class_accuracy"] for r in kd_records], float)
        hurt, not_hurt = study_stats.significantly_hurt(kd_pc, labels_pc)
        # Classes KD helps beyond noise over the seeds (paired CI above 0): not
        # behind, whatever one seed's test split says. Masking them is a false alarm.
        helped, _ = study_stats.significantly_hurt(labels_pc, kd_pc)
        # Per seed, the classes the KD student is below the label-only student on.
        seed_hurt = kd_pc < labels_pc
        setting = {
            "student": student, "teacher": teacher, "seeds": seeds, "class_names": class_names,
            "teacher_accuracy": _summary([teachers[(s, teacher)] for s in seeds
                                          if (s, teacher) in teachers] or [np.nan]),
            "labels": _summary(labels_acc),
            "kd": _summary(kd_acc),
            "kd_minus_labels": _difference(kd_acc, labels_acc),
            "kd_minus_labels_per_class": _difference(kd_pc, labels_pc),
            "hurt_classes": [class_names[c] for c in np.flatnonzero(hurt)],
            "hurt_class_accuracy": {class_names[c]: {"labels": float(labels_pc[:, c].mean()),
                                                     "kd": float(kd_pc[:, c].mean())}
                                    for c in np.flatnonzero(hurt)},
            "arms": {},
        }
        for arm, by_seed in sorted(arms.items()):
            if arm == KD_ARM or not all(seed in by_seed for seed in seeds):
                continue
            arm_records = [by_seed[seed] for seed in seeds]
            arm_acc = np.array([r["accuracy"] for r in arm_records])
            arm_pc = np.array([r["per_class_accuracy"] for r in arm_records], float)
            masks = [study_stats.mask_matrix(r["masks"]) for r in arm_records]
            final = np.array([m[-1] if len(m) else np.zeros(len(class_names), bool)
                              for m in masks])
            # Records written before "masked_from_start" existed count from all distilled.
            flips = np.array([
                study_stats.flips_per_100_updates(m, r.get("masked_from_start", ())) if len(m)
                else np.zeros(len(class_names)) for m, r in zip(masks, arm_records)])
            masked_rate = np.array([m.mean(axis=0) if len(m) else np.zeros(len(class_names))
                                    for m in masks])
            baseline = _baseline(arm, arms, baselines or {})
            base_acc = np.array([arms[baseline][seed]["accuracy"] for seed in seeds])
            base_pc = np.array([arms[baseline][seed]["per_class_accuracy"] for seed in seeds],
                               float)
            entry = {
                "accuracy": _summary(arm_acc),
                "baseline": baseline,
                "minus_baseline": _difference(arm_acc, base_acc),
                "minus_kd": _difference(arm_acc, kd_acc),
                "minus_labels": _difference(arm_acc, labels_acc),
                "masked_at_end_per_class": final.mean(axis=0).tolist(),
                "masked_at_end": float(final.sum(axis=1).mean()),
                "flips_per_100_updates": float(flips.mean()),
                "masked_update_rate_per_class": masked_rate.mean(axis=0).tolist(),
            }
            entry.update(_false_alarms(masked_rate, seed_hurt))
            entry["helped_masked_update_rate"] = (
                float(masked_rate[:, helped].mean()) if helped.any() else None)
            if seed_hurt.any(axis=1).all():
                on_hurt = functools.partial(_mean_on_hurt_classes, seed_hurt=seed_hurt)
                entry["hurt_classes_minus_kd"] = _difference(on_hurt(arm_pc), on_hurt(kd_pc))
                entry["hurt_classes_minus_baseline"] = _difference(
                    on_hurt(arm_pc), on_hurt(base_pc))
            if any(r["masks"] for r in arm_records):
                # A masking arm: where its gain comes from, which classes it names, and what it
                # did for each class KD hurts beyond noise.
                entry["gain_by_mask"] = _gain_by_mask(arm_pc, kd_pc, labels_pc, final)
                entry["masked_by_harm"] = _masked_by_harm(kd_pc - labels_pc, final)
                entry["hurt_class_recovery"] = {
                    class_names[c]: {"accuracy": float(arm_pc[:, c].mean()),
                                     "minus_kd": _difference(arm_pc[:, c], kd_pc[:, c]),
                                     "minus_labels": _difference(arm_pc[:, c], labels_pc[:, c])}
                    for c in np.flatnonzero(hurt)}
            if f"{arm}{TLLM_SUFFIX}" in arms:  # Another loss, distilled on every class.
                loss_hurt, _ = study_stats.significantly_hurt(arm_pc, labels_pc)
                entry["minus_labels_per_class"] = _difference(arm_pc, labels_pc)
                entry["hurt_classes"] = [class_names[c] for c in np.flatnonzero(loss_hurt)]
            setting["arms"][arm] = entry
        # Wall time of the arms whose records carry it (studies before 2026-12-03 did not).
        setting["minutes_per_run"] = {}
        for arm, by_seed in sorted(arms.items()):
            seconds = [by_seed[seed].get("seconds") for seed in seeds if seed in by_seed]
            if len(seconds) == len(seeds) and None not in seconds:
                setting["minutes_per_run"][arm] = float(np.mean(seconds)) / 60.0
        summaries.append(setting)
    return summaries


def _points(difference, scale=100.0):
    return (f"{scale * difference['mean']:+.2f} ± {scale * difference['std']:.2f} "
            f"[{scale * difference['ci_low']:+.2f}, {scale * difference['ci_high']:+.2f}] "
            f"{difference['better']}/{difference['worse']}")


def _accuracy(summary, scale=100.0):
    return f"{scale * summary['mean']:.2f} ± {scale * summary['std']:.2f}"


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


def markdown(summaries):
    """The report's tables as Markdown text."""
    lines = []
    for setting in summaries:
        seeds = setting["seeds"]
        lines += [
            f"### {setting['student']} student, {setting['teacher']} teacher "
            f"(seeds {seeds[0]}-{seeds[-1]}, {len(seeds)})", "",
            f"Teacher {_accuracy(setting['teacher_accuracy'])}; labels only "
            f"{_accuracy(setting['labels'])}; KD {_accuracy(setting['kd'])}; KD minus labels "
            f"{_points(setting['kd_minus_labels'])} (mean ± std [95% CI] seeds better/worse, "
            "points).", "",
            "Classes KD hurts beyond noise (paired 95% CI below 0): "
            + (", ".join(setting["hurt_classes"]) or "none") + ".", "",
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
                              "classes it hurts beyond noise: "
                              + (", ".join(entry["hurt_classes"]) or "none"))
            hurt = entry.get("hurt_classes_minus_kd")
            rows.append([arm, _accuracy(entry["accuracy"]), _points(entry["minus_kd"]),
                         _points(entry["minus_labels"]), f"{entry['masked_at_end']:.1f}",
                         f"{entry['flips_per_100_updates']:.1f}",
                         _false_alarm_cell(entry, len(seeds)),
                         _percent(entry["helped_masked_update_rate"]),
                         _points(hurt) if hurt else "-"])
        lines += _markdown_table(
            ["arm", "test accuracy", "minus KD", "minus labels", "classes masked at end",
             "mask changes / class / 100 updates",
             "updates masking a class KD did not hurt (that seed): mean [95% CI]; seeds above "
             f"{100 * FALSE_ALARM_BOUND:.0f}%",
             "updates masking a class KD helps beyond noise",
             "on the classes KD hurt (that seed): minus KD"], rows)
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
        if record["arm"] not in (LABELS_ARM, "teacher"):
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
    """Writes study.md, study.json and the per-class plot of every loss; returns the Markdown.

    `baselines`: as `summarise`'s.
    """
    summaries = summarise(records, baselines)
    omitted = left_out(records, summaries)
    text = (f"# Accuracy study\n\nGenerated by `{command}` from {len(records)} runs.\n\n"
            + ("Not in the tables:\n" + "\n".join(omitted) + "\n\n" if omitted else "")
            + markdown(summaries))
    if summaries:
        text += "\n![KD minus labels per class](study_kd_minus_labels.png)\n"
        plot(summaries, os.path.join(results_dir, "study_kd_minus_labels.png"))
    atomic.write_json(os.path.join(results_dir, "study.json"),
                      {"command": command, "settings": summaries})
    with atomic.atomic_open(os.path.join(results_dir, "study.md")) as stream:
        stream.write(text)
    return text


def load_records(path):
    """The records of a `results.jsonl`."""
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]
