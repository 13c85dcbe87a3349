"""tfds image-classification data sets as `DataSplits`.

(Over 300 lines: finding, preparing and checking a tfds set, its test candidates and its
labels, one source; the next seam would be the label checks.)

Works for CIFAR-10, CIFAR-100, ImageNet (`imagenet2012`, built from the
manually downloaded tar files) and any tfds data set with an `image` feature
and a `label` `ClassLabel`. The held-out split that drives TLLM's class
selection is a stratified, seeded part of the *train* split; the test split
(`test`, else `validation`) is left whole. A split without labels (tfds'
`imagenet2012` `test`, all -1) is never used as the test split.
"""

import contextlib
import difflib
import functools
import logging
import re

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tllm_tf.data.augment import DEFAULT_IMAGENET_SIZE
from tllm_tf.data.errors import DamagedDataError
from tllm_tf.data.errors import DataNotFoundError
from tllm_tf.data.errors import UnlabelledDataError
from tllm_tf.data.splits import stratified_split
from tllm_tf.data.statistics import channel_statistics
from tllm_tf.data.types import DataSplits

_LABEL_BATCH = 8192

# Published per-channel statistics on the 0-1 scale, so that runs normalise
# exactly as the papers they are compared with.
PUBLISHED_STATISTICS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

_IMAGENET_TARS = "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar"
# What TensorFlow raises on a prepared set's missing, truncated or damaged record files.
_READ_ERRORS = (
    tf.errors.NotFoundError,
    tf.errors.DataLossError,
    tf.errors.FailedPreconditionError,
)


def _builder(name, data_dir):
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        known = tfds.list_builders(with_community_datasets=False)
        close = difflib.get_close_matches(name.split(":")[0].split("/")[0], known, n=3)
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(
            f"Unknown tfds data set {name!r}.{hint} List the names with "
            "`python -c 'import tensorflow_datasets as tfds; "
            "print(tfds.list_builders())'` or see "
            "https://www.tensorflow.org/datasets/catalog/overview."
        ) from None  # tfds' own message lists every data set it knows.


def _how_to_provide(builder, name):
    ways = [
        f"  - pass data_dir (--data_dir) pointing at the folder that holds "
        f"{builder.name}/<version>/ (looked in {builder.data_dir});",
        f"  - build it on a machine with network access: `tfds build {name} "
        "--data_dir=DIR`, then copy DIR here and pass it as data_dir;",
    ]
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        files = _IMAGENET_TARS if builder.name == "imagenet2012" else "the files"
        ways.append(
            f"  - {builder.name} needs a manual download: put {files} in a "
            "folder and pass it as manual_dir (--manual_dir); it is then "
            "built locally, without network access. Instructions: "
            + " ".join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())
        )
    else:
        ways.append("  - pass download=True (--download) where there is network access.")
    return "\n".join(ways)


def _prepare(builder, name, manual_dir, download):
    if builder.is_prepared():
        return
    if not download and manual_dir is None:
        raise DataNotFoundError(
            f"The tfds data set {name!r} is not prepared and download is off. "
            f"Provide it in one of these ways:\n{_how_to_provide(builder, name)}"
        )
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
        )
    except Exception as err:
        raise DataNotFoundError(
            f"Could not prepare the tfds data set {name!r}: {err}\n"
            f"Provide it in one of these ways:\n{_how_to_provide(builder, name)}"
        ) from err


@contextlib.contextmanager
def reading_prepared(name, data_dir=None):
    """Reports missing or damaged record files of a prepared tfds data set.

    Wraps code that reads the prepared set `name` in `data_dir`: TensorFlow's
    `NotFoundError`, `DataLossError` and `FailedPreconditionError` become a
    `DamagedDataError` (a `DataNotFoundError`) that names the prepared folder
    and how to rebuild it.

    Args:
        name: tfds name, e.g. `"fashion_mnist"`.
        data_dir: folder of prepared tfds data sets. Defaults to `None`
            (`~/tensorflow_datasets`).

    Raises:
        DamagedDataError: if the wrapped code fails to read the record files.
    """
    try:
        yield
    except _READ_ERRORS as err:
        # Without TensorFlow's function-node tag and op name around the reason.
        reason = re.sub(r"\s*\[Op:.*$", "", err.message.split("}}")[-1], flags=re.S).strip()
        builder = tfds.builder(name, data_dir=data_dir)
        raise DamagedDataError(
            f"The prepared tfds data set {name!r} in {builder.data_dir} is incomplete or "
            f"damaged: {reason}\nDelete {builder.data_dir} and prepare it again: "
            f"`tfds build {name} --data_dir={builder.data_dir_root}` (or copy it again "
            "from a machine where it is whole)."
        ) from err


