"""The three-stage TLLM pipeline: teacher, reference student, distilled students.

This is the experiment layer: it is the one library module that reads a
`RunConfig`, and it turns it into keyword arguments for the core (models,
data, `Distiller`, `UndistillableClassCallback`). Each stage writes to
`workdir/<stage>/`; a stage whose final model exists is not run again.

Workdir layout:

    config.json
    teacher/model.keras, test_per_class.json
    reference/model.keras, reference.json (held-out per-class accuracy),
        test_per_class.json
    student_<method>/model.keras, saved_model/, history.csv,
        mask_log.jsonl (tllm), test_per_class.json
"""

import json
import math
import os

import keras
import numpy as np
import tensorflow as tf

import tllm_tf
from tllm_tf import data as data_lib
from tllm_tf import metrics as metrics_lib
from tllm_tf import models as models_lib
from tllm_tf import reference as reference_lib

MODEL_FILE = "model.keras"
PER_CLASS_FILE = "test_per_class.json"
REFERENCE_FILE = "reference.json"


def load_data(config):
    """Returns the `DataSplits` named by `config.dataset`."""
    if config.dataset == "digits":
        return data_lib.load_digits(
            holdout_fraction=config.holdout_fraction,
            num_train=config.num_train,
            seed=config.seed,
        )
    raise ValueError(
        f"Unknown dataset: {config.dataset!r}. This build knows 'digits'."
    )


