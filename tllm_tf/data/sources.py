"""The data sets by name: the loader registry and `load_dataset`.

A name with a loader of its own (`LOADERS`) is loaded by it; any other name
is a tfds name. tfds is imported only when a tfds set is loaded.
"""

import difflib
import os

from tllm_tf.data.digits import load_digits
from tllm_tf.data.folder_source import load_image_folder
from tllm_tf.data.idx_source import load_fashion_mnist

IMAGE_FOLDER = "image_folder"


def _digits(*, holdout_fraction, seed, num_train, **_):
    return load_digits(holdout_fraction=holdout_fraction, num_train=num_train, seed=seed)


def _fashion_mnist(*, holdout_fraction, seed, num_train, data_dir, **_):
    return load_fashion_mnist(
        holdout_fraction=holdout_fraction, seed=seed, data_dir=data_dir, num_train=num_train)


def _image_folder(*, holdout_fraction, seed, image_folder, test_image_folder, image_size, **_):
    if not image_folder:
        raise ValueError("dataset='image_folder' needs image_folder=<folder of class folders>.")
    return load_image_folder(
        image_folder, test_image_folder, image_size=image_size or 224,
        holdout_fraction=holdout_fraction, seed=seed)


# Data sets with a loader of their own; any other name is a tfds name.
LOADERS = {"digits": _digits, "fashion_mnist": _fashion_mnist, IMAGE_FOLDER: _image_folder}
# The loaders that can keep a stratified subset of the training split.
NUM_TRAIN_LOADERS = ("digits", "fashion_mnist")


def check_source_arguments(name, *, num_train=None, image_folder=None, test_image_folder=None):
    """Refuses arguments the data set `name` would not read, before anything is loaded.

    Args:
        name: the data set's name (`load_dataset`'s).
        num_train: the training subset's size. Defaults to `None`.
        image_folder: the training image folder. Defaults to `None`.
        test_image_folder: the test image folder. Defaults to `None`.

    Raises:
        ValueError: on a name near one with a loader of its own (a typo,
            which tfds would not know either), `num_train` for a set that
            cannot keep a subset, an image folder for another data set (it
            would be ignored, and the run would train on that set), or a test
            folder that is the training folder, or inside it, or holds it
            (the test accuracy would be on training images).
    """
    base_name = name.split(":")[0].split("/")[0]  # A tfds name may add :version or /config.
    near = difflib.get_close_matches(base_name, LOADERS, n=1, cutoff=0.8)
    if near and base_name not in LOADERS:  # No tfds name is this near one of them.
        raise ValueError(
            f"Unknown data set {name!r}. Did you mean {near[0]!r}? The data sets with a "
            f"loader of their own are {', '.join(map(repr, LOADERS))}; any other name is "
            "a tfds name.")
    if num_train is not None and name not in NUM_TRAIN_LOADERS:
        raise ValueError(
            f"num_train is only supported for {', '.join(map(repr, NUM_TRAIN_LOADERS))}. "
            f"Received: dataset={name!r}")
    if (image_folder or test_image_folder) and name != IMAGE_FOLDER:
        raise ValueError(
            f"image_folder and test_image_folder are read only with dataset={IMAGE_FOLDER!r}; "
            f"with dataset={name!r} they would be ignored. Pass dataset={IMAGE_FOLDER!r} "
            f"(--dataset={IMAGE_FOLDER}). "
            f"Received: image_folder={image_folder!r}, test_image_folder={test_image_folder!r}")
    if image_folder and test_image_folder:
        train, test = os.path.realpath(image_folder), os.path.realpath(test_image_folder)
        if os.path.commonpath([train, test]) in (train, test):
            raise ValueError(
                f"test_image_folder={test_image_folder!r} is image_folder={image_folder!r} or "
                "lies inside it, or the reverse: its images would also be training images "
                "(inside, as a class of their own). Give a folder of other images beside it, "
                "or leave test_image_folder out to hold out a part of image_folder as the "
                "test split.")


def augmentation_image_size(dataset, augmentation, image_size):
    """The side an augmentation resizes `dataset`'s images to, or None where it keeps their size.

    `image_size` sizes what the model sees: an image folder's loader resizes
    every image to it, so there only `"imagenet"` (random-resized crops)
    takes it again; for every other set the augmentation is what resizes.

    Args:
        dataset: the data set's name (`load_dataset`'s `name`).
        augmentation: the augmentation recipe's name.
        image_size: the side of the images the model sees, or None.

    Returns:
        `image_size`, or None for an image folder under another augmentation.
    """
    if dataset == IMAGE_FOLDER and augmentation != "imagenet":
        return None
    return image_size


def load_dataset(name, *, holdout_fraction, seed=0, data_dir=None, manual_dir=None,
                 download=False, num_train=None, image_folder=None, test_image_folder=None,
                 image_size=None, cache_held_out=True):
    """Loads a data set by name as `DataSplits`.

    Args:
        name: `"digits"` (embedded, no download), `"fashion_mnist"` (from
            Debian's `dataset-fashion-mnist` IDX files or a prepared tfds
            directory, see `load_fashion_mnist`), `"image_folder"` (a folder
            of one sub-folder per class, see `image_folder`), or any tfds
            image-classification name (`"cifar100"`, `"imagenet2012"`, ...).
        holdout_fraction: share of each training class held out to find
            the undistillable classes.
        seed: seed of the splits. Defaults to `0`.
        data_dir: tfds data directory. Defaults to `None`.
        manual_dir: tfds manual download directory. Defaults to `None`.
        download: let tfds download and prepare a missing set. Defaults to
            `False`.
        num_train: keep only this many training examples (digits and
            fashion_mnist only). Defaults to `None`.
        image_folder: training image folder, for `"image_folder"`.
            Defaults to `None`.
        test_image_folder: test image folder, for `"image_folder"`; without
            it a part of `image_folder` is the test split. Defaults to `None`.
        image_size: side of the images the model sees (image folders,
            ImageNet-size tfds sets). Defaults to `None`.
        cache_held_out: tfds sets: whether to read the held-out split into
            memory at load (see `load_tfds`). Defaults to `True`.

    Returns:
        A `DataSplits`.

    Raises:
        ValueError: on an unknown name or arguments that do not fit it.
        DataNotFoundError: if the data is not on this machine
            (`DamagedDataError`, a subclass: if its prepared files are
            incomplete or damaged; `UnlabelledDataError`, another: if a tfds
            set has no labelled test split or unlabelled train examples).
    """
    check_source_arguments(name, num_train=num_train, image_folder=image_folder,
                           test_image_folder=test_image_folder)
    if name in LOADERS:
        return LOADERS[name](
            holdout_fraction=holdout_fraction, seed=seed, data_dir=data_dir,
            num_train=num_train, image_folder=image_folder,
            test_image_folder=test_image_folder, image_size=image_size)
    # Imported here: importing tfds takes about a second, which the other sources do not need.
    from tllm_tf.data.tfds_source import load_tfds

    return load_tfds(name, data_dir=data_dir, manual_dir=manual_dir, download=download,
                     holdout_fraction=holdout_fraction, seed=seed, image_size=image_size,
                     cache_held_out=cache_held_out)
