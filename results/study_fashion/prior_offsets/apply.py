"""Adds prior offsets to a study's stored students, without training (docs/study.md).

`--prior_offsets` adds to each student's logits, after it trains, the per-class
offsets that match its mean predicted probabilities on the held-out split to
the class frequencies there (`tllm_tf.prior_offsets`). For every stored
label-only, `kd` and `tllm_refit` student of the given study roots, this script
calls the same `apply_prior_offsets` the stage calls, on the same held-out
split, and measures the test split as the stage does. It writes the records
with the same arm names to `<out>/results.jsonl` (teachers and masks as they
were), so that `tools/study.py --report_only --root=<out>` reports the study as
if every student had been trained with `--prior_offsets`. One difference from
such a run: the refit's safeguard chose between the refit and the tllm
student without offsets (the stored model is the one it kept).

    .venv/bin/python results/study_fashion/prior_offsets/apply.py \
        --results=runs/base/results.jsonl --out=runs/base_offsets runs/base_a runs/base_b
"""

import argparse
import collections
import json
import os

from tllm_tf import metrics as metrics_lib
from tllm_tf import prior_offsets
from tllm_tf.analysis import study_stats
from tllm_tf.pipeline import build
from tllm_tf.pipeline import config as config_lib
from tllm_tf.pipeline import model_io
from tllm_tf.pipeline import workdir_files

# The stage folder of each arm's final student, under the arm's workdir.
STAGES = {"labels": workdir_files.REFERENCE_STAGE, "kd": workdir_files.student_stage("distilled"),
          "tllm_refit": workdir_files.student_stage("tllm_refit")}


def read_records(path):
    """The records of a study's `results.jsonl`."""
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def by_setting(rows):
    """`{(student, teacher): [rows]}` of rows that name their student and teacher, in order."""
    settings = collections.defaultdict(list)
    for row in rows:
        settings[(row["student"], row["teacher"])].append(row)
    return settings


def seed_range(text):
    """The seeds of a range "10-19" (or a single seed "7")."""
    low, _, high = text.partition("-")
    return list(range(int(low), int(high or low) + 1))


def paired_cell(a, b):
    """`a - b` over paired seeds as a table cell: "mean [95% CI] better/worse"."""
    summary = study_stats.paired_difference(a, b)
    return (f"{summary['mean']:+.2f} [{summary['ci_low']:+.2f}, {summary['ci_high']:+.2f}] "
            f"{int(summary['better'])}/{int(summary['worse'])}")


def falls_back(row, name, significance):
    """Whether a fallback row's `name` student takes the reference's weights at `significance`.

    Judged again from the row's stored p-value, so that a table can show another level than
    the one the row was judged at.
    """
    return row[f"{name}_check"]["p_value"] < significance


def kept_accuracy(row, name, significance):
    """The test accuracy the stage keeps for a fallback row's `name` student at `significance`:
    the label-only reference's where it falls back, the student's own elsewhere."""
    return row["labels"] if falls_back(row, name, significance) else row[name]


def seed_folders(roots):
    """`{seed: folder}` of the `seed<s>/` folders under the study roots."""
    return {int(name[len("seed"):]): os.path.join(root, name)
            for root in roots for name in os.listdir(root) if name.startswith("seed")}


class StoredStudents:
    """Loads the stored student of a record, with its run's config and data (one seed's cached)."""

    def __init__(self, roots):
        self.seed_dirs = seed_folders(roots)
        self._data = {}

    def load(self, record, arm=None):
        """Returns `(model, data, config)` of the record's student (of `arm`, if given)."""
        arm = arm or record["arm"]
        seed_dir = self.seed_dirs[record["seed"]]
        workdir = (os.path.join(seed_dir, record["student"], "reference") if arm == "labels"
                   else os.path.join(seed_dir, record["student"], record["teacher"], arm))
        with open(os.path.join(workdir, workdir_files.CONFIG_FILE)) as handle:
            config = config_lib.RunConfig.from_json(handle.read())
        if record["seed"] not in self._data:
            self._data = {record["seed"]: build.load_data(config)}
        model = model_io.load_keras_model(
            os.path.join(workdir, STAGES[arm], workdir_files.MODEL_FILE))
        return model, self._data[record["seed"]], config


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="results.jsonl of the stored runs")
    parser.add_argument("--out", required=True, help="where the records with offsets go")
    parser.add_argument("roots", nargs="+", help="study roots holding the seed<s>/ folders")
    args = parser.parse_args()
    records = read_records(args.results)
    students = StoredStudents(args.roots)
    os.makedirs(args.out, exist_ok=True)
    out_path = os.path.join(args.out, "results.jsonl")
    keys = ("seed", "student", "teacher", "arm")
    done = set()
    if os.path.exists(out_path):  # Resumes: the records written are kept.
        done = {tuple(r[k] for k in keys) for r in read_records(out_path)}
    with open(out_path, "a") as out:
        for record in records:
            key = tuple(record[k] for k in keys)
            if key in done:
                continue
            if record["arm"] not in STAGES:  # Teachers: as they are.
                out.write(json.dumps(record) + "\n")
                continue
            model, data, config = students.load(record)
            fitted = prior_offsets.apply_prior_offsets(
                model, build.eval_batches(data.held_out, config), data.num_classes)
            correct, total = metrics_lib.PerClassCounter(model, data.num_classes)(
                build.eval_batches(data.test, config))
            per_class = metrics_lib.accuracy_from_counts(correct, total)
            out.write(json.dumps(dict(
                record, accuracy=float(correct.sum() / total.sum()),
                per_class_accuracy=[float(a) for a in per_class],
                prior_offsets=fitted["offsets"])) + "\n")
            out.flush()
            print(*key, f"{record['accuracy']:.4f} -> {correct.sum() / total.sum():.4f}",
                  flush=True)


if __name__ == "__main__":
    main()
