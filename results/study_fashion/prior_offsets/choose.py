"""How the offsets were chosen: three ways of fitting them, on the stored students (docs/study.md).

Per-class logit offsets fitted on the held-out split, three ways:
- `prior` (the one `tllm_tf.prior_offsets` implements): the mean predicted
  probability of every class equals its share of the held-out images;
- `count`: the arg-max predictions fall on every class as often as its images
  do (a damped fixed-point iteration on the counts);
- `accuracy`: the held-out accuracy is the highest (coordinate search over a
  grid of offsets, three rounds).
For every label-only, `kd` and `tllm_refit` student of the study roots, it fits
each on the held-out split and prints, per (student, teacher), the test accuracy
with offsets minus without (points, mean [95% CI] seeds better/worse).

    .venv/bin/python results/study_fashion/prior_offsets/choose.py \
        --results=runs/base/results.jsonl runs/base_a runs/base_b
"""

import argparse
import collections

import numpy as np

import apply  # results/study_fashion/prior_offsets/apply.py: the stored students.
from tllm_tf import prior_offsets
from tllm_tf.analysis import study_stats
from tllm_tf.pipeline import build


def _fit_count(logits, labels, num_classes, iterations=300, rate=0.05):
    target = np.bincount(labels, minlength=num_classes)
    offsets = np.zeros(num_classes)
    for _ in range(iterations):
        predicted = np.bincount((logits + offsets).argmax(axis=1), minlength=num_classes)
        offsets += rate * np.log((target + 1) / (predicted + 1))
    return offsets


def _fit_accuracy(logits, labels, num_classes, rounds=3, grid=np.linspace(-3, 3, 61)):
    offsets = np.zeros(num_classes)
    for _ in range(rounds):
        for c in range(num_classes):
            scores = []
            for value in grid:
                trial = offsets.copy()
                trial[c] = value
                scores.append(np.mean((logits + trial).argmax(axis=1) == labels))
            offsets[c] = grid[int(np.argmax(scores))]
    return offsets


FITS = {"prior": prior_offsets.fit_offsets, "count": _fit_count, "accuracy": _fit_accuracy}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="results.jsonl of the stored runs")
    parser.add_argument("roots", nargs="+", help="study roots holding the seed<s>/ folders")
    args = parser.parse_args()
    records = apply.read_records(args.results)
    students = apply.StoredStudents(args.roots)
    # (student, teacher, arm, fit) -> {seed: with minus without, points}
    gains = collections.defaultdict(dict)
    for record in records:
        if record["arm"] not in ("kd", "tllm_refit"):
            continue
        seed, student, teacher = record["seed"], record["student"], record["teacher"]
        # The label-only student once per (seed, student), with the first teacher's kd record.
        arms = [record["arm"]] + (["labels"] if record["arm"] == "kd" else [])
        for arm in arms:
            model, data, config = students.load(record, arm)
            held_out = prior_offsets.logits_and_labels(
                model, build.eval_batches(data.held_out, config))
            test_logits, test_labels = prior_offsets.logits_and_labels(
                model, build.eval_batches(data.test, config))
            plain = np.mean(test_logits.argmax(axis=1) == test_labels)
            for name, fit in FITS.items():
                offsets = fit(*held_out, data.num_classes)
                with_offsets = np.mean((test_logits + offsets).argmax(axis=1) == test_labels)
                gains[(student, teacher, arm, name)][seed] = 100 * (with_offsets - plain)
        print(seed, student, teacher, record["arm"], flush=True)
    settings = sorted({key[:2] for key in gains})
    print("\n| student, teacher | arm | " + " | ".join(FITS) + " |")
    print("|---|---|" + "---|" * len(FITS))
    for student, teacher in settings:
        for arm in ("labels", "kd", "tllm_refit"):
            cells = []
            for name in FITS:
                values = gains[(student, teacher, arm, name)]
                seeds = sorted(values)
                s = study_stats.paired_difference([values[k] for k in seeds], np.zeros(len(seeds)))
                cells.append(f"{s['mean']:+.2f} [{s['ci_low']:+.2f}, {s['ci_high']:+.2f}] "
                             f"{int(s['better'])}/{int(s['worse'])}")
            print(f"| {student}, {teacher} | {arm} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
