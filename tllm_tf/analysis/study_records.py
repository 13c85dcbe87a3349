"""The accuracy study's records: a finished run's result, and the study's `results.jsonl`.

`collect` reads what a run's workdir holds (test accuracy overall and per
class, the masks of its updates); `run_study` appends each record to
`<root>/results.jsonl` as the run finishes, and `finished` reads them back,
checked, so that a study run again skips what it has done.
"""

import json
import os

import numpy as np

from tllm_tf import atomic
from tllm_tf import json_checks
from tllm_tf import mask_log
from tllm_tf.analysis import study_stats
from tllm_tf.analysis import workdir_results
from tllm_tf.analysis.study_arms import LABELS_ARM
from tllm_tf.analysis.study_arms import TEACHER_ARM
from tllm_tf.pipeline import stage_inputs
from tllm_tf.pipeline import workdir_files

RESULTS_FILE = "results.jsonl"
_REBUILT = ("A study's results.jsonl is rebuilt from the runs' workdirs, without training, for "
            "the runs it lacks.")


def _read_jsonl(path):
    """The records of the study's `results.jsonl` at `path` (none: `[]`).

    Raises:
        ValueError: naming the file, if it is not a regular file (a FIFO, a
            device), is over `json_checks.MAX_LOG_BYTES`, or has a line that
            is not JSON.
    """
    if not os.path.exists(path):
        return []
    text = json_checks.read_log_text(path, kind="study's results", remedy=f"Delete it. {_REBUILT}")
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path} is damaged at line {number} ({error.msg}; a process killed while "
                f"writing it leaves a cut line): delete that line. {_REBUILT}") from None
    return records


def stage_dirs(run):
    """The folders of the stages `run` trains, in the order they train."""
    if run.arm == TEACHER_ARM:
        names = [workdir_files.TEACHER_STAGE]
    elif run.arm == LABELS_ARM:
        names = [workdir_files.REFERENCE_STAGE]
    else:
        names = [workdir_files.student_stage(student) for student in run.config.students]
    return [os.path.join(run.config.workdir, name) for name in names]


def collect(run):
    """The result record of a finished run (test accuracy, per class, masks).

    The record is the last student's of the run (the refit's, when it has one).
    """
    config = run.config
    student = config.students[-1] if run.arm not in (TEACHER_ARM, LABELS_ARM) else None
    stage_dir = stage_dirs(run)[-1]
    class_names, per_class_accuracy, accuracy, _ = workdir_results.read_per_class(
        stage_dir, remedy=f"Delete {stage_dir} and run the study again with the same flags "
        "to train and evaluate it again.")
    fallback = _fallback_outcome(stage_dir) if student else None
    masked_classes = config.masked_classes
    if student == "tllm_refit":
        stage_dir, masked_classes = _refit_masks_source(config, stage_dir, len(class_names))
    masks = _masks(stage_dir)
    if not masks and masked_classes:  # No update: its fixed mask, at every epoch.
        mask = np.ones(len(class_names))
        mask[list(masked_classes)] = 0.0
        masks = [mask.tolist()] * config.epochs
    return {
        "seed": run.seed, "student": run.student, "teacher": run.teacher, "arm": run.arm,
        "accuracy": accuracy,
        "per_class_accuracy": atomic.json_floats(per_class_accuracy),
        "class_names": class_names,
        "masks": masks,
        # Masked before the first update: what a mask change is counted from.
        "masked_from_start": sorted(int(c) for c in masked_classes),
        # With --reference_fallback, "reference" where the label-only student's weights were
        # handed over; absent without it.
        **({"kept": fallback} if fallback else {}),
    }


def _fallback_outcome(stage_dir):
    """What a student stage's reference fallback kept (`"student"` or `"reference"`), or None."""
    path = os.path.join(stage_dir, workdir_files.REFERENCE_CHECK_FILE)
    return _read_run_check(path, ("student", "reference")) if os.path.exists(path) else None


def _read_run_check(path, names):
    """What a study run's held-out check kept; a damaged one is named, with the study's fix."""
    remedy = ("Delete the workdir of that run and run the study again with the same flags to "
              "train it again (deleting the file alone would report the run as unchecked).")
    return workdir_results.read_check(path, names, remedy=remedy)["kept"]


def _masks(stage_dir):
    """The masks of a stage's mask log, one list per update (none: no log)."""
    path = os.path.join(stage_dir, workdir_files.MASK_LOG_FILE)
    if not os.path.exists(path):
        return []
    return [record["class_mask"].tolist() for record in mask_log.load_mask_history(path)]


