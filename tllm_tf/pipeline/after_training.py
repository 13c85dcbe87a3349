"""What the stages do to a model once it has trained, before it is evaluated and exported.

- `apply_prior_offsets` (`--prior_offsets`): the held-out split's per-class
  offsets added to the logits (every student, the reference included);
- `safeguards` (a distilled student only): the refit's safeguard
  (`--refit_fallback`, the tllm_refit student against the tllm student) and the
  reference's fallback (`--reference_fallback`, every distilled student
  against the label-only reference), each through `tllm_tf.held_out_check`.

A student a safeguard replaces is first saved as it was judged and evaluated
on the test split as the kept model is; the check's JSON records where its
model is and its own test accuracy. The decisions read the held-out split only.
Only the chief calls these.
"""

import json
import os

from tllm_tf import atomic
from tllm_tf import held_out_check
from tllm_tf import json_checks
from tllm_tf import prior_offsets as prior_offsets_lib
from tllm_tf.pipeline import build
from tllm_tf.pipeline import fitting
from tllm_tf.pipeline import model_io
from tllm_tf.pipeline import stage_inputs
from tllm_tf.pipeline import workdir as workdir_lib
from tllm_tf.pipeline.workdir_files import MODEL_BEFORE_REFERENCE_CHECK_FILE
from tllm_tf.pipeline.workdir_files import MODEL_BEFORE_REFIT_CHECK_FILE
from tllm_tf.pipeline.workdir_files import MODEL_FILE
from tllm_tf.pipeline.workdir_files import PRIOR_OFFSETS_FILE
from tllm_tf.pipeline.workdir_files import REFERENCE_CHECK_FILE
from tllm_tf.pipeline.workdir_files import REFIT_CHECK_FILE
from tllm_tf.pipeline.workdir_files import student_stage


def apply_prior_offsets(model, data, config, stage_dir):
    """Adds the held-out split's prior offsets to the model's logits; writes `prior_offsets.json`.

    The file also keeps the model's test accuracy without them, overall and
    per class, to compare with figures measured without offsets (the
    literature's); nothing in a run reads it.
    """
    without = fitting.per_class_on_test(model, data, config)
    result = prior_offsets_lib.apply_prior_offsets(
        model, build.eval_batches(data.held_out, config), data.num_classes)
    atomic.write_json(os.path.join(stage_dir, PRIOR_OFFSETS_FILE), dict(
        result, class_names=list(data.class_names),
        test_accuracy_without_offsets=without["accuracy"],
        test_per_class_accuracy_without_offsets=without["per_class_accuracy"]))
    fitting.say(config.verbose, True,
                f"{os.path.basename(stage_dir)}: prior offsets on the held-out split: accuracy "
                f"{result['held_out_accuracy_before']:.2%} -> "
                f"{result['held_out_accuracy_after']:.2%}")


def safeguards(student, kind, data, config, stage_dir, reference_path):
    """Runs the safeguards `config` turns on for a trained student of `kind`, in order.

    The refit's safeguard comes first, so that the reference's fallback judges
    whichever student it kept. The files of a safeguard that is off are
    removed: a killed run of this stage may have written them before a resume
    turned it off.

    Args:
        student: the trained student, its prior offsets added if any; its
            weights are replaced where a safeguard finds it behind.
        kind: the student's kind (`config_lib.STUDENTS`).
        data, config, stage_dir: the stage's.
        reference_path: the label-only reference's `reference.json` (its
            `model.keras` lies beside it).
    """
    if kind == "tllm_refit" and config.refit_fallback:
        _keep_baseline_if_behind(
            student, _trained_model_path(os.path.join(config.workdir, student_stage("tllm"))),
            ("refit", "tllm"), (REFIT_CHECK_FILE, MODEL_BEFORE_REFIT_CHECK_FILE),
            config.significance, data, config, stage_dir)
    else:
        _remove(stage_dir, REFIT_CHECK_FILE, MODEL_BEFORE_REFIT_CHECK_FILE)
    if config.reference_fallback:
        _keep_baseline_if_behind(
            student, stage_inputs.reference_model_path(reference_path),
            ("student", "reference"), (REFERENCE_CHECK_FILE, MODEL_BEFORE_REFERENCE_CHECK_FILE),
            config.reference_fallback_significance, data, config, stage_dir)
    else:
        _remove(stage_dir, REFERENCE_CHECK_FILE, MODEL_BEFORE_REFERENCE_CHECK_FILE)


