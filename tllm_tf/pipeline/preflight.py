"""Checks of a run before anything trains, each naming the flag to change.

Some configurations are valid flag by flag and still train nothing, or train
something other than asked, and every stage then reports success: a batch
larger than the training split (every batch is incomplete and dropped), a
warm-up as long as the run (the mask never changes: TLLM is plain KD),
`--alpha=0 --beta=0` (the loss is 0), a reference or a teacher made from
another held-out split. Others would fail once the first stage has trained:
an `--image_size` the augmentation cannot take, `--masked_classes` the data
set does not have, a `--teacher_path` that cannot be loaded or has other
classes, a `--reference_path` that does not exist, a `--teacher_store` that cannot be
written or was built for another teacher or other views. `check` refuses them, the
workdir first and before the data set loads (a minute, for some), the rest as
soon as the data set tells the split sizes and classes.
"""

import os
import tempfile

import numpy as np

from tllm_tf import callbacks
from tllm_tf import model_checks
from tllm_tf import reference as reference_lib
from tllm_tf.data import augment
from tllm_tf.data import soft_label_store
from tllm_tf.pipeline import build
from tllm_tf.pipeline import model_origin
from tllm_tf.pipeline import multi_worker
from tllm_tf.pipeline import stage_inputs
from tllm_tf.pipeline import workdir_files

# The splits whose images a reference learnt from or was judged on: both are compared.
REFERENCE_SPLITS = ("train", "held_out")


def check(config, strategy, load_data):
    """Checks `config`, loads its data set, checks the rest; returns the data set.

    Args:
        config: the run's `RunConfig`.
        strategy: its `tf.distribute` strategy; files are checked on the
            chief only (the other workers write nothing).
        load_data: `config -> DataSplits`, called once.

    Returns:
        The `DataSplits`.

    Raises:
        ValueError: on a configuration that would train nothing or the
            wrong thing (see the module docstring), naming the flags.
    """
    check_schedule(config)
    check_augmentation(config)
    multi_worker.run_on_chief(strategy, lambda: check_workdir(config.workdir))
    if config.teacher_path and "student" in config.stages:
        multi_worker.run_on_chief(strategy, lambda: model_origin.check_teacher_origin(config))
    data = load_data(config)
    check_image_sizes(config, data)
    check_batch_size(config, data, strategy.num_replicas_in_sync)
    check_held_out(config, data)
    check_masked_classes(config, data)
    if config.teacher_path and ("student" in config.stages or "store" in config.stages):
        multi_worker.run_on_chief(strategy, lambda: model_origin.check_teacher_images(config, data))
        multi_worker.run_on_chief(strategy, lambda: check_teacher_file(config, data))
    if config.teacher_store and ("student" in config.stages or "store" in config.stages):
        multi_worker.run_on_chief(strategy, lambda: check_teacher_store(config, data))
    if config.reference_path and "student" in config.stages and (
            "tllm" in config.students or config.reference_fallback):
        multi_worker.run_on_chief(strategy, lambda: check_reference_exists(config))
    if config.reference_path and "student" in config.stages and "tllm" in config.students:
        multi_worker.run_on_chief(strategy, lambda: check_reference_origin(config, data))
    return data


def check_schedule(config):
    """Refuses weights and schedules that train nothing, or nothing but KD."""
    if config.alpha + config.beta <= 0:
        raise ValueError(
            f"--alpha={config.alpha} and --beta={config.beta}: with both 0 the loss is 0 "
            "and the students do not train. Give one of them a positive weight.")
    if "tllm" not in config.students or "student" not in config.stages:
        return
    if config.masked_classes or config.masked_classes_from:  # A fixed mask is not KD.
        return
    warmup, update_every = callbacks.update_schedule(
        config.epochs, config.warmup_epochs, config.update_every)
    first_update = warmup + update_every
    if first_update > config.epochs:
        raise ValueError(
            f"--warmup_epochs={warmup} and --update_every={update_every} put the "
            f"first mask update after epoch {first_update}, but --epochs={config.epochs}: "
            "the mask would never change and TLLM would train as plain KD. Lower "
            "--warmup_epochs below --epochs (or use --students=distilled, or name the classes "
            "to mask with --masked_classes).")


