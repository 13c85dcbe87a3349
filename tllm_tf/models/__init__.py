"""Model zoo: one family per module, looked up by name through `build_model`."""

from tllm_tf.models.registry import available_models
from tllm_tf.models.registry import build_model

__all__ = ["available_models", "build_model"]