def _trained_model_path(stage_dir):
    """A student stage's model as it trained: before its reference fallback, if that replaced it.

    The refit is judged against the tllm student as trained; where the fallback gave that
    student the reference's weights (its `REFERENCE_CHECK_FILE` says so), its `model.keras` is
    the reference, and its own model is `MODEL_BEFORE_REFERENCE_CHECK_FILE`.

    Raises:
        ValueError: naming the file and the fix, if the fallback replaced the student and its
            own model is not there (deleted, or a workdir of before it was kept), or if its
            `REFERENCE_CHECK_FILE` is damaged, not a regular file or over
            `json_checks.MAX_RESULT_BYTES`.
    """
    check_path = os.path.join(stage_dir, REFERENCE_CHECK_FILE)
    if not os.path.exists(check_path):
        return os.path.join(stage_dir, MODEL_FILE)
    remedy = f"Delete {stage_dir} to train the tllm student again."
    text = json_checks.read_capped(
        check_path, json_checks.MAX_RESULT_BYTES, kind="held-out check", remedy=remedy)
    try:
        kept = json.loads(text)["kept"]
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise ValueError(
            f"{check_path} is damaged ({type(error).__name__}: {error}). {remedy}") from None
    if kept not in ("student", "reference"):
        raise ValueError(f"{check_path} is damaged: kept must be 'student' or 'reference'. "
                         f"Received: {kept!r:.40}. {remedy}")
    replaced = kept == "reference"
    before = os.path.join(stage_dir, MODEL_BEFORE_REFERENCE_CHECK_FILE)
    if replaced and not os.path.exists(before):
        raise ValueError(
            f"{check_path} says the reference's fallback gave the tllm student the reference's "
            f"weights, and its own model ({before}) is not there, so the refit cannot be judged "
            f"against the tllm student as it trained. Delete {stage_dir} to train the tllm "
            "student again (or pass --norefit_fallback).")
    return before if replaced else os.path.join(stage_dir, MODEL_FILE)


def _keep_baseline_if_behind(student, baseline_path, names, files, significance, data, config,
                             stage_dir):
    """Gives the trained student the baseline's weights if it is behind them (`held_out_check`).

    A student that is replaced is first saved as it was judged, and evaluated on
    the test split as the kept model is (`fitting.per_class_on_test`); the
    check's JSON then records `own_model_file`, `own_test_accuracy` and
    `own_per_class_accuracy`. The decision itself reads the held-out split only.

    Args:
        student: the trained student (its prior offsets added, if any).
        baseline_path: the baseline's `model.keras` (the same architecture).
        names: `(candidate, baseline)` names for the JSON and the log.
        files: `(check_file, own_model_file)` in the student's stage folder: the
            comparison's JSON, and where a replaced student's own model goes.
        significance: the test's level.
        data, config, stage_dir: the stage's.
    """
    check_file, own_model_file = files
    baseline = model_io.load_keras_model(baseline_path, role=f"{names[1]} model")
    own = {}

    def save_and_evaluate(candidate):
        workdir_lib.save_model(candidate, os.path.join(stage_dir, own_model_file))
        record = fitting.per_class_on_test(candidate, data, config)
        own.update(own_model_file=own_model_file, own_test_accuracy=record["accuracy"],
                   own_per_class_accuracy=record["per_class_accuracy"])

    result = held_out_check.keep_baseline_if_behind(
        student, baseline, build.eval_batches(data.held_out, config), data.num_classes,
        significance, names, before_replacing=save_and_evaluate)
    if not own:  # A killed run's, resumed at a level that keeps the student.
        _remove(stage_dir, own_model_file)
    atomic.write_json(os.path.join(stage_dir, check_file), dict(result.to_json(), **own))
    kept_in = f"; its own model is kept in {own_model_file}" if own else ""
    fitting.say(config.verbose, True, f"{os.path.basename(stage_dir)}: {result.line()}{kept_in}")


def _remove(stage_dir, *names):
    """Removes the named files of the stage folder that exist."""
    for name in names:
        path = os.path.join(stage_dir, name)
        if os.path.exists(path):
            os.remove(path)
