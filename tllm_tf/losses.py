"""Distillation losses: pure per-sample functions, Keras `Loss` wrappers, a registry.

(Over 300 lines: one registry of five losses, each with its formula, its wrapper and their
docstrings; split, a loss would be read away from its wrapper.)

The per-sample form matters: `tllm_tf.Distiller` gates the distillation term
sample by sample with its class mask (Teach Less, Learn More, Zhu et al.,
NeurIPS 2022), which a loss reduced to one scalar per batch cannot do.

Losses (registry key, paper):

- `"kd"`: Hinton et al., 2015, "Distilling the knowledge in a neural network".
- `"dkd"`: decoupled KD, Zhao et al., CVPR 2022.
- `"kd_ls"`, `"dkd_ls"`: KD and DKD on z-scored logits (logit
  standardisation, Sun et al., CVPR 2024).
- `"nkd"`: normalized KD, Yang et al., ICCV 2023.

Each function is `(teacher_logits, student_logits, labels, *, temperature,
...) -> (batch,)` (`kd_loss` keeps its older `(teacher_logits,
student_logits, temperature=4.0, *, labels=None)`, and `kd_ls_loss`, which
ignores labels too, takes both by keyword only: a number passed third is
refused, not taken for the labels; every one can be called as
`fn(teacher_logits, student_logits, labels=labels, temperature=...)`);
`labels` are int class ids `(batch,)` or soft label vectors
`(batch, num_classes)` (MixUp, CutMix, label smoothing). Soft labels split the
classes fuzzily: class `k` counts `y_k` towards the target and `1 - y_k`
towards the non-targets, so the target probability is `p_y = sum_k y_k p_k`
and the non-target distribution is `p_hat_k = (1 - y_k) p_k / (1 - p_y)`.
For a one-hot `y` these are exactly the papers' definitions.

Adding a method: a pure function, a `LogitDistillationLoss` subclass naming
it, one registry line (docs/losses.md has an example).
"""

import inspect
import numbers

import keras
from keras import ops

# Stands in for log(0) where a class is excluded: finite, so that
# `0 * _LOG_ZERO` is 0 and not NaN, and far below any logit / T.
_LOG_ZERO = -1e9
# Bessel-corrected standard deviation plus this, as the reference code of
# logit standardisation (torch.std, 1e-7).
_STANDARDIZE_EPSILON = 1e-7
# The largest temperature and hyper-parameter accepted: the losses scale by
# T^2 in float32 (largest 3.4e38), so T = 1e30 gave inf * 0 = NaN.
_MAX_TEMPERATURE = 1e19
_MAX_HYPERPARAMETER = 1e38


# -- building blocks -----------------------------------------------------------


def _masked_log(weights):
    """`log(weights)`, with `_LOG_ZERO` (and a zero gradient) where weights <= 0."""
    positive = weights > 0.0
    return ops.where(positive, ops.log(ops.where(positive, weights, 1.0)), _LOG_ZERO)


def _soft_targets(labels, num_classes):
    """Labels as float `(batch, num_classes)`: one-hot for class ids.

    Raises:
        ValueError: on labels of another rank, such as a temperature passed
            where the labels go (`dkd_loss(t, s, 4.0)`), which would
            otherwise broadcast into a meaningless loss.
    """
    labels = ops.convert_to_tensor(labels)
    if len(labels.shape) not in (1, 2):
        raise ValueError(
            "Expected labels of shape (batch,) or (batch, num_classes). Received shape "
            f"{tuple(labels.shape)}. The labels come third: pass the temperature and the "
            "other settings by keyword (temperature=...).")
    if len(labels.shape) == 1 or (len(labels.shape) == 2 and labels.shape[-1] == 1
                                  and num_classes != 1):
        return ops.one_hot(ops.reshape(ops.cast(labels, "int32"), (-1,)), num_classes)
    return ops.cast(labels, "float32")


def _kl(log_p, log_q):
    """Per-row `KL(p || q)` from log-probabilities.

    A class with `p = 0` (a teacher logit of `-inf`) adds 0, its limit,
    rather than `0 * -inf = NaN`.
    """
    p = ops.exp(log_p)
    gap = ops.where(p > 0.0, log_p - log_q, 0.0)
    return ops.sum(p * gap, axis=-1)


