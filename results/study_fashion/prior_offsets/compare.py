"""Each student with prior offsets against itself and KD without, paired by seed (docs/study.md).

Reads the study's records without offsets and those `apply.py` wrote with
them, and prints a markdown table per (student, teacher): overall test
accuracy (points) of the offset arm minus the plain one, and a few cross
differences, each as mean [95% CI] seeds better/worse; then, per class, the
same for the classes named with `--classes`.

    .venv/bin/python results/study_fashion/prior_offsets/compare.py \
        --plain=runs/base/results.jsonl --offsets=runs/base_offsets/results.jsonl
"""

import argparse
import collections

import numpy as np

import apply  # results/study_fashion/prior_offsets/apply.py: reads the records.

# (row label, (arm, with offsets), (arm, with offsets)): the first minus the second; "default"
# is the arm of the recipe's default (--default_arm).
ROWS = (
    ("labels: with offsets minus without", ("labels", True), ("labels", False)),
    ("KD: with offsets minus without", ("kd", True), ("kd", False)),
    ("default: with offsets minus without", ("default", True), ("default", False)),
    ("default minus KD, without offsets", ("default", False), ("kd", False)),
    ("default minus KD, both with offsets", ("default", True), ("kd", True)),
    ("default with offsets minus KD without", ("default", True), ("kd", False)),
)


def _read(path, with_offsets, into):
    for record in apply.read_records(path):
        into[(record["student"], record["teacher"] if record["arm"] != "labels"
              else None, record["arm"], with_offsets)][record["seed"]] = record



def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", required=True, help="results.jsonl without offsets")
    parser.add_argument("--offsets", required=True, help="results.jsonl apply.py wrote")
    parser.add_argument("--classes", default="", help="comma-separated class names, per class")
    parser.add_argument("--default_arm", default="tllm_refit",
                        help="the default's arm (tllm_refit_every3 in the second recipe)")
    args = parser.parse_args()
    rows = [(label, *((args.default_arm if arm == "default" else arm, o) for arm, o in pair))
            for label, *pair in ROWS]
    records = collections.defaultdict(dict)
    _read(args.plain, False, records)
    _read(args.offsets, True, records)
    settings = sorted({(s, t) for s, t, arm, _ in records if arm == "kd"})
    for student, teacher in settings:
        seeds = sorted(set.intersection(*(
            set(records[(student, None if arm == "labels" else teacher, arm, o)])
            for _, (arm, o), _ in rows for o in (True, False))))
        if not seeds:
            continue
        print(f"\n#### {student}, {teacher} (seeds {seeds[0]}-{seeds[-1]}, {len(seeds)})\n")

        def column(arm, with_offsets, pick):
            runs = records[(student, None if arm == "labels" else teacher, arm, with_offsets)]
            return np.array([pick(runs[seed]) for seed in seeds], np.float64) * 100

        names = next(iter(records[(student, teacher, "kd", False)].values()))["class_names"]
        wanted = [c for c in args.classes.split(",") if c]
        print("| | overall | " + " | ".join(wanted) + " |")
        print("|---|---|" + "---|" * len(wanted))
        for label, first, second in rows:
            cells = [apply.paired_cell(column(*first, lambda r: r["accuracy"]),
                                       column(*second, lambda r: r["accuracy"]))]
            for name in wanted:
                index = names.index(name)
                cells.append(apply.paired_cell(
                    column(*first, lambda r: r["per_class_accuracy"][index]),
                    column(*second, lambda r: r["per_class_accuracy"][index])))
            print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
