"""The three-stage TLLM pipeline: teacher, reference student, distilled students.

This is the experiment layer: the one library module that reads a whole
`RunConfig`, turning it into keyword arguments for the core (models, data,
`Distiller`, `UndistillableClassCallback`). Each stage writes to
`workdir/<stage>/`, checkpoints every epoch, and resumes from its checkpoint
when re-run; a stage whose final model exists is not run again.

Workdir layout (the names: `workdir_files`):

    config.json
    teacher/model.keras, history.csv, test_per_class.json, tensorboard/
    reference/model.keras, reference.json (held-out per-class accuracy, final and
        after every epoch), held_out_predictions.npz (which held-out images it
        got right after every epoch, for the paired rule),
        per_epoch_accuracy.jsonl, held_out_predictions/ (one row per epoch), ...
    student_kd/, student_tllm/ (--students=distilled,tllm): model.keras, saved_model/, history.csv, test_per_class.json,
        mask_log.jsonl (tllm), tensorboard/
    <stage>/checkpoint/ (while the stage runs)

With `config.verbose` >= 1 the chief prints one line per stage (what it
trains, for how many epochs, where it writes; or that it is done, or where it
resumes) and its progress (`stage_progress.StageProgress`); 0 prints nothing.
"""

import json
import logging
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

import tllm_tf
from tllm_tf.pipeline import checkpointing
from tllm_tf import data as data_lib
from tllm_tf.pipeline import export as export_lib
from tllm_tf import held_out_predictions as predictions_lib
from tllm_tf import losses as losses_lib
from tllm_tf import metrics as metrics_lib
from tllm_tf.pipeline import model_io
from tllm_tf import models as models_lib
from tllm_tf.pipeline import multi_worker
from tllm_tf.pipeline import preflight
from tllm_tf import reference as reference_lib
from tllm_tf.pipeline import stage_progress
from tllm_tf.pipeline import summaries
from tllm_tf.pipeline import training_guards
from tllm_tf.pipeline import workdir as workdir_lib
from tllm_tf.pipeline.multi_worker import is_chief
from tllm_tf.pipeline.multi_worker import make_strategy
from tllm_tf.pipeline.workdir_files import CHECKPOINT_DIR
from tllm_tf.pipeline.workdir_files import HISTORY_FILE
from tllm_tf.pipeline.workdir_files import MASK_LOG_FILE
from tllm_tf.pipeline.workdir_files import MODEL_FILE
from tllm_tf.pipeline.workdir_files import PER_CLASS_FILE
from tllm_tf.pipeline.workdir_files import PREDICTIONS_LOG_DIR
from tllm_tf.pipeline.workdir_files import REFERENCE_FILE
from tllm_tf.pipeline.workdir_files import REFERENCE_LOG_FILE
from tllm_tf.pipeline.workdir_files import REFERENCE_STAGE
from tllm_tf.pipeline.workdir_files import SAVED_MODEL_DIR
from tllm_tf.pipeline.workdir_files import TEACHER_STAGE
from tllm_tf.pipeline.workdir_files import TENSORBOARD_DIR
from tllm_tf.pipeline.workdir_files import student_stage


def load_data(config):
    """Returns the `DataSplits` named by `config.dataset`."""
    return data_lib.load_dataset(
        config.dataset,
        holdout_fraction=config.holdout_fraction,
        seed=config.seed,
        data_dir=config.data_dir,
        manual_dir=config.manual_dir,
        download=config.download,
        num_train=config.num_train,
        image_folder=config.image_folder,
        test_image_folder=config.test_image_folder,
        image_size=config.image_size,
    )


def build_classifier(model_name, data, weight_decay=0.0):
    """A zoo model with the data set's normalisation in front (raw images in)."""
    network = models_lib.build_model(
        model_name, data.num_classes, data.image_shape, weight_decay=weight_decay)
    return keras.Sequential(
        [
            keras.Input(shape=data.image_shape),
            keras.layers.Normalization(
                mean=list(data.mean), variance=[s**2 for s in data.std]),
            network,
        ],
        name=model_name,
    )


