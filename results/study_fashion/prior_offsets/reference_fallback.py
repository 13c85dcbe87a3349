"""Would the label-only reference, kept when a student is behind it, lose anything? (docs/study.md)

In the study's base recipe the label-only student (the reference the rule
judges against) is above KD and above the default overall, beyond noise,
while per class the rule's test sees only harms of 4-7 points. Overall, on
all the held-out images at once, a paired test sees much smaller ones. This
script judges the stored final students of a study, without training, as the
refit's safeguard judges the refit: each student against the reference on
the held-out split, image by image, the one-sided exact test at
`--significance` (`tllm_tf.held_out_check.compare`, which the stage's
`--reference_fallback` calls too). Where the student
is behind beyond noise the "fallback" keeps the reference, and its test
accuracy is the reference's; elsewhere the student's. Done for the default's
arm and for KD, so that the fallback's worth on its own is measured too.

Per-seed rows go to `--rows` (a JSON-lines file, which resumes); then a
markdown table per (student, teacher) of the paired differences over the
seeds named, in points, mean [95% CI] seeds better/worse. Without
`--results` it only tables the rows (results/study_fashion/regenerate.sh).

    .venv/bin/python results/study_fashion/prior_offsets/reference_fallback.py \
        --results=runs/ro20/results.jsonl --rows=runs/fallback/ro20.jsonl \
        runs/ro_a runs/ro_b runs/rof_a runs/rof_b

Roots whose seed folders share names (one root per teacher) are judged one
group at a time, each with its own records, into the same `--rows`.
"""

import argparse
import collections
import json
import os

import numpy as np

import apply  # results/study_fashion/prior_offsets/apply.py: reads the records and the students.
from tllm_tf import held_out_check
from tllm_tf import metrics as metrics_lib
from tllm_tf.pipeline import build


def _held_out_correct(students, record, arm):
    model, data, config = students.load(record, arm)
    correct, _ = metrics_lib.PerImageCorrectness(model, data.num_classes)(
        build.eval_batches(data.held_out, config))
    return correct


def judge(records, students, default_arm, significance):
    """Yields one row per (seed, student, teacher): each student against the reference."""
    runs = {(r["seed"], r["student"], r["teacher"], r["arm"]): r for r in records}
    for (seed, student, teacher, arm), record in sorted(runs.items()):
        if arm != "kd" or (seed, student, teacher, default_arm) not in runs:
            continue
        labels = runs.get((seed, student, "", "labels"))
        if labels is None:
            continue
        reference = _held_out_correct(students, labels, "labels")
        row = {"seed": seed, "student": student, "teacher": teacher,
               "labels": labels["accuracy"]}
        for name in ("kd", default_arm):
            check = held_out_check.compare(
                _held_out_correct(students, record, name), reference, significance,
                ("student", "reference"))
            row[name] = runs[(seed, student, teacher, name)]["accuracy"]
            row[f"{name}_check"] = check.to_json()  # Tables judge its p-value (apply.falls_back).
        yield row



def _points_cell(a, b):
    return apply.paired_cell(np.asarray(a) * 100, np.asarray(b) * 100)


def table(rows, default_arm, seeds, significance):
    """Markdown lines: per setting, the fallback (at `significance`) against the students."""
    settings = collections.defaultdict(list)
    for row in rows:
        if row["seed"] in seeds:
            settings[(row["student"], row["teacher"])].append(row)
    lines = ["| student, teacher | seeds | falls back: KD / default | default with fallback "
             "minus default | minus labels | minus KD | KD with fallback minus KD | default with "
             "fallback minus KD with fallback |", "|---|---|---|---|---|---|---|---|"]
    for (student, teacher), runs in sorted(settings.items()):
        def fallback(name):
            return [apply.kept_accuracy(r, name, significance) for r in runs]

        column = {name: [r[name] for r in runs] for name in ("labels", "kd", default_arm)}
        falls = {name: sum(apply.falls_back(r, name, significance) for r in runs)
                 for name in ("kd", default_arm)}
        lines.append(
            f"| `{student}`, `{teacher}` | {len(runs)} | {falls['kd']} / {falls[default_arm]} | "
            f"{_points_cell(fallback(default_arm), column[default_arm])} | "
            f"{_points_cell(fallback(default_arm), column['labels'])} | "
            f"{_points_cell(fallback(default_arm), column['kd'])} | "
            f"{_points_cell(fallback('kd'), column['kd'])} | "
            f"{_points_cell(fallback(default_arm), fallback('kd'))} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", help="results.jsonl of the stored runs to judge")
    parser.add_argument("--rows", required=True, help="JSON-lines file of the per-seed rows")
    parser.add_argument("--default_arm", default="tllm_refit", help="the default's arm")
    parser.add_argument("--significance", type=float, default=0.05,
                        help="the test's level; the tables judge the stored p-values at it")
    parser.add_argument("--seed_sets", default="0-19", help="comma-separated ranges, a table each")
    parser.add_argument("roots", nargs="*", help="study roots holding the seed<s>/ folders")
    args = parser.parse_args()
    rows = apply.read_records(args.rows) if os.path.exists(args.rows) else []
    if args.results:
        rows += list(_judge_new(args, rows))
    for seed_set in args.seed_sets.split(","):
        print(f"\n#### Seeds {seed_set}\n")
        print("\n".join(table(rows, args.default_arm, set(apply.seed_range(seed_set)),
                              args.significance)))


def _judge_new(args, rows):
    """Judges the runs of `--results` that `rows` lacks; appends and yields their rows."""
    # Every default arm keeps its student in the tllm_refit stage (tllm_refit_every3 too).
    apply.STAGES.setdefault(args.default_arm, apply.STAGES["tllm_refit"])
    keys = ("seed", "student", "teacher")
    done = {tuple(r[k] for k in keys) for r in rows}
    # The label-only records stay: every setting of their seed and student needs them.
    pending = [r for r in apply.read_records(args.results)
               if r["arm"] == "labels" or tuple(r[k] for k in keys) not in done]
    with open(args.rows, "a") as out:
        for row in judge(pending, apply.StoredStudents(args.roots), args.default_arm,
                         args.significance):
            out.write(json.dumps(row) + "\n")
            out.flush()
            yield row


if __name__ == "__main__":
    main()
