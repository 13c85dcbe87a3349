"""The accuracy study: label-only, KD and TLLM students over seeds, through the pipeline.

Checks the claims of Teach Less, Learn More (Zhu et al., NeurIPS 2022) with
the code users run: every model of the study is trained by
`tllm_tf.pipeline.stages.run` from a `RunConfig`, exactly as `tools/train.py` would
train it. For each seed, each student architecture and each teacher:

    <root>/seed<s>/teacher_<teacher>/        the teacher (stage "teacher")
    <root>/seed<s>/<student>/reference/      the label-only student ("reference")
    <root>/seed<s>/<student>/<teacher>/<arm>/   one distilled student per arm

An *arm* is a named set of `RunConfig` overrides (`ARMS`): plain KD, TLLM
with the library's defaults, TLLM with the old unpaired rule, and variants
of the rule or the masked-class policy. Every student of one seed shares the
data split, the initial weights and the batches. Finished runs are skipped
when the study is run again (each stage resumes like `tools/train.py`), and
each run's result (with its wall time, `seconds`) is appended to
`<root>/results.jsonl` as it finishes.
"""

import dataclasses
import json
import os
import time

import numpy as np

from tllm_tf import atomic
from tllm_tf.analysis import study_stats
from tllm_tf.pipeline import config as config_lib
from tllm_tf.pipeline import stage_inputs
from tllm_tf.pipeline import stages
from tllm_tf.pipeline import workdir as workdir_lib
from tllm_tf.pipeline import workdir_files

RESULTS_FILE = "results.jsonl"
SHARED_STORE_DIR = "teacher_store"
LABELS_ARM = "labels"
# An arm's key (not a `RunConfig` field): mask from the first step the classes that the named
# arm's run of the same seed, student and teacher masked at its end (a second pass).
MASKED_CLASSES_FROM = "masked_classes_from"
# An arm's key (not a `RunConfig` field): the arm it is also compared with in the report, seed by
# seed. A second pass (`MASKED_CLASSES_FROM`) is compared with its first pass without it.
PAIRED_WITH = "paired_with"


class MixedStudyError(ValueError):
    """A study root holds finished runs of another configuration than the plan's."""


