"""Fashion-MNIST offline, from IDX files or a prepared tfds directory.

Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017): 60,000 training and 10,000
test greyscale images of 28x28 pixels, 10 classes of clothing. It is found by
itself in one of two offline places, in this order:

1. the four IDX files (gzip or plain) in `idx_dir`, then in
   `/usr/share/datasets/fashion-mnist`, where Debian's package
   `dataset-fashion-mnist` puts them;
2. tfds's `fashion_mnist`, prepared under `data_dir`.

Either way the held-out split is a stratified part of the training images and
the test split is the official 10,000 test images, untouched. But the two
sources hold the training images in different orders (tfds shuffles them when
it prepares the set), so one seed draws other splits from each: the splits'
digests (`DataSplits.split_digests`) tell them apart, so that a teacher or a
store of one source is refused by a run of the other.
"""

import hashlib
import os

import numpy as np
import tensorflow as tf

from tllm_tf.data.errors import DamagedDataError
from tllm_tf.data.errors import DataNotFoundError
from tllm_tf.data.idx_format import IDXFormatError
from tllm_tf.data.idx_format import read_idx
from tllm_tf.data.splits import stratified_split
from tllm_tf.data.splits import stratified_subset
from tllm_tf.data.types import DataSplits

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
TFDS_NAME = "fashion_mnist"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGE_SHAPE = (28, 28, 1)


def _find_idx_files(directory, given):
    """Maps each of `IDX_FILES`' keys to its path in `directory`.

    Returns `None` when `directory` holds none of the four files and was not
    `given` by the caller, so the next source is looked in.

    Raises:
        DataNotFoundError: if `directory` holds some of the files but not all,
            or was given by the caller and holds none.
    """
    paths, missing = {}, []
    for key, stem in IDX_FILES.items():
        found = [os.path.join(directory, stem + suffix) for suffix in (".gz", "")]
        found = [path for path in found if os.path.isfile(path)]
        if found:
            paths[key] = found[0]
        else:
            missing.append(stem + "[.gz]")
    if not missing:
        return paths
    if not paths and not given:
        return None
    fix = ("reinstall it (`apt-get install --reinstall dataset-fashion-mnist`)"
           if directory == DEBIAN_DIR and not given
           else "put the missing files there, or pass the folder that holds all four")
    raise DataNotFoundError(
        f"The Fashion-MNIST IDX folder {directory} lacks {', '.join(missing)} "
        f"(it holds {len(paths)} of the 4 files). To fix, {fix}.")


def _check_split(paths, split):
    images_path, labels_path = paths[f"{split}_images"], paths[f"{split}_labels"]
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE[:2] or labels.ndim != 1:
        raise IDXFormatError(
            f"{images_path}: expected images of shape (n, 28, 28) and "
            f"labels of shape (n,). Received: {images.shape} and {labels.shape}")
    if len(images) == 0:
        raise IDXFormatError(
            f"{images_path} holds no images (its header gives shape {images.shape}). "
            "Replace it with the full Fashion-MNIST file.")
    if len(images) != len(labels):
        raise IDXFormatError(
            f"{images_path} holds {len(images)} images but "
            f"{labels_path} holds {len(labels)} labels.")
    num_classes = len(CLASS_NAMES)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        values = np.unique(labels[bad]).tolist()
        raise IDXFormatError(
            f"{labels_path}: expected labels in 0-{num_classes - 1} (Fashion-MNIST has "
            f"{num_classes} classes). Received {int(bad.sum())} labels out of range, of "
            f"values {values[:10]}{' ...' if len(values) > 10 else ''}. "
            "Replace it with the Fashion-MNIST label file.")
    return images, labels


def _read_idx_arrays(paths):
    return _check_split(paths, "train") + _check_split(paths, "test")


def _read_tfds_arrays(data_dir):
    # Imported here: importing tfds takes about a second, which the IDX files do not need.
    from tllm_tf.data import tfds_source

    data = tfds_source.load_tfds(TFDS_NAME, data_dir=data_dir)
    with tfds_source.reading_prepared(TFDS_NAME, data_dir):
        return _tfds_to_arrays(data)


def _tfds_to_arrays(data):
    def to_arrays(dataset):
        batches = list(dataset.batch(10_000).as_numpy_iterator())
        images = np.concatenate([images for images, _ in batches]).astype(np.uint8)
        labels = np.concatenate([labels for _, labels in batches])
        return images[..., 0], labels

    return to_arrays(data.train) + to_arrays(data.test)


def _not_found(directories, data_dir):
    tfds_place = data_dir or "~/tensorflow_datasets"
    return DataNotFoundError(
        "Fashion-MNIST is not on this machine. Looked for the IDX files "
        f"{', '.join(name + '[.gz]' for name in IDX_FILES.values())} in "
        f"{', '.join(directories)}, and for tfds' prepared {TFDS_NAME!r} in {tfds_place}. "
        "Provide it in one of these ways:\n"
        f"  - `apt-get install dataset-fashion-mnist` (Debian, Ubuntu) puts the IDX files "
        f"in {DEBIAN_DIR}, where they are found by themselves (or pass idx_dir=<folder> "
        "holding the four files);\n"
        f"  - on a machine with network access, `tfds build {TFDS_NAME} --data_dir=DIR`, "
        "then copy DIR here and pass it as data_dir (--data_dir)."
    )


