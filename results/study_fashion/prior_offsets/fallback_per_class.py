"""The classes KD hurts, with the reference's fallback: recovered? (docs/study.md)

The issue's per-class clause asks that, where KD hurts a class beyond noise
(the label-only student above KD on it, paired over the seeds, 95% CI), the
default recovers it: above KD on that class beyond noise (each table counts
these, and, a stricter reading, those also back to labels: not below the
label-only student on the class beyond noise). This script reads
which students the fallback replaced (the p-values of the per-seed rows
`reference_fallback.py` wrote, judged at `--significance`) and the per-class
test accuracies of the stored runs (the study's `results.jsonl`), and gives
each seed's default student the label-only student's per-class accuracies
where it fell back, as the stage does. Nothing is trained or evaluated.

The classes KD hurts are chosen on the test split of the same seeds by
default, as the study's tables choose them. The label-only student's test
accuracy on a class chosen so is high partly by chance, and the fallback
hands that student back, so `--hurt_seeds` chooses the classes on other
seeds, and the seeds of `--seed_sets` only measure. `--classes` names the
classes instead (chosen beforehand on runs that may be gone), and measures
them whatever KD did to them on these seeds.

    .venv/bin/python results/study_fashion/prior_offsets/fallback_per_class.py \
        --rows=results/study_fashion/prior_offsets/reference_fallback/base.jsonl \
        --results=runs/ro20/results.jsonl --seed_sets=0-19

Several `--rows` and `--results` files, comma-separated, are read as one.
"""

import argparse
import collections

import numpy as np

import apply  # results/study_fashion/prior_offsets/apply.py: reads the records.
from tllm_tf.analysis import study_stats


def per_class(rows, records, default_arm, seeds, significance):
    """`{(student, teacher): {name: array (seeds, classes)}}` of the settings with every seed.

    The names: "labels", "kd", "default" and "default with fallback".
    """
    runs = {(r["seed"], r["student"], r["teacher"], r["arm"]): r for r in records}
    settings = collections.defaultdict(lambda: collections.defaultdict(list))
    for row in sorted(rows, key=lambda r: (r["student"], r["teacher"], r["seed"])):
        seed, student, teacher = row["seed"], row["student"], row["teacher"]
        if seed not in seeds:
            continue
        labels = runs[(seed, student, "", "labels")]["per_class_accuracy"]
        default = runs[(seed, student, teacher, default_arm)]["per_class_accuracy"]
        columns = settings[(student, teacher)]
        columns["labels"].append(labels)
        columns["kd"].append(runs[(seed, student, teacher, "kd")]["per_class_accuracy"])
        columns["default"].append(default)
        columns["default with fallback"].append(
            labels if apply.falls_back(row, default_arm, significance) else default)
        columns["class_names"] = runs[(seed, student, teacher, "kd")]["class_names"]
    return {setting: {name: (np.array(values, float) if name != "class_names" else values)
                      for name, values in columns.items()}
            for setting, columns in settings.items()}


def _chosen_classes(columns, chosen_on, class_names):
    """The indices of the classes a setting's rows are for: named, or those KD hurts."""
    if class_names:
        unknown = sorted(set(class_names) - set(columns["class_names"]))
        if unknown:
            raise SystemExit(f"--classes names {unknown}, which the records do not have; their "
                             f"classes are {columns['class_names']}.")
        return [columns["class_names"].index(name) for name in class_names]
    if chosen_on is None:
        return []
    hurt, _ = study_stats.significantly_hurt(chosen_on["kd"], chosen_on["labels"])
    return np.flatnonzero(hurt)


def table(settings, hurt_settings, class_names=None):
    """Markdown lines: per (setting, hurt class), the accuracies and the paired differences.

    Args:
        settings: `per_class` of the seeds measured.
        hurt_settings: `per_class` of the seeds that choose the classes KD hurts.
        class_names: the classes to measure instead, whatever KD did to them
            (`None`: the classes KD hurts).
    """
    chosen = "class named beforehand" if class_names else "class KD hurts"
    lines = [f"| student, teacher | seeds | {chosen} | labels | KD | default | default with "
             "fallback | default minus KD | default with fallback minus KD | default with "
             "fallback minus labels |", "|---|---|---|---|---|---|---|---|---|---|"]
    recovered, back_to_labels = collections.Counter(), collections.Counter()
    for (student, teacher), columns in sorted(settings.items()):
        for c in _chosen_classes(columns, hurt_settings.get((student, teacher)), class_names):
            cell = {name: 100 * columns[name][:, c] for name in
                    ("labels", "kd", "default", "default with fallback")}
            for name in ("default", "default with fallback"):
                difference = study_stats.paired_difference(cell[name], cell["kd"])
                recovered[name] += bool(difference["ci_low"] > 0)
                back = study_stats.paired_difference(cell[name], cell["labels"])
                back_to_labels[name] += bool(difference["ci_low"] > 0 and back["ci_high"] >= 0)
            recovered["pairs"] += 1
            lines.append(
                f"| `{student}`, `{teacher}` | {len(cell['kd'])} | {columns['class_names'][c]} | "
                + " | ".join(f"{cell[name].mean():.1f}" for name in cell) + " | "
                f"{apply.paired_cell(cell['default'], cell['kd'])} | "
                f"{apply.paired_cell(cell['default with fallback'], cell['kd'])} | "
                f"{apply.paired_cell(cell['default with fallback'], cell['labels'])} |")
    lines += ["", f"Recovered (above KD on the class beyond noise): the default "
              f"{recovered['default']} of {recovered['pairs']}, the default with the fallback "
              f"{recovered['default with fallback']} of {recovered['pairs']}.",
              "", f"Recovered and back to labels (also not below labels on the class beyond "
              f"noise): the default {back_to_labels['default']} of {recovered['pairs']}, the "
              f"default with the fallback {back_to_labels['default with fallback']} of "
              f"{recovered['pairs']}."]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", required=True,
                        help="comma-separated per-seed rows of reference_fallback.py")
    parser.add_argument("--results", required=True,
                        help="comma-separated results.jsonl of the stored runs")
    parser.add_argument("--default_arm", default="tllm_refit", help="the default's arm")
    parser.add_argument("--seed_sets", default="0-19", help="comma-separated ranges, a table each")
    parser.add_argument("--significance", type=float, default=0.05,
                        help="the fallback's level, judged from the rows' stored p-values")
    parser.add_argument("--hurt_seeds", help="the range that chooses the classes KD hurts "
                        "(default: each table's own seeds)")
    parser.add_argument("--classes", help="comma-separated class names to measure in place of "
                        "the classes KD hurts (chosen beforehand)")
    args = parser.parse_args()
    rows = [r for path in args.rows.split(",") for r in apply.read_records(path)]
    records = [r for path in args.results.split(",") for r in apply.read_records(path)]
    for seed_set in args.seed_sets.split(","):
        print(f"\n#### Seeds {seed_set}\n")
        settings = per_class(rows, records, args.default_arm, set(apply.seed_range(seed_set)),
                             args.significance)
        hurt_settings = (per_class(rows, records, args.default_arm,
                                   set(apply.seed_range(args.hurt_seeds)), args.significance)
                         if args.hurt_seeds else settings)
        if args.hurt_seeds:
            print(f"The classes KD hurts chosen on seeds {args.hurt_seeds}.\n")
        if args.classes:
            print(f"The classes named beforehand: {args.classes}.\n")
        print("\n".join(table(settings, hurt_settings,
                               args.classes.split(",") if args.classes else None)))


if __name__ == "__main__":
    main()