# Arms: RunConfig overrides of the distilled students, the alternatives the
# defaults were chosen among (docs/study.md). "tllm_patience2" is the library's
# default rule and policy; "tllm" was the default until patience 2 replaced
# patience 1, and the TLLM arms run before that keep patience 1 (set below) so
# that they plan the runs they made.
ARMS = {
    "kd": {"students": ("distilled",)},
    "tllm": {"students": ("tllm",)},
    "unpaired": {"students": ("tllm",), "rule": "unpaired", "epoch_matched": False,
                 "sticky": False, "warmup_epochs": 0, "margin": 0.0, "patience": 1,
                 "smoothing": 0.0, "margin_standard_errors": 0.0},
    "paired": {"students": ("tllm",), "rule": "paired", "epoch_matched": False,
               "sticky": False, "warmup_epochs": 0},
    # The prototype of docs/study.md: no update in the first half of training
    # (10 of the study's 20 epochs), then a masked class stays masked.
    "paired_sticky_half_warmup": {"students": ("tllm",), "rule": "paired",
                                  "epoch_matched": False, "sticky": True, "warmup_epochs": 10},
    "paired_matched_sticky_half_warmup": {"students": ("tllm",), "rule": "paired",
                                          "epoch_matched": True, "sticky": True,
                                          "warmup_epochs": 10},
    "paired_matched": {"students": ("tllm",), "rule": "paired", "epoch_matched": True,
                       "sticky": False, "warmup_epochs": 0},
    "paired_matched_sticky": {"students": ("tllm",), "rule": "paired", "epoch_matched": True,
                              "sticky": True, "warmup_epochs": 0},
    "paired_matched_sticky_bh": {"students": ("tllm",), "rule": "paired", "epoch_matched": True,
                                 "sticky": True, "warmup_epochs": 0,
                                 "correction": "benjamini_hochberg"},
    "paired_matched_sticky_soft_label": {"students": ("tllm",), "rule": "paired",
                                         "epoch_matched": True, "sticky": True,
                                         "warmup_epochs": 0, "masked_class_policy": "soft_label"},
    # The defaults, but judged against the finished reference rather than the reference of the
    # same epoch: fewer classes masked on a mid-training difference that is gone by the end.
    "tllm_final_reference": {"students": ("tllm",), "epoch_matched": False},
    # The defaults, but a class must be behind at 2 (3) consecutive updates: a difference of
    # the half-trained student that is gone one or two epochs later does not mask it.
    "tllm_patience2": {"students": ("tllm",), "patience": 2},
    "tllm_patience3": {"students": ("tllm",), "patience": 3},
    # The defaults, but the first update after a quarter of training (5 of the study's 20
    # epochs) instead of half: does a class masked earlier recover more of what KD cost it?
    "tllm_warmup5": {"students": ("tllm",), "warmup_epochs": 5},
    # The policies that also change what the other classes' samples teach about a masked class:
    # `isolate` (its teacher probability moved to their labels) and `exclude` (left out of their
    # distillation term). And `exclude` with a stricter rule (its false alarms).
    "tllm_isolate": {"students": ("tllm",), "masked_class_policy": "isolate"},
    "tllm_exclude": {"students": ("tllm",), "masked_class_policy": "exclude"},
    # The defaults with a masked class's targets kept as soft as its neighbours' (`soft_label`):
    # is a hard-labelled class among distilled neighbours out of step with them?
    "tllm_soft_label": {"students": ("tllm",), "masked_class_policy": "soft_label"},
    "tllm_exclude_patience3": {"students": ("tllm",), "masked_class_policy": "exclude",
                               "patience": 3},
}
# An upper bound on what masking can recover: the classes the earlier study found KD to hurt
# beyond noise in a setting (the mlp_16 student: Pullover with the mlp_256 teacher, Coat and
# Sneaker with mlp_1024; the lenet_2 student with mlp_256: Pullover and Sneaker), masked from the
# first step, the rule on top, under the default policy (`tllm_masked_<classes>`) and the others
# (`tllm_<policy>_masked_<classes>`). Diagnostic arms, each meant for its own setting: the
# mask is chosen knowing the answer.
_HURT_CLASSES = {"pullover": (2,), "coat_sneaker": (4, 7), "pullover_sneaker": (2, 7)}
for _classes_name, _classes in _HURT_CLASSES.items():
    ARMS[f"tllm_masked_{_classes_name}"] = {"students": ("tllm",), "masked_classes": _classes}
    for _policy in ("isolate", "exclude", "soft_label", "class_mean"):
        ARMS[f"tllm_{_policy}_masked_{_classes_name}"] = {
            "students": ("tllm",), "masked_class_policy": _policy, "masked_classes": _classes}

# Diagnostics of the refit's trade (docs/study.md, "Where the gain comes from"): the
# top-wear cluster (T-shirt/top, Pullover, Dress, Coat, Shirt), or every class, masked from the
# first step under soft_label with no update (the warm-up lasts the study's 20 epochs): how much
# of the hurt classes' recovery is soft labels on a whole cluster, not taken from its neighbours?
# The cluster under hard_label as well: a hard-labelled class among distilled neighbours loses
# its boundaries to them; here its neighbours are hard-labelled too.
for _arm, _policy, _classes in (
        ("soft_label_topwear", "soft_label", (0, 2, 3, 4, 6)),
        ("soft_label_all", "soft_label", tuple(range(10))),
        ("hard_label_topwear", "hard_label", (0, 2, 3, 4, 6))):
    ARMS[_arm] = {"students": ("tllm",), "masked_class_policy": _policy,
                  "masked_classes": _classes, "warmup_epochs": 20}