def _split(logits, targets, temperature):
    """Target/non-target view of `softmax(logits / T)` in log space.

    Returns `(log_binary, log_non_target)`: `log [p_y, 1 - p_y]` of shape
    `(batch, 2)` and `log p_hat` of shape `(batch, num_classes)` (`_LOG_ZERO`
    at classes with `y_k = 1`).
    """
    scaled = logits / temperature
    log_probs = ops.log_softmax(scaled, axis=-1)
    log_not_target = _masked_log(1.0 - targets)
    log_binary = ops.stack([
        ops.logsumexp(log_probs + _masked_log(targets), axis=-1),
        # Summed in log space: stays exact when p_y is close to 1.
        ops.logsumexp(log_probs + log_not_target, axis=-1),
    ], axis=-1)
    log_non_target = ops.log_softmax(scaled + log_not_target, axis=-1)
    return log_binary, log_non_target


def _standardize(logits):
    """Z-scores each row: `(z - mean) / (std + 1e-7)`, std with Bessel's correction."""
    logits = ops.cast(logits, "float32")
    num_classes = ops.cast(ops.shape(logits)[-1], "float32")
    centred = logits - ops.mean(logits, axis=-1, keepdims=True)
    variance = (ops.sum(ops.square(centred), axis=-1, keepdims=True)
                / ops.maximum(num_classes - 1.0, 1.0))
    # The floor keeps the gradient finite for constant logits (sqrt'(0) = inf).
    std = ops.sqrt(ops.maximum(variance, 1e-30))
    return centred / (std + _STANDARDIZE_EPSILON)


# -- per-sample losses -----------------------------------------------------------


def kd_loss(teacher_logits, student_logits, temperature=4.0, *, labels=None):
    """Per-sample Hinton distillation loss.

    `T^2 * KL(softmax(teacher / T) || softmax(student / T))`, computed from
    log-softmax so it stays exact for large logits (no probability clipping).

    Args:
        teacher_logits: float tensor `(batch, num_classes)`.
        student_logits: float tensor `(batch, num_classes)`.
        temperature: softening temperature `T > 0`. Defaults to `4.0`.
        labels: ignored; accepted so that every loss here can be called
            as `fn(teacher_logits, student_logits, labels=labels, ...)`.
            Defaults to `None`.

    Returns:
        Float tensor of shape `(batch,)`.
    """
    del labels
    teacher_logits = ops.cast(teacher_logits, "float32")
    student_logits = ops.cast(student_logits, "float32")
    teacher_log_probs = ops.log_softmax(teacher_logits / temperature, axis=-1)
    student_log_probs = ops.log_softmax(student_logits / temperature, axis=-1)
    # T^2 keeps the gradient scale independent of T (Hinton et al., 2015).
    return (temperature**2) * _kl(teacher_log_probs, student_log_probs)


def dkd_loss(teacher_logits, student_logits, labels, *, temperature=4.0, alpha=1.0,
             beta=8.0):
    """Per-sample decoupled knowledge distillation (Zhao et al., CVPR 2022).

    With `p = softmax(z / T)` and target class `y`:
    `TCKD = T^2 KL([p_y, 1 - p_y]_teacher || [p_y, 1 - p_y]_student)`,
    `NCKD = T^2 KL(p_hat_teacher || p_hat_student)`, `p_hat` the softmax over
    the non-target classes, and `DKD = alpha * TCKD + beta * NCKD`. Computed
    in log space; the target class is excluded from `p_hat` exactly (not by
    subtracting 1000 from its logit, which leaks when logits / T exceed ~1000).

    Soft labels `y` (rows summing to 1): `p_y = sum_k y_k p_k` and
    `p_hat_k = (1 - y_k) p_k / sum_j (1 - y_j) p_j`, the same for teacher
    and student; for one-hot `y` this is the definition above.

    Args:
        teacher_logits: float tensor `(batch, num_classes)`.
        student_logits: float tensor `(batch, num_classes)`.
        labels: int class ids `(batch,)` or soft labels `(batch, num_classes)`.
        temperature: softening temperature `T > 0`. Defaults to `4.0`.
        alpha: weight of TCKD. Defaults to `1.0`.
        beta: weight of NCKD. Defaults to `8.0` (the paper's CIFAR-100
            resnet32x4 -> resnet8x4 setting).

    Returns:
        Float tensor of shape `(batch,)`.
    """
    teacher_logits = ops.cast(teacher_logits, "float32")
    student_logits = ops.cast(student_logits, "float32")
    targets = _soft_targets(labels, student_logits.shape[-1])
    teacher_binary, teacher_non_target = _split(teacher_logits, targets, temperature)
    student_binary, student_non_target = _split(student_logits, targets, temperature)
    tckd = _kl(teacher_binary, student_binary)
    nckd = _kl(teacher_non_target, student_non_target)
    return (temperature**2) * (alpha * tckd + beta * nckd)


