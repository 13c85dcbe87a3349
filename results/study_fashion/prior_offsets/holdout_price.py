"""What a larger held-out split costs and buys when students train on every image (docs/study.md).

Reads two study roots that differ only in `--holdout_fraction` and were run
with `--num_train=60000 --teacher_num_train=0`, so every model learns from all
the training images outside its held-out split: a larger split leaves fewer to
learn from. Prints, for each set of seeds, a markdown table pairing the two by
seed: each arm at the second fraction minus itself at the first, the default
at the second minus KD and labels at the first, and the default minus KD
within each; overall test accuracy and the classes named with `--classes`, in
points, as mean [95% CI] seeds better/worse.

    .venv/bin/python results/study_fashion/prior_offsets/holdout_price.py \
        --first=runs/full_h10/results.jsonl --second=runs/full_h30/results.jsonl \
        --first_name=0.1 --second_name=0.3 --seed_sets=0-9,10-19,0-19
"""

import argparse
import collections

import numpy as np

import apply  # results/study_fashion/prior_offsets/apply.py: reads the records.


def _rows(first, second, default_arm):
    """(row label, (arm, root), (arm, root)): the first minus the second."""
    rows = [(f"{arm}: {second} minus {first}", (arm, second), (arm, first))
            for arm in ("teacher", "labels", "kd", default_arm)]
    rows += [
        (f"{default_arm} at {second} minus kd at {first}", (default_arm, second), ("kd", first)),
        (f"{default_arm} at {second} minus labels at {first}",
         (default_arm, second), ("labels", first)),
    ]
    rows += [(f"{default_arm} minus kd, both at {name}", (default_arm, name), ("kd", name))
             for name in (first, second)]
    rows += [(f"kd minus labels, both at {name}", ("kd", name), ("labels", name))
             for name in (first, second)]
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", required=True, help="results.jsonl at the smaller fraction")
    parser.add_argument("--second", required=True, help="results.jsonl at the larger fraction")
    parser.add_argument("--first_name", default="0.1", help="the first root's fraction")
    parser.add_argument("--second_name", default="0.3", help="the second root's fraction")
    parser.add_argument("--seed_sets", default="0-9", help="comma-separated ranges, one table each")
    parser.add_argument("--classes", default="", help="comma-separated class names, per class")
    parser.add_argument("--default_arm", default="tllm_refit", help="the default's arm")
    args = parser.parse_args()
    # (arm, root name) -> seed -> record; a later record of the same run replaces an earlier one.
    runs = collections.defaultdict(dict)
    for name, path in ((args.first_name, args.first), (args.second_name, args.second)):
        for record in apply.read_records(path):
            runs[(record["arm"], name)][record["seed"]] = record
    rows = _rows(args.first_name, args.second_name, args.default_arm)
    needed = {run for _, *pair in rows for run in pair}
    names = next(iter(runs[("kd", args.first_name)].values()))["class_names"]
    wanted = [c for c in args.classes.split(",") if c]
    for seed_set in args.seed_sets.split(","):
        seeds = [s for s in apply.seed_range(seed_set) if all(s in runs[run] for run in needed)]
        if len(seeds) < 2:
            print(f"\n#### Seeds {seed_set}: fewer than two finished in both roots\n")
            continue
        print(f"\n#### Seeds {seed_set} ({len(seeds)} finished in both roots)\n")
        for name in (args.first_name, args.second_name):
            print(f"- at {name}: " + ", ".join(
                f"{arm} {np.mean([runs[(arm, name)][s]['accuracy'] for s in seeds]) * 100:.2f}"
                for arm in ("teacher", "labels", "kd", args.default_arm)))
        print("\n| | overall | " + " | ".join(wanted) + " |")
        print("|---|---|" + "---|" * len(wanted))

        def column(run, index=None):
            return np.array([runs[run][s]["accuracy"] if index is None
                             else runs[run][s]["per_class_accuracy"][index]
                             for s in seeds], np.float64) * 100

        for label, first, second in rows:
            cells = [apply.paired_cell(column(first), column(second))]
            cells += [apply.paired_cell(column(first, names.index(c)),
                                        column(second, names.index(c))) for c in wanted]
            print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