def make_optimizer(config, steps_per_epoch, initial_learning_rate=None):
    """SGD or Adam with a step decay at `lr_decay_epochs`."""
    initial_learning_rate = initial_learning_rate or config.learning_rate
    learning_rate = initial_learning_rate
    if config.lr_decay_epochs:
        boundaries = [epoch * steps_per_epoch for epoch in config.lr_decay_epochs]
        values = [
            initial_learning_rate * config.lr_decay_rate**i
            for i in range(len(boundaries) + 1)
        ]
        learning_rate = keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, values)
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate, momentum=config.momentum)
    else:
        optimizer = keras.optimizers.Adam(learning_rate)
    if config.mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def steps_per_epoch(data, config):
    """Training batches per epoch (the last, smaller batch is dropped)."""
    if not data.num_train:
        raise ValueError(f"The size of the {data.name!r} training split is unknown.")
    return max(1, data.num_train // config.batch_size)


def steps_per_execution(steps, requested):
    """The largest divisor of an epoch's `steps` that is at most `requested`.

    Keras's TensorFlow trainer runs whole executions of `steps_per_execution`
    steps: with 8 per execution and 6 steps per epoch, epoch 1 trains on 8
    batches (2 of epoch 2), every later epoch starts 2 batches late, and the
    last runs out of data ("Your input ran out of data"). A divisor keeps
    each epoch on its own batches.
    """
    requested = max(1, min(requested, steps))
    return next(n for n in range(requested, 0, -1) if steps % n == 0)


def train_batches(data, config, start_epoch, epochs, one_hot=False):
    """Training batches of epochs `start_epoch .. epochs - 1`, back to back.

    Epoch `e` is shuffled and augmented with a seed derived from `(seed, e)`
    alone, so a run resumed at epoch `e` sees exactly the batches an
    uninterrupted run would have seen.
    """
    train = data.train.cache() if config.cache else data.train
    steps = steps_per_epoch(data, config)
    # One pipeline per epoch, each seeded by its epoch (tf.data's own
    # reshuffling depends on how many epochs this process has iterated).
    per_epoch = [
        data_lib.make_pipeline(
            train,
            batch_size=config.batch_size,
            training=True,
            augmentation=config.augmentation,
            image_size=config.image_size,
            num_classes=data.num_classes,
            mixup=config.mixup,
            cutmix=config.cutmix,
            randaugment=config.randaugment,
            seed=config.seed * 100_003 + epoch,
            drop_remainder=True,
        ).take(steps)
        for epoch in range(start_epoch, epochs)
    ]
    order = tf.data.Dataset.range(len(per_epoch)).flat_map(
        lambda index: tf.data.Dataset.from_tensors(index).repeat(steps))
    batches = tf.data.Dataset.choose_from_datasets(per_epoch, order)
    if one_hot and not (config.mixup or config.cutmix):
        batches = batches.map(
            lambda images, labels: (images, tf.one_hot(labels, data.num_classes)))
    # Every worker of a multi-worker run builds the same global batches (same
    # seeds) and keeps its share of each: no input files need sharding.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return batches.with_options(options).prefetch(tf.data.AUTOTUNE)


def eval_batches(split, config):
    """Evaluation batches of one split (no shuffling, the recipe's eval transform)."""
    return data_lib.make_pipeline(
        split, batch_size=config.batch_size, training=False,
        augmentation=config.augmentation, image_size=config.image_size)


def _save_per_class(model, data, config, stage_dir):
    counter = metrics_lib.PerClassCounter(model, data.num_classes)
    correct, total = counter(eval_batches(data.test, config))
    accuracy = metrics_lib.accuracy_from_counts(correct, total)
    workdir_lib.write_json(os.path.join(stage_dir, PER_CLASS_FILE), {
        "class_names": list(data.class_names),
        "per_class_accuracy": [None if np.isnan(a) else float(a) for a in accuracy],
        "num_samples": [int(n) for n in total],
        "accuracy": float(correct.sum() / max(total.sum(), 1)),
    })


def _callbacks(stage_dir, chief, start_epoch):
    """Checkpointing, NaN guard, CSV history and TensorBoard of a stage."""
    callbacks = [training_guards.StopOnNonFiniteLoss()]
    if chief:
        history = os.path.join(stage_dir, HISTORY_FILE)
        workdir_lib.truncate_csv_history(history, start_epoch)
        # Before the checkpoint: a run killed between the two then has an extra
        # row, which the resumed run truncates, rather than a missing one.
        callbacks += [
            keras.callbacks.CSVLogger(history, append=True),
            keras.callbacks.TensorBoard(os.path.join(stage_dir, TENSORBOARD_DIR)),
        ]
    callbacks.append(
        checkpointing.EpochCheckpoint(os.path.join(stage_dir, CHECKPOINT_DIR), write=chief))
    return callbacks


def _restore(model, directory):
    """Loads the chief's checkpoint on every worker; returns the epoch to resume from."""
    strategy = model.distribute_strategy
    with strategy.scope():
        # Every worker creates the optimizer's variables, in the same order.
        model.optimizer.build(model.trainable_variables)
    start_epoch = multi_worker.run_on_chief(
        strategy, lambda: checkpointing.restore(model, directory))
    if start_epoch:
        multi_worker.sync_variables(strategy, model.variables + model.optimizer.variables)
    return start_epoch


def _say(config, chief, line):
    """Prints a stage's line on the chief, unless `config.verbose` is 0."""
    if chief and config.verbose > 0:
        print(line, flush=True)


def stage_line(title, epochs, start_epoch, stage_dir):
    """A stage's opening line: what it trains, its epochs and folder, or where it resumes.

    Example:
        >>> stage_line("student_tllm: mlp_32 ...", 60, 36, "runs/demo/student_tllm")
        'student_tllm: mlp_32 ..., resuming at epoch 37 of 60 in runs/demo/student_tllm'
    """
    if not start_epoch:
        where = f"{epochs} epoch{'' if epochs == 1 else 's'} -> {stage_dir}"
    elif start_epoch < epochs:
        where = f"resuming at epoch {start_epoch + 1} of {epochs} in {stage_dir}"
    else:
        where = f"all {epochs} epochs done, finishing in {stage_dir}"
    return f"{title}, {where}"


def _fit(model, data, config, stage_dir, chief, epochs, extra_callbacks=(), one_hot=False,
         title="", shown_metrics=("loss", "accuracy")):
    """Fits `model`, resuming from the stage's checkpoint if there is one.

    `title` (what the stage trains) opens the stage's line, which ends with
    the epochs and the stage directory, or where it resumes; the progress bar
    shows `shown_metrics`.
    """
    start_epoch = _restore(model, os.path.join(stage_dir, CHECKPOINT_DIR))
    _say(config, chief, stage_line(title, epochs, start_epoch, stage_dir))
    if start_epoch < epochs:
        callbacks = list(extra_callbacks) + _callbacks(stage_dir, chief, start_epoch)
        if chief and config.verbose > 0:
            # Last: it shows the logs as the other callbacks leave them.
            callbacks.append(stage_progress.StageProgress(
                verbose=min(config.verbose, 2), metrics=shown_metrics))
        model.fit(
            train_batches(data, config, start_epoch, epochs, one_hot),
            initial_epoch=start_epoch,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch(data, config),
            callbacks=callbacks,
            verbose=0,
            # The batches are shuffled per epoch by train_batches, seeded for resume.
            shuffle=False,
        )


def _finish(model, stage_dir, chief):
    """Writes the stage's final model atomically and drops its checkpoint."""
    if chief:
        workdir_lib.save_model(model, os.path.join(stage_dir, MODEL_FILE))
        shutil.rmtree(os.path.join(stage_dir, CHECKPOINT_DIR), ignore_errors=True)


def _compile_on_labels(model, data, config, label_smoothing, learning_rate=None):
    # MixUp/CutMix batches carry soft label vectors, and label smoothing
    # needs one-hot labels: both take the categorical form of the loss.
    if label_smoothing > 0 or config.mixup or config.cutmix:
        loss = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch(data, config), learning_rate),
        loss=loss,
        metrics=["accuracy"],
        jit_compile=config.jit_compile,
        steps_per_execution=steps_per_execution(
            steps_per_epoch(data, config), config.steps_per_execution),
    )


