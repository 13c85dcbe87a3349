"""Masked-class policies: what an undistillable class's samples learn from.

(Over 300 lines: nine small policies whose docstrings keep what each was measured to do.)

Teach Less, Learn More (Zhu et al., NeurIPS 2022) stops distilling the
classes found undistillable. What takes the distillation term's place is a
choice, and it matters: a class taught by hard labels gets sharper logits
than its distilled neighbours (soft targets at temperature `T`), which can
pull other classes' predictions towards it.

A policy is a pure function of a `PolicyInputs` returning the per-sample
term that the `Distiller` weights by `beta`; `distil_weight` is the sample's
class mask (`m[y]`, or the label-weighted mask for soft labels), 1 for a
distilled class. Adding one: a function and one line in `POLICIES`.

The soft-label policies (`soft_label`, `batch_soft_label`, `class_mean`,
`soft_label_exclude`, and `soft_label_symmetric` on a masked class's own
samples) teach a masked sample by Hinton's KD at the distillation loss's
temperature (`kd_loss`), whatever that loss is: under `dkd` or `nkd` too.
`isolate`, `exclude` and `soft_label_symmetric` read the class mask as
binary when they change what the other samples distil: a class with
`0 < m < 1` counts as distilled there.
"""

import dataclasses

from keras import ops

from tllm_tf import losses as losses_lib


@dataclasses.dataclass(frozen=True)
class PolicyInputs:
    """Per-sample tensors a policy may use.

    Attributes:
        distil_weight: `(batch,)`, 1 = distil, 0 = undistillable: the
            label-weighted class mask, in `[0, 1]`, exactly 1 where the
            label has no weight on a class the mask stops distilling.
        distillation_loss: `(batch,)`, the distillation loss.
        student_loss: `(batch,)`, the label loss (cross-entropy).
        targets: `(batch, num_classes)`, one-hot or soft labels.
        student_logits: `(batch, num_classes)`, float32.
        teacher_logits: `(batch, num_classes)`, float32.
        temperature: the distillation loss's temperature (1 if it has none).
        class_mask: `(num_classes,)`, the class mask (1 = distil).
        distill: callable `(teacher_logits, student_logits) -> (batch,)`:
            the distillation loss of these samples on other logits (for the
            policies that change what the other samples distil).
        compared_logits: callable `logits -> logits`: the logits on the
            scale the distillation loss compares them (z-scored per row by
            `kd_ls` and `dkd_ls`, unchanged by the others). The policies
            build their own targets on that scale, so that a masked class's
            target is as soft as its distilled neighbours'.
    """

    distil_weight: object
    distillation_loss: object
    student_loss: object
    targets: object
    student_logits: object
    teacher_logits: object
    temperature: float
    class_mask: object
    distill: object
    compared_logits: object


def _gate(inputs, distilled, masked):
    """`m * distilled + (1 - m) * masked`, per sample."""
    weight = inputs.distil_weight
    return weight * distilled + (1.0 - weight) * masked


def _logits_at(probabilities, temperature):
    """Logits whose softmax at `temperature` is `probabilities` (0 -> about -28 T)."""
    return temperature * ops.log(ops.maximum(probabilities, 1e-12))


def hard_label(inputs):
    """The label takes the distillation term's weight: `m * D + (1 - m) * CE`.

    Args:
        inputs: the batch's `PolicyInputs`.

    Returns:
        The per-sample term that the `Distiller` weights by `beta`, `(batch,)`.
    """
    return _gate(inputs, inputs.distillation_loss, inputs.student_loss)


def drop(inputs):
    """A masked sample loses its distillation term and keeps `alpha * CE`: `m * D`.

    Args:
        inputs: the batch's `PolicyInputs`.

    Returns:
        The per-sample term that the `Distiller` weights by `beta`, `(batch,)`.
    """
    return inputs.distil_weight * inputs.distillation_loss


def _distilled_towards(inputs, probabilities):
    """Hinton's KD at `T` of the student towards `probabilities`, whatever the loss (per sample)."""
    return losses_lib.kd_loss(_logits_at(probabilities, inputs.temperature),
                              inputs.compared_logits(inputs.student_logits),
                              temperature=inputs.temperature)