def make_strategy(name):
    """Returns the `tf.distribute` strategy for `--strategy`."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


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


def make_optimizer(config, steps_per_epoch):
    """SGD or Adam with a step decay at `lr_decay_epochs`."""
    learning_rate = config.learning_rate
    if config.lr_decay_epochs:
        boundaries = [epoch * steps_per_epoch for epoch in config.lr_decay_epochs]
        values = [
            config.learning_rate * config.lr_decay_rate**i
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


def batches(split, config, training, num_classes=None, one_hot=False):
    """Batched, prefetched tf.data for one split."""
    dataset = split
    if training:
        dataset = dataset.shuffle(4096, seed=config.seed, reshuffle_each_iteration=True)
    if one_hot:
        dataset = dataset.map(
            lambda image, label: (image, tf.one_hot(label, num_classes)),
            num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)


def _steps_per_epoch(data, config):
    return max(1, math.ceil((data.num_train or 1) / config.batch_size))


def _write_json(path, value):
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(value, handle, indent=1)
    os.replace(temporary, path)


def _save_per_class(model, data, config, stage_dir):
    counter = metrics_lib.PerClassCounter(model, data.num_classes)
    correct, total = counter(batches(data.test, config, training=False))
    accuracy = metrics_lib.accuracy_from_counts(correct, total)
    _write_json(os.path.join(stage_dir, PER_CLASS_FILE), {
        "class_names": list(data.class_names),
        "per_class_accuracy": [None if np.isnan(a) else float(a) for a in accuracy],
        "num_samples": [int(n) for n in total],
        "accuracy": float(correct.sum() / max(total.sum(), 1)),
    })


def _fit_on_labels(model, data, config, epochs, label_smoothing, stage_dir):
    one_hot = label_smoothing > 0
    loss = (
        keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)
        if one_hot else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.compile(
        optimizer=make_optimizer(config, _steps_per_epoch(data, config)),
        loss=loss,
        metrics=["accuracy"],
        jit_compile=config.jit_compile,
        steps_per_execution=config.steps_per_execution,
    )
    model.fit(
        batches(data.train, config, True, data.num_classes, one_hot),
        epochs=epochs,
        callbacks=[keras.callbacks.CSVLogger(os.path.join(stage_dir, "history.csv"))],
        verbose=config.verbose,
    )


def run_teacher(config, data, strategy, stage_dir):
    """Trains the teacher on labels; returns its `.keras` path."""
    path = config.teacher_path or os.path.join(stage_dir, MODEL_FILE)
    if os.path.exists(path):
        return path
    os.makedirs(stage_dir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        teacher = build_classifier(config.teacher_model, data, config.weight_decay)
        _fit_on_labels(teacher, data, config, config.teacher_epochs or config.epochs,
                       config.teacher_label_smoothing, stage_dir)
    _save_per_class(teacher, data, config, stage_dir)
    teacher.save(path)
    return path


def run_reference(config, data, strategy, stage_dir):
    """Trains the student on labels alone; returns its reference JSON path."""
    if config.reference_path:
        return config.reference_path
    reference_path = os.path.join(stage_dir, REFERENCE_FILE)
    if os.path.exists(reference_path):
        return reference_path
    os.makedirs(stage_dir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        student = build_classifier(config.student_model, data, config.weight_decay)
        _fit_on_labels(student, data, config, config.epochs, 0.0, stage_dir)
    counter = metrics_lib.PerClassCounter(student, data.num_classes)
    correct, total = counter(batches(data.held_out, config, training=False))
    _save_per_class(student, data, config, stage_dir)
    student.save(os.path.join(stage_dir, MODEL_FILE))
    reference_lib.save_reference(
        reference_path, metrics_lib.accuracy_from_counts(correct, total), total)
    return reference_path


def run_student(config, data, strategy, stage_dir, method, teacher_path, reference_path):
    """Distils the student with `method` ("kd" or "tllm"); exports it."""
    model_path = os.path.join(stage_dir, MODEL_FILE)
    if os.path.exists(model_path):
        return model_path
    os.makedirs(stage_dir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        teacher = keras.models.load_model(teacher_path)
        student = build_classifier(config.student_model, data, config.weight_decay)
        distiller = tllm_tf.Distiller(student, teacher, num_classes=data.num_classes)
        distiller.compile(
            optimizer=make_optimizer(config, _steps_per_epoch(data, config)),
            metrics=["accuracy"],
            distillation_loss_fn=tllm_tf.KDLoss(temperature=config.temperature),
            alpha=config.alpha,
            beta=config.beta,
            masked_class_policy=config.masked_class_policy,
            jit_compile=config.jit_compile,
            steps_per_execution=config.steps_per_execution,
        )
    callbacks = [keras.callbacks.CSVLogger(os.path.join(stage_dir, "history.csv"))]
    if method == "tllm":
        callbacks.append(tllm_tf.UndistillableClassCallback(
            batches(data.held_out, config, training=False),
            reference=reference_path,
            margin=config.margin,
            warmup_epochs=config.warmup_epochs,
            update_every=config.update_every,
            sticky=config.sticky,
            min_samples=config.min_samples,
            log_path=os.path.join(stage_dir, "mask_log.jsonl"),
        ))
    distiller.fit(
        batches(data.train, config, training=True),
        epochs=config.epochs,
        callbacks=callbacks,
        verbose=config.verbose,
    )
    _save_per_class(student, data, config, stage_dir)
    student.export(os.path.join(stage_dir, "saved_model"), verbose=False)
    student.save(model_path)
    return model_path


def run(config):
    """Runs the stages of `config` in order; returns the workdir."""
    os.makedirs(config.workdir, exist_ok=True)
    _write_json(os.path.join(config.workdir, "config.json"), json.loads(config.to_json()))
    data = load_data(config)
    strategy = make_strategy(config.strategy)
    teacher_path = config.teacher_path or os.path.join(config.workdir, "teacher", MODEL_FILE)
    reference_path = config.reference_path or os.path.join(
        config.workdir, "reference", REFERENCE_FILE)
    for stage in config.stages:
        stage_dir = os.path.join(config.workdir, stage)
        if stage == "teacher":
            teacher_path = run_teacher(config, data, strategy, stage_dir)
        elif stage == "reference":
            reference_path = run_reference(config, data, strategy, stage_dir)
        else:
            for method in config.method:
                run_student(config, data, strategy,
                            os.path.join(config.workdir, f"student_{method}"),
                            method, teacher_path, reference_path)
    return config.workdir