# Two passes: the classes the default (`tllm_patience2`) masked at the end of its run of the same
# seed, student and teacher, masked from the first step of a second run, under the default policy
# and under `soft_label`. The second run makes no update of its own: the first pass judged the
# classes under `hard_label`, and its mask is kept as it is (no cascade from the second policy).
for _arm, _policy in (("tllm_two_pass", "hard_label"), ("tllm_two_pass_soft_label", "soft_label"),
                      ("tllm_two_pass_class_mean", "class_mean"),
                      ("tllm_two_pass_batch_soft_label", "batch_soft_label"),
                      ("tllm_two_pass_soft_label_exclude", "soft_label_exclude"),
                      ("tllm_two_pass_soft_label_symmetric", "soft_label_symmetric")):
    ARMS[_arm] = {"students": ("tllm",), "masked_class_policy": _policy,
                  MASKED_CLASSES_FROM: "tllm_patience2"}

# Two passes whose first only judges: KD to the end, then one look at the finished students (the
# study's 20 epochs: the update after epoch 20, patience 1, the level spent on that one look).
# Nothing it masks changes its training, so its student is KD's; it names the classes where the
# finished distilled student is behind the finished reference, the very definition of an
# undistillable class, with ten times the level per look of the default's ten updates.
ARMS["tllm_judge_at_end"] = {"students": ("tllm",), "warmup_epochs": 19, "patience": 1}
ARMS["tllm_two_pass_at_end_soft_label"] = {"students": ("tllm",),
                                           "masked_class_policy": "soft_label",
                                           MASKED_CLASSES_FROM: "tllm_judge_at_end"}

# The library's default since 2026-12-04 (late), in one run: the tllm student, then the refit
# (its final mask from the first step under soft_label, no update of its own), which keeps the
# tllm student's weights when it is behind them on the held-out split (since 2026-12-04, night;
# tllm_tf/held_out_check.py). Its record is the refit's. Unguarded, it is tllm_two_pass_soft_label
# bit for bit. Its first pass is its own tllm student, which tllm_patience2 trains alike.
ARMS["tllm_refit"] = {"students": ("tllm", "tllm_refit"), PAIRED_WITH: "tllm_patience2"}
# The default with the rule looking every third epoch after the warm-up instead of every epoch:
# in the 60-epoch recipe, ten looks as in the 20-epoch base setting, so that patience 2 and the
# level per look cover the same part of training (docs/study.md, "Ten looks").
ARMS["tllm_refit_every3"] = {"students": ("tllm", "tllm_refit"), "update_every": 3,
                             PAIRED_WITH: "tllm_refit"}
# The same with the refit under `class_mean` (each masked sample distilled towards the teacher's
# average over its class): unguarded, it is tllm_two_pass_class_mean bit for bit.
ARMS["tllm_refit_class_mean"] = {"students": ("tllm", "tllm_refit"), "refit_policy": "class_mean",
                                 PAIRED_WITH: "tllm_patience2"}

# One run with a short window of updates: the mask is decided by the first three updates after
# the warm-up (epochs 11-13 of 20), then kept to the end. In `tllm_soft_label` most classes the
# default masks are masked by its second update, and the neighbours that fall behind once a class
# trains on soft labels are masked from the fourth on: a window closes before that cascade.
for _arm, _policy in (("tllm_updates3", "hard_label"), ("tllm_soft_label_updates3", "soft_label")):
    ARMS[_arm] = {"students": ("tllm",), "masked_class_policy": _policy, "max_updates": 3}

# Other distillation losses (docs/study.md, "Undistillable classes under other losses"): each
# distilled on every class (`<loss>`) and with TLLM's defaults (`<loss>_tllm`), with the
# hyper-parameters of the losses' reference code, DKD's warm-up scaled from 20 of 240 epochs to
# 2 of 20. The study_report compares `<loss>_tllm` with `<loss>`.
_LOSS_OVERRIDES = {
    "dkd": {"distillation_loss": "dkd", "temperature": 4.0, "alpha": 1.0, "beta": 1.0,
            "dkd_alpha": 1.0, "dkd_beta": 8.0, "distillation_warmup_epochs": 2},
    "kd_ls": {"distillation_loss": "kd_ls", "temperature": 2.0, "alpha": 1.0, "beta": 9.0},
}
# KD trained from the teacher's soft-label store (float16 logits, docs/soft_label_store.md),
# against `kd` from the live teacher: what the store's default precision costs in accuracy.
ARMS["kd_store"] = {"students": ("distilled",), "teacher_store": "teacher_store"}
for _loss, _overrides in _LOSS_OVERRIDES.items():
    ARMS[_loss] = dict(_overrides, students=("distilled",))
    ARMS[f"{_loss}_tllm"] = dict(_overrides, students=("tllm",))
