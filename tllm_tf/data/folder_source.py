"""Local image folders as `DataSplits`.

The layout is the one of `keras.utils.image_dataset_from_directory`: one
sub-folder per class, named after it, holding that class's images (in any
depth of sub-folders). Classes are numbered in the sorted order of their
folder names. The file list is built here rather than by Keras, so that the
held-out and test splits are stratified by class and chosen before any image
is read.
"""

import logging
import os

import numpy as np
import tensorflow as tf

from tllm_tf.data import image_headers
from tllm_tf.data.splits import stratified_split
from tllm_tf.data.tfds_source import DataNotFoundError, channel_statistics
from tllm_tf.data.types import DataSplits

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")
# 100 megapixels: 300 MB once decoded as RGB, far above any image of a data set.
MAX_IMAGE_PIXELS = 100_000_000
_MAX_LISTED_PATHS = 5


def _is_hidden(name):
    return name.startswith(".")


def _class_folders(directory):
    if not os.path.isdir(directory):
        raise DataNotFoundError(
            f"Image folder {directory!r} does not exist. Pass a folder with "
            "one sub-folder of images per class."
        )
    return sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_dir() and not _is_hidden(entry.name)
    )


def _listed(paths):
    more = len(paths) - _MAX_LISTED_PATHS
    return f"{paths[:_MAX_LISTED_PATHS]}" + (f" and {more} more" if more > 0 else "")


def _check_image_files(directory, paths):
    # Cheap here; otherwise TensorFlow fails at decode time, maybe hours in.
    pixels = {path: image_headers.pixel_count(path) for path in paths}
    bad = [path for path, count in pixels.items() if count is None]
    if bad:
        raise ValueError(
            f"{len(bad)} file(s) in {os.fspath(directory)!r} are empty, unreadable or not "
            f"PNG, JPEG, GIF, BMP or WebP images: {_listed(bad)}. Delete or replace them."
        )
    # Decoded whole before the resize, several at a time: a small file can take gigabytes.
    large = [f"{path} ({pixels[path]} pixels)" for path in paths
             if pixels[path] > MAX_IMAGE_PIXELS]
    if large:
        raise ValueError(
            f"{len(large)} image(s) in {os.fspath(directory)!r} have more than MAX_IMAGE_PIXELS="
            f"{MAX_IMAGE_PIXELS} pixels (an animated GIF: over all its frames): "
            f"{_listed(large)}. Downscale them (each is resized to image_size when "
            "read) or delete them."
        )


def _folder_key(path):
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _folders_not_to_enter(directory, class_dirs):
    """Keys of the top folder, its ancestors and every class folder.

    A link to one of them from inside a class folder would label the images
    of other classes as that class, or loop.
    """
    keys = {_folder_key(path) for path in class_dirs if os.path.isdir(path)}
    path = os.path.realpath(directory)
    while True:
        keys.add(_folder_key(path))
        parent = os.path.dirname(path)
        if parent == path:
            return keys
        path = parent


def _first_visit(path, visited):
    try:
        key = _folder_key(path)
    except OSError:
        return False
    if key in visited:
        return False
    visited.add(key)
    return True


def _class_owning(real_path, class_by_real_path):
    """The class whose folder holds `real_path` (the deepest such folder), or None."""
    path = real_path
    while path not in class_by_real_path:
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    return class_by_real_path[path]


def _walk_images(label, class_dirs, class_by_real_path, visited):
    """Yields `(path, real_path)` of the image files of class `label`, in sorted order.

    A linked file or folder that lies in another class's folder is left to
    that class: followed from here, it would label that class's images as
    this one. `visited` holds the `(st_dev, st_ino)` of the folders not to
    enter; every folder entered is added to it.
    """

    def belongs_here(real_path):
        owner = _class_owning(real_path, class_by_real_path)
        return owner is None or owner == label

    for root, dirs, files in os.walk(class_dirs[label], followlinks=True):
        dirs[:] = [
            name
            for name in sorted(dirs)
            if not _is_hidden(name)
            and belongs_here(os.path.realpath(os.path.join(root, name)))
            and _first_visit(os.path.join(root, name), visited)
        ]
        for name in sorted(files):
            if _is_hidden(name) or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(root, name)
            real_path = os.path.realpath(path)
            if belongs_here(real_path):
                yield path, real_path


def _class_by_real_path(directory, class_dirs):
    """Maps each class folder's real path to its class index.

    Raises:
        ValueError: if two class folders are one folder (through a link).
    """
    class_by_real_path = {}
    for label, class_dir in enumerate(class_dirs):
        real_path = os.path.realpath(class_dir)
        if real_path in class_by_real_path and os.path.isdir(real_path):
            first = os.path.basename(class_dirs[class_by_real_path[real_path]])
            raise ValueError(
                f"Class folders {first!r} and {os.path.basename(class_dir)!r} of "
                f"{os.fspath(directory)!r} are the same "
                f"folder ({real_path!r}, through a link): their images would have two "
                "labels. Remove the link or give each class its own folder."
            )
        class_by_real_path.setdefault(real_path, label)
    return class_by_real_path


