"""tllm_tf: knowledge distillation that finds and stops distilling undistillable classes.

Implements Teach Less, Learn More (Zhu et al., NeurIPS 2022) for Keras 3 on
TensorFlow.
"""

from tllm_tf.callbacks import UndistillableClassCallback
from tllm_tf.distiller import Distiller
from tllm_tf.export import export_saved_model
from tllm_tf.held_out_predictions import PredictionRecorder
from tllm_tf.held_out_predictions import ReferencePredictions
from tllm_tf.held_out_predictions import load_predictions
from tllm_tf.held_out_predictions import predictions_path
from tllm_tf.held_out_predictions import save_predictions
from tllm_tf.losses import DKDLoss
from tllm_tf.losses import DKDLSLoss
from tllm_tf.losses import KDLoss
from tllm_tf.losses import KDLSLoss
from tllm_tf.losses import NKDLoss
from tllm_tf.losses import kd_loss
from tllm_tf.metrics import per_class_accuracy
from tllm_tf.reference import ReferenceHistory
from tllm_tf.reference import load_reference
from tllm_tf.reference import load_reference_history
from tllm_tf.reference import save_reference

__all__ = [
    "DKDLSLoss",
    "DKDLoss",
    "Distiller",
    "KDLSLoss",
    "KDLoss",
    "NKDLoss",
    "PredictionRecorder",
    "ReferenceHistory",
    "ReferencePredictions",
    "UndistillableClassCallback",
    "export_saved_model",
    "kd_loss",
    "load_reference",
    "load_predictions",
    "load_reference_history",
    "per_class_accuracy",
    "predictions_path",
    "save_predictions",
    "save_reference",
]