def _done(strategy, final_file, stage_dir, config):
    """Whether the chief has the stage's final file (it then says so).

    If not, the chief makes the stage directory.
    """

    def check():
        if os.path.exists(final_file):
            _say(config, True, f"{os.path.basename(stage_dir)}: done, skipped ({final_file})")
            return True
        os.makedirs(stage_dir, exist_ok=True)
        return False

    return multi_worker.run_on_chief(strategy, check)


def run_teacher(config, data, strategy, stage_dir):
    """Trains the teacher on labels; returns its `.keras` path."""
    path = os.path.join(stage_dir, MODEL_FILE)
    if _done(strategy, path, stage_dir, config):
        return path
    chief = is_chief(strategy)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        teacher = build_classifier(config.teacher_model, data, config.weight_decay)
        _compile_on_labels(teacher, data, config, config.teacher_label_smoothing,
                           config.teacher_learning_rate)
    _fit(teacher, data, config, stage_dir, chief, config.teacher_epochs or config.epochs,
         one_hot=config.teacher_label_smoothing > 0,
         title=f"{TEACHER_STAGE}: {config.teacher_model} on labels")
    if chief:
        _save_per_class(teacher, data, config, stage_dir)
    _finish(teacher, stage_dir, chief)
    return path


def run_reference(config, data, strategy, stage_dir):
    """Trains the student on labels alone; returns its reference JSON path."""
    reference_path = os.path.join(stage_dir, REFERENCE_FILE)
    if _done(strategy, reference_path, stage_dir, config):
        return reference_path
    chief = is_chief(strategy)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        student = build_classifier(config.student_model, data, config.weight_decay)
        _compile_on_labels(student, data, config, 0.0)
    # Every epoch's held-out accuracy, for --epoch_matched. Logged per epoch
    # (repaired on resume like the mask log) so a resumed stage has them all.
    history_log = os.path.join(stage_dir, REFERENCE_LOG_FILE)
    predictions_log = os.path.join(stage_dir, PREDICTIONS_LOG_DIR)
    callbacks = []
    if chief:
        workdir_lib.truncate_jsonl(
            history_log, checkpointing.saved_epoch(os.path.join(stage_dir, CHECKPOINT_DIR)))
        held_out = eval_batches(data.held_out, config)
        callbacks.append(reference_lib.ReferenceHistory(
            held_out, data.num_classes, log_path=history_log))
        # Which held-out images it gets right, every epoch: the paired rule's input.
        callbacks.append(predictions_lib.PredictionRecorder(
            held_out, data.num_classes, log_dir=predictions_log))
    _fit(student, data, config, stage_dir, chief, config.epochs, extra_callbacks=callbacks,
         title=f"{REFERENCE_STAGE}: {config.student_model} on labels")
    if chief:
        counter = metrics_lib.PerClassCounter(student, data.num_classes)
        correct, total = counter(eval_batches(data.held_out, config))
        warn_about_empty_held_out_classes(total, data.class_names)
        _save_per_class(student, data, config, stage_dir)
        _finish(student, stage_dir, chief)
        rows = predictions_lib.read_rows(predictions_log, config.epochs)
        if rows is not None:
            predictions_lib.save_predictions(
                predictions_lib.predictions_path(reference_path), *rows)
            shutil.rmtree(predictions_log, ignore_errors=True)
        # Written last: its presence marks the stage as done.
        reference_lib.save_reference(
            reference_path, metrics_lib.accuracy_from_counts(correct, total), total,
            per_epoch_accuracy=reference_lib.read_history_log(
                history_log, config.epochs, data.num_classes),
            provenance=preflight.reference_provenance(config))
    return reference_path


