"""The one value every data source returns."""

import dataclasses
from typing import Callable, Optional

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class DataSplits:
    """Train / held-out / test splits of one labelled image data set.

    Every split is an *unbatched* `tf.data.Dataset` of `(image, label)` with
    `image` float32 of shape `image_shape` in the data set's raw pixel scale
    (0-255 for photographs, 0-16 for the embedded digits) and `label` int32.
    Normalisation is not applied here: `mean` and `std` (per channel, raw
    scale) feed a normalisation layer at the front of the model, so an
    exported model takes raw images.

    Attributes:
        name: data set name, e.g. `"digits"`, `"cifar100"`.
        train: the training examples, held-out ones removed.
        held_out: a stratified split of the *training* data, used to find the
            undistillable classes (never the test split: that would leak it).
        test: the test split; only ever used for reporting.
        num_classes: number of classes.
        class_names: one name per class id.
        image_shape: shape of one image, e.g. `(32, 32, 3)`.
        mean: per-channel mean of the training images, raw scale.
        std: per-channel standard deviation of the training images, raw scale.
        num_train: number of training examples, when known.
        shuffled_train: for a source that reads files (an image folder, tfds
            shards), a function of a seed (an int, or `None`) that returns
            `train` in an order drawn from that seed, the files shuffled
            before any image is decoded, and drawn again on each further
            pass. A training split larger than the shuffle buffer of decoded
            images is read through it each epoch, so an epoch's order is not
            the files' order mixed within a window. `None` for a source that
            holds its images in memory (shuffled whole). A copy whose `train`
            is replaced needs this replaced too, or set to `None`.
        split_digests: for a source whose name does not fix its images,
            `{"train": ..., "held_out": ..., "test": ...}`: for an image
            folder each `image_files.files_digest` of the files that split
            reads (the same in a moved folder, other when a file is added,
            removed, relabelled or rewritten); for Fashion-MNIST, whose two
            sources order its images differently, a digest of each split's
            images and labels. Runs compare them to tell whether a teacher,
            a reference or a store of another run saw these images. `None`
            for other sources (their name and version fix the images).
    """

    name: str
    train: tf.data.Dataset
    held_out: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int
    class_names: tuple
    image_shape: tuple
    mean: tuple
    std: tuple
    num_train: Optional[int] = None
    shuffled_train: Optional[Callable[[Optional[int]], tf.data.Dataset]] = None
    split_digests: Optional[dict] = None