def kd_ls_loss(teacher_logits, student_logits, *, labels=None, temperature=2.0):
    """Per-sample KD on standardised logits (Sun et al., CVPR 2024).

    `kd_loss` applied to `(z - mean(z)) / (std(z) + 1e-7)` of each sample's
    teacher and student logits (std with Bessel's correction, as the
    reference code). `temperature` is the paper's base temperature: the
    effective temperature of a sample is `T * std(z)`, and the loss is
    scaled by `T^2`. `labels` and `temperature` are keyword-only: `kd_loss`
    takes its temperature third, and when the third place here was the
    ignored labels, `kd_ls_loss(t, s, 3.0)` ran at `T = 2`.

    Args:
        teacher_logits: float tensor `(batch, num_classes)`.
        student_logits: float tensor `(batch, num_classes)`.
        labels: ignored. Defaults to `None`.
        temperature: base temperature `T > 0`. Defaults to `2.0` (the
            reference code's default).

    Returns:
        Float tensor of shape `(batch,)`.
    """
    del labels
    return kd_loss(_standardize(teacher_logits), _standardize(student_logits), temperature)


def dkd_ls_loss(teacher_logits, student_logits, labels, *, temperature=2.0, alpha=1.0,
                beta=8.0):
    """Per-sample DKD on standardised logits (Sun et al., CVPR 2024).

    `dkd_loss` applied to each sample's z-scored teacher and student logits
    (see `kd_ls_loss`); `temperature` is the base temperature.

    Args:
        teacher_logits: float tensor `(batch, num_classes)`.
        student_logits: float tensor `(batch, num_classes)`.
        labels: int class ids `(batch,)` or soft labels `(batch, num_classes)`.
        temperature: base temperature `T > 0`. Defaults to `2.0`.
        alpha: weight of TCKD. Defaults to `1.0`.
        beta: weight of NCKD. Defaults to `8.0`.

    Returns:
        Float tensor of shape `(batch,)`.
    """
    return dkd_loss(_standardize(teacher_logits), _standardize(student_logits), labels,
                    temperature=temperature, alpha=alpha, beta=beta)


def nkd_loss(teacher_logits, student_logits, labels, *, temperature=1.0, gamma=1.5):
    """Per-sample normalized knowledge distillation (Yang et al., ICCV 2023).

    `-t_y log s_y - gamma * T^2 * sum_{k != y} t_hat_k log s_hat_k`, where
    `t, s = softmax(teacher), softmax(student)` at temperature 1 and
    `t_hat, s_hat` are the softmax over the non-target classes at
    temperature `T`. Both terms are cross-entropies, as in the paper, so the
    loss is not 0 when student equals teacher, nor is its gradient: only the
    non-target term's vanishes there; `-t_y log s_y` has gradient
    `t_y (s - e_y)` in the student's logits, which keeps raising `s_y`.

    Soft labels: `t_y = sum_k y_k t_k`, `s_y = sum_k y_k s_k` and the
    non-target distributions weighted by `1 - y`, as in `dkd_loss`.

    Args:
        teacher_logits: float tensor `(batch, num_classes)`.
        student_logits: float tensor `(batch, num_classes)`.
        labels: int class ids `(batch,)` or soft labels `(batch, num_classes)`.
        temperature: temperature `T > 0` of the non-target term. Defaults to
            `1.0` (the reference code's default).
        gamma: weight of the non-target term. Defaults to `1.5`.

    Returns:
        Float tensor of shape `(batch,)`.
    """
    teacher_logits = ops.cast(teacher_logits, "float32")
    student_logits = ops.cast(student_logits, "float32")
    targets = _soft_targets(labels, student_logits.shape[-1])
    teacher_binary, _ = _split(teacher_logits, targets, 1.0)
    student_binary, _ = _split(student_logits, targets, 1.0)
    target_term = -ops.exp(teacher_binary[:, 0]) * student_binary[:, 0]
    _, teacher_non_target = _split(teacher_logits, targets, temperature)
    _, student_non_target = _split(student_logits, targets, temperature)
    non_target_term = -ops.sum(ops.exp(teacher_non_target) * student_non_target, axis=-1)
    return target_term + gamma * (temperature**2) * non_target_term


