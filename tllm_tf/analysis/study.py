"""The accuracy study: label-only, KD and TLLM students over seeds, through the pipeline.

Checks the claims of Teach Less, Learn More (Zhu et al., NeurIPS 2022) with
the code users run: every model of the study is trained by
`tllm_tf.pipeline.stages.run` from a `RunConfig`, exactly as `tools/train.py` would
train it. For each seed, each student architecture and each teacher:

    <root>/seed<s>/teacher_<teacher>/        the teacher (stage "teacher")
    <root>/seed<s>/<student>/reference/      the label-only student ("reference")
    <root>/seed<s>/<student>/<teacher>/<arm>/   one distilled student per arm

An *arm* is a named set of `RunConfig` overrides (`study_arms.ARMS`): plain KD,
`default` (TLLM as tools/train.py trains it with the same flags), and the
variants of the rule and the masked-class policy the defaults were chosen
among, each with the values it was run with. Every student of one seed shares the
data split, the initial weights and the batches. Finished runs are skipped
when the study is run again (each stage resumes like `tools/train.py`), and
each run's result (with its wall time, `seconds`, and whether it `resumed` a
run an earlier process began) is appended to `<root>/results.jsonl` as it
finishes.
"""

import dataclasses
import json
import os
import time

from tllm_tf import atomic
from tllm_tf.analysis import study_records
from tllm_tf.analysis.study_arms import ARMS
from tllm_tf.analysis.study_arms import LABELS_ARM
from tllm_tf.analysis.study_arms import MASKED_CLASSES_FROM
from tllm_tf.analysis.study_arms import PAIRED_WITH
from tllm_tf.analysis.study_arms import PER_RUN_FIELDS
from tllm_tf.analysis.study_arms import TEACHER_ARM
from tllm_tf.pipeline import config as config_lib
from tllm_tf.pipeline import stages
from tllm_tf.pipeline import workdir as workdir_lib

SHARED_STORE_DIR = "teacher_store"


class MixedStudyError(ValueError):
    """A study root holds finished runs of another configuration than the plan's."""


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """One model of the study: where it goes and its configuration."""

    seed: int
    student: str
    teacher: str
    arm: str
    config: config_lib.RunConfig
    # The arm whose final mask this run masks from its first step ("": none); run_study sets
    # `config.masked_classes` from it once that run has finished.
    masked_classes_from: str = ""


