"""Two rules' students, each with the reference's fallback, paired by seed (docs/study.md).

The library's default keeps the label-only reference's weights where a finished student is behind
it on the held-out split beyond noise (`--reference_fallback`, judged at
`--reference_fallback_significance`, 0.2). The study's runs train without it, and
`prior_offsets/reference_fallback.py` judges their stored students afterwards, one arm against
KD, into per-seed rows. This script reads the rows of two arms judged on the same runs (the same
seeds, the same KD and label-only students) and tables, per (student, teacher), each arm with the
fallback against the other, against KD and against the label-only student, in points, mean
[95% CI] seeds better/worse. Nothing is trained or evaluated.

    .venv/bin/python results/study_fashion/capped_rule/with_fallback.py \
        --arm=capped_refit --versus=tllm_refit \
        --rows=results/study_fashion/capped_rule/fallback/capped_refit_cal.jsonl \
        --versus_rows=results/study_fashion/capped_rule/fallback/tllm_refit_cal.jsonl \
        --seed_sets=0-9 --significance=0.2
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                "prior_offsets"))
import apply  # noqa: E402  results/study_fashion/prior_offsets/apply.py: rows and table cells.

_KEY = ("seed", "student", "teacher")


def _read(paths):
    return [row for path in paths.split(",") for row in apply.read_records(path)]


def table(rows, versus_rows, arm, versus, seeds, significance):
    """Markdown lines, one per (student, teacher) both arms have rows for on `seeds`."""
    theirs = {tuple(r[k] for k in _KEY): r for r in versus_rows if r["seed"] in seeds}
    shared = [r for r in rows if r["seed"] in seeds and tuple(r[k] for k in _KEY) in theirs]
    lines = [f"| student, teacher | seeds | falls back: {arm} / {versus} | {arm} with fallback "
             f"minus {versus} with fallback | minus KD | minus labels | {versus} with fallback "
             "minus KD |", "|---|---|---|---|---|---|---|"]
    for (student, teacher), setting_rows in sorted(apply.by_setting(shared).items()):
        pairs = [(r, theirs[tuple(r[k] for k in _KEY)]) for r in setting_rows]
        ours = np.array([apply.kept_accuracy(a, arm, significance) for a, _ in pairs]) * 100
        other = np.array([apply.kept_accuracy(b, versus, significance) for _, b in pairs]) * 100
        kd = np.array([a["kd"] for a, _ in pairs]) * 100
        labels = np.array([a["labels"] for a, _ in pairs]) * 100
        falls = [sum(apply.falls_back(row, name, significance) for row in column)
                 for name, column in ((arm, [a for a, _ in pairs]),
                                      (versus, [b for _, b in pairs]))]
        lines.append(f"| `{student}`, `{teacher}` | {len(pairs)} | {falls[0]} / {falls[1]} | "
                     f"{apply.paired_cell(ours, other)} | {apply.paired_cell(ours, kd)} | "
                     f"{apply.paired_cell(ours, labels)} | {apply.paired_cell(other, kd)} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", required=True, help="the arm the rows of --rows judged")
    parser.add_argument("--rows", required=True, help="its per-seed rows, comma-separated files")
    parser.add_argument("--versus", required=True, help="the arm it is compared with")
    parser.add_argument("--versus_rows", required=True, help="that arm's rows, the same runs")
    parser.add_argument("--seed_sets", default="0-9", help="comma-separated ranges, a table each")
    parser.add_argument("--significance", type=float, default=0.2,
                        help="the fallback's level (the library's default, 0.2)")
    args = parser.parse_args()
    rows, versus_rows = _read(args.rows), _read(args.versus_rows)
    for seed_set in args.seed_sets.split(","):
        print(f"\n#### Seeds {seed_set}, the fallback at {args.significance}\n")
        print("\n".join(table(rows, versus_rows, args.arm, args.versus,
                              set(apply.seed_range(seed_set)), args.significance)))


if __name__ == "__main__":
    main()