# -- Keras wrappers ---------------------------------------------------------------


def _check(name, value, minimum, strict, maximum):
    """`value` as a float, refused unless a real number above (or at) `minimum`, at most `maximum`.

    Raises:
        ValueError: naming `name` and `value`.
    """
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and (value > minimum if strict else value >= minimum) and value <= maximum)
    if not ok:
        raise ValueError(
            f"Expected {name} {'>' if strict else '>='} {minimum} and finite (at most "
            f"{maximum:g}: the losses compute in float32). Received: {name}={value!r}"
        )
    return float(value)


def _default_temperature(function):
    """The default of `function`'s `temperature` argument, or `None`."""
    try:
        parameter = inspect.signature(function).parameters.get("temperature")
    except (TypeError, ValueError):  # No function, or one Python cannot inspect.
        return None
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default


class LogitDistillationLoss(keras.losses.Loss):
    """Base of the wrappers: a Keras `Loss` around a pure per-sample function.

    A subclass sets `function`, the per-sample loss `(teacher_logits,
    student_logits, labels=..., *, temperature, **hyperparameters) ->
    (batch,)`, and passes its hyper-parameters to this constructor, which
    validates them (`temperature > 0`, the others `>= 0`, all finite),
    stores them as attributes and returns them from `get_config`. It may
    also set `needs_labels = False` (the loss ignores labels, so Keras's
    `loss(teacher_logits, student_logits)` works), `standardizes_logits =
    True` (the loss z-scores each row of logits before comparing them; the
    masked-class policies then build their targets on the same scale), and
    `config_fields`:
    constructor argument -> the flag and config field that sets it
    (`{"beta": "dkd_beta"}`), for the command line.

    Args:
        temperature: softening temperature, `> 0` and at most `1e19` (`T^2`
            stays finite in float32). Defaults to `None`: the
            default of `function`'s own `temperature` argument, so that a
            two-line subclass whose function has one can be named alone
            (`distillation_loss_fn="name"`).
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        name: loss name. Defaults to `None` (Keras derives one).
        dtype: Keras loss dtype. Defaults to `None`.
        **hyperparameters: the function's other keyword arguments, each
            `>= 0` and at most `1e38` (finite in float32).

    Raises:
        ValueError: on a non-positive temperature or a negative
            hyper-parameter, one above its maximum (`inf` included), or one
            that is not a number (NaN or a bool included);
            or on no temperature, where `function` has no default for it.
    """

    function = None
    needs_labels = True
    standardizes_logits = False
    config_fields = {"temperature": "temperature"}

    def __init__(self, temperature=None, *, reduction="sum_over_batch_size", name=None,
                 dtype=None, **hyperparameters):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if temperature is None:
            temperature = _default_temperature(type(self).function)
        if temperature is None:
            raise ValueError(
                f"{type(self).__name__} needs a temperature: pass temperature=..., or give "
                "the temperature argument of its function a default.")
        self.temperature = _check("temperature", temperature, 0, strict=True,
                                  maximum=_MAX_TEMPERATURE)
        self._hyperparameters = {
            key: _check(key, value, 0, strict=False, maximum=_MAX_HYPERPARAMETER)
            for key, value in hyperparameters.items()}
        for key, value in self._hyperparameters.items():
            setattr(self, key, value)

    def call(self, teacher_logits, student_logits, labels=None):
        """The per-sample loss `(batch,)`: `function` with these hyper-parameters.

        Raises:
            ValueError: if `labels` is `None` and the loss needs labels.
        """
        if labels is None and self.needs_labels:
            raise ValueError(
                f"{type(self).__name__} needs the labels: call it as "
                "`loss.call(teacher_logits, student_logits, labels)` (the "
                "Distiller does), not `loss(teacher_logits, student_logits)`."
            )
        return type(self).function(teacher_logits, student_logits, labels=labels,
                                   temperature=self.temperature, **self._hyperparameters)

    def get_config(self):
        """Keras's loss config plus `temperature` and the other hyper-parameters."""
        config = super().get_config()
        config.update(temperature=self.temperature, **self._hyperparameters)
        return config


