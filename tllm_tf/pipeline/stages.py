"""The three-stage TLLM pipeline: teacher, reference student, distilled students.

(And `--stage=store`, which only builds the teacher's soft-label store.)

This is the experiment layer: with its rooms below, the library code that
reads a whole `RunConfig`, turning it into keyword arguments for the core
(models, data, `Distiller`, `UndistillableClassCallback`). Each stage writes to
`workdir/<stage>/`, checkpoints every epoch, and resumes from its checkpoint
when re-run; a stage whose final model exists is not run again.

The workdir's layout and file names: `workdir_files`.

The rooms: `build` (data, models, optimizer, batches), `fitting` (skip,
resume, fit and finish a stage), `after_training` (prior offsets and the
held-out safeguards), `stage_inputs` (the teacher and reference files a
student reads), `checkpointing` (resume), `run_setup` (what a run settles
before its stages), `preflight` (checks before anything trains), `strategy`,
`multi_worker`.

With `config.verbose` >= 1 the chief prints one line per stage (what it
trains, for how many epochs, where it writes; or that it is done, or where it
resumes) and its progress (`stage_progress.StageProgress`); 0 prints nothing.
"""

import os
import time

import keras

from tllm_tf import held_out_predictions as predictions_lib
from tllm_tf import metrics as metrics_lib
from tllm_tf import reference as reference_lib
from tllm_tf import reference_history
from tllm_tf.pipeline import after_training
from tllm_tf.pipeline import build
from tllm_tf.pipeline import checkpointing
from tllm_tf.pipeline import config as config_lib
from tllm_tf.pipeline import export as export_lib
from tllm_tf.pipeline import fitting
from tllm_tf.pipeline import multi_worker
from tllm_tf.pipeline import preflight
from tllm_tf.pipeline import run_setup
from tllm_tf.pipeline import stage_inputs
from tllm_tf.pipeline import summaries
from tllm_tf.pipeline import workdir as workdir_lib
from tllm_tf.pipeline.strategy import is_chief
from tllm_tf.pipeline.strategy import make_strategy
from tllm_tf.pipeline.strategy import num_workers
from tllm_tf.pipeline.workdir_files import CHECKPOINT_DIR
from tllm_tf.pipeline.workdir_files import MASK_LOG_FILE
from tllm_tf.pipeline.workdir_files import MODEL_FILE
from tllm_tf.pipeline.workdir_files import PREDICTIONS_LOG_DIR
from tllm_tf.pipeline.workdir_files import REFERENCE_FILE
from tllm_tf.pipeline.workdir_files import REFERENCE_LOG_FILE
from tllm_tf.pipeline.workdir_files import REFERENCE_STAGE
from tllm_tf.pipeline.workdir_files import SAVED_MODEL_DIR
from tllm_tf.pipeline.workdir_files import STORE_STAGE
from tllm_tf.pipeline.workdir_files import TEACHER_STAGE
from tllm_tf.pipeline.workdir_files import TENSORBOARD_DIR
from tllm_tf.pipeline.workdir_files import student_stage


def run_teacher(config, data, strategy, stage_dir):
    """Trains the teacher on labels; returns its `.keras` path."""
    path = os.path.join(stage_dir, MODEL_FILE)
    if fitting.done(strategy, stage_dir, config.verbose):
        return path
    chief = is_chief(strategy)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        teacher = build.build_classifier(config.teacher_model, data, config.weight_decay)
        fitting.compile_on_labels(teacher, data, config, config.teacher_label_smoothing,
                                  config.teacher_learning_rate)
    fitting.fit(teacher, data, config, stage_dir, chief, config.teacher_epochs or config.epochs,
                one_hot=config.teacher_label_smoothing > 0,
                title=f"{TEACHER_STAGE}: {config.teacher_model} on labels")
    fitting.finish(teacher, data, config, stage_dir, chief)
    return path