def decays_never_reached(config):
    """The `--lr_decay_epochs` that a stage the run trains ends before, in words, or None.

    A decay at epoch `e` (counted from 0) takes effect only in a stage of more
    than `e` epochs: a run shortened from a recipe's flag file keeps its first
    learning rate, unsaid. A stage given by a flag (`--teacher_path`) trains
    nothing here.
    """
    stage_epochs = []
    if "teacher" in config.stages and not config.teacher_path:
        flag = "--teacher_epochs" if config.teacher_epochs else "--epochs"
        stage_epochs.append(("teacher's", flag, config.teacher_epochs or config.epochs))
    if "student" in config.stages or ("reference" in config.stages
                                      and not config.reference_path):
        stage_epochs.append(("students'", "--epochs", config.epochs))
    parts = []
    for whose, flag, epochs in stage_epochs:
        late = [str(epoch) for epoch in config.lr_decay_epochs if epoch >= epochs]
        if late:
            parts.append(f"the {whose} learning rate never decays at epoch"
                         f"{'s' if len(late) > 1 else ''} {', '.join(late)} ({flag}={epochs})")
    if not parts:
        return None
    return f"--lr_decay_epochs={','.join(map(str, config.lr_decay_epochs))}: {'; '.join(parts)}."


def check_augmentation(config):
    """Refuses an `--image_size` the augmentation cannot take (only 'imagenet' resizes).

    An image folder's loader resizes its images itself (`build.augmentation_image_size`).
    """
    try:
        augment.build_augmentation(config.augmentation,
                                   image_size=build.augmentation_image_size(config))
    except ValueError as error:
        raise ValueError(
            f"--image_size={config.image_size} with --augmentation={config.augmentation}: "
            f"{error}. Drop --image_size, or use --augmentation=imagenet.") from None


def check_image_sizes(config, data):
    """Refuses images of varying size that the augmentation does not resize.

    They cannot be batched. Found only when a stage first batched them, the
    refusal came after the workdir was claimed, and the corrected flags then
    found it a run of another configuration.
    """
    try:
        build.eval_batches(data.train, config)  # Built, not read.
    except ValueError as error:
        raise ValueError(f"--augmentation={config.augmentation}: {error}") from None


def check_held_out(config, data):
    """Refuses an empty held-out split where a stage needs it (the reference, the students)."""
    if not build.reads_held_out(config):
        return
    if model_checks.count_elements(data.held_out) == 0:
        raise ValueError(
            f"--holdout_fraction={config.holdout_fraction} holds out no image of "
            f"{data.name!r}: the students are judged, and their prior offsets fitted, on the "
            "held-out split. Raise --holdout_fraction (0.1 holds out a tenth of each class).")


def check_masked_classes(config, data):
    """Refuses `--masked_classes` that the data set does not have."""
    outside = sorted(c for c in config.masked_classes if c >= data.num_classes)
    if outside:
        raise ValueError(
            f"--masked_classes={','.join(map(str, config.masked_classes))} names classes "
            f"{outside} that the data set {data.name!r} does not have: its classes are 0 to "
            f"{data.num_classes - 1}. Give class ids in that range.")


def check_teacher_file(config, data):
    """Loads `--teacher_path` once, so a bad file is refused before the reference trains."""
    if not os.path.isfile(config.teacher_path):
        raise ValueError(
            f"--teacher_path={config.teacher_path!r} does not exist. Give the model.keras "
            "a teacher stage wrote (WORKDIR/teacher/model.keras), or leave --teacher_path "
            "out to train the teacher in this run.")
    stage_inputs.load_teacher(config.teacher_path, data)


def check_reference_exists(config):
    """Refuses a `--reference_path` that is not there, before anything trains."""
    if not os.path.isfile(config.reference_path):
        raise ValueError(
            f"--reference_path={config.reference_path!r} does not exist. Give the "
            "reference.json a reference stage wrote (WORKDIR/reference/reference.json), or "
            "leave --reference_path out to train the reference in this run.")