@keras.saving.register_keras_serializable(package="tllm_tf")
class KDLoss(LogitDistillationLoss):
    """Hinton knowledge-distillation loss as a Keras loss (see `kd_loss`).

    Follows Keras's `(y_true, y_pred)` order: `KDLoss()(teacher_logits,
    student_logits)`.

    Args:
        temperature: softening temperature, `> 0`. Defaults to `4.0`.
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        name: loss name. Defaults to `"kd_loss"`.
        dtype: Keras loss dtype. Defaults to `None`.

    Example:

    >>> loss = KDLoss(temperature=4.0)
    >>> value = loss(teacher_logits, student_logits)
    """

    function = staticmethod(kd_loss)
    needs_labels = False

    def __init__(self, temperature=4.0, reduction="sum_over_batch_size", name="kd_loss",
                 dtype=None):
        super().__init__(temperature, reduction=reduction, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="tllm_tf")
class KDLSLoss(LogitDistillationLoss):
    """KD on standardised logits (logit standardisation) as a Keras loss.

    See `kd_ls_loss`.

    Args:
        temperature: base temperature, `> 0`. Defaults to `2.0`.
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        name: loss name. Defaults to `"kd_ls_loss"`.
        dtype: Keras loss dtype. Defaults to `None`.
    """

    function = staticmethod(kd_ls_loss)
    needs_labels = False
    standardizes_logits = True

    def __init__(self, temperature=2.0, reduction="sum_over_batch_size",
                 name="kd_ls_loss", dtype=None):
        super().__init__(temperature, reduction=reduction, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="tllm_tf")
class DKDLoss(LogitDistillationLoss):
    """Decoupled knowledge distillation as a Keras loss (see `dkd_loss`).

    Needs labels: `loss.call(teacher_logits, student_logits, labels)`. On
    the command line `--temperature`, `--dkd_alpha` and `--dkd_beta` set
    `temperature`, `alpha` and `beta` (through `config_fields`).

    Args:
        temperature: softening temperature, `> 0`. Defaults to `4.0`.
        alpha: weight of TCKD, `>= 0`. Defaults to `1.0`.
        beta: weight of NCKD, `>= 0`. Defaults to `8.0`.
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        name: loss name. Defaults to `"dkd_loss"`.
        dtype: Keras loss dtype. Defaults to `None`.

    Example:

    >>> distiller.compile(optimizer="sgd", alpha=1.0, beta=1.0,
    ...                   distillation_loss_fn=DKDLoss(beta=8.0))
    """

    function = staticmethod(dkd_loss)
    config_fields = {"temperature": "temperature", "alpha": "dkd_alpha", "beta": "dkd_beta"}

    def __init__(self, temperature=4.0, alpha=1.0, beta=8.0,
                 reduction="sum_over_batch_size", name="dkd_loss", dtype=None):
        super().__init__(temperature, reduction=reduction, name=name, dtype=dtype,
                         alpha=alpha, beta=beta)


