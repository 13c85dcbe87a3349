"""A two-pass TLLM whose first pass judges with calibrated probabilities (docs/study.md).

`score_power.py` found that a paired t-test on each held-out image's calibrated
probability of its true class finds the classes KD hurts far more often than the
rule's exact test on the discordant images. Does masking what it finds recover
them? For every seed and setting of a study run with `--arms=kd`
(`runs/score_a`, `runs/score_b`), this script:
1. judges the stored KD student against the stored label-only student on the
   held-out split with that test (`score_power.p_values`, score `calibrated`), at
   the default rule's level for one look, 0.05 / 10, with Holm's correction over
   the classes (fixed before any seed was run through this script);
2. where it finds classes behind, trains through `tools/train.py` the student
   that masks them from its first step with the refit's policy (`soft_label`),
   the rule never looking again (`--warmup_epochs` = `--epochs`), from the run's
   own teacher and label-only reference; where it finds none, that student is
   the KD student (masking nothing is KD bit for bit, a tested guarantee), so
   KD's record stands for it;
3. writes one record per seed and setting to `--out` (JSON lines, resumes).

Then the table: this student minus KD overall and on each class KD hurts beyond
noise, paired by seed, seeds 0-9 and 10-19 apart and together.

    .venv/bin/python results/study_fashion/prior_offsets/calibrated_refit.py \
        --cache=runs/score_cache --out=runs/calibrated_refit.jsonl \
        --workdirs=runs/calibrated_refit runs/score_a runs/score_b > calibrated_refit.md
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import apply  # noqa: E402
import score_power  # noqa: E402

from tllm_tf import identification  # noqa: E402
from tllm_tf.analysis import study_stats  # noqa: E402
from tllm_tf.analysis import workdir_results  # noqa: E402
from tllm_tf.pipeline import workdir_files  # noqa: E402

LEVEL = 0.05 / 10
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def masked_classes(students, record, cache):
    splits = score_power.cached_logits(students, record, cache)
    num_classes = splits["held_out"][0].shape[1]
    p_values = score_power.p_values(*splits["held_out"], num_classes)["calibrated"]
    return [int(c) for c in np.flatnonzero(identification.reject(p_values, LEVEL, "holm"))]


def train_masked(record, classes, seed_dir, workdir):
    """Trains the student masking `classes` from its first step; returns its test results."""
    setting = os.path.join(seed_dir, record["student"])
    command = [
        sys.executable, "tools/train.py", "--flagfile=configs/study_fashion.flags",
        f"--workdir={workdir}", f"--seed={record['seed']}",
        f"--student_model={record['student']}", f"--teacher_model={record['teacher']}",
        f"--teacher_path={seed_dir}/teacher_{record['teacher']}/teacher/model.keras",
        f"--reference_path={setting}/reference/reference/reference.json",
        "--students=tllm", f"--masked_classes={','.join(map(str, classes))}",
        "--masked_class_policy=soft_label", "--warmup_epochs=20"]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    _, per_class, accuracy, _ = workdir_results.read_per_class(
        os.path.join(workdir, workdir_files.student_stage("tllm")))
    return {"accuracy": accuracy, "per_class_accuracy": per_class.tolist()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="score_power.py's logits folder")
    parser.add_argument("--out", required=True, help="the records (JSON lines); resumes")
    parser.add_argument("--workdirs", required=True, help="where the masked students train")
    parser.add_argument("--report_only", action="store_true", help="no training: the table")
    parser.add_argument("roots", nargs="+", help="study roots with results.jsonl and seed<s>/")
    args = parser.parse_args()
    students = apply.StoredStudents(args.roots)
    records = [r for root in args.roots
               for r in apply.read_records(os.path.join(root, "results.jsonl"))]
    kd = {(r["seed"], r["student"], r["teacher"]): r for r in records if r["arm"] == "kd"}
    labels = {(r["seed"], r["student"]): r for r in records if r["arm"] == "labels"}
    done = apply.read_records(args.out) if os.path.exists(args.out) else []
    keys = {(r["seed"], r["student"], r["teacher"]) for r in done}
    order = ("mlp_1024", "mlp_256", "mlp_64")
    with open(args.out, "a") as out:
        for key in sorted(kd, key=lambda k: (k[0], k[1] != "mlp_16", order.index(k[2])
                                             if k[2] in order else 9)):
            if args.report_only or key in keys:
                continue
            record = kd[key]
            classes = masked_classes(students, record, args.cache)
            result = {"seed": key[0], "student": key[1], "teacher": key[2], "masked": classes}
            if classes:
                workdir = os.path.join(args.workdirs, f"seed{key[0]}", key[1], key[2])
                trained = train_masked(record, classes, students.seed_dirs[key[0]], workdir)
                result.update(accuracy=trained["accuracy"],
                              per_class_accuracy=trained["per_class_accuracy"])
            else:
                result.update(accuracy=record["accuracy"],
                              per_class_accuracy=record["per_class_accuracy"])
            out.write(json.dumps(result) + "\n")
            out.flush()
            done.append(result)
            print(*key, classes, f"{result['accuracy']:.4f} (KD {record['accuracy']:.4f})",
                  file=sys.stderr, flush=True)
    report(done, kd, labels, records[0]["class_names"])


def report(done, kd, labels, class_names):
    by_setting = apply.by_setting(done)
    print("| student, teacher | seeds | classes masked (mean) | minus KD, seeds 0-9 | "
          "fresh seeds 10-19 | all |")
    print("|---|---|---|---|---|---|")
    per_class_lines = []
    for (student, teacher), rows in sorted(by_setting.items()):
        rows.sort(key=lambda r: r["seed"])
        kd_rows = [kd[(r["seed"], student, teacher)] for r in rows]
        ours = 100 * np.array([r["accuracy"] for r in rows])
        theirs = 100 * np.array([r["accuracy"] for r in kd_rows])
        first = np.array([r["seed"] < 10 for r in rows])
        cells = [apply.paired_cell(ours[m], theirs[m]) if m.sum() > 1 else "-"
                 for m in (first, ~first, np.ones_like(first))]
        print(f"| `{student}`, `{teacher}` | {len(rows)} | "
              f"{np.mean([len(r['masked']) for r in rows]):.1f} | " + " | ".join(cells) + " |")
        ours_c = 100 * np.array([r["per_class_accuracy"] for r in rows])
        kd_c = 100 * np.array([r["per_class_accuracy"] for r in kd_rows])
        labels_c = 100 * np.array([labels[(r["seed"], student)]["per_class_accuracy"]
                                   for r in rows])
        for c, name in enumerate(class_names):
            hurt = study_stats.paired_difference(kd_c[:, c], labels_c[:, c])
            if hurt["ci_high"] >= 0:
                continue
            masked = np.mean([c in r["masked"] for r in rows])
            cells = [apply.paired_cell(a, b) for a, b in ((kd_c[:, c], labels_c[:, c]),
                                                          (ours_c[:, c], kd_c[:, c]),
                                                          (ours_c[:, c], labels_c[:, c]))]
            per_class_lines.append(f"| `{student}`, `{teacher}` | {name} | {cells[0]} | "
                                   f"{masked:.0%} | {cells[1]} | {cells[2]} |")
    print("\nPer class KD hurts beyond noise (all seeds): KD minus labels; the share of seeds "
          "masked; this student minus KD; minus labels (points)\n")
    print("| student, teacher | class | KD minus labels | masked | minus KD | minus labels |")
    print("|---|---|---|---|---|---|")
    print("\n".join(per_class_lines))


if __name__ == "__main__":
    main()