def run_reference(config, data, strategy, stage_dir):
    """Trains the student on labels alone; returns its reference JSON path."""
    reference_path = os.path.join(stage_dir, REFERENCE_FILE)
    if fitting.done(strategy, stage_dir, config.verbose, final_files=(MODEL_FILE, REFERENCE_FILE)):
        return reference_path
    chief = is_chief(strategy)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        student = build.build_classifier(config.student_model, data, config.weight_decay)
        fitting.compile_on_labels(student, data, config, 0.0)
    # Every epoch's held-out accuracy, for --epoch_matched. Logged per epoch
    # (repaired on resume like the mask log) so a resumed stage has them all.
    history_log = os.path.join(stage_dir, REFERENCE_LOG_FILE)
    predictions_log = os.path.join(stage_dir, PREDICTIONS_LOG_DIR)
    callbacks = []
    if chief:
        checkpointing.truncate_jsonl(
            history_log, checkpointing.saved_epoch(os.path.join(stage_dir, CHECKPOINT_DIR)))
        held_out = build.eval_batches(data.held_out, config)
        callbacks.append(reference_history.ReferenceHistory(
            held_out, data.num_classes, log_path=history_log))
        # Which held-out images it gets right, and their calibrated scores, every epoch: the
        # paired rules' input.
        callbacks.append(predictions_lib.PredictionRecorder(
            held_out, data.num_classes, log_dir=predictions_log,
            prior_offsets=config.rule_prior_offsets))
    fitting.fit(student, data, config, stage_dir, chief, config.epochs,
                extra_callbacks=callbacks, title=f"{REFERENCE_STAGE}: {config.student_model} on labels")
    if chief:
        counter = metrics_lib.PerClassCounter(student, data.num_classes)
        correct, total = counter(build.eval_batches(data.held_out, config))
        stage_inputs.warn_about_empty_held_out_classes(total, data.class_names)
        if config.prior_offsets:
            # After the held-out counts: what the rule reads stays the trained network's.
            after_training.apply_prior_offsets(student, data, config, stage_dir)

        def write_reference():
            rows = predictions_lib.read_rows(predictions_log, config.epochs)
            if rows is not None:
                labels, correct_per_epoch, scores = rows
                predictions_lib.save_predictions(
                    predictions_lib.predictions_path(reference_path), labels, correct_per_epoch,
                    prior_offsets=config.rule_prior_offsets, scores=scores)
            reference_lib.save_reference(
                reference_path, metrics_lib.accuracy_from_counts(correct, total), total,
                per_epoch_accuracy=reference_history.read_history_log(
                    history_log, config.epochs, data.num_classes),
                provenance=preflight.reference_provenance(config, data))

        fitting.finish(student, data, config, stage_dir, chief, write_results=write_reference)
    return reference_path


def run_student(config, data, strategy, stage_dir, kind, teacher_path, reference_path):
    """Distils the student of `kind` (`config.STUDENTS`); exports it.

    "tllm_refit" trains as "tllm" does, with `run_setup.refit_config`: the
    tllm student's final mask from the first step, under `--refit_policy`.
    """
    model_path = os.path.join(stage_dir, MODEL_FILE)
    if fitting.done(strategy, stage_dir, config.verbose):
        return model_path
    chief = is_chief(strategy)
    if kind == "tllm_refit":
        config = run_setup.refit_config(config, strategy, data, os.path.basename(stage_dir))
    teacher = stage_inputs.teacher_on_every_worker(strategy, teacher_path, data)
    # Seeded after the teacher, so the student starts from the reference's weights.
    keras.utils.set_random_seed(config.seed)
    store = None
    if config.teacher_store:
        store = _complete_store(config, data, strategy, teacher, os.path.basename(stage_dir))
        # Seeded again: the student starts from the same weights with or without a store.
        keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        distiller = build.distiller(config, data, teacher)
    student = distiller.student
    masking = kind in config_lib.MASKED_STUDENTS
    callbacks = []
    if masking:
        callbacks = _masking_callbacks(config, data, strategy, stage_dir, reference_path)
    teacher_name = config.teacher_path or config.teacher_model
    how = {"tllm": ", TLLM masking",
           "tllm_refit": f", the tllm student's final mask under {config.masked_class_policy}"}
    fitting.fit(distiller, data, config, stage_dir, chief, config.epochs,
                extra_callbacks=callbacks,
                title=f"{os.path.basename(stage_dir)}: {config.student_model} distilled "
                      f"from {teacher_name} ({config.distillation_loss} loss{how.get(kind, '')})",
                shown_metrics=("loss", "accuracy") + (
                    ("num_undistillable_classes",) if masking else ()),
                soft_label_store=store)
    if chief:
        if config.prior_offsets:
            # Before the safeguards, which then compare it with other offset weights.
            after_training.apply_prior_offsets(student, data, config, stage_dir)
        after_training.safeguards(student, kind, data, config, stage_dir, reference_path)
        export_lib.export_saved_model(student, os.path.join(stage_dir, SAVED_MODEL_DIR),
                                      class_names=data.class_names)
        fitting.finish(student, data, config, stage_dir, chief)
    return model_path


def _masking_callbacks(config, data, strategy, stage_dir, reference_path):
    """A masked student's callbacks: the identification, then the chief's mask and summaries."""
    chief = is_chief(strategy)
    mask_log = os.path.join(stage_dir, MASK_LOG_FILE)
    if chief:
        checkpointing.truncate_jsonl(
            mask_log, checkpointing.saved_epoch(os.path.join(stage_dir, CHECKPOINT_DIR)))
    reference = stage_inputs.reference_on_every_worker(
        strategy, reference_path, data.num_classes, config)
    identification = build.identification_callback(
        config, data, reference, log_path=mask_log if chief else None)
    callbacks = [identification]
    if num_workers(strategy) > 1:
        callbacks.append(multi_worker.ClassMaskFromChief(strategy))
    if chief:
        callbacks.append(summaries.PerClassAccuracySummary(
            identification, os.path.join(stage_dir, TENSORBOARD_DIR, "per_class"),
            class_names=list(data.class_names)))
    return callbacks