@keras.saving.register_keras_serializable(package="tllm_tf")
class DKDLSLoss(LogitDistillationLoss):
    """DKD on standardised logits as a Keras loss (see `dkd_ls_loss`).

    On the command line `--temperature`, `--dkd_alpha` and `--dkd_beta` set
    `temperature`, `alpha` and `beta` (through `config_fields`);
    `--temperature` defaults to `4.0` there, not this class's `2.0`.

    Args:
        temperature: base temperature, `> 0`. Defaults to `2.0`.
        alpha: weight of TCKD, `>= 0`. Defaults to `1.0`.
        beta: weight of NCKD, `>= 0`. Defaults to `8.0`.
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        name: loss name. Defaults to `"dkd_ls_loss"`.
        dtype: Keras loss dtype. Defaults to `None`.
    """

    function = staticmethod(dkd_ls_loss)
    standardizes_logits = True
    config_fields = DKDLoss.config_fields

    def __init__(self, temperature=2.0, alpha=1.0, beta=8.0,
                 reduction="sum_over_batch_size", name="dkd_ls_loss", dtype=None):
        super().__init__(temperature, reduction=reduction, name=name, dtype=dtype,
                         alpha=alpha, beta=beta)


@keras.saving.register_keras_serializable(package="tllm_tf")
class NKDLoss(LogitDistillationLoss):
    """Normalized knowledge distillation as a Keras loss (see `nkd_loss`).

    On the command line `--temperature` and `--nkd_gamma` set `temperature`
    and `gamma` (through `config_fields`); `--temperature` defaults to
    `4.0` there, not this class's `1.0`.

    Args:
        temperature: temperature of the non-target term, `> 0`. Defaults to
            `1.0`.
        gamma: weight of the non-target term, `>= 0`. Defaults to `1.5`.
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        name: loss name. Defaults to `"nkd_loss"`.
        dtype: Keras loss dtype. Defaults to `None`.
    """

    function = staticmethod(nkd_loss)
    config_fields = {"temperature": "temperature", "gamma": "nkd_gamma"}

    def __init__(self, temperature=1.0, gamma=1.5, reduction="sum_over_batch_size",
                 name="nkd_loss", dtype=None):
        super().__init__(temperature, reduction=reduction, name=name, dtype=dtype,
                         gamma=gamma)


DISTILLATION_LOSSES = {
    "kd": KDLoss,
    "dkd": DKDLoss,
    "kd_ls": KDLSLoss,
    "dkd_ls": DKDLSLoss,
    "nkd": NKDLoss,
}


# -- what the Distiller uses ---------------------------------------------------------


def check_logit_loss(loss):
    """Refuses a Keras loss that compares probabilities, given logits.

    The Distiller hands its distillation loss raw logits. Keras's
    `KLDivergence` and cross-entropies read `y_true` as probabilities, so
    with logits they train on a meaningless target, silently (no softened
    softmax, no `T^2`): the pitfall of porting keras-io's KD example.

    Args:
        loss: the distillation loss about to be used.

    Raises:
        ValueError: for `keras.losses.KLDivergence`,
            `CategoricalCrossentropy`, `SparseCategoricalCrossentropy` or
            `BinaryCrossentropy`, naming what to use instead.
    """
    probability_losses = (keras.losses.KLDivergence, keras.losses.CategoricalCrossentropy,
                          keras.losses.SparseCategoricalCrossentropy,
                          keras.losses.BinaryCrossentropy)
    if isinstance(loss, probability_losses):
        raise ValueError(
            f"keras.losses.{type(loss).__name__} cannot be a distillation loss here: "
            "it reads the teacher's output as probabilities, but the Distiller passes "
            "logits, so it would train on raw logits with no softened softmax and no "
            "T^2. Use tllm_tf.KDLoss(temperature=...) for Hinton KD (what keras-io's "
            "example computes), or a registry name: "
            f"{sorted(DISTILLATION_LOSSES)}."
        )


def _check_arguments_known(identifier, loss_class, kwargs):
    """Refuses arguments that `loss_class`'s constructor does not take, naming those it does."""
    parameters = inspect.signature(loss_class).parameters.values()
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
        return
    known = [parameter.name for parameter in parameters
             if parameter.kind is not parameter.VAR_POSITIONAL]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ValueError(
            f"The distillation loss {identifier!r} ({loss_class.__name__}) has no argument "
            f"{', '.join(map(repr, unknown))}: its arguments are {known}. Received: "
            f"{identifier!r} with arguments {kwargs}.")


