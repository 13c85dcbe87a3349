"""What a stage builds from a `RunConfig`: the data, a classifier, the optimizer, the batches.

(And the compiled `Distiller` and its `UndistillableClassCallback`; with --teacher_store,
the soft-label store of the teacher's logits on those batches.)

Training batches are a function of `(config, epoch)` alone, so a stage
resumed at epoch `e` sees the batches an uninterrupted run would have seen.
"""

import keras
import tensorflow as tf

from tllm_tf import callbacks as callbacks_lib
from tllm_tf import data as data_lib
from tllm_tf import distiller as distiller_lib
from tllm_tf import identification
from tllm_tf import losses as losses_lib
from tllm_tf import models as models_lib
from tllm_tf.data.soft_label_store import SoftLabelStore


def reads_held_out(config):
    """Whether a stage of `config`'s run reads the held-out split (the reference, the students)."""
    return bool({"reference", "student"} & set(config.stages))


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
        cache_held_out=reads_held_out(config),
    )


def build_classifier(model_name, data, weight_decay=0.0):
    """A zoo model with the data set's normalisation in front (raw images in).

    Its input is named `images`: Keras's own export (`Distiller.export`) names
    the serving input after it, which would otherwise be a numbered
    `input_layer_N` that differs between the models of one run.
    """
    network = models_lib.build_model(
        model_name, data.num_classes, data.image_shape, weight_decay=weight_decay)
    return keras.Sequential(
        [
            keras.Input(shape=data.image_shape, name="images"),
            keras.layers.Normalization(
                mean=list(data.mean), variance=[s**2 for s in data.std]),
            network,
        ],
        name=model_name,
    )


# The most float32 logits one file of a --teacher_store holds (ImageNet at batch 256: about 260
# batches a file, where one file an epoch held 5 GB).
STORE_FILE_BYTES = 256 * 1024**2


def make_optimizer(config, steps_per_epoch, initial_learning_rate=None):
    """SGD or Adam with a step decay at `lr_decay_epochs`.

    The rate of epoch `e` of `lr_decay_epochs` (counted from 0, as `fit`
    counts) applies from that epoch's first step, as the field's reference
    code decays it at an epoch's start.
    """
    initial_learning_rate = initial_learning_rate or config.learning_rate
    learning_rate = initial_learning_rate
    if config.lr_decay_epochs:
        # The schedule is read at the optimizer's count of steps already taken, and a
        # boundary step still takes the earlier value: epoch e starts at step e * steps.
        boundaries = [epoch * steps_per_epoch - 1 for epoch in config.lr_decay_epochs]
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


def compile_arguments(config, data, learning_rate=None):
    """What every stage's `compile` takes from the run: the optimizer and how steps run.

    Args:
        config: the run's `RunConfig`.
        data: its `DataSplits` (the learning-rate schedule counts in steps).
        learning_rate: the initial learning rate. Defaults to `config.learning_rate`.

    Returns:
        A dict of `compile`'s keyword arguments `optimizer`, `jit_compile` and
        `steps_per_execution`.
    """
    steps = steps_per_epoch(data, config)
    return {
        "optimizer": make_optimizer(config, steps, learning_rate),
        "jit_compile": config.jit_compile,
        "steps_per_execution": steps_per_execution(steps, config.steps_per_execution),
    }


def distiller(config, data, teacher):
    """A fresh `config.student_model` in a `Distiller` with `teacher`, compiled for the run.

    Build it in the strategy's scope.

    Args:
        config: the run's `RunConfig`.
        data: its `DataSplits`.
        teacher: the trained teacher (float32; the `Distiller` makes the
            `config.teacher_dtype` copy).

    Returns:
        The compiled `Distiller`; its `student` is the model the stage saves.
    """
    student = build_classifier(config.student_model, data, config.weight_decay)
    model = distiller_lib.Distiller(student, teacher, num_classes=data.num_classes,
                                    teacher_dtype=config.teacher_dtype)
    arguments = compile_arguments(config, data)
    model.compile(
        metrics=["accuracy"],
        distillation_loss_fn=losses_lib.get_distillation_loss(
            config.distillation_loss, **config.distillation_loss_kwargs()),
        alpha=config.alpha,
        beta=config.beta,
        masked_class_policy=config.masked_class_policy,
        distillation_warmup_steps=(
            config.distillation_warmup_epochs * steps_per_epoch(data, config)),
        **arguments,
    )
    return model


