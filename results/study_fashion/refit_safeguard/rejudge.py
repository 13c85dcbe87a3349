"""Re-judges stored refits with the refit's safeguard, without training (docs/study.md).

The `tllm_refit` student keeps the tllm student's weights when it is behind
them on the held-out split (`tllm_tf.held_out_check`). Seeds 0-29 of the
study were trained before that safeguard, as the arms `tllm_patience2` (the
tllm student) and `tllm_two_pass_soft_label` (the refit without the
safeguard, bit for bit). For each seed, student and teacher that has both,
this script loads the two stored students, calls the same
`held_out_check.check` the stage calls, on the same held-out split, and writes a
`tllm_refit` record: the refit's, or the tllm student's when the refit is
behind. `--second=tllm_two_pass_class_mean --guarded=tllm_refit_class_mean`
does the same for the refit under the policy `class_mean`. Records go to `<out>/results.jsonl` (the input records and these),
the decisions to `<out>/decisions.jsonl`; `tools/study.py --report_only
--root=<out>` reports them.

`--per_class` asks a stricter question instead (not the library's safeguard):
is the refit behind the tllm student on any one class, by the same test per
class with Holm's correction at the same level? It prints how many refits
that would revert.

    .venv/bin/python results/study_fashion/refit_safeguard/rejudge.py \
        --results=runs/study_all30/results.jsonl --out=runs/study_rejudged \
        runs/study_a runs/study_b runs/study_c runs/study_d
"""

import argparse
import json
import os

import numpy as np

from tllm_tf import held_out_check
from tllm_tf import identification
from tllm_tf import metrics as metrics_lib
from tllm_tf.pipeline import build
from tllm_tf.pipeline import config as config_lib
from tllm_tf.pipeline import model_io
from tllm_tf.pipeline import workdir_files

FIRST = "tllm_patience2"


def _model_path(arm_dir):
    # A second pass whose first masked nothing was trained as KD ("distilled").
    for student in ("tllm", "distilled"):
        path = os.path.join(arm_dir, workdir_files.student_stage(student), workdir_files.MODEL_FILE)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"No finished student under {arm_dir}")


def _classes_behind(refit, tllm, data, config):
    """The classes on which the refit is behind the tllm student (per-class test, Holm)."""
    held_out = build.eval_batches(data.held_out, config)
    refit_correct, labels = metrics_lib.PerImageCorrectness(refit, data.num_classes)(held_out)
    tllm_correct, _ = metrics_lib.PerImageCorrectness(tllm, data.num_classes)(held_out)
    behind, ahead = identification.discordant_counts(
        refit_correct, tllm_correct, labels, data.num_classes)
    rejected = identification.reject(identification.binomial_upper_tail(behind, behind + ahead),
                                     config.significance, "holm")
    return [data.class_names[c] for c in np.flatnonzero(rejected)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="results.jsonl of the stored runs")
    parser.add_argument("--out", required=True, help="where the re-judged results go")
    parser.add_argument("--per_class", action="store_true",
                        help="count the refits behind on any one class instead (Holm)")
    parser.add_argument("--second", default="tllm_two_pass_soft_label",
                        help="the stored second pass (the unguarded refit)")
    parser.add_argument("--guarded", default="tllm_refit",
                        help="the arm the re-judged records are written as")
    parser.add_argument("roots", nargs="+", help="study roots holding the seed<s>/ folders")
    args = parser.parse_args()
    with open(args.results) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    by_key = {(r["seed"], r["student"], r["teacher"], r["arm"]): r for r in records}
    seed_dirs = {int(name[len("seed"):]): os.path.join(root, name)
                 for root in args.roots for name in os.listdir(root) if name.startswith("seed")}
    os.makedirs(args.out, exist_ok=True)
    judged, data_of_seed = [], {}
    for (seed, student, teacher, arm), second in sorted(by_key.items()):
        if arm != args.second or (seed, student, teacher, FIRST) not in by_key:
            continue
        base = os.path.join(seed_dirs[seed], student, teacher)
        with open(os.path.join(base, FIRST, workdir_files.CONFIG_FILE)) as handle:
            config = config_lib.RunConfig.from_json(handle.read())
        if seed not in data_of_seed:
            data_of_seed = {seed: build.load_data(config)}
        data = data_of_seed[seed]
        refit, tllm = (model_io.load_keras_model(_model_path(os.path.join(base, name)))
                       for name in (args.second, FIRST))
        if args.per_class:
            behind_classes = _classes_behind(refit, tllm, data, config)
            judged.append((None, {"seed": seed, "student": student, "teacher": teacher,
                                  "classes_behind": behind_classes}))
            print(seed, student, teacher, behind_classes, flush=True)
            continue
        check = held_out_check.check(refit, tllm, build.eval_batches(data.held_out, config),
                                     data.num_classes, config.significance, ("refit", "tllm"))
        kept = by_key[(seed, student, teacher, FIRST)] if check.candidate_behind else second
        judged.append((dict(kept, arm=args.guarded),
                       dict(check.to_json(), seed=seed, student=student, teacher=teacher)))
        print(seed, student, teacher, check.line(), flush=True)
    if args.per_class:
        reverted = sum(bool(decision["classes_behind"]) for _, decision in judged)
        print(f"behind on at least one class: {reverted} of {len(judged)} refits")
        return
    with open(os.path.join(args.out, "results.jsonl"), "w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records if r["arm"] != args.guarded)
        handle.writelines(json.dumps(record) + "\n" for record, _ in judged)
    with open(os.path.join(args.out, "decisions.jsonl"), "w") as handle:
        handle.writelines(json.dumps(decision) + "\n" for _, decision in judged)


if __name__ == "__main__":
    main()
