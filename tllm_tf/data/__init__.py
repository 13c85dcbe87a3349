"""Data sets (embedded digits, tfds, image folders) and tf.data pipelines."""

from tllm_tf.data.digits import load_digits
from tllm_tf.data.splits import stratified_split
from tllm_tf.data.types import DataSplits

__all__ = ["DataSplits", "load_digits", "stratified_split"]