def _check_features(builder, name):
    features = builder.info.features
    image, label = (features[k] if k in features else None for k in ("image", "label"))
    if not (
        isinstance(image, tfds.features.Image) and isinstance(label, tfds.features.ClassLabel)
    ):
        raise ValueError(
            f"tfds data set {name!r} is not an image classification set: "
            "expected an `image` Image feature and a `label` ClassLabel. "
            f"Received features: {features}"
        )
    return image, label


def _test_candidates(builder, name):
    splits = builder.info.splits
    if "train" not in splits:
        raise ValueError(f"tfds data set {name!r} has no train split. Splits: {list(splits)}")
    candidates = [split for split in ("test", "validation") if split in splits]
    if not candidates:
        raise ValueError(
            f"tfds data set {name!r} has neither a test nor a validation split. "
            f"Splits: {list(splits)}. Export its images to one folder per class and use "
            "--dataset=image_folder --image_folder=DIR, which draws a test split from them."
        )
    return candidates


def _count_unlabelled(labels):
    # tfds writes -1 for an example without a label (ImageNet's test images).
    return int(np.count_nonzero(labels < 0))


def _labelled_test_split(builder, name):
    """The first of `test`, `validation` whose every example has a label.

    Reads each candidate's labels once, which also finds damaged record files
    before training rather than after it.

    Returns:
        `(split name, undecoded split)`.

    Raises:
        UnlabelledDataError: if no candidate has labels throughout.
    """
    unlabelled = {}
    for split in _test_candidates(builder, name):
        undecoded = _read_undecoded(builder, split)
        _, labels = _ids_and_labels(undecoded)
        count = _count_unlabelled(labels)
        if not count:
            if unlabelled:
                logging.warning(
                    "tfds data set %r: its %s split has no labels (label -1), so the %r "
                    "split is the test split.", name, " and ".join(unlabelled), split)
            return split, undecoded
        unlabelled[split] = f"{count} of {len(labels)}"
    raise UnlabelledDataError(
        f"tfds data set {name!r} has no labelled test split: "
        + ", ".join(f"{split!r} has {share} labels -1" for split, share in unlabelled.items())
        + ". Its accuracy would be computed on no images. Prepare the data set with a "
        "labelled 'validation' split"
        + (" (put ILSVRC2012_img_val.tar in manual_dir and build it again)"
           if builder.name == "imagenet2012" else "")
        + "."
    )


def _check_train_labels(labels, name):
    count = _count_unlabelled(labels)
    if count:
        raise UnlabelledDataError(
            f"The train split of tfds data set {name!r} has {count} of {len(labels)} "
            "examples without a label (label -1); training needs a label for every "
            "example. Prepare the data set again from labelled files."
        )


def _read_undecoded(builder, split, shuffled=False, seed=None):
    # Images stay encoded until an example survives the held-out filter, and
    # every example carries its `tfds_id`, which names it whatever the order
    # in which the shards are read. `shuffled`: the shards in an order drawn
    # from `seed`, drawn again on each further pass.
    return builder.as_dataset(
        split=split,
        shuffle_files=shuffled,
        decoders=tfds.decode.PartialDecoding(
            {"image": True, "label": True},
            decoders={"image": tfds.decode.SkipDecoding()},
        ),
        read_config=tfds.ReadConfig(
            add_tfds_id=True, shuffle_seed=seed if shuffled else None,
            shuffle_reshuffle_each_iteration=True if shuffled else None),
    )