def _other_classes(probabilities):
    """`K - 1` as a float, at least 1: with one class the spread remainder is 0, not 0 / 0."""
    return ops.cast(ops.maximum(ops.shape(probabilities)[-1] - 1, 1), "float32")


def _softened_label_loss(inputs, confidence):
    """Distillation at `T` towards `confidence` on the label, the rest spread evenly."""
    others = _other_classes(inputs.targets)
    return _distilled_towards(
        inputs, confidence * inputs.targets + (1.0 - confidence) * (1.0 - inputs.targets) / others)


def _teacher_probabilities(inputs):
    """`(batch, num_classes)`: the teacher's distribution at `T` on each sample."""
    return ops.softmax(inputs.compared_logits(inputs.teacher_logits) / inputs.temperature,
                       axis=-1)


def _teacher_confidence(inputs):
    """`(batch, 1)`: the teacher's largest probability at `T` on each sample."""
    return ops.max(_teacher_probabilities(inputs), axis=-1, keepdims=True)


def _distilled_from_changed_teacher(inputs, probabilities):
    """The distillation loss against the teacher's distribution changed to `probabilities`.

    The loss sees the change through logits `T * log q`. With no class masked
    the teacher's logits are used unchanged: `T * log(softmax(t / T))` is `t`
    shifted, equal at `T` but not bit for bit.
    """
    teacher_logits = ops.where(ops.all(inputs.class_mask > 0.0), inputs.teacher_logits,
                               _logits_at(probabilities, inputs.temperature))
    return inputs.distill(teacher_logits, inputs.student_logits)


def soft_label(inputs):
    """The label, softened to the teacher's confidence, distilled at `T`.

    A masked sample is still distilled at temperature `T`, towards
    `c * y + (1 - c) * (1 - y) / (K - 1)`, with `c` the teacher's largest
    probability at `T` on that sample: the target keeps the teacher's
    softness (so the class's logits stay on its neighbours' scale) and drops
    its distribution over the wrong classes.

    Args:
        inputs: the batch's `PolicyInputs`.

    Returns:
        The per-sample term that the `Distiller` weights by `beta`, `(batch,)`.
    """
    return _gate(inputs, inputs.distillation_loss,
                 _softened_label_loss(inputs, _teacher_confidence(inputs)))


def batch_soft_label(inputs):
    """As `soft_label`, with one confidence for the whole batch.

    `c` is the teacher's largest probability at `T` averaged over the
    (per-replica) batch, so a class whose images the teacher is unsure of
    (Fashion-MNIST's Shirt) gets as sharp a target as the others instead of
    a nearly even one. Measured as the refit's policy (docs/study.md, "Where
    the gain comes from"): the masked classes gain more than under
    `soft_label` and their neighbours lose as much more.

    Args:
        inputs: the batch's `PolicyInputs`.

    Returns:
        The per-sample term that the `Distiller` weights by `beta`, `(batch,)`.
    """
    confidence = ops.mean(_teacher_confidence(inputs))
    return _gate(inputs, inputs.distillation_loss, _softened_label_loss(inputs, confidence))


def class_mean(inputs):
    """The teacher's average over the class, distilled at `T`.

    A masked sample is still distilled at temperature `T`, towards the mean
    of the teacher's distributions at `T` over the samples of its class in
    the batch (label-weighted for soft labels). The target keeps what the
    teacher says of the class as a whole, including which classes it
    resembles, and drops what it says of the single image, where its errors
    on an undistillable class lie. Unlike `soft_label`'s evenly spread
    remainder, it keeps the masked class's confusion with its neighbours as
    the neighbours' own targets keep theirs with it. The mean is over the
    (per-replica) batch: a class with one sample there is distilled as KD
    would distil it. Measured as the refit's policy (docs/study.md): it
    takes less from the neighbours and gives the masked classes less, and is
    below `soft_label` overall.

    Args:
        inputs: the batch's `PolicyInputs`.

    Returns:
        The per-sample term that the `Distiller` weights by `beta`, `(batch,)`.
    """
    probabilities = _teacher_probabilities(inputs)
    counts = ops.sum(inputs.targets, axis=0)
    class_means = ops.matmul(ops.transpose(inputs.targets), probabilities) / ops.maximum(
        ops.expand_dims(counts, -1), 1e-12)
    return _gate(inputs, inputs.distillation_loss,
                 _distilled_towards(inputs, ops.matmul(inputs.targets, class_means)))


