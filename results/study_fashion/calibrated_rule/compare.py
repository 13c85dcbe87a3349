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

`--arms` names other arms, `--seed_groups` other groups of seeds (each is reported apart,
then all together), and `--versus` arms each is also compared with, paired by seed, as
for the capped rule ("Capped scores"). Each arm's last table judges its first pass's final
mask run by run: against the KD and label-only students of the same seed on the test split.

    .venv/bin/python results/study_fashion/calibrated_rule/compare.py \
        --arms=tllm_refit,calibrated_refit,capped_refit --versus=tllm_refit,calibrated_refit \
        runs/cal runs/score_a runs/score_b > results/study_fashion/capped_rule/compare.md
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


def seed_groups(text):
    """`{"seeds 0-4": [...], ..., "all": [...]}` of groups "0-4,5-9"."""
    groups = {f"seeds {part}": apply.seed_range(part) for part in text.split(",")}
    if len(groups) > 1:
        groups["all"] = [s for seeds in groups.values() for s in seeds]
    return groups


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the study root of the calibrated arms (runs/cal)")
    parser.add_argument("hurt_roots", nargs="+",
                        help="study roots of the kd and labels runs that say which classes "
                        "KD hurts (twenty seeds in the base recipe)")
    parser.add_argument("--arms", default="calibrated_refit,calibrated_at_end_refit",
                        help="the arms to report, comma-separated")
    parser.add_argument("--seed_groups", default="0-4,5-9",
                        help="groups of seeds reported apart, e.g. 0-4,5-9")
    parser.add_argument("--versus", default="",
                        help="arms each is also compared with, paired by seed, comma-separated")
    args = parser.parse_args()
    records = apply.read_records(os.path.join(args.root, "results.jsonl"))
    hurt_records = [r for root in args.hurt_roots
                    for r in apply.read_records(os.path.join(root, "results.jsonl"))]
    hurt = hurt_classes(hurt_records)
    hurt_seeds = len({r["seed"] for r in hurt_records})
    groups = seed_groups(args.seed_groups)
    kd = {(r["seed"], r["student"], r["teacher"]): r for r in records if r["arm"] == "kd"}
    labels = {(r["seed"], r["student"]): r for r in records if r["arm"] == "labels"}
    class_names = records[0]["class_names"]
    for arm in args.arms.split(","):
        rows = [r for r in records if r["arm"] == arm
                and (r["seed"], r["student"], r["teacher"]) in kd]
        print(f"\n## `{arm}`\n")
        report_arm(args.root, apply.by_setting(rows), kd, labels, hurt, class_names, groups,
                   hurt_seeds)
        for other in [a for a in args.versus.split(",") if a and a != arm]:
            print(f"\n`{arm}` minus `{other}`, paired by seed (overall, then per class KD "
                  "hurts beyond noise):\n")
            versus = {(r["seed"], r["student"], r["teacher"]): r for r in records
                      if r["arm"] == other}
            report_versus(apply.by_setting(rows), versus, hurt, class_names, groups)


def _group_cells(ours, theirs, seeds, groups):
    return [apply.paired_cell(ours[np.isin(seeds, group)], theirs[np.isin(seeds, group)])
            if np.isin(seeds, group).sum() > 1 else "-" for group in groups.values()]


def report_versus(settings, versus, hurt, class_names, groups):
    print("| student, teacher | class | " + " | ".join(groups) + " |")
    print("|---|---|" + "---|" * len(groups))
    for (student, teacher), rows in sorted(settings.items()):
        rows = sorted((r for r in rows if (r["seed"], student, teacher) in versus),
                      key=lambda r: r["seed"])
        seeds = np.array([r["seed"] for r in rows])
        theirs_rows = [versus[(r["seed"], student, teacher)] for r in rows]
        cells = _group_cells(*(100 * np.array([r["accuracy"] for r in group])
                               for group in (rows, theirs_rows)), seeds, groups)
        print(f"| `{student}`, `{teacher}` | all | " + " | ".join(cells) + " |")
        ours_c, theirs_c = (100 * np.array([r["per_class_accuracy"] for r in group])
                            for group in (rows, theirs_rows))
        for c in np.flatnonzero(hurt[(student, teacher)]):
            cells = _group_cells(ours_c[:, c], theirs_c[:, c], seeds, groups)
            print(f"| `{student}`, `{teacher}` | {class_names[c]} | " + " | ".join(cells) + " |")


def judged_run_by_run(student, teacher, final, ours_c, kd_c, labels_c):
    """A table row: the first pass's final mask against the run's own KD and label-only students."""
    masked = final.astype(bool)
    if not masked.any():
        return f"| `{student}`, `{teacher}` | 0 | - | - | - |"
    cell = apply.paired_cell(ours_c[masked], kd_c[masked]) if masked.sum() > 1 else "-"
    return (f"| `{student}`, `{teacher}` | {int(masked.sum())} | "
            f"{int((kd_c[masked] < labels_c[masked]).sum())} | "
            f"{np.mean(kd_c[masked] - labels_c[masked]):+.2f} | {cell} |")


def report_arm(root, settings, kd, labels, hurt, class_names, groups, hurt_seeds):
    print("| student, teacher | classes masked (mean) | minus KD, "
          + " | ".join(groups) + " |")
    print("|---|---|" + "---|" * len(groups))
    per_class, alarms, run_by_run = [], [], []
    for (student, teacher), rows in sorted(settings.items()):
        rows.sort(key=lambda r: r["seed"])
        seeds = np.array([r["seed"] for r in rows])
        kd_rows = [kd[(r["seed"], student, teacher)] for r in rows]
        ours, theirs = (100 * np.array([r["accuracy"] for r in group])
                        for group in (rows, kd_rows))
        cells = _group_cells(ours, theirs, seeds, groups)
        looks = [first_pass_masks(root, r) for r in rows]
        final = np.array([m[-1] for m in looks])
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
        # With one look a class masked there is one change in one look: no rate to speak of.
        flips = (f"{np.mean([study_stats.flips_per_100_updates(m).mean() for m in looks]):.1f}"
                 if min(len(m) for m in looks) > 1 else "one look")
        run_by_run.append(judged_run_by_run(student, teacher, final, ours_c, kd_c, labels_c))
        alarms.append(
            f"| `{student}`, `{teacher}` | {int((~setting_hurt).sum())} | "
            f"{np.mean([m[:, ~setting_hurt].mean() for m in looks]):.1%} | "
            f"{np.mean(final[:, ~setting_hurt].any(axis=1)):.0%} | "
            f"{final[:, ~setting_hurt].sum(axis=1).mean():.1f} | {flips} |")
    print(f"\nPer class KD hurts beyond noise ({hurt_seeds} seeds): KD minus labels on these "
          "seeds; the share of seeds whose first pass ends with it masked; the arm minus KD; "
          "minus labels (points)\n")
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
    print("\nThe first pass's final mask judged run by run, on the test split (images the rule "
          "never sees): the (run, class) pairs masked, how many of them that seed's KD student "
          "is less accurate on than that seed's label-only student, KD minus labels on them, "
          "and the arm minus KD on them, over the pairs (points; the study's report counts "
          "the updates masking a class KD did not hurt in that seed)\n")
    print("| student, teacher | masked at the end | KD behind on | KD minus labels | the arm "
          "minus KD |")
    print("|---|---|---|---|---|")
    print("\n".join(run_by_run))


if __name__ == "__main__":
    main()