def load_teacher(teacher_path, data):
    """Loads a teacher `.keras` file (safe mode) and checks its classes."""
    if not os.path.exists(teacher_path):
        raise ValueError(
            f"Teacher not found: {teacher_path!r}. Run --stage=teacher first or "
            "pass --teacher_path.")
    # Frozen, so its optimizer state (if saved) is not loaded.
    teacher = model_io.load_keras_model(teacher_path, role="teacher")
    outputs = teacher.outputs[0].shape[-1]
    if outputs != data.num_classes:
        raise ValueError(
            f"The teacher {teacher_path!r} outputs {outputs} classes but the data "
            f"set {data.name!r} has {data.num_classes}. Use a teacher trained on "
            "this data set.")
    image_shape = tuple(teacher.inputs[0].shape[1:])
    if image_shape != tuple(data.image_shape):
        raise ValueError(
            f"The teacher {teacher_path!r} takes images of shape {image_shape} but "
            f"the data set {data.name!r} has {tuple(data.image_shape)}. Use a teacher "
            "trained on this data set (or set --image_size to match).")
    return teacher


def warn_about_empty_held_out_classes(num_samples, class_names):
    """Logs the classes that have no held-out example (they keep distilling)."""
    empty = [str(class_names[c]) for c in np.flatnonzero(np.asarray(num_samples) == 0)]
    if empty:
        logging.warning(
            "%d class(es) have no held-out example: %s. They cannot be judged and keep "
            "being distilled. Raise --holdout_fraction to include them.",
            len(empty), ", ".join(empty))