def _ids_and_labels(undecoded):
    pairs = undecoded.map(
        lambda example: (example["tfds_id"], example["label"]),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).batch(_LABEL_BATCH)
    batches = list(pairs.as_numpy_iterator())
    ids = np.concatenate([id_batch for id_batch, _ in batches])
    labels = np.concatenate([label_batch for _, label_batch in batches])
    # Sorted by id, so the split depends on the seed alone, not on read order.
    order = np.argsort(ids, kind="stable")
    return ids[order], labels[order]


def _split_off_held_out(undecoded, held_out_ids, num_kept, cache_held_out, prepared_dir):
    """`(keep, held_out)`: a function that drops the held-out examples from a
    read of the train split, and the held-out examples of `undecoded`
    (read from the prepared folder `prepared_dir`)."""
    if len(held_out_ids) == 0:  # Every class too small to give one (a table needs a key).
        return (lambda read: read.apply(tf.data.experimental.assert_cardinality(num_kept)),
                undecoded.take(0))
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(held_out_ids, tf.string),
            tf.ones([len(held_out_ids)], tf.int32),
        ),
        default_value=0,
    )

    def is_held_out(example):
        return tf.equal(table.lookup(example["tfds_id"]), 1)

    def keep(read):
        kept = read.filter(lambda example: tf.logical_not(is_held_out(example)))
        # Filtering hides the size; restoring it lets Keras size epochs.
        return kept.apply(tf.data.experimental.assert_cardinality(num_kept))

    held_out = undecoded.filter(is_held_out)
    if not cache_held_out:
        return keep, held_out.apply(tf.data.experimental.assert_cardinality(len(held_out_ids)))
    # Cached encoded, in memory, so that only one pass reads the whole train split
    # (140 GB for ImageNet) to find its images. ImageNet's JPEGs take about 110 KB
    # each: about 1.1 GB for 10,000 held-out images.
    held_out = held_out.cache()
    # That pass is made here, whole. A first pass that stops early (a `take`, a
    # peek at one batch) may otherwise close the cache on what it has read: the
    # reader under the filter, cancelled, reports the end of the split, and every
    # later pass sees the truncated split (TF 2.21: about one try in three).
    cached = int(held_out.reduce(np.int64(0), lambda count, _: count + 1))
    if cached != len(held_out_ids):
        raise DamagedDataError(
            f"Expected {len(held_out_ids)} held-out examples in a second read of the train "
            f"split. Received: {cached}. The record files in {prepared_dir} changed between "
            "the two reads; prepare the data set again, and do not write to it while a run "
            "reads it.")
    return keep, held_out.apply(tf.data.experimental.assert_cardinality(cached))


def _refusing_unlabelled(undecoded, name):
    # Without a held-out split the train labels are not read at load: checked as read.
    def check(example):
        with tf.control_dependencies([tf.debugging.assert_non_negative(
                example["label"],
                message=(f"The train split of tfds data set {name!r} has an example without "
                         "a label (label -1); training needs a label for every example."))]):
            return dict(example, label=tf.identity(example["label"]))

    return undecoded.map(check)


