"""A `tools/train.py` workdir's results, read and checked for the report.

`load_results` gathers each stage's test per-class accuracy
(`test_per_class.json`), the tllm student's mask history (`mask_log.jsonl`)
and the held-out checks' records into one results dict, the input of
`reporting`. A damaged file is an error naming the file and what to do, so
that the report never draws a run that is not there.

A results dict has `class_names`, `models` (compared columns; the first is
the baseline), `per_class` (name -> array, NaN where a class has no test
example), `accuracy` (name -> overall test accuracy), `num_samples`,
`final_mask` (array or None), `mask_history` (records of
`mask_log.jsonl`), `mask_in_progress` (True when that history is of a tllm
student that has not finished: `final_mask` is then None), `refit_check`
(the refit's `refit_check.json`, or None) and `reference_checks` (stage ->
its `reference_check.json`, for the students judged with
`--reference_fallback`) and `unfinished` (the stages that have begun but
have no `test_per_class.json`: killed, or still training; the tllm student
is left out of it while `mask_in_progress` says so).
`evaluation.evaluate_models` returns the same layout, without a mask.

It imports no TensorFlow (tools/report.py reads a workdir without it).
"""

import json
import os

from tllm_tf import atomic
from tllm_tf import json_checks
from tllm_tf.mask_log import load_mask_history
from tllm_tf.pipeline import workdir_files

# The compared columns of a workdir, in order; the first is the baseline.
COLUMNS = (workdir_files.REFERENCE_STAGE, workdir_files.student_stage("distilled"),
           workdir_files.student_stage("tllm"), workdir_files.student_stage("tllm_refit"))
# Where a held-out check that replaced the student keeps the student's own model.
_OWN_MODEL_FILES = (workdir_files.MODEL_BEFORE_REFIT_CHECK_FILE,
                    workdir_files.MODEL_BEFORE_REFERENCE_CHECK_FILE)


def _read_json(path, remedy):
    """A JSON object of the workdir; a damaged one is an error naming it and `remedy`.

    A FIFO, a device or a file over `json_checks.MAX_RESULT_BYTES` is refused unread.
    """
    # Not json_checks.read_json: a file that is not JSON is "damaged" here, as the rest are.
    text = json_checks.read_capped(
        path, json_checks.MAX_RESULT_BYTES, kind="result file", remedy=remedy)
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as error:  # Not JSON, not text, or nested too deep.
        raise ValueError(f"{path} is damaged: it is not valid JSON ({error}). {remedy}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} is damaged: it holds a JSON {type(record).__name__}, not an "
                         f"object. {remedy}")
    return record


def _require(path, record, keys, remedy):
    missing = [key for key in keys if not isinstance(record, dict) or key not in record]
    if missing:
        raise ValueError(f"{path} is damaged: it has no {', '.join(missing)}. {remedy}")


def read_per_class(stage_dir, remedy=None):
    """A stage's `test_per_class.json`, checked: its keys, and one value per class.

    Args:
        stage_dir: the stage's folder (`<workdir>/<stage>`).
        remedy: what the error for a damaged file tells the user to do.
            Defaults to `None`: report without the stage, or train and
            evaluate it again with tools/train.py.

    Returns:
        `(class_names, per-class accuracy array, accuracy, num_samples or None)`;
        the array has NaN for a class without test images.

    Raises:
        ValueError: naming the file and what to do, if it is damaged.
    """
    path = os.path.join(stage_dir, workdir_files.PER_CLASS_FILE)
    if remedy is None:
        stage = os.path.basename(stage_dir)
        remedy = (f"Delete it to report without {stage}, or delete {stage_dir} and re-run "
                  f"tools/train.py with the run's flags to train and evaluate {stage} again.")
    record = _read_json(path, remedy)
    _require(path, record, ("class_names", "per_class_accuracy", "accuracy"), remedy)
    try:
        per_class = atomic.floats_from_json(record["per_class_accuracy"])
        accuracy = float(record["accuracy"])
        names = list(record["class_names"])
        num_samples = record.get("num_samples")
        sizes = {len(per_class), len(names), len(num_samples or names)}
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} is damaged: {error}. {remedy}") from None
    if len(sizes) > 1 or per_class.ndim != 1:
        counts = "" if num_samples is None else f" and {len(num_samples)} num_samples"
        raise ValueError(f"{path} is damaged: it has {len(per_class)} per-class accuracies"
                         f"{counts} for {len(names)} classes. {remedy}")
    problem = _value_problem(record)
    if problem:
        raise ValueError(f"{path} is damaged: {problem}. {remedy}")
    return names, per_class, accuracy, num_samples