def _complete_store(config, data, strategy, teacher, label):
    """The `--teacher_store`, with every epoch's logits; builds what is missing.

    Call it right after seeding with `config.seed`: the store holds the
    teacher's logits on the views `build.train_batches` makes under that seed.
    """
    # The float32 teacher (the Distiller makes the --teacher_dtype copy); the
    # chief builds, the others wait.
    store = build.soft_label_store(config, data, teacher)
    computed = multi_worker.run_on_chief(strategy, lambda: store.build(epochs=config.epochs))
    built = _epochs_visible(store, config.epochs)
    if built < config.epochs:  # A worker whose folder is not the chief's.
        raise ValueError(
            f"This worker's --teacher_store={config.teacher_store!r} holds {built} of the "
            f"{config.epochs} epochs the chief has just stored in its own: every worker reads "
            "the store the chief builds, so give them all one folder they can all read (a "
            "shared file system; docs/multi_worker.md).")
    fitting.say(config.verbose, is_chief(strategy),
                f"{label}: the teacher's logits in --teacher_store={config.teacher_store} "
                f"({computed} batches computed now)")
    return store


# How long a worker waits to see the store's epochs the chief has just written.
STORE_VISIBLE_WAIT_S = 30.0


def _epochs_visible(store, epochs):
    """How many of the `epochs` the chief has just stored this process sees in `store`.

    A shared file system may show another host's new files a few seconds late (NFS caches
    that a file is missing), so a worker waits up to `STORE_VISIBLE_WAIT_S` for them.
    """
    deadline = time.monotonic() + STORE_VISIBLE_WAIT_S
    while store.built_epochs < epochs and time.monotonic() < deadline:
        time.sleep(1.0)
    return store.built_epochs


def run_store(config, data, strategy, teacher_path):
    """Builds the `--teacher_store` for every epoch of the student stage, and trains nothing.

    The students of later runs with the same teacher and training views then
    read it instead of running the teacher; a store that is complete costs
    nothing here.
    """
    teacher = stage_inputs.teacher_on_every_worker(strategy, teacher_path, data)
    keras.utils.set_random_seed(config.seed)  # As the student stage seeds before its build.
    _complete_store(config, data, strategy, teacher, STORE_STAGE)


def _teacher_stage(config, data, strategy, files):
    return run_teacher(config, data, strategy, os.path.join(config.workdir, TEACHER_STAGE))


def _reference_stage(config, data, strategy, files):
    return run_reference(config, data, strategy, os.path.join(config.workdir, REFERENCE_STAGE))


def _store_stage(config, data, strategy, files):
    run_store(config, data, strategy, files[TEACHER_STAGE])


def _student_stage(config, data, strategy, files):
    for kind in config.students:
        run_student(config, data, strategy, os.path.join(config.workdir, student_stage(kind)),
                    kind, files[TEACHER_STAGE], files[REFERENCE_STAGE])


# Each stage of `RunConfig.stages`: `(config, data, strategy, files) -> the file it
# leaves for later stages` (`None`: none), `files` holding the teacher's and the
# reference's paths.
STAGE_RUNNERS = {
    TEACHER_STAGE: _teacher_stage,
    REFERENCE_STAGE: _reference_stage,
    STORE_STAGE: _store_stage,
    "student": _student_stage,
}
# The stages whose file a flag can give instead: given, the stage is not trained here.
GIVEN_BY_FLAG = {TEACHER_STAGE: "teacher_path", REFERENCE_STAGE: "reference_path"}


def run(config, strategy=None):
    """Runs the stages of `config` in order.

    Args:
        config: the `RunConfig`.
        strategy: the `tf.distribute` strategy; `None` makes the one
            `config.strategy` names. Make a multi-worker strategy before
            anything else touches TensorFlow (see `strategy.make_strategy`).

    Returns:
        The workdir, or `None` on a non-chief worker (which writes nothing).
    """
    if strategy is None:
        strategy = make_strategy(config.strategy)
    chief = is_chief(strategy)
    with workdir_lib.locked(config.workdir, lock=chief):
        with workdir_lib.removed_if_refused(config.workdir, remove=chief):
            config, data, teacher_path, reference_path = run_setup.prepare(config, strategy)
        files = {TEACHER_STAGE: teacher_path, REFERENCE_STAGE: reference_path}
        for stage in config.stages:
            flag = GIVEN_BY_FLAG.get(stage)
            if flag and getattr(config, flag):
                fitting.say(config.verbose, chief,
                            f"{stage}: --{flag}={getattr(config, flag)}, not trained here")
                continue
            made = STAGE_RUNNERS[stage](config, data, strategy, files)
            if made is not None:
                files[stage] = made
    return config.workdir if chief else None