def plan(base, *, root, seeds, student_models, teacher_models, arms, teacher_overrides=None,
         shared_teacher_store=False):
    """The study's runs, in the order they are trained.

    Args:
        base: `RunConfig` keyword arguments shared by every run (not
            `workdir`, `stage`, `seed`, the models or the students).
        root: the study's output folder.
        seeds: the seeds.
        student_models: student architectures (model zoo names).
        teacher_models: teacher architectures, small to large.
        arms: names of `ARMS`.
        teacher_overrides: `RunConfig` overrides of the teacher runs only
            (e.g. `{"num_train": None}`: teachers see the whole training
            split). Defaults to `None`.
        shared_teacher_store: if True, the distilled arms of one seed, student
            and teacher read one `SoftLabelStore` of the teacher's logits,
            `<root>/seed<s>/<student>/<teacher>/teacher_store`, built by the
            first of them: the teacher runs once instead of once per arm.
            Defaults to False (every arm runs the live teacher).

    Returns:
        A list of `StudyRun`; teachers and references come before the
        students that need them.

    Raises:
        ValueError: on an unknown arm or a configuration `RunConfig` refuses.
    """
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        raise ValueError(f"Unknown arms {unknown}. Expected some of {sorted(ARMS)}.")
    for index, arm in enumerate(arms):
        source = ARMS[arm].get(MASKED_CLASSES_FROM)
        if source and source not in arms[:index]:
            raise ValueError(
                f"The arm {arm} masks the classes that the arm {source} masked at its end, so "
                f"{source} must run first: add it to the arms before {arm}.")
    runs = []
    for seed in seeds:
        seed_dir = os.path.join(root, f"seed{seed}")
        common = dict(base, seed=seed)
        for teacher in teacher_models:
            runs.append(StudyRun(seed, "", teacher, TEACHER_ARM, config_lib.RunConfig(
                **dict(common, **(teacher_overrides or {})),
                workdir=os.path.join(seed_dir, f"teacher_{teacher}"),
                stage="teacher", teacher_model=teacher)))
        for student in student_models:
            reference_workdir = os.path.join(seed_dir, student, "reference")
            runs.append(StudyRun(seed, student, "", LABELS_ARM, config_lib.RunConfig(
                **common, workdir=reference_workdir, stage="reference",
                student_model=student)))
            for teacher in teacher_models:
                for arm in arms:
                    overrides = dict(ARMS[arm])
                    masked_classes_from = overrides.pop(MASKED_CLASSES_FROM, "")
                    overrides.pop(PAIRED_WITH, None)  # The report's, not the run's.
                    if masked_classes_from:  # No update: the first pass's mask, as it is.
                        overrides["warmup_epochs"] = common["epochs"]
                    workdir = os.path.join(seed_dir, student, teacher, arm)
                    if overrides.get("teacher_store"):  # An arm's store lives in its run.
                        overrides["teacher_store"] = os.path.join(
                            workdir, overrides["teacher_store"])
                    elif shared_teacher_store:
                        overrides["teacher_store"] = os.path.join(
                            seed_dir, student, teacher, SHARED_STORE_DIR)
                    runs.append(StudyRun(seed, student, teacher, arm, config_lib.RunConfig(
                        **dict(common, **overrides),
                        workdir=workdir,
                        stage="student", student_model=student, teacher_model=teacher,
                        teacher_path=os.path.join(seed_dir, f"teacher_{teacher}", "teacher",
                                                  stages.MODEL_FILE),
                        reference_path=os.path.join(reference_workdir, "reference",
                                                    stages.REFERENCE_FILE)),
                        masked_classes_from=masked_classes_from))
    return runs


def run_study(runs, root, report=print, checked_runs=None):
    """Trains every run not yet finished; appends each result to `root/results.jsonl`.

    Args:
        runs: the `StudyRun`s of `plan`.
        root: the study's output folder.
        report: called with one line after each run (progress and the time
            left). Defaults to `print`.
        checked_runs: the runs whose finished ones are checked against their
            workdirs before anything trains (`widened_plan`: every run of the
            root). Defaults to `None`: `runs`.

    Returns:
        The result records of every run, in `runs` order.

    Raises:
        MixedStudyError: if a run `root` has finished was trained with another
            configuration than this plan's (another flag file, or a flag that
            changes what is computed): one table would mix two studies.
            Nothing is trained.
    """
    os.makedirs(root, exist_ok=True)
    results_path = os.path.join(root, study_records.RESULTS_FILE)
    done = study_records.finished(root)
    check_finished_runs(runs if checked_runs is None else checked_runs, root, done)
    start, trained = time.time(), 0
    remaining = [run for run in runs if study_records.run_key(run) not in done]
    for index, run in enumerate(remaining):
        # Another process on the same root (other seeds) may have finished it since.
        done.update(study_records.finished(root))
        if study_records.run_key(run) in done:
            continue
        run_start = time.time()
        run = dataclasses.replace(run, config=_with_first_pass_mask(run, done))
        resumed = _started(run)
        stages.run(run.config)
        # A resumed run's `seconds` count this process only; the summary's times leave it out.
        record = dict(study_records.collect(run), seconds=time.time() - run_start,
                      resumed=resumed)
        atomic.append_line(results_path, json.dumps(record))
        done[study_records.record_key(record)] = record
        trained += 1
        elapsed = time.time() - start
        left = elapsed / trained * (len(remaining) - index - 1)
        report(f"[{index + 1}/{len(remaining)}] seed {run.seed} {run.student or '-'} "
               f"{run.teacher or '-'} {run.arm}: test accuracy {record['accuracy']:.4f}; "
               f"{elapsed / 60:.1f} min elapsed, about {left / 60:.1f} min left")
    return [done[study_records.run_key(run)] for run in runs]