def _value_problem(record):
    """What is out of range in a `test_per_class.json` of the right sizes, or `None`.

    A class without test images has a null (or NaN) accuracy; the overall
    accuracy and the counts are always there.
    """
    problem = json_checks.accuracy_problem("per_class_accuracy", record["per_class_accuracy"])
    if problem:
        return problem
    accuracy = record["accuracy"]
    if not (json_checks.is_number(accuracy) and 0 <= accuracy <= 1):
        return f"accuracy must be an accuracy in [0, 1]. Received: {accuracy!r:.40}"
    counts = record.get("num_samples")
    if counts is not None and not isinstance(counts, list):
        return f"num_samples must be a list of counts or null. Received: {counts!r:.40}"
    return json_checks.count_problem("num_samples", counts or ())


def _check_same_classes(class_names):
    """Refuses `test_per_class.json` files (path -> their class names) of different classes."""
    (first, names), *others = class_names.items()
    for path, other in others:
        if other != names:
            raise ValueError(
                f"{path} names other classes ({len(other)}) than {first} ({len(names)}): one "
                "of them is of another run, or damaged. Delete that one to report without its "
                "stage, or delete the stage's folder and re-run tools/train.py with the run's "
                "flags to train and evaluate it again.")


def load_results(workdir):
    """Reads each stage's test per-class accuracy and TLLM's mask history.

    The tllm student's mask is final only once the student has finished (its
    `test_per_class.json` exists); before that its history is read to the
    last complete update, `final_mask` is None and `mask_in_progress` True.

    Args:
        workdir: a `tools/train.py` workdir.

    Returns:
        A results dict (see the module docstring); `per_class` and
        `accuracy` also hold the teacher's when it was trained there.

    Raises:
        FileNotFoundError: if no stage has a `test_per_class.json`.
        ValueError: naming the file and what to do, if a file it reads is damaged.
    """
    per_class, accuracy, class_names, num_samples = {}, {}, {}, None
    for stage in (workdir_files.TEACHER_STAGE,) + COLUMNS:
        path = os.path.join(workdir, stage, workdir_files.PER_CLASS_FILE)
        if os.path.exists(path):
            class_names[path], per_class[stage], accuracy[stage], num_samples = (
                read_per_class(os.path.join(workdir, stage)))
    if not per_class:
        raise FileNotFoundError(
            f"Expected a workdir with <stage>/{workdir_files.PER_CLASS_FILE} files. "
            f"Received: {workdir!r}")
    _check_same_classes(class_names)
    class_names = next(iter(class_names.values()))
    tllm_finished = workdir_files.student_stage("tllm") in per_class
    history = _mask_history(workdir, len(class_names), tllm_finished)
    mask_in_progress = bool(history) and not tllm_finished
    unfinished = [stage for stage in COLUMNS
                  if stage not in per_class and os.path.isdir(os.path.join(workdir, stage))
                  and not (mask_in_progress and stage == workdir_files.student_stage("tllm"))]
    check_path = os.path.join(workdir, workdir_files.student_stage("tllm_refit"),
                              workdir_files.REFIT_CHECK_FILE)
    return {"class_names": class_names,
            "models": [stage for stage in COLUMNS if stage in per_class],
            "per_class": per_class, "accuracy": accuracy, "num_samples": num_samples,
            "final_mask": history[-1]["class_mask"] if history and tllm_finished else None,
            "mask_history": history,
            "mask_in_progress": mask_in_progress,
            "unfinished": unfinished,
            "refit_check": (read_check(check_path, ("refit", "tllm"))
                            if os.path.exists(check_path) else None),
            "reference_checks": _reference_checks(workdir)}


