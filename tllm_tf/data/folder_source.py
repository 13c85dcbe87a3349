"""Local image folders as `DataSplits`.

The layout is the one of `keras.utils.image_dataset_from_directory`: one
sub-folder per class, named after it, holding that class's images (in any
depth of sub-folders). Classes are numbered in the sorted order of their
folder names. The file list is built by `image_files` rather than by Keras,
so that the held-out and test splits are stratified by class and chosen
before any image is read.
"""

import logging
import os

import numpy as np
import tensorflow as tf

from tllm_tf.data.image_files import IMAGE_EXTENSIONS
from tllm_tf.data.image_files import class_folders
from tllm_tf.data.image_files import files_digest
from tllm_tf.data.image_files import list_image_files
from tllm_tf.data.splits import stratified_split
from tllm_tf.data.statistics import STATISTICS_IMAGES, channel_statistics
from tllm_tf.data.types import DataSplits


def _classes_without(labels, class_names):
    counts = np.bincount(labels, minlength=len(class_names))
    return [name for name, count in zip(class_names, counts) if count == 0]


def _check_training_classes(train_dir, class_names, labels):
    empty = _classes_without(labels, class_names)
    if empty:
        raise ValueError(
            f"Class folder(s) {empty} of {train_dir!r} have no images "
            f"({', '.join(IMAGE_EXTENSIONS)}), so the model would have classes "
            "it never sees. Add images to them or remove them."
        )
    if len(class_names) < 2:
        raise ValueError(
            f"{train_dir!r} has a single class folder, {class_names[0]!r}: "
            "distillation needs at least 2 classes. Add a sub-folder of images "
            "for each other class."
        )


def _warn_untested_classes(test_source, class_names, test_labels):
    missing = _classes_without(test_labels, class_names)
    if missing:
        logging.warning(
            "The test split (%s) has no images of class(es) %s: their test "
            "accuracy will be n/a. Add test images of them.",
            test_source,
            missing,
        )


def _files(paths, labels):
    return tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths, tf.string), tf.constant(labels, tf.int32))
    )


def _image_dataset(files, image_size, num_channels):
    def read(path, label):
        encoded = tf.io.read_file(path)
        image = tf.io.decode_image(encoded, channels=num_channels, expand_animations=False)
        image = tf.image.resize(image, image_size, antialias=True)
        return tf.ensure_shape(image, image_size + (num_channels,)), label

    return files.map(read, num_parallel_calls=tf.data.AUTOTUNE)


def _as_size(image_size):
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(
            "Expected image_size to be a positive int or a (height, width) "
            f"pair of them. Received: image_size={image_size}"
        )
    return size


def _take(items, indices):
    return [items[i] for i in indices]


def load_image_folder(
    train_dir,
    test_dir=None,
    *,
    image_size,
    holdout_fraction=None,
    seed=0,
    test_fraction=0.2,
    num_channels=3,
):
    """Loads class-per-folder images as `DataSplits`.

    Every image is resized to `image_size` when read (bilinear, with
    antialiasing), in raw 0-255 scale. Without `test_dir`, a stratified,
    seeded `test_fraction` of `train_dir` becomes the test split. The
    held-out split is then a stratified, seeded part of what remains for
    training; without `holdout_fraction` it is empty. The normalisation
    statistics (`mean`, `std`) are those of every training image, or of
    2,048 drawn across a larger training split (its files come one class
    after another).

    Args:
        train_dir: folder with one sub-folder of images per class; the
            sub-folder names are the class names.
        test_dir: folder of test images with the same class sub-folders.
            Defaults to `None`.
        image_size: int or `(height, width)` every image is resized to.
        holdout_fraction: share of each class held out, in `(0, 1)`.
            Defaults to `None`.
        seed: seed of the test and held-out splits, and of the images the
            statistics of a larger set are read from. Defaults to `0`.
        test_fraction: share of each class of `train_dir` used as the test
            split when `test_dir` is not given; ignored otherwise. Defaults
            to `0.2`.
        num_channels: 1 (grayscale), 3 (RGB) or 4 (RGBA). Defaults to `3`.

    Returns:
        A `DataSplits`, with the `split_digests` of its three splits'
        files (`image_files.files_digest`).

    Raises:
        DataNotFoundError: if a folder does not exist.
        ValueError: on a bad `image_size` or split arguments, a folder
            without images, a class folder without images, a single class
            folder, files that are empty or not images, images of more than
            `image_files.MAX_IMAGE_PIXELS` pixels, or test class folders the training
            folder lacks.
    """
    image_size = _as_size(image_size)
    if num_channels not in (1, 3, 4):
        raise ValueError(
            f"Expected num_channels in (1, 3, 4). Received: num_channels={num_channels}"
        )
    class_names = tuple(class_folders(train_dir))
    paths, labels = list_image_files(train_dir, class_names)
    _check_training_classes(train_dir, class_names, labels)
    if test_dir is None:
        train_idx, test_idx = stratified_split(labels, fraction=test_fraction, seed=seed)
        test_paths, test_labels = _take(paths, test_idx), labels[test_idx]
        paths, labels = _take(paths, train_idx), labels[train_idx]
        test_source = f"test_fraction={test_fraction} of {train_dir!r}"
    else:
        test_paths, test_labels = list_image_files(test_dir, class_names)
        test_source = repr(test_dir)
    test_root = train_dir if test_dir is None else test_dir
    _warn_untested_classes(test_source, class_names, test_labels)

    if holdout_fraction is None:
        held_paths, held_labels = [], np.zeros([0], np.int32)
    else:
        kept_idx, held_idx = stratified_split(labels, fraction=holdout_fraction, seed=seed)
        held_paths, held_labels = _take(paths, held_idx), labels[held_idx]
        paths, labels = _take(paths, kept_idx), labels[kept_idx]

    train_files = _files(paths, labels)
    train = _image_dataset(train_files, image_size, num_channels)

    def shuffled_train(seed):
        # The paths, not the decoded images, shuffled whole: about 270 bytes each in the
        # buffer (1.28 million files: 0.34 GB and 2 s before an epoch's first image).
        order = train_files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        return _image_dataset(order, image_size, num_channels)

    # A larger set's statistics from images drawn across it, not its first classes.
    mean, std = channel_statistics(
        train if len(paths) <= STATISTICS_IMAGES else shuffled_train(seed),
        max_images=STATISTICS_IMAGES)
    return DataSplits(
        name=os.path.basename(os.path.normpath(train_dir)),
        train=train,
        held_out=_image_dataset(_files(held_paths, held_labels), image_size, num_channels),
        test=_image_dataset(_files(test_paths, test_labels), image_size, num_channels),
        num_classes=len(class_names),
        class_names=class_names,
        image_shape=image_size + (num_channels,),
        mean=mean,
        std=std,
        num_train=len(paths),
        shuffled_train=shuffled_train,
        split_digests={
            "train": files_digest(train_dir, paths, labels),
            "held_out": files_digest(train_dir, held_paths, held_labels),
            "test": files_digest(test_root, test_paths, test_labels),
        },
    )