def get_distillation_loss(identifier, **kwargs):
    """Returns a distillation `Loss` from a registry name or an instance.

    Args:
        identifier: a registry key (`"kd"`, `"dkd"`, `"kd_ls"`, `"dkd_ls"`,
            `"nkd"`), or a `keras.losses.Loss` instance whose
            `call(teacher_logits, student_logits[, labels])` returns a
            per-sample loss.
        **kwargs: constructor arguments when `identifier` is a name, e.g.
            `temperature=4.0, beta=8.0`.

    Returns:
        A `keras.losses.Loss` instance.

    Raises:
        ValueError: if the name is not registered, `kwargs` names an
            argument its class does not take (`"kd"` with `beta`), the class
            needs constructor arguments that `kwargs` does not give (pass an
            instance instead), or the instance is a Keras loss on
            probabilities (see `check_logit_loss`).
    """
    if isinstance(identifier, keras.losses.Loss):
        check_logit_loss(identifier)
        return identifier
    if identifier not in DISTILLATION_LOSSES:
        raise ValueError(
            f"Unknown distillation loss: {identifier!r}. Expected one of "
            f"{sorted(DISTILLATION_LOSSES)} or a keras.losses.Loss instance."
        )
    loss_class = DISTILLATION_LOSSES[identifier]
    _check_arguments_known(identifier, loss_class, kwargs)
    try:
        inspect.signature(loss_class).bind(**kwargs)
    except TypeError as error:
        raise ValueError(
            f"The distillation loss {identifier!r} ({loss_class.__name__}) cannot be built "
            f"from its name: {error}. Pass an instance instead, "
            f"distillation_loss_fn={loss_class.__name__}(...), or give its constructor "
            f"defaults. Received: {identifier!r} with arguments {kwargs}.") from None
    return loss_class(**kwargs)


def compared_logits(loss_fn, logits):
    """`logits` on the scale `loss_fn` compares them: z-scored by a loss that standardises.

    Args:
        loss_fn: a distillation loss (a `LogitDistillationLoss` or a function).
        logits: `(batch, num_classes)`.

    Returns:
        `logits` z-scored per row when `loss_fn.standardizes_logits`, else
        `logits` unchanged.
    """
    if getattr(loss_fn, "standardizes_logits", False):
        return _standardize(logits)
    return logits


def _takes_labels(loss_fn):
    explicit = getattr(loss_fn, "takes_labels", None)
    if explicit is not None:
        return bool(explicit)
    parameters = inspect.signature(loss_fn.call).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL or p.name == "labels" for p in parameters):
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY,
                                                      p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3


def per_sample_distillation_loss(loss_fn, teacher_logits, student_logits, labels):
    """Per-sample distillation loss of any `Loss`, with or without labels.

    Calls `loss_fn.call(teacher_logits, student_logits, labels)` when its
    `call` takes labels (a third positional parameter, one named `labels`,
    or `*args`; or an attribute `takes_labels = True`), else
    `loss_fn.call(teacher_logits, student_logits)`, so user-written losses
    that ignore labels keep working.

    Args:
        loss_fn: a `keras.losses.Loss` (or anything with such a `call`).
        teacher_logits: float tensor `(batch, num_classes)`.
        student_logits: float tensor `(batch, num_classes)`.
        labels: int32 class ids `(batch,)` or float32 soft labels
            `(batch, num_classes)`.

    Returns:
        Float tensor of shape `(batch,)`.

    Raises:
        ValueError: if the loss does not return one value per sample.
    """
    if _takes_labels(loss_fn):
        values = loss_fn.call(teacher_logits, student_logits, labels)
    else:
        values = loss_fn.call(teacher_logits, student_logits)
    if len(values.shape) != 1:
        raise ValueError(
            f"Expected {type(loss_fn).__name__}.call() to return one loss per sample, "
            f"of shape (batch,). Received shape {tuple(values.shape)}."
        )
    return values