def isolate(inputs):
    """The masked classes are taught by labels alone, in every sample.

    A masked class's samples learn from their label (as in `hard_label`),
    and every other sample is distilled from the teacher's distribution at
    `T` with the masked classes' probability moved to the sample's label: the
    teacher no longer says what a masked class resembles, nor what resembles
    it. (`hard_label` keeps the second, e.g. the teacher's Pullover
    probability on Coat and Shirt images.) With no class masked, the teacher's
    logits are used unchanged, so the result equals `hard_label`'s bit for
    bit. The loss sees the changed distribution through logits `T * log q`;
    for a loss that standardises logits (`kd_ls`, `dkd_ls`) it is not the
    same change.

    Args:
        inputs: the batch's `PolicyInputs`.

    Returns:
        The per-sample term that the `Distiller` weights by `beta`, `(batch,)`.
    """
    keep = ops.cast(inputs.class_mask > 0.0, "float32")
    probabilities = _teacher_probabilities(inputs)
    moved = ops.sum(probabilities * (1.0 - keep), axis=-1, keepdims=True)
    return _gate(inputs, _distilled_from_changed_teacher(
        inputs, probabilities * keep + inputs.targets * moved), inputs.student_loss)


# Far below any logit / T, and finite, so that `0 * log(0)` terms stay 0.
_EXCLUDED_LOGIT = -1e9


def _distilled_over_kept_classes(inputs):
    """The distillation loss over the classes still distilled (both sides renormalised).

    With no class masked the logits are used unchanged.
    """
    kept = inputs.class_mask > 0.0
    return inputs.distill(ops.where(kept, inputs.teacher_logits, _EXCLUDED_LOGIT),
                          ops.where(kept, inputs.student_logits, _EXCLUDED_LOGIT))


def exclude(inputs):
    """The masked classes are left out of the distillation term altogether.

    A masked class's samples learn from their label (as in `hard_label`);
    every other sample is distilled over the classes still distilled only:
    the teacher's and the student's distributions renormalised without the
    masked classes, so the term neither pulls a masked class's probability
    towards the teacher's (as `hard_label` does) nor pushes it to zero (as
    `isolate` does). Only the label terms train a masked class's logit. With
    no class masked, the logits are used unchanged (`hard_label` bit for bit).

    Args:
        inputs: the batch's `PolicyInputs`.

    Returns:
        The per-sample term that the `Distiller` weights by `beta`, `(batch,)`.
    """
    return _gate(inputs, _distilled_over_kept_classes(inputs), inputs.student_loss)


def soft_label_exclude(inputs):
    """`soft_label` for the masked classes' samples, `exclude` for the others.

    The other classes' samples no longer pull a masked class's probability up
    towards the teacher's (on Shirt images, the teacher's Pullover share),
    which `soft_label` leaves in place while the masked class's own samples
    learn sharper targets. Meant to keep the masked class from taking its
    neighbours' images; measured as the refit's policy (docs/study.md), it
    does the opposite: the neighbours lose more than under any other policy.

    Args:
        inputs: the batch's `PolicyInputs`.

    Returns:
        The per-sample term that the `Distiller` weights by `beta`, `(batch,)`.
    """
    return _gate(inputs, _distilled_over_kept_classes(inputs),
                 _softened_label_loss(inputs, _teacher_confidence(inputs)))


def _renormalised(weights):
    """Each row of `weights` divided by its sum; a row summing to 0 becomes uniform.

    Under `soft_label_symmetric` a row sums to 0 when a masked class holds all
    the teacher's probability at `T` and every other class's underflows to 0
    in float32 (a logit gap above about `104 T`). `0 / 0` made that sample's
    term NaN (through the gate's `0 * NaN` on a masked class's own sample
    too), and with it the batch's loss and every gradient. Uniform is the
    limit where the kept classes are equally unlikely; their ratios are lost
    to the underflow.
    """
    total = ops.sum(weights, axis=-1, keepdims=True)
    positive = total > 0.0
    uniform = ops.ones_like(weights) / ops.cast(ops.shape(weights)[-1], weights.dtype)
    return ops.where(positive, weights / ops.where(positive, total, 1.0), uniform)