def read_mask_history(path, num_classes, skip_torn_last_line=False):
    """`mask_log.load_mask_history`, refused unless every mask has `num_classes` classes.

    Args:
        path: a tllm student's `mask_log.jsonl`.
        num_classes: the classes of the report.
        skip_torn_last_line: leave out a last line cut short by a kill (a
            student still training). Defaults to `False`.

    Returns:
        The records of `load_mask_history`.

    Raises:
        ValueError: naming the file, for a damaged line or a mask of another size.
    """
    history = load_mask_history(path, skip_torn_last_line=skip_torn_last_line)
    sizes = sorted({record["class_mask"].size for record in history} - {num_classes})
    if sizes:
        raise ValueError(
            f"{path} has masks of {', '.join(map(str, sizes))} classes, but the report has "
            f"{num_classes}: it is of another data set, or damaged. Report without it "
            "(move it away).")
    return history


def _mask_history(workdir, num_classes, finished):
    """The tllm student's mask updates; a torn last line is left out while it has not finished."""
    path = os.path.join(workdir, workdir_files.student_stage("tllm"), workdir_files.MASK_LOG_FILE)
    if not os.path.exists(path):
        return []
    return read_mask_history(path, num_classes, skip_torn_last_line=not finished)


def read_check(path, names=("student", "reference"),
               remedy="Delete it to report without that check."):
    """A held-out check's JSON, checked to have the keys `_check_line` reads for `names`,
    of the types and in the ranges it words them with (`_check_problem`).

    Args:
        path: the check's JSON file.
        names: its `(candidate, baseline)` names. Defaults to the reference's
            fallback's.
        remedy: what the message tells the user to do with a damaged file.
            Defaults to deleting it (the report then leaves that check out).

    Raises:
        ValueError: naming the file and `remedy`, if it is damaged.
    """
    check = _read_json(path, remedy)
    _require(path, check, ["kept", "p_value"] + [f"{name}_accuracy" for name in names], remedy)
    problem = _check_problem(check, names)
    if problem:
        raise ValueError(f"{path} is damaged: {problem}. {remedy}")
    return check


def _check_problem(check, names):
    """What in a held-out check's record of the right keys is of a wrong type or range, or `None`.

    `significance` is missing from records of before it was recorded, and the
    student's own test accuracy and model file are there only when it was replaced.
    """
    if check["kept"] not in names:
        return f"kept must be {names[0]!r} or {names[1]!r}. Received: {check['kept']!r:.40}"
    for key in (f"{names[0]}_accuracy", f"{names[1]}_accuracy", "p_value", "own_test_accuracy"):
        value = check.get(key, 0.0)
        if not (json_checks.is_number(value) and 0 <= value <= 1):
            return f"{key} must be a number in [0, 1]. Received: {value!r:.40}"
    significance = check.get("significance")
    if not (significance is None or (json_checks.is_number(significance)
                                     and 0 < significance < 1)):
        return (f"significance must be a number in (0, 1) or null. "
                f"Received: {significance!r:.40}")
    own_file = check.get("own_model_file")
    if "own_test_accuracy" in check and own_file not in _OWN_MODEL_FILES:
        return (f"own_model_file must be one of {', '.join(_OWN_MODEL_FILES)}. "
                f"Received: {own_file!r:.80}")
    return None


def _reference_checks(workdir):
    """Stage -> its `reference_check.json`, for the students judged with --reference_fallback."""
    checks = {}
    for stage in COLUMNS:
        path = os.path.join(workdir, stage, workdir_files.REFERENCE_CHECK_FILE)
        if os.path.exists(path):
            checks[stage] = read_check(path, ("student", "reference"))
    return checks
