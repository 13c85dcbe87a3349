"""Data sets (embedded digits, tfds, image folders) and tf.data pipelines."""

from tllm_tf.data.digits import load_digits
from tllm_tf.data.folder_source import load_image_folder
from tllm_tf.data.pipeline import make_pipeline
from tllm_tf.data.splits import stratified_split
from tllm_tf.data.tfds_source import DataNotFoundError
from tllm_tf.data.tfds_source import load_tfds
from tllm_tf.data.types import DataSplits

IMAGE_FOLDER = "image_folder"


def load_dataset(name, *, holdout_fraction, seed=0, data_dir=None, manual_dir=None,
                 download=False, num_train=None, image_folder=None, test_image_folder=None,
                 image_size=None):
    """Loads a data set by name as `DataSplits`.

    Args:
        name: `"digits"` (embedded, no download), `"image_folder"` (a folder
            of one sub-folder per class, see `image_folder`), or any tfds
            image-classification name (`"cifar100"`, `"imagenet2012"`, ...).
        holdout_fraction: share of each training class held out to find
            the undistillable classes.
        seed: seed of the splits. Defaults to `0`.
        data_dir: tfds data directory. Defaults to `None`.
        manual_dir: tfds manual download directory. Defaults to `None`.
        download: let tfds download and prepare a missing set. Defaults to
            `False`.
        num_train: keep only this many training examples (digits only).
            Defaults to `None`.
        image_folder: training image folder, for `"image_folder"`.
            Defaults to `None`.
        test_image_folder: test image folder, for `"image_folder"`; without
            it a part of `image_folder` is the test split. Defaults to `None`.
        image_size: side of the images the model sees (image folders,
            ImageNet-size tfds sets). Defaults to `None`.

    Returns:
        A `DataSplits`.

    Raises:
        ValueError: on an unknown name or arguments that do not fit it.
        DataNotFoundError: if the data is not on this machine.
    """
    if name == "digits":
        return load_digits(holdout_fraction=holdout_fraction, num_train=num_train, seed=seed)
    if num_train is not None:
        raise ValueError(f"num_train is only supported for 'digits'. Received: dataset={name!r}")
    if name == IMAGE_FOLDER:
        if not image_folder:
            raise ValueError("dataset='image_folder' needs image_folder=<folder of class folders>.")
        return load_image_folder(
            image_folder, test_image_folder, image_size=image_size or 224,
            holdout_fraction=holdout_fraction, seed=seed)
    return load_tfds(name, data_dir=data_dir, manual_dir=manual_dir, download=download,
                     holdout_fraction=holdout_fraction, seed=seed, image_size=image_size)


__all__ = [
    "DataNotFoundError",
    "DataSplits",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_tfds",
    "make_pipeline",
    "stratified_split",
]