def _started(run):
    """Whether a stage of `run` began in an earlier process (its folder is there)."""
    return any(os.path.isdir(path) for path in study_records.stage_dirs(run))


def check_finished_runs(runs, root, done=None, shown=3):
    """Checks that the runs of `runs` finished under `root` were trained as planned.

    Args:
        runs: the `StudyRun`s of `plan`.
        root: the study's output folder.
        done: its result records by run, if already read. Defaults to `None`
            (read from `root`).
        shown: how many mismatched runs the error names.

    Raises:
        MixedStudyError: naming the finished runs whose workdir's
            configuration differs from the plan's, and the flags that differ.
    """
    if done is None:
        done = study_records.finished(root)
    mismatched = []
    for run in runs:
        if study_records.run_key(run) in done:
            config = _with_first_pass_mask(run, done)
            differences = workdir_lib.config_differences(config.workdir, config)
            if run.arm == TEACHER_ARM:  # A teacher's num_train is the study's own flag.
                differences = [_as_teacher_num_train(line) for line in differences]
            if differences:
                mismatched.append(f"{config.workdir}:\n    " + "\n    ".join(differences))
    if mismatched:
        more = len(mismatched) - shown
        raise MixedStudyError(
            f"{len(mismatched)} finished run(s) under --root={root} were trained with another "
            "configuration than this command's, and a report would mix the two:\n  "
            + "\n  ".join(mismatched[:shown]) + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nUse a new --root for this configuration, or the flags the root was run with.")


def _as_teacher_num_train(line):
    """A teacher's `--num_train: ...` difference as the study's flag, 0 for the whole split."""
    if not line.startswith("--num_train:"):
        return line
    return ("--teacher_num_train:" + line[len("--num_train:"):]).replace(
        " None in the workdir", " 0 in the workdir").replace(" None now", " 0 now")


def widened_plan(plan_kwargs, root):
    """`plan(**plan_kwargs)` widened to every run `root` has finished, for `check_finished_runs`.

    A root's finished runs outside this command's seeds, models or arms were
    trained by an earlier command; checking them too refuses a command of
    another recipe that would add its runs to the same tables.

    Args:
        plan_kwargs: the keyword arguments of `plan`.
        root: the study's output folder.

    Returns:
        A list of `StudyRun`s; the plan itself where widening it fails (an
        arm of an older version, say).
    """
    done = list(study_records.finished(root).values())
    if not done:
        return plan(**plan_kwargs)

    def union(requested, field):  # A teacher's run has no student ("") and the reverse.
        return list(dict.fromkeys([*requested, *(r[field] for r in done if r[field])]))

    finished_arms = {record["arm"] for record in done} | set(plan_kwargs["arms"])
    seeds = sorted(set(plan_kwargs["seeds"]) | {record["seed"] for record in done})
    widened = dict(plan_kwargs, seeds=seeds,
                   student_models=union(plan_kwargs["student_models"], "student"),
                   teacher_models=union(plan_kwargs["teacher_models"], "teacher"),
                   arms=[arm for arm in ARMS if arm in finished_arms])
    try:
        return plan(**widened)
    except ValueError:
        return plan(**plan_kwargs)


def _with_first_pass_mask(run, done):
    """`run.config`, with the final mask of its first pass when it has one."""
    if not run.masked_classes_from:
        return run.config
    first_pass = done[(run.seed, run.student, run.teacher, run.masked_classes_from)]
    classes = study_records.final_masked_classes(first_pass)
    if not classes:  # TLLM with no class masked is KD bit for bit: train it as KD.
        return dataclasses.replace(run.config, students=("distilled",))
    return dataclasses.replace(run.config, masked_classes=classes)


def base_kwargs(config):
    """The `RunConfig` fields of `config` that every run of a study shares."""
    values = dataclasses.asdict(config)
    for name in PER_RUN_FIELDS:
        values.pop(name)
    return values