def identification_callback(config, data, reference, log_path):
    """The `UndistillableClassCallback` of `config`'s rule, on `data`'s held-out split.

    Args:
        config: the run's `RunConfig`.
        data: its `DataSplits`.
        reference: what the rule compares the student with
            (`stage_inputs.reference_on_every_worker`).
        log_path: the mask log to write, or `None` to write none.

    Returns:
        The `UndistillableClassCallback`.
    """
    return callbacks_lib.UndistillableClassCallback(
        eval_batches(data.held_out, config),
        reference=reference,
        rule=config.rule,
        significance=config.significance,
        correction=config.correction,
        margin=config.margin,
        warmup_epochs=config.warmup_epochs,
        update_every=config.update_every,
        max_updates=config.max_updates,
        sticky=config.sticky,
        min_samples=config.min_samples,
        log_path=log_path,
        epoch_matched=config.epoch_matched,
        smoothing=config.smoothing,
        patience=config.patience,
        margin_standard_errors=config.margin_standard_errors,
        masked_classes=config.masked_classes,
        # The unpaired rule compares per-class accuracies, which offsets do not judge.
        prior_offsets=(config.rule_prior_offsets
                       and identification.reads_per_image_results(config.rule)),
    )


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
    # A set larger than the shuffle buffer whose source draws its order is read through
    # `shuffled_train`, never from this cache: --cache changes how fast, never which batches.
    train = data.train.cache() if config.cache else data.train
    steps = steps_per_epoch(data, config)
    batches = data_lib.training_batches(
        train,
        shuffled_train=data.shuffled_train,
        batch_size=config.batch_size,
        # tf.data's own reshuffling would depend on how many epochs this process iterated.
        epoch_seeds=[config.seed * 100_003 + epoch for epoch in range(start_epoch, epochs)],
        steps=steps,
        augmentation=config.augmentation,
        image_size=augmentation_image_size(config),
        num_classes=data.num_classes,
        mixup=config.mixup,
        cutmix=config.cutmix,
        randaugment=config.randaugment,
        # Changes no batch (an epoch is whole batches) but keeps the batch size static, which
        # tf.distribute's rebatching and XLA use.
        drop_remainder=True,
    )
    if one_hot and not (config.mixup or config.cutmix):
        batches = batches.map(
            lambda images, labels: (images, tf.one_hot(labels, data.num_classes)))
    return shard_by_data(batches)


def shard_by_data(batches):
    """`batches`, prefetched, each worker of a multi-worker run keeping its share of each.

    Every worker builds the same global batches (same seeds) and keeps its
    share of each: no input files need sharding.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return batches.with_options(options).prefetch(tf.data.AUTOTUNE)


def soft_label_store(config, data, teacher):
    """The `SoftLabelStore` at `config.teacher_store`: `teacher`'s logits on `train_batches`' views.

    The fingerprint names everything that decides the views, so a store made
    for other views is refused (`ValueError`, naming each field), as is one of another
    `top_k` (`teacher_store_top_k=0` is every class, `num_classes`). An epoch is
    one file when its float32 logits take at most `STORE_FILE_BYTES` (the
    build holds one file's in memory), else files of as many batches as fit.
    """
    batch_bytes = config.batch_size * data.num_classes * 4
    per_file = max(1, STORE_FILE_BYTES // batch_bytes)
    return SoftLabelStore(
        config.teacher_store, teacher, lambda epoch: train_batches(data, config, epoch, epoch + 1),
        num_classes=data.num_classes, top_k=config.teacher_store_top_k or data.num_classes,
        dtype=config.teacher_store_dtype,
        batches_per_shard=None if per_file >= steps_per_epoch(data, config) else per_file,
        views_fingerprint={
            "dataset": config.dataset, "num_train": config.num_train,
            "train_size": data.num_train, "holdout_fraction": config.holdout_fraction,
            "seed": config.seed, "augmentation": config.augmentation,
            "image_size": config.image_size, "mixup": config.mixup, "cutmix": config.cutmix,
            "randaugment": config.randaugment, "batch_size": config.batch_size,
            "steps_per_epoch": steps_per_epoch(data, config),
            # Only where they apply, so that the stores of every other set stay valid.
            **({"training_order": "drawn by the source each epoch"}
               if data_lib.reads_shuffled_train(data.train, data.shuffled_train) else {}),
            **({"train_images": data.split_digests["train"]} if data.split_digests else {})})


def eval_batches(split, config):
    """Evaluation batches of one split (no shuffling, the recipe's eval transform)."""
    return data_lib.make_pipeline(
        split, batch_size=config.batch_size, training=False,
        augmentation=config.augmentation, image_size=augmentation_image_size(config))


def augmentation_image_size(config):
    """The side `config`'s augmentation resizes to (`data.augmentation_image_size`)."""
    return data_lib.augmentation_image_size(config.dataset, config.augmentation,
                                            config.image_size)