def list_image_files(directory, class_names):
    """Lists the images of each class folder, in a fixed order.

    Hidden files and folders (names starting with `.`) are skipped. Linked
    folders are followed, but none twice, and none that is the top folder,
    one of its parents or a class folder; a linked file or folder inside
    another class's folder is that class's; a file reached twice is listed
    once. Every listed file must start like a PNG, JPEG, GIF, BMP or WebP,
    of at most `MAX_IMAGE_PIXELS` pixels where its header says its size.

    Args:
        directory: folder with one sub-folder per class.
        class_names: the class names; class `i` is the folder
            `class_names[i]`. A class without a folder has no images.

    Returns:
        `(paths, labels)`: a list of file paths and an int32 array.

    Raises:
        ValueError: if `directory` has a class folder not in `class_names`,
            two class folders that are one (a link), no images, image files
            that are empty or not images, or images of more than
            `MAX_IMAGE_PIXELS` pixels.
    """
    unknown = sorted(set(_class_folders(directory)) - set(class_names))
    if unknown:
        raise ValueError(
            f"{directory!r} has class folders that the training folder lacks: "
            f"{unknown}. Give every split the same class folders."
        )
    class_dirs = [os.path.join(directory, class_name) for class_name in class_names]
    class_by_real_path = _class_by_real_path(directory, class_dirs)
    visited = _folders_not_to_enter(directory, class_dirs)
    paths, labels, real_paths = [], [], set()
    for label in range(len(class_dirs)):
        for path, real_path in _walk_images(label, class_dirs, class_by_real_path, visited):
            if real_path not in real_paths:
                real_paths.add(real_path)
                paths.append(path)
                labels.append(label)
    if not paths:
        raise ValueError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in the class "
            f"folders of {directory!r}."
        )
    _check_image_files(directory, paths)
    return paths, np.asarray(labels, np.int32)


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


def _image_dataset(paths, labels, image_size, num_channels):
    def read(path, label):
        encoded = tf.io.read_file(path)
        image = tf.io.decode_image(encoded, channels=num_channels, expand_animations=False)
        image = tf.image.resize(image, image_size, antialias=True)
        return tf.ensure_shape(image, image_size + (num_channels,)), label

    files = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths, tf.string), tf.constant(labels, tf.int32))
    )
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
    training; without `holdout_fraction` it is empty.

    Args:
        train_dir: folder with one sub-folder of images per class; the
            sub-folder names are the class names.
        test_dir: folder of test images with the same class sub-folders.
            Defaults to `None`.
        image_size: int or `(height, width)` every image is resized to.
        holdout_fraction: share of each class held out, in `(0, 1)`.
            Defaults to `None`.
        seed: seed of the test and held-out splits. Defaults to `0`.
        test_fraction: share of each class of `train_dir` used as the test
            split when `test_dir` is not given; ignored otherwise. Defaults
            to `0.2`.
        num_channels: 1 (grayscale), 3 (RGB) or 4 (RGBA). Defaults to `3`.

    Returns:
        A `DataSplits`.

    Raises:
        DataNotFoundError: if a folder does not exist.
        ValueError: on a bad `image_size` or split arguments, a folder
            without images, a class folder without images, a single class
            folder, files that are empty or not images, images of more than
            `MAX_IMAGE_PIXELS` pixels, or test class folders the training
            folder lacks.
    """
    image_size = _as_size(image_size)
    if num_channels not in (1, 3, 4):
        raise ValueError(
            f"Expected num_channels in (1, 3, 4). Received: num_channels={num_channels}"
        )
    class_names = tuple(_class_folders(train_dir))
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
    _warn_untested_classes(test_source, class_names, test_labels)

    if holdout_fraction is None:
        held_paths, held_labels = [], np.zeros([0], np.int32)
    else:
        kept_idx, held_idx = stratified_split(labels, fraction=holdout_fraction, seed=seed)
        held_paths, held_labels = _take(paths, held_idx), labels[held_idx]
        paths, labels = _take(paths, kept_idx), labels[kept_idx]

    train = _image_dataset(paths, labels, image_size, num_channels)
    mean, std = channel_statistics(train)
    return DataSplits(
        name=os.path.basename(os.path.normpath(train_dir)),
        train=train,
        held_out=_image_dataset(held_paths, held_labels, image_size, num_channels),
        test=_image_dataset(test_paths, test_labels, image_size, num_channels),
        num_classes=len(class_names),
        class_names=class_names,
        image_shape=image_size + (num_channels,),
        mean=mean,
        std=std,
        num_train=len(paths),
    )