def _teacher_on_every_worker(strategy, teacher_path, data):
    """The teacher, built in `strategy`'s scope on every worker from the chief's file.

    The chief loads the file outside the scope (no collectives) and sends its
    architecture; every worker builds that in the scope, and then receives
    the chief's weights.
    """
    loaded = []

    def read_architecture():
        loaded.append(load_teacher(teacher_path, data))
        return loaded[0].to_json()

    architecture = multi_worker.run_on_chief(strategy, read_architecture)
    with strategy.scope():
        teacher = keras.models.model_from_json(architecture)
    if loaded:
        teacher.set_weights(loaded[0].get_weights())
    multi_worker.sync_variables(strategy, teacher.variables)
    return teacher


def _read_reference(reference_path, num_classes, epoch_matched):
    """A reference file's final per-class accuracy, or with `epoch_matched` every epoch's."""
    if epoch_matched:
        try:
            accuracy = reference_lib.load_reference_history(reference_path)
        except reference_lib.MissingHistoryError:
            raise ValueError(
                f"--epoch_matched needs the reference's held-out accuracy after every "
                f"epoch, and {reference_path!r} has only the final one (it was written "
                "by an older tools/train.py, or without tllm_tf.ReferenceHistory). "
                "Re-run the reference stage (in a new --workdir, without "
                "--reference_path) to record it, or drop --epoch_matched.") from None
    else:
        accuracy = reference_lib.load_reference(reference_path)
    if accuracy.shape[-1] != num_classes:
        raise ValueError(
            f"The reference {reference_path!r} has {accuracy.shape[-1]} classes but "
            f"the data set has {num_classes}. Use the reference of this data set.")
    return accuracy


def _reference_on_every_worker(strategy, reference_path, num_classes, config):
    """The chief's reference, on every worker.

    With the paired rule and a predictions file beside the reference file: a
    `ReferencePredictions`; otherwise the per-class accuracies of
    `_read_reference` (the callback then judges with the unpaired rule and
    says so).
    """
    sibling = predictions_lib.predictions_path(reference_path)

    def read():
        if config.rule == "paired" and os.path.exists(sibling):
            _read_reference(reference_path, num_classes, config.epoch_matched)
            predictions = predictions_lib.load_predictions(sibling)
            return {"labels": predictions.labels.tolist(),
                    "correct": predictions.correct.astype(int).tolist()}
        return _read_reference(reference_path, num_classes, config.epoch_matched).tolist()

    values = multi_worker.run_on_chief(strategy, read)
    if isinstance(values, dict):
        return predictions_lib.ReferencePredictions(
            labels=np.array(values["labels"], dtype=np.int32),
            correct=np.array(values["correct"], dtype=bool))
    return np.array(values, dtype=np.float64)