def load_fashion_mnist_arrays(*, data_dir=None, idx_dir=None):
    """Reads Fashion-MNIST from the first offline source that has it.

    Args:
        data_dir: folder of prepared tfds data sets. Defaults to `None`
            (`~/tensorflow_datasets`).
        idx_dir: a folder holding the four IDX files, looked in before
            `DEBIAN_DIR`; when given, no other source is used. Defaults to
            `None`.

    Returns:
        `(train_images, train_labels, test_images, test_labels)`: uint8
        `(n, 28, 28)` images and integer labels, in the source's order.

    Raises:
        DataNotFoundError: if neither source has the data, if `idx_dir` or
            `DEBIAN_DIR` holds some of the four files but not all, if `idx_dir`
            holds none, or if the prepared tfds files are missing or damaged;
            the message says how to provide it.
        IDXFormatError: on a malformed IDX file, one that holds no images, or
            labels outside `0-9`.
    """
    directories = [d for d in (idx_dir, DEBIAN_DIR) if d]
    for directory in dict.fromkeys(directories):
        paths = _find_idx_files(directory, given=directory == idx_dir)
        if paths is not None:
            return _read_idx_arrays(paths)
    try:
        return _read_tfds_arrays(data_dir)
    except DamagedDataError:
        raise  # It is there, but must be prepared again: its message says how.
    except DataNotFoundError as err:
        raise _not_found(directories, data_dir) from err


def load_fashion_mnist(*, holdout_fraction, seed=0, data_dir=None, num_train=None,
                       idx_dir=None):
    """Loads Fashion-MNIST as `DataSplits`, offline.

    Args:
        holdout_fraction: share of each training class held out to find the
            undistillable classes, in `(0, 1)`; `None` holds out nothing.
        seed: seed of the splits. Defaults to `0`.
        data_dir: folder of prepared tfds data sets, the second source.
            Defaults to `None` (`~/tensorflow_datasets`).
        num_train: if set, keep exactly this many training examples, at
            least as many as classes: a stratified subset taken after the held-out
            split, so the held-out and test splits do not depend on it.
            Defaults to `None`.
        idx_dir: a folder holding the four IDX files, looked in before
            `/usr/share/datasets/fashion-mnist`; when given, no other source
            is used. Defaults to `None`.

    Returns:
        A `DataSplits` of float32 `(28, 28, 1)` images in 0-255 and int32
        labels.

    Raises:
        ValueError: on a bad `num_train`.
        DataNotFoundError: if neither source has the data.
        IDXFormatError: on a malformed IDX file.
    """
    num_classes = len(CLASS_NAMES)
    if num_train is not None and num_train < num_classes:
        raise ValueError(
            f"Expected num_train >= {num_classes}, one image per class of Fashion-MNIST. "
            f"Received: num_train={num_train}")
    train_images, train_labels, test_images, test_labels = load_fashion_mnist_arrays(
        data_dir=data_dir, idx_dir=idx_dir)
    train_labels = train_labels.astype(np.int32)
    if holdout_fraction is None:
        train, held_out = np.arange(len(train_labels)), np.arange(0)
    else:
        train, held_out = stratified_split(train_labels, fraction=holdout_fraction, seed=seed)
    if num_train is not None and num_train < len(train):
        train = train[stratified_subset(train_labels[train], num_train, seed=seed + 1)]

    def dataset(images, labels):
        # uint8 in the dataset and a cast per element: a quarter of the memory.
        return tf.data.Dataset.from_tensor_slices(
            (images[..., np.newaxis], labels.astype(np.int32))
        ).map(lambda image, label: (tf.cast(image, tf.float32), label))

    kept_images = train_images[train]
    # From the histogram of the 256 pixel values: exact, and no float copy of the images.
    counts = np.bincount(kept_images.ravel(), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64)
    mean = counts @ values / counts.sum()
    std = np.sqrt(counts @ np.square(values - mean) / counts.sum())
    return DataSplits(
        name=TFDS_NAME,
        train=dataset(kept_images, train_labels[train]),
        held_out=dataset(train_images[held_out], train_labels[held_out]),
        test=dataset(test_images, test_labels),
        num_classes=num_classes,
        class_names=CLASS_NAMES,
        image_shape=IMAGE_SHAPE,
        mean=(float(mean),),
        std=(float(std),),
        num_train=len(train),
        split_digests={
            "train": _split_digest(kept_images, train_labels[train]),
            "held_out": _split_digest(train_images[held_out], train_labels[held_out]),
            "test": _split_digest(test_images, test_labels),
        },
    )


def _split_digest(images, labels):
    """SHA-256 (hex) of a split's labels and images, in the order the split reads them."""
    digest = hashlib.sha256(np.asarray(labels, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    return digest.hexdigest()