def soft_label_symmetric(inputs):
    """`soft_label` both ways: a masked class is an even wrong class in every target.

    A masked class's samples learn as under `soft_label` (the label at the
    teacher's confidence `c`, the rest spread evenly, so every other class is
    to them an even wrong class). Every other sample is distilled from the
    teacher's distribution at `T` with each masked class's probability set to
    that sample's even share `(1 - c) / (K - 1)`, then renormalised: the
    other images no longer say that they resemble the masked class more (or
    less) than an even wrong class, as its own images no longer say it of
    them. Between `soft_label` (the other images keep the teacher's share,
    and the masked class takes its neighbours' images) and `isolate` (the
    share set to zero, and the masked class collapses). Measured as the
    refit's policy (docs/study.md, "Where the gain comes from"): with the
    MLP student the neighbours pay a seventh of what they pay under
    `soft_label` and the masked classes gain a third; with the CNN student a
    masked Pullover collapses. With no class masked, the teacher's logits
    are used unchanged (`hard_label` bit for bit). A sample on which a
    masked class takes all the teacher's probability at `T` (every other
    class's underflowing to 0) is distilled towards the uniform distribution.

    Args:
        inputs: the batch's `PolicyInputs`.

    Returns:
        The per-sample term that the `Distiller` weights by `beta`, `(batch,)`.
    """
    keep = ops.cast(inputs.class_mask > 0.0, "float32")
    probabilities = _teacher_probabilities(inputs)
    confidence = ops.max(probabilities, axis=-1, keepdims=True)
    evened = probabilities * keep + (1.0 - confidence) / _other_classes(probabilities) * (
        1.0 - keep)
    return _gate(inputs, _distilled_from_changed_teacher(inputs, _renormalised(evened)),
                 _softened_label_loss(inputs, confidence))


POLICIES = {
    "hard_label": hard_label,
    "drop": drop,
    "soft_label": soft_label,
    "batch_soft_label": batch_soft_label,
    "class_mean": class_mean,
    "isolate": isolate,
    "exclude": exclude,
    "soft_label_exclude": soft_label_exclude,
    "soft_label_symmetric": soft_label_symmetric,
}


# The policies that set the masked classes' logits to `_EXCLUDED_LOGIT` before the
# loss: a loss that z-scores each row would then see every kept logit as one number
# (the row's std about 3e8), and distil nothing on any sample.
_EXCLUDING = frozenset({"exclude", "soft_label_exclude"})


def check_with_loss(name, loss_fn):
    """Refuses a policy that cannot work with the distillation loss `loss_fn`.

    Args:
        name: a policy's name.
        loss_fn: the distillation loss (an instance or class; a function is
            taken as not standardising its logits).

    Raises:
        ValueError: for `exclude` or `soft_label_exclude` with a loss that
            standardises logits (`kd_ls`, `dkd_ls`).
    """
    if name in _EXCLUDING and getattr(loss_fn, "standardizes_logits", False):
        loss_name = getattr(loss_fn, "name", None) or getattr(loss_fn, "__name__", "")
        raise ValueError(
            f"The masked-class policy {name!r} cannot be used with a distillation loss that "
            f"standardises logits ({loss_name}): it leaves the masked classes out by giving "
            "them a logit of -1e9, which z-scoring turns into a distillation term of 0 on "
            "every sample. Use another policy (soft_label, hard_label) or a loss that does "
            "not standardise (kd, dkd).")


def get_policy(name):
    """Returns the policy function registered as `name`.

    Args:
        name: a key of `POLICIES`, e.g. `"hard_label"`.

    Returns:
        The policy: a function `PolicyInputs -> (batch,)` per-sample term.

    Raises:
        ValueError: if `name` is not registered.
    """
    if name not in POLICIES:
        raise ValueError(
            f"Unknown masked_class_policy: {name!r}. Expected one of {sorted(POLICIES)}. A "
            f"policy of your own is registered first, also before loading a saved Distiller "
            f"that uses it: tllm_tf.policies.POLICIES[{name!r}] = your_function.")
    return POLICIES[name]
