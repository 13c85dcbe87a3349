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
student reads), `checkpointing` (resume), `preflight` (checks before
anything trains), `multi_worker`.

With `config.verbose` >= 1 the chief prints one line per stage (what it
trains, for how many epochs, where it writes; or that it is done, or where it
resumes) and its progress (`stage_progress.StageProgress`); 0 prints nothing.
"""

import dataclasses
import os
import shutil

import keras

from tllm_tf import distiller as distiller_lib
from tllm_tf import callbacks as callbacks_lib
from tllm_tf import held_out_predictions as predictions_lib
from tllm_tf import losses as losses_lib
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
from tllm_tf.pipeline import stage_inputs
from tllm_tf.pipeline import summaries
from tllm_tf.pipeline import workdir as workdir_lib
from tllm_tf.pipeline.multi_worker import is_chief
from tllm_tf.pipeline.multi_worker import make_strategy
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
    if fitting.done(strategy, path, stage_dir, config):
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
    if chief:
        fitting.save_per_class(teacher, data, config, stage_dir)
    fitting.finish(teacher, stage_dir, chief)
    return path


def run_reference(config, data, strategy, stage_dir):
    """Trains the student on labels alone; returns its reference JSON path."""
    reference_path = os.path.join(stage_dir, REFERENCE_FILE)
    if fitting.done(strategy, reference_path, stage_dir, config):
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
        # Which held-out images it gets right, every epoch: the paired rule's input.
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
        fitting.save_per_class(student, data, config, stage_dir)
        fitting.finish(student, stage_dir, chief)
        rows = predictions_lib.read_rows(predictions_log, config.epochs)
        if rows is not None:
            predictions_lib.save_predictions(
                predictions_lib.predictions_path(reference_path), *rows,
                prior_offsets=config.rule_prior_offsets)
            shutil.rmtree(predictions_log, ignore_errors=True)
        # Written last: its presence marks the stage as done.
        reference_lib.save_reference(
            reference_path, metrics_lib.accuracy_from_counts(correct, total), total,
            per_epoch_accuracy=reference_history.read_history_log(
                history_log, config.epochs, data.num_classes),
            provenance=preflight.reference_provenance(config))
    return reference_path


def run_student(config, data, strategy, stage_dir, kind, teacher_path, reference_path):
    """Distils the student of `kind` (`config.STUDENTS`); exports it.

    "tllm_refit" trains as "tllm" does, with `_refit_config(config)`: the
    tllm student's final mask from the first step, under `--refit_policy`.
    """
    model_path = os.path.join(stage_dir, MODEL_FILE)
    if fitting.done(strategy, model_path, stage_dir, config):
        return model_path
    chief = is_chief(strategy)
    if kind == "tllm_refit":
        config = _refit_config(config, strategy, data, os.path.basename(stage_dir))
    teacher = stage_inputs.teacher_on_every_worker(strategy, teacher_path, data)
    # Seeded after the teacher, so the student starts from the reference's weights.
    keras.utils.set_random_seed(config.seed)
    store = None
    if config.teacher_store:
        store = _complete_store(config, data, strategy, teacher, os.path.basename(stage_dir))
        # Seeded again: the student starts from the same weights with or without a store.
        keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        student = build.build_classifier(config.student_model, data, config.weight_decay)
        distiller = distiller_lib.Distiller(student, teacher, num_classes=data.num_classes,
                                            teacher_dtype=config.teacher_dtype)
        distiller.compile(
            optimizer=build.make_optimizer(config, build.steps_per_epoch(data, config)),
            metrics=["accuracy"],
            distillation_loss_fn=losses_lib.get_distillation_loss(
                config.distillation_loss, **config.distillation_loss_kwargs()),
            alpha=config.alpha,
            beta=config.beta,
            masked_class_policy=config.masked_class_policy,
            distillation_warmup_steps=(
                config.distillation_warmup_epochs * build.steps_per_epoch(data, config)),
            jit_compile=config.jit_compile,
            steps_per_execution=build.steps_per_execution(
                build.steps_per_epoch(data, config), config.steps_per_execution),
        )
    masking = kind in config_lib.MASKED_STUDENTS
    callbacks = []
    if masking:
        mask_log = os.path.join(stage_dir, MASK_LOG_FILE)
        if chief:
            checkpointing.truncate_jsonl(
                mask_log, checkpointing.saved_epoch(os.path.join(stage_dir, CHECKPOINT_DIR)))
        identification = callbacks_lib.UndistillableClassCallback(
            build.eval_batches(data.held_out, config),
            reference=stage_inputs.reference_on_every_worker(
                strategy, reference_path, data.num_classes, config),
            rule=config.rule,
            significance=config.significance,
            correction=config.correction,
            margin=config.margin,
            warmup_epochs=config.warmup_epochs,
            update_every=config.update_every,
            max_updates=config.max_updates,
            sticky=config.sticky,
            min_samples=config.min_samples,
            log_path=mask_log if chief else None,
            epoch_matched=config.epoch_matched,
            smoothing=config.smoothing,
            patience=config.patience,
            margin_standard_errors=config.margin_standard_errors,
            masked_classes=config.masked_classes,
            # The unpaired rule compares per-class accuracies, which offsets do not judge.
            prior_offsets=config.rule_prior_offsets and config.rule == "paired",
        )
        callbacks.append(identification)
        if multi_worker.num_workers(strategy) > 1:
            callbacks.append(multi_worker.ClassMaskFromChief(strategy))
        if chief:
            callbacks.append(summaries.PerClassAccuracySummary(
                identification, os.path.join(stage_dir, TENSORBOARD_DIR, "per_class"),
                class_names=list(data.class_names)))
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
        fitting.save_per_class(student, data, config, stage_dir)
        export_lib.export_saved_model(student, os.path.join(stage_dir, SAVED_MODEL_DIR))
        fitting.finish(student, stage_dir, chief)
    return model_path


def _complete_store(config, data, strategy, teacher, label):
    """The `--teacher_store`, with every epoch's logits; builds what is missing.

    Call it right after seeding with `config.seed`: the store holds the
    teacher's logits on the views `build.train_batches` makes under that seed.
    """
    # The float32 teacher (the Distiller makes the --teacher_dtype copy); the
    # chief builds, the others wait.
    store = build.soft_label_store(config, data, teacher)
    computed = multi_worker.run_on_chief(strategy, lambda: store.build(epochs=config.epochs))
    fitting.say(config, is_chief(strategy), f"{label}: the teacher's logits in --teacher_store="
                f"{config.teacher_store} ({computed} batches computed now)")
    return store


def run_store(config, data, strategy, teacher_path):
    """Builds the `--teacher_store` for every epoch of the student stage, and trains nothing.

    The students of later runs with the same teacher and training views then
    read it instead of running the teacher; a store that is complete costs
    nothing here.
    """
    teacher = stage_inputs.teacher_on_every_worker(strategy, teacher_path, data)
    keras.utils.set_random_seed(config.seed)  # As the student stage seeds before its build.
    _complete_store(config, data, strategy, teacher, STORE_STAGE)


def _with_earlier_mask(config, strategy, num_classes):
    """`config` with the final mask of `--masked_classes_from` added to its `masked_classes`.

    The classes land in the config the workdir records, so a resumed run masks the same ones.
    """
    earlier = stage_inputs.final_mask_on_every_worker(
        strategy, config.masked_classes_from, num_classes)
    if earlier:
        line = (f"--masked_classes_from={config.masked_classes_from}: it masked classes "
                f"{list(earlier)} at its end; this run masks them from the first step")
    else:
        line = f"--masked_classes_from={config.masked_classes_from}: it masked no class"
    fitting.say(config, is_chief(strategy), line)
    return _masking_also(config, earlier)


def _refit_config(config, strategy, data, label):
    """`config` for the tllm_refit student: the second of the two runs, in this run.

    The classes the tllm student (trained before it, in this workdir) had
    masked when it finished are masked from the first step under
    `--refit_policy`, and the mask is kept as it is: the warm-up lasts the
    whole run, so no update judges the classes again under the new policy.
    Read from the finished tllm student each time, so a resumed refit masks
    the same classes.
    """
    final = stage_inputs.final_mask_on_every_worker(strategy, config.workdir, data.num_classes)
    names = ", ".join(data.class_names[c] for c in final) or "none"
    fitting.say(config, is_chief(strategy),
                f"{label}: the tllm student ended with {len(final)} classes masked ({names}); "
                f"masked here from the first step under {config.refit_policy}")
    return _masking_also(config, final, masked_class_policy=config.refit_policy,
                         warmup_epochs=config.epochs)


def _masking_also(config, classes, **changes):
    """`config` with `classes` added to its `masked_classes`, and `changes`."""
    return dataclasses.replace(
        config, masked_classes=tuple(sorted(set(config.masked_classes) | set(classes))),
        **changes)


def run(config, strategy=None):
    """Runs the stages of `config` in order.

    Args:
        config: the `RunConfig`.
        strategy: the `tf.distribute` strategy; `None` makes the one
            `config.strategy` names. Make a multi-worker strategy before
            anything else touches TensorFlow (see `multi_worker.make_strategy`).

    Returns:
        The workdir, or `None` on a non-chief worker (which writes nothing).
    """
    if strategy is None:
        strategy = make_strategy(config.strategy)
    chief = is_chief(strategy)
    with workdir_lib.locked(config.workdir, lock=chief):
        with workdir_lib.removed_if_refused(config.workdir, remove=chief):
            config, data, teacher_path, reference_path = _prepare(config, strategy)
        _run_stages(config, data, strategy, teacher_path, reference_path)
    return config.workdir if chief else None


def _run_stages(config, data, strategy, teacher_path, reference_path):
    chief = is_chief(strategy)
    for stage in config.stages:
        stage_dir = os.path.join(config.workdir, stage)
        if stage == TEACHER_STAGE and config.teacher_path:
            fitting.say(config, chief, f"{TEACHER_STAGE}: --teacher_path={config.teacher_path}, "
                        "not trained here")
        elif stage == TEACHER_STAGE:
            teacher_path = run_teacher(config, data, strategy, stage_dir)
        elif stage == REFERENCE_STAGE and config.reference_path:
            fitting.say(config, chief, f"{REFERENCE_STAGE}: --reference_path="
                        f"{config.reference_path}, not trained here")
        elif stage == REFERENCE_STAGE:
            reference_path = run_reference(config, data, strategy, stage_dir)
        elif stage == STORE_STAGE:
            run_store(config, data, strategy, teacher_path)
        elif stage == "student":
            for kind in config.students:
                run_student(config, data, strategy,
                            os.path.join(config.workdir, student_stage(kind)),
                            kind, teacher_path, reference_path)


def _prepare(config, strategy):
    """Checks `config`, loads its data and claims the workdir, before anything trains.

    Returns:
        `(config, data, teacher_path, reference_path)`: the config with an
        earlier run's mask applied (`masked_classes_from`), the `DataSplits`,
        and the teacher and reference files the students read.

    Raises:
        ValueError: on a run refused before it trains (see `preflight`).
    """
    multi_worker.check_same_config(strategy, dataclasses.asdict(config))
    data = preflight.check(config, strategy, build.load_data)
    if config.masked_classes_from and "student" in config.stages:
        config = _with_earlier_mask(config, strategy, data.num_classes)
    multi_worker.run_on_chief(strategy, lambda: workdir_lib.claim(config.workdir, config))
    teacher_path = config.teacher_path or os.path.join(
        config.workdir, TEACHER_STAGE, MODEL_FILE)
    reference_path = config.reference_path or os.path.join(
        config.workdir, REFERENCE_STAGE, REFERENCE_FILE)
    steps = build.steps_per_epoch(data, config)
    executed = build.steps_per_execution(steps, config.steps_per_execution)
    if executed != config.steps_per_execution:
        fitting.say(config, is_chief(strategy),
                    f"--steps_per_execution={config.steps_per_execution}: using {executed}, "
                    f"the largest divisor of the {steps} steps of an epoch (a whole "
                    "execution would run into the next epoch's batches).")
    if config.epoch_matched and "student" in config.stages and "tllm" in config.students:
        # A reference that exists already must have its per-epoch accuracy:
        # refuse it now rather than after the teacher has trained.
        def check_reference():
            if os.path.exists(reference_path):
                stage_inputs.read_reference(reference_path, data.num_classes, epoch_matched=True)

        multi_worker.run_on_chief(strategy, check_reference)
    if config.reference_fallback and "student" in config.stages and (
            config.reference_path or REFERENCE_STAGE not in config.stages
            or os.path.exists(reference_path)):
        # Refused before anything trains, not once the first student has.
        multi_worker.run_on_chief(
            strategy, lambda: stage_inputs.check_reference_model(reference_path))
    return config, data, teacher_path, reference_path