def _refit_masks_source(config, refit_dir, num_classes):
    """Where a refit's masks come from: `(stage folder, fixed masked classes)`.

    A refit that kept the tllm student's weights (`refit_check.json`) is that
    student, masks and all; otherwise it trained with the tllm student's final
    mask at every epoch.
    """
    tllm_dir = os.path.join(config.workdir, workdir_files.student_stage("tllm"))
    check_path = os.path.join(refit_dir, workdir_files.REFIT_CHECK_FILE)
    if os.path.exists(check_path) and _read_run_check(check_path, ("refit", "tllm")) == "tllm":
        return tllm_dir, config.masked_classes
    return refit_dir, stage_inputs.read_final_mask(config.workdir, num_classes)


def record_key(record):
    """A record's key among the records: `(seed, student, teacher, arm)`."""
    return (record["seed"], record["student"], record["teacher"], record["arm"])


def run_key(run):
    """A `StudyRun`'s key among the records: `(seed, student, teacher, arm)`."""
    return (run.seed, run.student, run.teacher, run.arm)


_RECORD_FIELDS = ("seed", "student", "teacher", "arm", "accuracy", "per_class_accuracy",
                  "class_names", "masks")


def finished(root):
    """The result records of `root/results.jsonl`, by run."""
    path = os.path.join(root, RESULTS_FILE)
    records = _read_jsonl(path)
    for number, record in enumerate(records, start=1):
        missing = [field for field in _RECORD_FIELDS
                   if not isinstance(record, dict) or field not in record]
        if missing:
            raise ValueError(
                f"Record {number} of {path} lacks {missing}: it was not written by "
                "tools/study.py. Delete it; the runs it lacks are rebuilt from their "
                "workdirs, without training.")
    return {record_key(record): record for record in records}


def final_masked_classes(record):
    """The classes a finished run's record shows masked at its last update (none: `()`)."""
    masked = study_stats.mask_matrix(record["masks"])
    return tuple(int(c) for c in np.flatnonzero(masked[-1])) if len(masked) else ()


def finished_records(runs, root):
    """The result records of the runs of `runs` that `root/results.jsonl` holds."""
    done = finished(root)
    return [done[run_key(run)] for run in runs if run_key(run) in done]


def coverage(runs, root, shown=3):
    """What a report of `runs` leaves out of `root`: lines to print, none if nothing.

    Two processes given other seeds share a root, and each reports its own
    plan; a `--report_only` of seeds that never ran reports fewer.

    Args:
        runs: the `StudyRun`s of the plan reported.
        root: the study's output folder.
        shown: how many runs each line names at most. Defaults to 3.

    Returns:
        A list of strings: the plan's runs that have not finished, and the
        finished runs of `root` outside the plan.
    """
    done = finished(root)
    planned = {run_key(run) for run in runs}
    unfinished = [key for key in (run_key(run) for run in runs) if key not in done]
    others = [key for key in done if key not in planned]
    lines = []
    if unfinished:
        lines.append(f"{len(unfinished)} of this command's {_count(len(planned), 'run')} "
                     f"{'has' if len(unfinished) == 1 else 'have'} not finished "
                     f"({_keys_text(unfinished, shown)}), so the report leaves "
                     f"{'it' if len(unfinished) == 1 else 'them'} out: run the same command "
                     f"without --report_only to train {'it' if len(unfinished) == 1 else 'them'}.")
    if others:
        seeds = sorted({key[0] for key in others})
        arms = sorted({key[3] for key in others})
        lines.append(f"{root} also holds {_count(len(others), 'finished run')} this command "
                     f"did not name ({_keys_text(others, shown)}; "
                     f"{_count(len(seeds), 'seed', False)} {', '.join(map(str, seeds))}, "
                     f"{_count(len(arms), 'arm', False)} {', '.join(arms)}): name them in "
                     "--seeds, --student_models, --teacher_models and --arms, with "
                     "--report_only, for one report of all.")
    return lines


def _count(number, noun, with_number=True):
    """`1 run`, `2 runs`; the noun alone where `with_number` is False."""
    word = noun if number == 1 else f"{noun}s"
    return f"{number} {word}" if with_number else word


def _keys_text(keys, shown):
    """`seed 7 mlp_16 mlp_256 kd, ...` for the first `shown` of `keys`."""
    text = ", ".join(f"seed {seed} " + " ".join(part for part in (student, teacher) if part)
                     + f" {arm}" for seed, student, teacher, arm in keys[:shown])
    return text + (f" and {len(keys) - shown} more" if len(keys) > shown else "")
