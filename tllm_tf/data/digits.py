"""The embedded default data set: scikit-learn's 8x8 handwritten digits.

1,797 real images of 10 classes that ship inside scikit-learn, so the demo and
the tests run with no download.
"""

import numpy as np
import tensorflow as tf

from tllm_tf.data import splits
from tllm_tf.data.types import DataSplits

NUM_CLASSES = 10


def load_digits_arrays():
    """Returns `(images, labels)`: float32 `(1797, 8, 8, 1)` in 0-16, int32."""
    from sklearn import datasets  # Imported here: only this source needs it.

    digits = datasets.load_digits()
    images = digits.images.astype(np.float32)[..., np.newaxis]
    return images, digits.target.astype(np.int32)


def load_digits(test_fraction=0.2, holdout_fraction=0.2, num_train=None, seed=0):
    """Splits the digits into train / held-out / test, stratified and seeded.

    Args:
        test_fraction: share of each class kept for the test split. Defaults
            to `0.2`.
        holdout_fraction: share of each class of the remaining *training*
            data held out to find undistillable classes. Defaults to `0.2`.
        num_train: if set, keep exactly this many training examples
            (stratified), for low-label settings and quick runs. Defaults to
            `None`.
        seed: seed of the splits. The test split depends only on it, so runs
            that differ in other settings share one test split. Defaults to
            `0`.

    Returns:
        A `tllm_tf.data.DataSplits`.

    Raises:
        ValueError: if `num_train` is below the number of classes (10).
    """
    if num_train is not None and num_train < NUM_CLASSES:
        raise ValueError(
            f"Expected num_train >= {NUM_CLASSES}, one image per class of the digits. "
            f"Received: num_train={num_train}")
    images, labels = load_digits_arrays()
    rest, test = splits.stratified_split(labels, fraction=test_fraction, seed=seed)
    train, held_out = splits.stratified_split(
        labels[rest], fraction=holdout_fraction, seed=seed + 1)
    train, held_out = rest[train], rest[held_out]
    if num_train is not None and num_train < len(train):
        train = train[splits.stratified_subset(labels[train], num_train, seed=seed + 2)]

    def dataset(indices):
        return tf.data.Dataset.from_tensor_slices((images[indices], labels[indices]))

    train_images = images[train]
    return DataSplits(
        name="digits",
        train=dataset(train),
        held_out=dataset(held_out),
        test=dataset(test),
        num_classes=NUM_CLASSES,
        class_names=tuple(str(digit) for digit in range(NUM_CLASSES)),
        image_shape=(8, 8, 1),
        mean=(float(train_images.mean()),),
        std=(float(train_images.std()),),
        num_train=len(train),
    )
