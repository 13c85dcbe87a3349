"""Distillation losses: pure per-sample functions, Keras `Loss` wrappers, a registry.

The per-sample form matters: `tllm_tf.Distiller` gates the distillation term
sample by sample with its class mask (Teach Less, Learn More, Zhu et al.,
NeurIPS 2022), which a loss reduced to one scalar per batch cannot do.

Adding a method: a pure function `(teacher_logits, student_logits, *,
temperature, ...) -> per-sample loss`, a `Loss` wrapper, one registry line.
"""

import keras
from keras import ops


def kd_loss(teacher_logits, student_logits, temperature=4.0):
    """Per-sample Hinton distillation loss.

    `T^2 * KL(softmax(teacher / T) || softmax(student / T))`, computed from
    log-softmax so it stays exact for large logits (no probability clipping).

    Args:
        teacher_logits: float tensor `(batch, num_classes)`.
        student_logits: float tensor `(batch, num_classes)`.
        temperature: softening temperature `T > 0`. Defaults to `4.0`.

    Returns:
        Float tensor of shape `(batch,)`.
    """
    teacher_logits = ops.cast(teacher_logits, "float32")
    student_logits = ops.cast(student_logits, "float32")
    teacher_log_probs = ops.log_softmax(teacher_logits / temperature, axis=-1)
    student_log_probs = ops.log_softmax(student_logits / temperature, axis=-1)
    kl = ops.sum(
        ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs),
        axis=-1,
    )
    # T^2 keeps the gradient scale independent of T (Hinton et al., 2015).
    return (temperature**2) * kl


@keras.saving.register_keras_serializable(package="tllm_tf")
class KDLoss(keras.losses.Loss):
    """Hinton knowledge-distillation loss as a Keras loss.

    Follows Keras's `(y_true, y_pred)` order: `KDLoss()(teacher_logits,
    student_logits)`.

    Args:
        temperature: softening temperature, `> 0`. Defaults to `4.0`.
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        name: loss name. Defaults to `"kd_loss"`.

    Example:

    >>> loss = KDLoss(temperature=4.0)
    >>> value = loss(teacher_logits, student_logits)
    """

    def __init__(self, temperature=4.0, reduction="sum_over_batch_size", name="kd_loss", dtype=None):
        if not temperature > 0:
            raise ValueError(
                f"Expected temperature > 0. Received: temperature={temperature}"
            )
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        return kd_loss(y_true, y_pred, temperature=self.temperature)

    def get_config(self):
        config = super().get_config()
        config.update({"temperature": self.temperature})
        return config


DISTILLATION_LOSSES = {
    "kd": KDLoss,
}


def get_distillation_loss(identifier, **kwargs):
    """Returns a distillation `Loss` from a registry name or an instance.

    Args:
        identifier: a registry key (`"kd"`), or a `keras.losses.Loss`
            instance whose `call(teacher_logits, student_logits)` returns a
            per-sample loss.
        **kwargs: constructor arguments when `identifier` is a name, e.g.
            `temperature=4.0`.

    Returns:
        A `keras.losses.Loss` instance.

    Raises:
        ValueError: if the name is not registered.
    """
    if isinstance(identifier, keras.losses.Loss):
        return identifier
    if identifier not in DISTILLATION_LOSSES:
        raise ValueError(
            f"Unknown distillation loss: {identifier!r}. Expected one of "
            f"{sorted(DISTILLATION_LOSSES)} or a keras.losses.Loss instance."
        )
    return DISTILLATION_LOSSES[identifier](**kwargs)
