"""The calibrated rule through the library: the arms against KD (docs/study.md).

`rule="paired_calibrated"` judges each look with the paired t-test on calibrated
probabilities that `../prior_offsets/score_power.py` measured on stored students.
`tools/study.py` trained two arms with it, ten seeds of the four base settings
(`runs/cal`):
- `calibrated_refit`: the library's default students (`tllm`, then
  `tllm_refit`) and schedule (ten looks after half the epochs, patience 2),
  the calibrated rule judging;
- `calibrated_at_end_refit`: one look, at the last epoch, at 0.005 (one of the
  default's ten looks' level): the first pass is KD's student, and the refit
  masks what the test finds in it.

Which classes KD hurts beyond noise comes from the twenty seeds of KD and
label-only students in `runs/score_a` and `runs/score_b` (the same definition
as "A test on calibrated probabilities"). For each arm and setting the script
prints its accuracy minus KD's, paired by seed, for seeds 0-4 (which choose),
5-9 (which confirm) and all ten; then per hurt class the share of seeds masking
it and its accuracy minus KD's and minus labels'; then the first pass's false
alarms (the share of its looks masking a class KD does not hurt, and of runs
ending with one masked) and flips per 100 looks.

    .venv/bin/python results/study_fashion/calibrated_rule/compare.py \
        runs/cal runs/score_a runs/score_b > results/study_fashion/calibrated_rule/compare.md
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                "prior_offsets"))

import apply  # noqa: E402  (the study scripts' shared loading)

from tllm_tf.analysis import study_stats  # noqa: E402
from tllm_tf.pipeline import workdir_files  # noqa: E402

ARMS = ("calibrated_refit", "calibrated_at_end_refit")
SEED_GROUPS = {"seeds 0-4": range(0, 5), "seeds 5-9": range(5, 10), "all ten": range(0, 10)}


def hurt_classes(records):
    """`{(student, teacher): bool array}`: the classes KD hurts beyond noise, over every seed."""
    kd = {(r["seed"], r["student"], r["teacher"]): r for r in records if r["arm"] == "kd"}
    labels = {(r["seed"], r["student"]): r for r in records if r["arm"] == "labels"}
    hurt = {}
    for setting in {(student, teacher) for _, student, teacher in kd}:
        seeds = sorted(s for s, student, teacher in kd if (student, teacher) == setting)
        kd_c = np.array([kd[(s, *setting)]["per_class_accuracy"] for s in seeds])
        labels_c = np.array([labels[(s, setting[0])]["per_class_accuracy"] for s in seeds])
        hurt[setting] = np.array([
            study_stats.paired_difference(kd_c[:, c], labels_c[:, c])["ci_high"] < 0
            for c in range(kd_c.shape[1])])
    return hurt


def first_pass_masks(root, record):
    """The first pass's mask after each look, `(looks, num_classes)` bool (masked)."""
    path = os.path.join(root, f"seed{record['seed']}", record["student"], record["teacher"],
                        record["arm"], workdir_files.student_stage("tllm"),
                        workdir_files.MASK_LOG_FILE)
    with open(path) as handle:
        return np.array([[m <= 0 for m in json.loads(line)["class_mask"]]
                         for line in handle if line.strip()])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the study root of the calibrated arms (runs/cal)")
    parser.add_argument("hurt_roots", nargs="+",
                        help="study roots of twenty seeds' kd and labels runs")
    args = parser.parse_args()
    records = apply.read_records(os.path.join(args.root, "results.jsonl"))
    hurt = hurt_classes([r for root in args.hurt_roots
                         for r in apply.read_records(os.path.join(root, "results.jsonl"))])
    kd = {(r["seed"], r["student"], r["teacher"]): r for r in records if r["arm"] == "kd"}
    labels = {(r["seed"], r["student"]): r for r in records if r["arm"] == "labels"}
    class_names = records[0]["class_names"]
    for arm in ARMS:
        rows = [r for r in records if r["arm"] == arm
                and (r["seed"], r["student"], r["teacher"]) in kd]
        print(f"\n## `{arm}`\n")
        report_arm(args.root, apply.by_setting(rows), kd, labels, hurt, class_names)


def report_arm(root, settings, kd, labels, hurt, class_names):
    print("| student, teacher | classes masked (mean) | minus KD, "
          + " | ".join(SEED_GROUPS) + " |")
    print("|---|---|" + "---|" * len(SEED_GROUPS))
    per_class, alarms = [], []
    for (student, teacher), rows in sorted(settings.items()):
        rows.sort(key=lambda r: r["seed"])
        seeds = np.array([r["seed"] for r in rows])
        kd_rows = [kd[(r["seed"], student, teacher)] for r in rows]
        ours, theirs = (100 * np.array([r["accuracy"] for r in group])
                        for group in (rows, kd_rows))
        cells = [apply.paired_cell(ours[np.isin(seeds, group)], theirs[np.isin(seeds, group)])
                 if np.isin(seeds, group).sum() > 1 else "-" for group in SEED_GROUPS.values()]
        final = np.array([first_pass_masks(root, r)[-1] for r in rows])
        print(f"| `{student}`, `{teacher}` | {final.sum(axis=1).mean():.1f} | "
              + " | ".join(cells) + " |")
        ours_c, kd_c, labels_c = (100 * np.array([r["per_class_accuracy"] for r in group])
                                  for group in (rows, kd_rows,
                                                [labels[(r["seed"], student)] for r in rows]))
        setting_hurt = hurt[(student, teacher)]
        for c in np.flatnonzero(setting_hurt):
            per_class.append(
                f"| `{student}`, `{teacher}` | {class_names[c]} | "
                f"{apply.paired_cell(kd_c[:, c], labels_c[:, c])} | {final[:, c].mean():.0%} | "
                f"{apply.paired_cell(ours_c[:, c], kd_c[:, c])} | "
                f"{apply.paired_cell(ours_c[:, c], labels_c[:, c])} |")
        looks = [first_pass_masks(root, r) for r in rows]
        # With one look a class masked there is one change in one look: no rate to speak of.
        flips = (f"{np.mean([study_stats.flips_per_100_updates(m).mean() for m in looks]):.1f}"
                 if min(len(m) for m in looks) > 1 else "one look")
        alarms.append(
            f"| `{student}`, `{teacher}` | {int((~setting_hurt).sum())} | "
            f"{np.mean([m[:, ~setting_hurt].mean() for m in looks]):.1%} | "
            f"{np.mean(final[:, ~setting_hurt].any(axis=1)):.0%} | "
            f"{final[:, ~setting_hurt].sum(axis=1).mean():.1f} | {flips} |")
    print("\nPer class KD hurts beyond noise (twenty seeds): KD minus labels on these seeds; "
          "the share of seeds whose first pass ends with it masked; the arm minus KD; minus "
          "labels (points)\n")
    print("| student, teacher | class | KD minus labels | masked | minus KD | minus labels |")
    print("|---|---|---|---|---|---|")
    print("\n".join(per_class))
    print("\nThe first pass on the classes KD does not hurt beyond noise: the share of "
          "(look, class) pairs masked; the share of runs that end with one masked, and how "
          "many (mean); a class's mask changes per 100 looks (every class)\n")
    print("| student, teacher | classes not hurt | looks masking one | runs ending with one "
          "| how many | flips per 100 looks |")
    print("|---|---|---|---|---|---|")
    print("\n".join(alarms))


if __name__ == "__main__":
    main()