def run_student(config, data, strategy, stage_dir, kind, teacher_path, reference_path):
    """Distils the student of `kind` ("distilled" or "tllm", `config.STUDENTS`); exports it."""
    model_path = os.path.join(stage_dir, MODEL_FILE)
    if _done(strategy, model_path, stage_dir, config):
        return model_path
    chief = is_chief(strategy)
    teacher = _teacher_on_every_worker(strategy, teacher_path, data)
    # Seeded after the teacher, so the student starts from the reference's weights.
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        student = build_classifier(config.student_model, data, config.weight_decay)
        distiller = tllm_tf.Distiller(student, teacher, num_classes=data.num_classes,
                                     teacher_dtype=config.teacher_dtype)
        distiller.compile(
            optimizer=make_optimizer(config, steps_per_epoch(data, config)),
            metrics=["accuracy"],
            distillation_loss_fn=losses_lib.get_distillation_loss(
                config.distillation_loss, **config.distillation_loss_kwargs()),
            alpha=config.alpha,
            beta=config.beta,
            masked_class_policy=config.masked_class_policy,
            distillation_warmup_steps=(
                config.distillation_warmup_epochs * steps_per_epoch(data, config)),
            jit_compile=config.jit_compile,
            steps_per_execution=steps_per_execution(
                steps_per_epoch(data, config), config.steps_per_execution),
        )
    callbacks = []
    if kind == "tllm":
        mask_log = os.path.join(stage_dir, MASK_LOG_FILE)
        if chief:
            workdir_lib.truncate_jsonl(
                mask_log, checkpointing.saved_epoch(os.path.join(stage_dir, CHECKPOINT_DIR)))
        identification = tllm_tf.UndistillableClassCallback(
            eval_batches(data.held_out, config),
            reference=_reference_on_every_worker(
                strategy, reference_path, data.num_classes, config),
            rule=config.rule,
            significance=config.significance,
            correction=config.correction,
            margin=config.margin,
            warmup_epochs=config.warmup_epochs,
            update_every=config.update_every,
            sticky=config.sticky,
            min_samples=config.min_samples,
            log_path=mask_log if chief else None,
            epoch_matched=config.epoch_matched,
            smoothing=config.smoothing,
            patience=config.patience,
            margin_standard_errors=config.margin_standard_errors,
        )
        callbacks.append(identification)
        if multi_worker.num_workers(strategy) > 1:
            callbacks.append(multi_worker.ClassMaskFromChief(strategy))
        if chief:
            callbacks.append(summaries.PerClassAccuracySummary(
                identification, os.path.join(stage_dir, TENSORBOARD_DIR, "per_class"),
                class_names=list(data.class_names)))
    teacher_name = config.teacher_path or config.teacher_model
    masking = ", TLLM masking" if kind == "tllm" else ""
    _fit(distiller, data, config, stage_dir, chief, config.epochs, extra_callbacks=callbacks,
         title=f"{os.path.basename(stage_dir)}: {config.student_model} distilled from "
               f"{teacher_name} ({config.distillation_loss} loss{masking})",
         shown_metrics=("loss", "accuracy") + (
             ("num_undistillable_classes",) if kind == "tllm" else ()))
    if chief:
        _save_per_class(student, data, config, stage_dir)
        export_lib.export_saved_model(student, os.path.join(stage_dir, SAVED_MODEL_DIR))
        _finish(student, stage_dir, chief)
    return model_path


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
    data = preflight.check(config, strategy, load_data)
    multi_worker.run_on_chief(strategy, lambda: workdir_lib.claim(config.workdir, config))
    chief = is_chief(strategy)
    teacher_path = config.teacher_path or os.path.join(
        config.workdir, TEACHER_STAGE, MODEL_FILE)
    reference_path = config.reference_path or os.path.join(
        config.workdir, REFERENCE_STAGE, REFERENCE_FILE)
    steps = steps_per_epoch(data, config)
    executed = steps_per_execution(steps, config.steps_per_execution)
    if executed != config.steps_per_execution:
        _say(config, chief, f"--steps_per_execution={config.steps_per_execution}: using "
             f"{executed}, the largest divisor of the {steps} steps of an epoch (a whole "
             "execution would run into the next epoch's batches).")
    if config.epoch_matched and "student" in config.stages and "tllm" in config.students:
        # A reference that exists already must have its per-epoch accuracy:
        # refuse it now rather than after the teacher has trained.
        def check_reference():
            if os.path.exists(reference_path):
                _read_reference(reference_path, data.num_classes, epoch_matched=True)

        multi_worker.run_on_chief(strategy, check_reference)
    for stage in config.stages:
        stage_dir = os.path.join(config.workdir, stage)
        if stage == TEACHER_STAGE and config.teacher_path:
            _say(config, chief, f"{TEACHER_STAGE}: --teacher_path={config.teacher_path}, "
                 "not trained here")
        elif stage == TEACHER_STAGE:
            teacher_path = run_teacher(config, data, strategy, stage_dir)
        elif stage == REFERENCE_STAGE and config.reference_path:
            _say(config, chief, f"{REFERENCE_STAGE}: --reference_path="
                 f"{config.reference_path}, not trained here")
        elif stage == REFERENCE_STAGE:
            reference_path = run_reference(config, data, strategy, stage_dir)
        elif stage == "student":
            for kind in config.students:
                run_student(config, data, strategy,
                            os.path.join(config.workdir, student_stage(kind)),
                            kind, teacher_path, reference_path)
    return config.workdir if chief else None