def _decode(undecoded, image_feature):
    def decode(example):
        image = image_feature.decode_example(example["image"])
        return tf.cast(image, tf.float32), tf.cast(example["label"], tf.int32)

    return undecoded.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def load_tfds(
    name,
    *,
    data_dir=None,
    manual_dir=None,
    holdout_fraction=None,
    seed=0,
    download=False,
    image_size=None,
    cache_held_out=True,
):
    """Loads a tfds image-classification data set as `DataSplits`.

    The held-out split is a stratified, seeded part of the train split,
    chosen from a labels-only pass and selected by example id. A second pass,
    here too, caches its encoded records in memory (about 110 KB an image for
    ImageNet: 1.1 GB for 10,000), so reading it never reads the train split
    again, and a read that stops early cannot truncate it. Without
    `holdout_fraction` it is empty and `train` is the whole train split
    (e.g. to train a teacher).

    The test split is `test`, or `validation` where `test` has no labels
    (label -1, as tfds' `imagenet2012` `test` split), which a log line says.

    Images of varying size (ImageNet), or any set when `image_size` is given,
    are returned as decoded, at their own size: the `"imagenet"`
    augmentation crops and resizes them, and `image_shape` is then the size
    it produces, `(image_size, image_size, channels)`.

    Args:
        name: tfds name, e.g. `"cifar100"`, `"imagenet2012"`.
        data_dir: folder of prepared tfds data sets. Defaults to `None`
            (`~/tensorflow_datasets`).
        manual_dir: folder of manually downloaded files (for `imagenet2012`:
            the ILSVRC2012 train and val tar files); when given, a data set
            that is not prepared is built from them, without network access.
            Defaults to `None`.
        holdout_fraction: share of each class held out, in `(0, 1)`.
            Defaults to `None`.
        seed: seed of the held-out split. Defaults to `0`.
        download: whether to download and prepare a data set that is not
            prepared (needs network access). Defaults to `False`.
        image_size: side of the square images the model sees, for sets that
            are cropped and resized by augmentation. Defaults to `None`
            (`224` for sets whose images vary in size).
        cache_held_out: whether to read the held-out split into memory at
            load, as above. Defaults to `True`. `False` saves that pass and
            the memory where the held-out split is not read (a teacher
            trained alone): each pass over it then reads the train split.

    Returns:
        A `DataSplits`.

    Raises:
        ValueError: on an unknown name, a set that is not image
            classification, or bad held-out arguments.
        DataNotFoundError: if the data set is not prepared and cannot be, or
            if its prepared record files are missing or damaged (found here:
            the loader reads every record of the test split, and of the
            train split when `holdout_fraction` is given; without it, a
            damaged train record is found when training reads it).
        UnlabelledDataError: (a `DataNotFoundError`) if neither `test` nor
            `validation` has a label for every example, or, when
            `holdout_fraction` is given, the train split has an example
            without a label (without it, training raises
            `InvalidArgumentError` at that example).
    """
    with reading_prepared(name, data_dir):
        return _load_prepared(
            name, data_dir=data_dir, manual_dir=manual_dir,
            holdout_fraction=holdout_fraction, seed=seed, download=download,
            image_size=image_size, cache_held_out=cache_held_out)


def _load_prepared(name, *, data_dir, manual_dir, holdout_fraction, seed, download,
                   image_size, cache_held_out):
    builder = _builder(name, data_dir)
    _prepare(builder, name, manual_dir=manual_dir, download=download)
    image_feature, label_feature = _check_features(builder, name)
    _, undecoded_test = _labelled_test_split(builder, name)

    undecoded_train = _read_undecoded(builder, "train")
    if holdout_fraction is None:
        keep = functools.partial(_refusing_unlabelled, name=name)
        held_out = undecoded_train.take(0)
        num_train = builder.info.splits["train"].num_examples
    else:
        ids, labels = _ids_and_labels(undecoded_train)
        _check_train_labels(labels, name)
        kept_idx, held_idx = stratified_split(labels, fraction=holdout_fraction, seed=seed)
        keep, held_out = _split_off_held_out(undecoded_train, ids[held_idx], len(kept_idx),
                                             cache_held_out, builder.data_dir)
        num_train = len(kept_idx)

    train = _decode(keep(undecoded_train), image_feature)

    def shuffled_train(order_seed):
        return _decode(keep(_read_undecoded(builder, "train", shuffled=True, seed=order_seed)),
                       image_feature)

    if builder.name in PUBLISHED_STATISTICS:
        mean, std = (
            tuple(255.0 * v for v in values) for values in PUBLISHED_STATISTICS[builder.name]
        )
    else:
        mean, std = channel_statistics(train)

    num_channels = image_feature.shape[-1]
    if image_size is not None or None in image_feature.shape:
        side = DEFAULT_IMAGENET_SIZE if image_size is None else int(image_size)
        image_shape = (side, side, num_channels)
    else:
        image_shape = tuple(image_feature.shape)

    return DataSplits(
        name=name,
        train=train,
        held_out=_decode(held_out, image_feature),
        test=_decode(undecoded_test, image_feature),
        num_classes=label_feature.num_classes,
        class_names=tuple(label_feature.names),
        image_shape=image_shape,
        mean=mean,
        std=std,
        num_train=num_train,
        shuffled_train=shuffled_train,
    )