def check_workdir(workdir):
    """Refuses a workdir that cannot be created or written, before anything runs.

    Raises:
        ValueError: naming the path and the system's reason (a file in the
            way, no permission, a read-only or virtual file system).
    """
    check_writable_directory("workdir", workdir)


def check_writable_directory(flag, path):
    """Creates `path` if missing; refuses one that is a file or cannot be written.

    Args:
        flag: the flag that names it, for the message (`"workdir"`).
        path: the directory.

    Raises:
        ValueError: naming the flag, the path and the system's reason.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--{flag}={path!r} is a file, not a directory. Choose "
                         f"another --{flag}.")
    try:
        os.makedirs(path, exist_ok=True)
        # Writing a file is the only sure test: root may create directories
        # where files cannot be written, and /proc refuses either way.
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ValueError(
            f"Cannot write to --{flag}={path!r}: {error.strerror or error} "
            f"({type(error).__name__}). Choose a directory you can write to.") from None


def check_teacher_store(config, data):
    """Refuses a `--teacher_store` the run could not use, before anything trains.

    A directory that cannot be written is refused; so is a store built for
    another teacher or other views when the teacher is already known
    (`--teacher_path`, or this workdir's finished teacher stage): the
    store's own check, which would otherwise come after the reference has
    trained.
    """
    check_writable_directory("teacher_store", config.teacher_store)
    teacher_file = config.teacher_path or os.path.join(
        config.workdir, workdir_files.TEACHER_STAGE, workdir_files.MODEL_FILE)
    has_store = os.path.exists(os.path.join(config.teacher_store, soft_label_store.STORE_FILE))
    if has_store and os.path.isfile(teacher_file):
        build.soft_label_store(config, data, stage_inputs.load_teacher(teacher_file, data))


def check_batch_size(config, data, num_replicas=1):
    """Refuses a batch size larger than the training split, or one the replicas cannot split."""
    if config.batch_size % num_replicas:
        raise ValueError(
            f"--batch_size={config.batch_size} (the global batch) does not split evenly over "
            f"the {num_replicas} replicas of --strategy={config.strategy}: the replicas' "
            "first batches would differ in shape, which the collectives refuse. Use a "
            f"multiple of {num_replicas}.")
    if data.num_train is not None and config.batch_size > data.num_train:
        raise ValueError(
            f"--batch_size={config.batch_size} is larger than the training split of "
            f"{data.name!r} ({data.num_train} images once the held-out split is taken"
            f"{' and --num_train applied' if config.num_train else ''}): the only batch "
            "would be incomplete and is dropped, so nothing would train. Use "
            f"--batch_size <= {data.num_train}.")


def reference_provenance(config, data):
    """What the reference stage of `config` on `data` is made from, for its reference file.

    Args:
        config: the run's `RunConfig`.
        data: its `DataSplits`.

    Returns:
        A dict of JSON scalars. An image folder's also holds the digests of its
        training and held-out files (`train_images`, `held_out_images`), so
        that a reference of the same folder moved is taken and one of other
        files is not.
    """
    return {
        "dataset": config.dataset,
        "seed": config.seed,
        "holdout_fraction": config.holdout_fraction,
        "num_train": config.num_train,
        "image_size": config.image_size,
        "student_model": config.student_model,
        **({f"{name}_images": data.split_digests[name] for name in REFERENCE_SPLITS}
           if data.split_digests else {}),
    }


def held_out_counts(data):
    """The number of held-out images of each class."""
    counts = np.zeros(data.num_classes, np.int64)
    for labels in data.held_out.map(lambda image, label: label).batch(4096):
        counts += np.bincount(np.asarray(labels).reshape(-1), minlength=data.num_classes)
    return counts


def check_reference_origin(config, data):
    """Refuses a `--reference_path` made from another split, data set or student."""
    if os.path.exists(config.reference_path):
        reference_lib.check_provenance(config.reference_path, reference_provenance(config, data),
                                       num_samples=held_out_counts(data))
