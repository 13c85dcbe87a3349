"""tllm_tf: knowledge distillation that finds and stops distilling undistillable classes.

Implements Teach Less, Learn More (Zhu et al., NeurIPS 2022) for Keras 3 on
TensorFlow.

The names below load on first use (PEP 562), so that importing a module of
the package that needs no TensorFlow (`tllm_tf.analysis.reporting`, read by
tools/report.py) does not load it.
"""

from tllm_tf import lazy_names

_EXPORTS = {
    "DKDLSLoss": "tllm_tf.losses",
    "DKDLoss": "tllm_tf.losses",
    "Distiller": "tllm_tf.distiller",
    "HeldOutCheck": "tllm_tf.held_out_check",
    "KDLSLoss": "tllm_tf.losses",
    "KDLoss": "tllm_tf.losses",
    "NKDLoss": "tllm_tf.losses",
    "PredictionRecorder": "tllm_tf.held_out_predictions",
    "ReferenceHistory": "tllm_tf.reference_history",
    "ReferencePredictions": "tllm_tf.held_out_predictions",
    "SoftLabelStore": "tllm_tf.data.soft_label_store",
    "UndistillableClassCallback": "tllm_tf.callbacks",
    "apply_prior_offsets": "tllm_tf.prior_offsets",
    "export_saved_model": "tllm_tf.pipeline.export",
    "kd_loss": "tllm_tf.losses",
    "keep_baseline_if_behind": "tllm_tf.held_out_check",
    "load_reference": "tllm_tf.reference",
    "load_predictions": "tllm_tf.held_out_predictions",
    "load_reference_history": "tllm_tf.reference",
    "per_class_accuracy": "tllm_tf.metrics",
    "predictions_path": "tllm_tf.held_out_predictions",
    "save_predictions": "tllm_tf.held_out_predictions",
    "save_reference": "tllm_tf.reference",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_names.module_attributes(__name__, _EXPORTS, globals())
