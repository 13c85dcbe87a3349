"""Data sets (embedded digits, Fashion-MNIST, tfds, image folders), tf.data pipelines, and
the teacher soft-label store.

`load_tfds` loads on first use (PEP 562), so that loading the other data sets
does not import tfds.
"""

from tllm_tf import lazy_names

from tllm_tf.data.digits import load_digits
from tllm_tf.data.errors import DamagedDataError
from tllm_tf.data.errors import DataNotFoundError
from tllm_tf.data.errors import UnlabelledDataError
from tllm_tf.data.folder_source import load_image_folder
from tllm_tf.data.idx_format import IDXFormatError
from tllm_tf.data.idx_source import load_fashion_mnist
from tllm_tf.data.pipeline import make_pipeline
from tllm_tf.data.pipeline import reads_shuffled_train
from tllm_tf.data.pipeline import training_batches
from tllm_tf.data.soft_label_store import SoftLabelStore
from tllm_tf.data.sources import IMAGE_FOLDER
from tllm_tf.data.sources import LOADERS
from tllm_tf.data.sources import NUM_TRAIN_LOADERS
from tllm_tf.data.sources import augmentation_image_size
from tllm_tf.data.sources import check_source_arguments
from tllm_tf.data.sources import load_dataset
from tllm_tf.data.splits import stratified_split
from tllm_tf.data.types import DataSplits

_LAZY_EXPORTS = {"load_tfds": "tllm_tf.data.tfds_source"}


__getattr__, __dir__ = lazy_names.module_attributes(__name__, _LAZY_EXPORTS, globals())


__all__ = [
    "DamagedDataError",
    "DataNotFoundError",
    "DataSplits",
    "IDXFormatError",
    "IMAGE_FOLDER",
    "LOADERS",
    "NUM_TRAIN_LOADERS",
    "SoftLabelStore",
    "UnlabelledDataError",
    "augmentation_image_size",
    "check_source_arguments",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_tfds",
    "make_pipeline",
    "reads_shuffled_train",
    "stratified_split",
    "training_batches",
]
