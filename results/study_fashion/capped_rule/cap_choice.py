"""Which cap? The calibrated test on capped probabilities, measured on stored students.

The calibrated rule (`rule="paired_calibrated"`) puts a class behind when the
label-only reference gives its held-out images more calibrated probability than
the distilled student does. Its false alarms (docs/study.md) are classes the
student gets right as often, only less surely. Capping each probability at `c`
before the test makes every image both models get confidently right a tie: at
`c = 1` the calibrated rule, and as `c` falls the test reads more and more only
the images near the decision (towards the exact test on counts).

On the stored KD and label-only students of twenty seeds (`runs/score_a`,
`runs/score_b`, their held-out and test logits cached in `runs/score_cache` by
`../prior_offsets/score_power.py`), each at the temperature that fits it on the
held-out split (`tllm_tf.calibration`, as the rule does), this prints per cap
the share of KD's per-class harms found and the false alarms, at one look's
level (0.005) with Holm's correction, for seeds 0-9 and 10-19 apart and per
setting. A class is hurt when KD minus labels on the test split has its
paired 95% interval below 0 over all twenty seeds; a false alarm is a class
not hurt found behind.

    .venv/bin/python results/study_fashion/capped_rule/cap_choice.py \\
        runs/score_cache > results/study_fashion/capped_rule/cap_choice.md
"""

import argparse
import glob
import os

import numpy as np

from tllm_tf import calibration
from tllm_tf import identification
from tllm_tf.analysis import study_stats

CAPS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.5)
LEVEL = 0.005
HALVES = {"seeds 0-9": range(0, 10), "seeds 10-19": range(10, 20)}
STUDENTS = ("lenet_2", "mlp_16")


# One look of the calibrated rule, unguarded: its test and Holm's correction alone.
ONE_LOOK = identification.RuleOptions(
    rule="paired_calibrated", significance=LEVEL, correction="holm", margin=0.0,
    margin_standard_errors=0.0, smoothing=0.0, patience=1, sticky=False, min_samples=1)


def behind_by_cap(student_logits, reference_logits, labels, num_classes):
    """`{cap: bool array}`: the classes the capped test finds behind, per cap (by the rule)."""
    student = calibration.calibrated_scores(student_logits, labels)
    reference = calibration.calibrated_scores(reference_logits, labels)
    num_samples = np.bincount(labels, minlength=num_classes)
    found = {}
    for cap in CAPS:
        gaps = identification.paired_score_gaps(student, reference, labels, num_classes, cap=cap)
        _, found[cap], _ = identification.update(
            identification.IdentificationState.initial(num_classes),
            identification.Evidence(num_samples, None, None, score_gaps=gaps), ONE_LOOK)
    return found


def setting_of(path):
    """`(student, teacher, seed)` of a cache file `<student>_<teacher>_seed<s>.npz`."""
    name = os.path.basename(path)[:-len(".npz")]
    student = next(s for s in STUDENTS if name.startswith(s + "_"))
    teacher, seed = name[len(student) + 1:].rsplit("_seed", 1)
    return student, teacher, int(seed)


def per_class_accuracy(logits, labels, num_classes):
    return np.array([np.mean(logits[labels == c].argmax(axis=1) == c)
                     for c in range(num_classes)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", help="the folder of cached logits (runs/score_cache)")
    args = parser.parse_args()
    runs = {}
    for path in sorted(glob.glob(os.path.join(args.cache, "*.npz"))):
        with np.load(path) as cached:
            y_held_out, y_test = cached["y_held_out"], cached["y_test"]
            num_classes = cached["kd_test"].shape[1]
            harm = 100 * (per_class_accuracy(cached["kd_test"], y_test, num_classes)
                          - per_class_accuracy(cached["labels_test"], y_test, num_classes))
            found = behind_by_cap(cached["kd_held_out"].astype(np.float64),
                                  cached["labels_held_out"].astype(np.float64),
                                  y_held_out, num_classes)
        runs.setdefault(setting_of(path)[:2], []).append((setting_of(path)[2], harm, found))
    print(f"Share of KD's per-class harms found / false alarms, at {LEVEL} with Holm's "
          "correction; per setting, the false alarms.\n")
    settings = sorted(runs)
    print("| cap | " + " | ".join(HALVES) + " | "
          + " | ".join(f"`{s}`, `{t}`" for s, t in settings) + " |")
    print("|---|" + "---|" * (len(HALVES) + len(settings)))
    hurt = {setting: hurt_classes(runs[setting]) for setting in settings}
    for cap in CAPS:
        halves = []
        for seeds in HALVES.values():
            found, alarms = shares(runs, hurt, cap, seeds)
            halves.append(f"{found:.0%} / {alarms:.1%}")
        per_setting = [f"{shares({s: runs[s]}, hurt, cap, range(0, 20))[1]:.1%}"
                       for s in settings]
        print(f"| {cap} | " + " | ".join(halves) + " | " + " | ".join(per_setting) + " |")
    print("\nHurt classes per setting (twenty seeds): "
          + "; ".join(f"`{s}`, `{t}`: {int(hurt[(s, t)].sum())}" for s, t in settings))


def hurt_classes(setting_runs):
    harm = np.array([h for _, h, _ in setting_runs])
    return np.array([study_stats.paired_difference(harm[:, c], np.zeros(len(harm)))["ci_high"]
                     < 0 for c in range(harm.shape[1])])


def shares(runs, hurt, cap, seeds):
    """(share of hurt (seed, class) pairs found, share of the others found) over `runs`."""
    counts = np.zeros(4)
    for setting, setting_runs in runs.items():
        for seed, _, found in setting_runs:
            if seed in seeds:
                behind = found[cap]
                counts += [behind[hurt[setting]].sum(), hurt[setting].sum(),
                           behind[~hurt[setting]].sum(), (~hurt[setting]).sum()]
    return counts[0] / max(counts[1], 1), counts[2] / max(counts[3], 1)


if __name__ == "__main__":
    main()