# The TLLM arms run before patience 2 became the default, with the patience they were run with.
for _arm in ("tllm", "paired", "paired_sticky_half_warmup", "paired_matched_sticky_half_warmup",
             "paired_matched", "paired_matched_sticky", "paired_matched_sticky_bh",
             "paired_matched_sticky_soft_label", "tllm_final_reference",
             *(f"{_loss}_tllm" for _loss in _LOSS_OVERRIDES)):
    ARMS[_arm].setdefault("patience", 1)
# The TLLM arms run before ten looks became the default (2026-12-05), with the look an epoch
# they were run with; in the base setting (warm-up 10 of 20 epochs) that is the default too.
for _spec in ARMS.values():
    if "tllm" in _spec["students"]:
        _spec.setdefault("update_every", 1)


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
            runs.append(StudyRun(seed, "", teacher, "teacher", config_lib.RunConfig(
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


def _read_json(path):
    with open(path) as handle:
        return json.load(handle)


def _read_jsonl(path):
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path} is damaged at line {number} ({error.msg}; a process killed while "
                    "writing it leaves a cut line): delete that line. A study's results.jsonl "
                    "is rebuilt from the runs' workdirs, without training, for the runs it "
                    "lacks.") from None
    return records


def collect(run):
    """The result record of a finished run (test accuracy, per class, masks).

    The record is the last student's of the run (the refit's, when it has one).
    """
    config = run.config
    student = config.students[-1] if run.arm not in ("teacher", LABELS_ARM) else None
    if run.arm == "teacher":
        stage_dir = os.path.join(config.workdir, "teacher")
    elif run.arm == LABELS_ARM:
        stage_dir = os.path.join(config.workdir, "reference")
    else:
        stage_dir = os.path.join(config.workdir, workdir_files.student_stage(student))
    per_class = _read_json(os.path.join(stage_dir, workdir_files.PER_CLASS_FILE))
    masked_classes = config.masked_classes
    if student == "tllm_refit":
        stage_dir, masked_classes = _refit_masks_source(
            config, stage_dir, len(per_class["class_names"]))
    masks = [record["class_mask"] for record in
             _read_jsonl(os.path.join(stage_dir, workdir_files.MASK_LOG_FILE))]
    if not masks and masked_classes:  # No update: its fixed mask, at every epoch.
        mask = np.ones(len(per_class["class_names"]))
        mask[list(masked_classes)] = 0.0
        masks = [mask.tolist()] * config.epochs
    return {
        "seed": run.seed, "student": run.student, "teacher": run.teacher, "arm": run.arm,
        "accuracy": per_class["accuracy"],
        "per_class_accuracy": per_class["per_class_accuracy"],
        "class_names": per_class["class_names"],
        "masks": masks,
        # Masked before the first update: what a mask change is counted from.
        "masked_from_start": sorted(int(c) for c in masked_classes),
    }


def _refit_masks_source(config, refit_dir, num_classes):
    """Where a refit's masks come from: `(stage folder, fixed masked classes)`.

    A refit that kept the tllm student's weights (`refit_check.json`) is that
    student, masks and all; otherwise it trained with the tllm student's final
    mask at every epoch.
    """
    tllm_dir = os.path.join(config.workdir, workdir_files.student_stage("tllm"))
    check_path = os.path.join(refit_dir, workdir_files.REFIT_CHECK_FILE)
    if os.path.exists(check_path) and _read_json(check_path)["kept"] == "tllm":
        return tllm_dir, config.masked_classes
    return refit_dir, stage_inputs.read_final_mask(config.workdir, num_classes)


def _key(record):
    return (record["seed"], record["student"], record["teacher"], record["arm"])


def _run_key(run):
    return (run.seed, run.student, run.teacher, run.arm)


_RECORD_FIELDS = ("seed", "student", "teacher", "arm", "accuracy", "per_class_accuracy",
                  "class_names", "masks")


def _finished(root):
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
    return {_key(record): record for record in records}


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
    results_path = os.path.join(root, RESULTS_FILE)
    done = _finished(root)
    check_finished_runs(runs if checked_runs is None else checked_runs, root, done)
    start, trained = time.time(), 0
    remaining = [run for run in runs if _run_key(run) not in done]
    for index, run in enumerate(remaining):
        # Another process on the same root (other seeds) may have finished it since.
        done.update(_finished(root))
        if _run_key(run) in done:
            continue
        run_start = time.time()
        run = dataclasses.replace(run, config=_with_first_pass_mask(run, done))
        stages.run(run.config)
        record = dict(collect(run), seconds=time.time() - run_start)
        atomic.append_line(results_path, json.dumps(record))
        done[_key(record)] = record
        trained += 1
        elapsed = time.time() - start
        left = elapsed / trained * (len(remaining) - index - 1)
        report(f"[{index + 1}/{len(remaining)}] seed {run.seed} {run.student or '-'} "
               f"{run.teacher or '-'} {run.arm}: test accuracy {record['accuracy']:.4f}; "
               f"{elapsed / 60:.1f} min elapsed, about {left / 60:.1f} min left")
    return [done[_run_key(run)] for run in runs]


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
        done = _finished(root)
    mismatched = []
    for run in runs:
        if _run_key(run) in done:
            config = _with_first_pass_mask(run, done)
            differences = workdir_lib.config_differences(config.workdir, config)
            if differences:
                mismatched.append(f"{config.workdir}:\n    " + "\n    ".join(differences))
    if mismatched:
        more = len(mismatched) - shown
        raise MixedStudyError(
            f"{len(mismatched)} finished run(s) under --root={root} were trained with another "
            "configuration than this command's, and a report would mix the two:\n  "
            + "\n  ".join(mismatched[:shown]) + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nUse a new --root for this configuration, or the flags the root was run with.")


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
    done = list(_finished(root).values())
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


def final_masked_classes(record):
    """The classes a finished run's record shows masked at its last update (none: `()`)."""
    masked = study_stats.mask_matrix(record["masks"])
    return tuple(int(c) for c in np.flatnonzero(masked[-1])) if len(masked) else ()


def _with_first_pass_mask(run, done):
    """`run.config`, with the final mask of its first pass when it has one."""
    if not run.masked_classes_from:
        return run.config
    first_pass = done[(run.seed, run.student, run.teacher, run.masked_classes_from)]
    classes = final_masked_classes(first_pass)
    if not classes:  # TLLM with no class masked is KD bit for bit: train it as KD.
        return dataclasses.replace(run.config, students=("distilled",))
    return dataclasses.replace(run.config, masked_classes=classes)


# Fields the study sets run by run; the rest come from the base configuration.
_PER_RUN_FIELDS = ("workdir", "stage", "seed", "student_model", "teacher_model", "students",
                   "teacher_path", "reference_path")


def paired_baselines():
    """Each arm's `PAIRED_WITH` (a second pass: its first), for the report's paired comparison."""
    return {arm: spec.get(PAIRED_WITH) or spec[MASKED_CLASSES_FROM] for arm, spec in ARMS.items()
            if PAIRED_WITH in spec or MASKED_CLASSES_FROM in spec}


def base_kwargs(config):
    """The `RunConfig` fields of `config` that every run of a study shares."""
    values = dataclasses.asdict(config)
    for name in _PER_RUN_FIELDS:
        values.pop(name)
    return values


def finished_records(runs, root):
    """The result records of the runs of `runs` that `root/results.jsonl` holds."""
    done = _finished(root)
    return [done[_run_key(run)] for run in runs if _run_key(run) in done]
