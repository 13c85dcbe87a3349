import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tllm_tf
from conftest import IMAGE_SHAPE, NUM_CLASSES, make_mlp


def _clone(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _distiller(student, teacher, **compile_kwargs):
    distiller = tllm_tf.Distiller(student, teacher)
    compile_kwargs.setdefault("optimizer", keras.optimizers.SGD(0.1))
    distiller.compile(**compile_kwargs)
    return distiller


def _one_step(model, x, y):
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)


def _manual_step(student, teacher, x, y, loss_fn, learning_rate=0.1):
    """One SGD step on `loss_fn(labels, student_logits, teacher_logits)`."""
    teacher_logits = teacher(x, training=False)
    with tf.GradientTape() as tape:
        logits = student(x, training=True)
        loss = tf.reduce_mean(loss_fn(y, logits, teacher_logits))
    gradients = tape.gradient(loss, student.trainable_variables)
    for variable, gradient in zip(student.trainable_variables, gradients):
        variable.assign_sub(learning_rate * gradient)


def _ce(y, logits):
    return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)


def _cross_entropy_by_hand(labels, logits):
    """Per-sample cross-entropy of class ids from logits, in float64 numpy."""
    logits = np.asarray(logits, np.float64)
    top = logits.max(axis=-1)
    log_norm = top + np.log(np.exp(logits - top[:, None]).sum(axis=-1))
    return log_norm - logits[np.arange(len(labels)), labels]


def _assert_same_weights(a, b, atol=1e-6):
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, atol=atol)


def test_all_masked_hard_label_equals_plain_cross_entropy(student, teacher, tiny_data):
    x, y = tiny_data
    plain = _clone(student)
    plain.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    distiller = _distiller(student, teacher, alpha=0.3, beta=0.7)
    distiller.set_class_mask(np.zeros(NUM_CLASSES))
    _one_step(distiller, x, y)
    _one_step(plain, x, y)
    _assert_same_weights(student, plain)


def test_no_mask_is_standard_kd(student, teacher, tiny_data):
    x, y = tiny_data
    expected = _clone(student)
    distiller = _distiller(student, teacher, alpha=0.1, beta=0.9)
    _one_step(distiller, x, y)
    _manual_step(expected, teacher, x, y, lambda labels, s, t: (
        0.1 * _ce(labels, s) + 0.9 * tllm_tf.kd_loss(t, s, temperature=4.0)))
    _assert_same_weights(student, expected)


def _kd_at_weight(beta):
    """`0.1 * CE + beta * KD`, as a `_manual_step` loss."""
    return lambda labels, s, t: (
        0.1 * _ce(labels, s) + beta * tllm_tf.kd_loss(t, s, temperature=4.0))


def test_distillation_warmup_raises_beta_step_by_step_from_the_optimizers_count(
        student, teacher, tiny_data):
    x, y = tiny_data
    expected = _clone(student)
    resumed_student = _clone(student)
    distiller = _distiller(student, teacher, alpha=0.1, beta=0.9, distillation_warmup_steps=4)
    for step in (1, 2):  # beta * step / 4
        _one_step(distiller, x, y)
        _manual_step(expected, teacher, x, y, _kd_at_weight(0.9 * step / 4))
        _assert_same_weights(student, expected)
    # A resumed run restores the optimizer's count: its next step is step 3 of the
    # warm-up, whatever this process has run.
    resumed = _distiller(resumed_student, teacher, alpha=0.1, beta=0.9,
                         distillation_warmup_steps=4)
    resumed_student.set_weights(student.get_weights())
    resumed.optimizer.iterations.assign(2)
    _one_step(resumed, x, y)
    _manual_step(expected, teacher, x, y, _kd_at_weight(0.9 * 3 / 4))
    _assert_same_weights(resumed_student, expected)


def _assert_masked_step(student, teacher, tiny_data, mask, policy, loss_fn, atol=1e-6, **weights):
    """One Distiller step with `mask` and `policy` equals one SGD step on `loss_fn`."""
    x, y = tiny_data
    expected = _clone(student)
    distiller = _distiller(student, teacher, masked_class_policy=policy, **weights)
    distiller.set_class_mask(mask)
    _one_step(distiller, x, y)
    _manual_step(expected, teacher, x, y, loss_fn)
    _assert_same_weights(student, expected, atol=atol)


def test_drop_policy_removes_the_distillation_term_of_masked_classes(student, teacher, tiny_data):
    mask = np.array([0.0, 1.0, 0.0, 1.0], np.float32)
    _assert_masked_step(
        student, teacher, tiny_data, mask, "drop", lambda labels, s, t: (
            0.5 * _ce(labels, s)
            + 0.5 * tf.gather(mask, labels) * tllm_tf.kd_loss(t, s, temperature=4.0)),
        alpha=0.5, beta=0.5)


def _label_for_masked_classes(mask, distillation_fn):
    """`0.1 * CE + 0.9 * (m[y] * distillation_fn + (1 - m[y]) * CE)`, as a `_manual_step` loss."""
    def loss_fn(labels, s, t):
        distil = tf.gather(mask, labels)
        return 0.1 * _ce(labels, s) + 0.9 * (
            distil * distillation_fn(labels, s, t) + (1.0 - distil) * _ce(labels, s))
    return loss_fn


def test_isolate_policy_takes_masked_classes_out_of_every_target(student, teacher, tiny_data):
    mask = np.array([1.0, 0.0, 1.0, 1.0], np.float32)

    def isolated_kd(labels, s, t):
        # The teacher's probability at T=4 on class 1 moves to each sample's own label.
        probabilities = tf.nn.softmax(t / 4.0)
        changed = probabilities * mask + tf.one_hot(labels, NUM_CLASSES) * probabilities[:, 1:2]
        assert np.allclose(changed.numpy().sum(axis=-1), 1.0, atol=1e-6)
        changed_logits = 4.0 * tf.math.log(tf.maximum(changed, 1e-12))
        return tllm_tf.kd_loss(changed_logits, s, temperature=4.0)

    _assert_masked_step(student, teacher, tiny_data, mask, "isolate",
                        _label_for_masked_classes(mask, isolated_kd), atol=1e-5,
                        alpha=0.1, beta=0.9)


def test_exclude_policy_distils_over_the_classes_still_distilled(student, teacher, tiny_data):
    mask = np.array([1.0, 0.0, 1.0, 1.0], np.float32)
    kept = [0, 2, 3]

    def kept_kd(labels, s, t):
        # Class 1 left out: KD between the renormalised distributions of classes 0, 2 and 3.
        return tllm_tf.kd_loss(tf.gather(t, kept, axis=1), tf.gather(s, kept, axis=1),
                               temperature=4.0)

    _assert_masked_step(student, teacher, tiny_data, mask, "exclude",
                        _label_for_masked_classes(mask, kept_kd), atol=1e-5,
                        alpha=0.1, beta=0.9)


def _softened_label_kd(labels, s, confidence):
    """KD at T=4 towards `confidence` on the label and the rest spread evenly."""
    one_hot = tf.one_hot(labels, NUM_CLASSES)
    softened = confidence * one_hot + (1.0 - confidence) * (1.0 - one_hot) / (NUM_CLASSES - 1)
    return tllm_tf.kd_loss(4.0 * tf.math.log(softened), s, temperature=4.0)


def _teacher_confidence(t):
    return tf.reduce_max(tf.nn.softmax(t / 4.0), axis=-1, keepdims=True)


def _soft_label_for_masked_classes(mask, distilled_fn, confidence_fn):
    """`0.1 * CE + 0.9 * (m[y] * distilled_fn + (1 - m[y]) * softened label KD)`."""
    def loss_fn(labels, s, t):
        distil = tf.gather(mask, labels)
        return 0.1 * _ce(labels, s) + 0.9 * (
            distil * distilled_fn(labels, s, t)
            + (1.0 - distil) * _softened_label_kd(labels, s, confidence_fn(t)))
    return loss_fn


def _plain_kd(labels, s, t):
    return tllm_tf.kd_loss(t, s, temperature=4.0)


def _kept_kd(labels, s, t):
    """KD at T=4 over classes 0, 2 and 3 only (class 1 left out, both renormalised)."""
    return tllm_tf.kd_loss(tf.gather(t, [0, 2, 3], axis=1), tf.gather(s, [0, 2, 3], axis=1),
                           temperature=4.0)


def _evened_kd(labels, s, t):
    """KD at T=4 with classes 1 and 3 at each sample's even share (1 - c) / 3, renormalised."""
    probabilities = tf.nn.softmax(t / 4.0).numpy()
    even = (1.0 - probabilities.max(axis=-1)) / (NUM_CLASSES - 1)
    probabilities[:, [1, 3]] = even[:, None]
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    return tllm_tf.kd_loss(4.0 * np.log(probabilities), s, temperature=4.0)


@pytest.mark.parametrize("policy, mask, distilled_fn, confidence_fn", [
    # The teacher's confidence on each sample; the others distilled as KD.
    ("soft_label", [1.0, 0.0, 1.0, 0.0], _plain_kd, _teacher_confidence),
    # Its batch mean.
    ("batch_soft_label", [1.0, 0.0, 1.0, 0.0], _plain_kd,
     lambda t: tf.reduce_mean(_teacher_confidence(t))),
    # The others distilled without the masked class.
    ("soft_label_exclude", [1.0, 0.0, 1.0, 1.0], _kept_kd, _teacher_confidence),
    # The others distilled with the masked classes at their even share.
    ("soft_label_symmetric", [1.0, 0.0, 1.0, 0.0], _evened_kd, _teacher_confidence),
])
def test_soft_label_policies_distil_masked_classes_towards_their_softened_label(
        student, teacher, tiny_data, policy, mask, distilled_fn, confidence_fn):
    mask = np.array(mask, np.float32)
    _assert_masked_step(student, teacher, tiny_data, mask, policy,
                        _soft_label_for_masked_classes(mask, distilled_fn, confidence_fn),
                        atol=1e-5, alpha=0.1, beta=0.9)


def _standardized(logits):
    """Each row z-scored, Bessel's std, as logit standardisation does (written out here)."""
    logits = np.asarray(logits, np.float64)
    centred = logits - logits.mean(axis=-1, keepdims=True)
    return (centred / (centred.std(axis=-1, ddof=1, keepdims=True) + 1e-7)).astype(np.float32)


def test_soft_label_under_logit_standardisation_builds_its_target_on_that_scale(
        student, teacher, tiny_data):
    # With kd_ls the distilled classes learn softmax(z(t) / T); a masked class's softened
    # label takes its confidence from the same distribution and is matched by softmax(z(s) / T).
    # On the raw logits its target was far sharper than its neighbours'.
    mask = np.array([1.0, 0.0, 1.0, 0.0], np.float32)

    def loss_fn(labels, s, t):
        distil = tf.gather(mask, labels)
        confidence = tf.reduce_max(tf.nn.softmax(_standardized(t) / 4.0), axis=-1, keepdims=True)
        one_hot = tf.one_hot(labels, NUM_CLASSES)
        softened = confidence * one_hot + (1.0 - confidence) * (1.0 - one_hot) / (NUM_CLASSES - 1)
        centred = s - tf.reduce_mean(s, axis=-1, keepdims=True)
        std = tf.sqrt(tf.reduce_sum(tf.square(centred), axis=-1, keepdims=True) / (NUM_CLASSES - 1))
        return 0.1 * _ce(labels, s) + 0.9 * (
            distil * tllm_tf.losses.kd_ls_loss(t, s, temperature=4.0)
            + (1.0 - distil) * tllm_tf.kd_loss(4.0 * tf.math.log(softened),
                                               centred / (std + 1e-7), temperature=4.0))

    _assert_masked_step(student, teacher, tiny_data, mask, "soft_label", loss_fn, atol=1e-5,
                        alpha=0.1, beta=0.9,
                        distillation_loss_fn=tllm_tf.losses.KDLSLoss(temperature=4.0))


@pytest.mark.parametrize("policy", ["exclude", "soft_label_exclude"])
@pytest.mark.parametrize("loss", ["kd_ls", "dkd_ls"])
def test_policies_that_exclude_classes_refuse_a_standardising_loss(
        student, teacher, policy, loss):
    # Their -1e9 logits, z-scored, made every kept logit one number: no distillation at all.
    distiller = tllm_tf.Distiller(student, teacher)
    with pytest.raises(ValueError, match=f"policy '{policy}' cannot be used with a "
                                         "distillation loss that standardises logits"):
        distiller.compile(optimizer="sgd", masked_class_policy=policy,
                          distillation_loss_fn=loss)
    distiller.compile(optimizer="sgd", masked_class_policy=policy, distillation_loss_fn="kd")


def test_class_mean_policy_distils_masked_classes_towards_the_teachers_class_average(
        student, teacher, tiny_data):
    mask = np.array([1.0, 0.0, 1.0, 0.0], np.float32)

    def class_average_kd(labels, s, t):
        # Each sample's target: the mean of the teacher's distributions at T=4 over the batch's
        # samples of its class, computed here class by class.
        probabilities = tf.nn.softmax(t / 4.0).numpy()
        labels = np.asarray(labels)
        averaged = np.stack([probabilities[labels == label].mean(axis=0) for label in labels])
        return tllm_tf.kd_loss(4.0 * np.log(averaged), s, temperature=4.0)

    def loss_fn(labels, s, t):
        distil = tf.gather(mask, labels)
        return 0.1 * _ce(labels, s) + 0.9 * (
            distil * tllm_tf.kd_loss(t, s, temperature=4.0)
            + (1.0 - distil) * class_average_kd(labels, s, t))

    _assert_masked_step(student, teacher, tiny_data, mask, "class_mean", loss_fn, atol=1e-5,
                        alpha=0.1, beta=0.9)


def test_class_mean_policy_on_a_class_alone_in_its_batch_is_kd():
    teacher_logits = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, 1.0, 0.0]], np.float32)
    student_logits = np.array([[0.3, 0.1, 0.0], [0.0, 0.2, 0.1], [0.5, -0.5, 0.0]], np.float32)
    targets = np.eye(3, dtype=np.float32)[[0, 2, 0]]
    kd = tllm_tf.kd_loss(teacher_logits, student_logits, temperature=2.0)
    inputs = tllm_tf.policies.PolicyInputs(
        distil_weight=np.zeros(3, np.float32), distillation_loss=kd, student_loss=None,
        targets=targets, student_logits=student_logits, teacher_logits=teacher_logits,
        temperature=2.0, class_mask=np.zeros(3, np.float32), distill=None,
        compared_logits=lambda logits: logits)
    per_sample = np.asarray(tllm_tf.policies.class_mean(inputs))
    # Sample 1 is its class's only one: its own distribution. Samples 0 and 2 share a mean.
    np.testing.assert_allclose(per_sample[1], np.asarray(kd)[1], rtol=1e-5)
    assert per_sample[0] != pytest.approx(float(np.asarray(kd)[0]), rel=1e-3)


_POLICIES_BESIDE_HARD_LABEL = ["isolate", "exclude", "soft_label", "class_mean",
                               "batch_soft_label", "soft_label_exclude", "soft_label_symmetric",
                               "drop"]


# With kd_ls, every policy but the two refused with a standardising loss.
@pytest.mark.parametrize("policy, loss", [
    *((policy, "kd") for policy in _POLICIES_BESIDE_HARD_LABEL),
    *((policy, "kd_ls") for policy in _POLICIES_BESIDE_HARD_LABEL
      if policy not in ("exclude", "soft_label_exclude")),
])
def test_with_nothing_masked_every_policy_is_kd_bit_for_bit(
        student, teacher, tiny_data, policy, loss):
    x, y = tiny_data
    twin = _clone(student)
    for model, name in ((student, "hard_label"), (twin, policy)):
        distiller = _distiller(model, teacher, masked_class_policy=name,
                               distillation_loss_fn=loss)
        for _ in range(3):
            _one_step(distiller, x, y)
    for a, b in zip(student.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b)


def _total_and_gradient(distiller, labels, student_logits, teacher_logits):
    """`Distiller._loss_terms`' per-sample total, and its gradient in the student's logits."""
    student_logits = tf.constant(student_logits, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(student_logits)
        total = distiller._loss_terms(tf.constant(labels), False, student_logits,
                                      tf.constant(teacher_logits, tf.float32))[0]
    return total.numpy(), tape.gradient(total, student_logits).numpy()


@pytest.mark.parametrize("policy", sorted(tllm_tf.policies.POLICIES))
def test_a_teacher_sure_of_a_masked_class_gives_a_finite_loss(student, teacher, policy):
    # A logit gap of 2000 (500 T): every other class's probability underflows to 0.
    # soft_label_symmetric's renormalised target was 0 / 0, and the batch's loss NaN.
    distiller = _distiller(student, teacher, masked_class_policy=policy)
    distiller.set_class_mask([1.0, 0.0, 1.0, 1.0])
    total, gradient = _total_and_gradient(
        distiller, [0, 1], np.random.default_rng(0).normal(size=(2, NUM_CLASSES)),
        [[0.0, 2000.0, 0.0, 0.0]] * 2)
    assert np.all(np.isfinite(total)) and np.all(np.isfinite(gradient))


def test_soft_label_symmetric_distils_towards_uniform_where_a_masked_class_takes_all(
        student, teacher):
    distiller = _distiller(student, teacher, masked_class_policy="soft_label_symmetric")
    distiller.set_class_mask([1.0, 0.0, 1.0, 1.0])
    labels = np.array([0, 1], np.int32)
    s = np.random.default_rng(0).normal(size=(2, NUM_CLASSES)).astype(np.float32)
    total, _ = _total_and_gradient(distiller, labels, s, [[0.0, 2000.0, 0.0, 0.0]] * 2)
    # Class 0's sample: the uniform target. Class 1's (masked): its label at confidence 1.
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    targets = np.where(labels[:, None] == 0, 0.0, 4.0 * np.log(np.maximum(one_hot, 1e-12)))
    expected = 0.1 * _ce(labels, s) + 0.9 * tllm_tf.kd_loss(
        targets.astype(np.float32), s, temperature=4.0)
    np.testing.assert_allclose(total, expected, rtol=1e-6)


@pytest.mark.parametrize("policy", sorted(tllm_tf.policies.POLICIES))
@pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1")
def test_every_policy_is_finite_with_a_single_class(policy):
    # The soft-label policies spread 1 - c over K - 1 = 0 other classes: 0 / 0 before.
    distiller = _distiller(make_mlp("student", num_classes=1), make_mlp("teacher", num_classes=1),
                           masked_class_policy=policy)
    distiller.set_class_mask([0.0])
    total, gradient = _total_and_gradient(distiller, [0, 0], [[0.5], [-1.0]], [[2.0], [0.0]])
    assert np.all(np.isfinite(total)) and np.all(np.isfinite(gradient))


def _smoothed_labels(labels, num_classes, smoothing=0.1):
    """Label smoothing as Keras computes it, in float32: rows off 1 by a few ulps."""
    one_hot = np.eye(num_classes, dtype=np.float32)[labels]
    return one_hot * np.float32(1.0 - smoothing) + np.float32(smoothing / num_classes)


def _hundred_class_distiller(**compile_kwargs):
    return _distiller(make_mlp("student", num_classes=100), make_mlp("teacher", num_classes=100),
                      **compile_kwargs)


def test_the_distil_weight_is_the_label_weighted_mask_in_zero_one(monkeypatch):
    # A policy that returns the weight, with alpha = 0: the total is the weight.
    monkeypatch.setitem(tllm_tf.policies.POLICIES, "distil_weight",
                        lambda inputs: inputs.distil_weight)
    distiller = _hundred_class_distiller(alpha=0.0, beta=1.0,
                                         masked_class_policy="distil_weight")
    labels = np.arange(0, 100, 3, dtype=np.int32)
    smoothed = _smoothed_labels(labels, 100)
    logits = np.zeros((len(labels), 100), np.float32)

    def weights(mask, y, is_soft):
        distiller.set_class_mask(mask)
        return distiller._loss_terms(tf.constant(y), is_soft, logits, logits)[0].numpy()

    assert not np.all(smoothed.sum(axis=-1, dtype=np.float32) == 1.0)  # What this tests.
    np.testing.assert_array_equal(weights(np.ones(100), smoothed, True), 1.0)
    # A class barely masked: rows summing above 1 (smoothing 0.05 here) gave weights above 1.
    barely = np.ones(100, np.float32)
    barely[3] = np.float32(1.0 - 2.0**-24)
    barely_weights = weights(barely, _smoothed_labels(labels, 100, smoothing=0.05), True)
    assert np.all((barely_weights >= 0.0) & (barely_weights <= 1.0))
    # Class ids and one-hot labels: m[y] as before, fractional masks included.
    fractional = np.random.default_rng(0).random(100).astype(np.float32)
    np.testing.assert_array_equal(weights(fractional, labels, False), fractional[labels])
    np.testing.assert_array_equal(weights(fractional, np.eye(100, dtype=np.float32)[labels], True),
                                  fractional[labels])


@pytest.mark.parametrize("policy", sorted(tllm_tf.policies.POLICIES))
def test_with_nothing_masked_every_policy_is_kd_bit_for_bit_on_smoothed_labels(policy):
    distiller = _hundred_class_distiller(alpha=0.1, beta=0.9, masked_class_policy=policy)
    rng = np.random.default_rng(0)
    smoothed = _smoothed_labels(np.arange(0, 100, 3), 100)
    student_logits, teacher_logits = (
        tf.constant(3.0 * rng.normal(size=smoothed.shape), tf.float32) for _ in range(2))
    total, student_loss, distillation_loss = distiller._loss_terms(
        tf.constant(smoothed), True, student_logits, teacher_logits)
    np.testing.assert_array_equal(total.numpy(),
                                  (0.1 * student_loss + 0.9 * distillation_loss).numpy())


def test_soft_labels_give_the_same_update_as_class_ids(student, teacher, tiny_data):
    x, y = tiny_data
    twin = _clone(student)
    mask = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    sparse = _distiller(student, teacher)
    soft = _distiller(twin, teacher)
    for distiller in (sparse, soft):
        distiller.set_class_mask(mask)
    _one_step(sparse, x, y)
    _one_step(soft, x, np.eye(NUM_CLASSES, dtype=np.float32)[y])
    _assert_same_weights(student, twin)


def test_teacher_never_changes_and_logs_are_named(student, teacher, tiny_data):
    x, y = tiny_data
    before = [w.copy() for w in teacher.get_weights()]
    distiller = _distiller(student, teacher, metrics=["accuracy"])
    history = distiller.fit(x, y, batch_size=8, epochs=2, verbose=0)
    for old, new in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)
    assert not teacher.trainable
    assert {"loss", "student_loss", "distillation_loss", "accuracy",
            "num_undistillable_classes"} <= set(history.history)
    assert len(distiller.trainable_weights) == len(student.trainable_weights)


class _TraceCountingDistiller(tllm_tf.Distiller):
    traces = 0

    def train_step(self, data):
        # Python code in a compiled step runs once per trace.
        self.traces += 1
        return super().train_step(data)


def test_mask_change_takes_effect_without_retracing(student, teacher, tiny_data):
    x, y = tiny_data
    distiller = _TraceCountingDistiller(student, teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), alpha=0.5, beta=0.5)
    first = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert first["num_undistillable_classes"] == [0]
    assert first["loss"][0] != pytest.approx(first["student_loss"][0])
    train_function = distiller.train_function
    distiller.set_class_mask(np.zeros(NUM_CLASSES))
    second = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert distiller.train_function is train_function
    assert distiller.traces == 1
    assert second["num_undistillable_classes"] == [NUM_CLASSES]
    # Every class masked, hard_label, alpha + beta = 1: the loss is the CE.
    assert second["loss"][0] == pytest.approx(second["student_loss"][0], rel=1e-5)


def test_mask_accessors(student, teacher):
    distiller = tllm_tf.Distiller(student, teacher)
    assert distiller.num_classes == NUM_CLASSES
    assert distiller.undistillable_classes == []
    distiller.set_class_mask([1, 0, 1, 0])
    assert distiller.undistillable_classes == [1, 3]
    assert not distiller.class_mask.trainable
    with pytest.raises(ValueError, match="shape"):
        distiller.set_class_mask([1, 0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        distiller.set_class_mask([1, 2, 1, 0])


def test_mask_survives_save_and_load_weights(student, teacher, tmp_path):
    distiller = tllm_tf.Distiller(student, teacher)
    distiller.set_class_mask([0, 1, 1, 0])
    path = str(tmp_path / "distiller.weights.h5")
    distiller.save_weights(path)
    distiller.set_class_mask(np.ones(NUM_CLASSES))
    distiller.load_weights(path)
    assert distiller.undistillable_classes == [0, 3]


class _StopAfterEpoch(keras.callbacks.Callback):
    """Sets a mask, then fails mid-training, as a killed job would."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.set_class_mask([1, 0, 0, 1])
        if epoch == 1:
            raise RuntimeError("interrupted")


class _RecordMaskAtStart(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if not hasattr(self, "first_epoch"):
            self.first_epoch = epoch
            self.mask = keras.ops.convert_to_numpy(self.model.class_mask).copy()


def test_mask_survives_backup_and_restore(tiny_data, tmp_path):
    x, y = tiny_data
    backup_dir = str(tmp_path / "backup")
    distiller = _distiller(make_mlp("student"), make_mlp("teacher"))
    with pytest.raises(RuntimeError, match="interrupted"):
        distiller.fit(x, y, epochs=4, verbose=0, callbacks=[
            keras.callbacks.BackupAndRestore(backup_dir), _StopAfterEpoch()])
    resumed = _distiller(make_mlp("student"), make_mlp("teacher"))
    recorder = _RecordMaskAtStart()
    resumed.fit(x, y, epochs=4, verbose=0, callbacks=[
        keras.callbacks.BackupAndRestore(backup_dir), recorder])
    assert recorder.first_epoch == 2
    np.testing.assert_array_equal(recorder.mask, [1, 0, 0, 1])


def test_keras_file_round_trip(student, teacher, tiny_data, tmp_path):
    x, y = tiny_data
    distiller = _distiller(student, teacher, alpha=0.2, beta=0.8, masked_class_policy="drop",
                           distillation_loss_fn=tllm_tf.KDLoss(temperature=2.0))
    distiller.fit(x, y, epochs=1, verbose=0)
    distiller.set_class_mask([1, 1, 0, 1])
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, tllm_tf.Distiller)
    assert loaded.undistillable_classes == [2]
    assert (loaded.alpha, loaded.beta, loaded.masked_class_policy) == (0.2, 0.8, "drop")
    assert loaded.distillation_loss_fn.temperature == 2.0
    np.testing.assert_allclose(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0),
                               atol=1e-6)
    loaded.fit(x, y, epochs=1, verbose=0)


def test_student_regularization_reaches_the_update(teacher, tiny_data):
    x, y = tiny_data
    keras.utils.set_random_seed(1)
    student = make_mlp("student", weight_decay=0.01)
    expected = _clone(student)
    distiller = _distiller(student, teacher)
    _one_step(distiller, x, y)

    def loss_fn(labels, s, t):
        return (0.1 * _ce(labels, s) + 0.9 * tllm_tf.kd_loss(t, s, temperature=4.0)
                + tf.add_n(expected.losses))

    _manual_step(expected, teacher, x, y, loss_fn)
    _assert_same_weights(student, expected)


# -- bad input ---------------------------------------------------------------

def test_rejects_output_size_mismatch(student):
    with pytest.raises(ValueError, match="same classes.*outputs 5.*outputs 4"):
        tllm_tf.Distiller(student, make_mlp("big_teacher", num_classes=5))


def test_rejects_num_classes_that_disagrees(student, teacher):
    with pytest.raises(ValueError, match="num_classes=3 disagrees"):
        tllm_tf.Distiller(student, teacher, num_classes=3)


@pytest.mark.parametrize("activation_layer", ["dense", "softmax_layer"])
def test_rejects_teacher_that_outputs_probabilities(student, activation_layer):
    if activation_layer == "dense":
        teacher = make_mlp("prob_teacher", output_activation="softmax")
    else:
        inputs = keras.Input((8, 8, 3))
        logits = make_mlp("inner")(inputs)
        teacher = keras.Model(inputs, keras.layers.Softmax()(logits), name="prob_teacher")
    with pytest.raises(ValueError, match="teacher 'prob_teacher' ends in a softmax.*logits"):
        tllm_tf.Distiller(student, teacher)


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": -0.1}, "alpha >= 0"),
    ({"beta": -1.0}, "beta >= 0"),
    ({"masked_class_policy": "ignore"}, "Unknown masked_class_policy"),
    ({"loss": "mse"}, "not `loss`"),
])
def test_compile_rejects_bad_arguments(student, teacher, kwargs, message):
    distiller = tllm_tf.Distiller(student, teacher)
    with pytest.raises(ValueError, match=message):
        distiller.compile(optimizer="sgd", **kwargs)


def test_compile_warns_that_drop_with_alpha_zero_leaves_masked_samples_nothing(
        student, teacher, tiny_data, recwarn):
    distiller = tllm_tf.Distiller(student, teacher)
    with pytest.warns(UserWarning, match=r"alpha=0, masked_class_policy='drop'.*contribute "
                                         r"nothing.*Pass alpha > 0, or another policy"):
        distiller.compile(optimizer=keras.optimizers.SGD(0.1), alpha=0.0, beta=1.0,
                          masked_class_policy="drop")
    # What it warns of: with every class masked, a step changes nothing.
    x, y = tiny_data
    distiller.set_class_mask(np.zeros(NUM_CLASSES))
    before = [w.copy() for w in student.get_weights()]
    _one_step(distiller, x, y)
    for old, new in zip(before, student.get_weights()):
        np.testing.assert_array_equal(old, new)
    recwarn.clear()
    distiller.compile(optimizer="sgd", alpha=0.0, beta=1.0, masked_class_policy="hard_label")
    distiller.compile(optimizer="sgd", alpha=0.1, beta=0.9, masked_class_policy="drop")
    assert not [w for w in recwarn if "masked_class_policy='drop'" in str(w.message)]


def test_rejects_out_of_range_labels_in_arrays_before_training(student, teacher, tiny_data):
    x, y = tiny_data
    distiller = _distiller(student, teacher)
    before = [w.copy() for w in student.get_weights()]
    with pytest.raises(ValueError, match=r"num_classes=4.*\[4, 6\]"):
        distiller.fit(x, np.where(y == 0, 4, y) + (y == 1) * 5, verbose=0)
    for old, new in zip(before, student.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_rejects_out_of_range_labels_in_datasets_at_the_first_step(student, teacher, tiny_data):
    x, y = tiny_data
    distiller = _distiller(student, teacher)
    dataset = tf.data.Dataset.from_tensor_slices((x, y - 1)).batch(8)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class ids in \[0, num_classes=4\)"):
        distiller.fit(dataset, epochs=1, verbose=0)


def test_rejects_fractional_float_labels_instead_of_truncating(student, teacher, tiny_data):
    x, y = tiny_data
    distiller = _distiller(student, teacher)
    fractional = y.astype(np.float32) + np.where(y == 2, 0.7, 0.0).astype(np.float32)
    with pytest.raises(ValueError, match=r"whole numbers.*\[2.7"):
        distiller.fit(x, fractional, verbose=0)
    with pytest.raises(ValueError, match=r"whole numbers.*\[nan\]"):
        distiller.fit(x, np.where(y == 1, np.nan, y).astype(np.float32), verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((x, fractional)).batch(8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="whole numbers"):
        distiller.fit(dataset, epochs=1, verbose=0)


def test_whole_float_labels_train_as_class_ids(student, teacher, tiny_data):
    x, y = tiny_data
    twin = _clone(student)
    as_ints = _distiller(student, teacher).fit(
        x, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history
    as_floats = _distiller(twin, teacher).fit(
        x, y.astype(np.float32), batch_size=8, epochs=1, shuffle=False, verbose=0).history
    _assert_same_weights(student, twin)
    assert as_floats["loss"][0] == pytest.approx(as_ints["loss"][0], rel=1e-6)


# -- reliability (issue 11) ----------------------------------------------------

def test_integer_one_hot_labels_train_as_class_ids(student, teacher, tiny_data):
    # A batch as large as the number of classes once hid the misreading: the
    # (4, 4) labels were taken as class ids and the mask gated the wrong samples.
    x, y = tiny_data
    twin = _clone(student)
    mask = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    sparse = _distiller(student, teacher, metrics=["accuracy"])
    one_hot = _distiller(twin, teacher, metrics=["accuracy"])
    for distiller in (sparse, one_hot):
        distiller.set_class_mask(mask)
    expected = sparse.fit(x, y, batch_size=NUM_CLASSES, epochs=1, shuffle=False,
                          verbose=0).history
    labels = np.eye(NUM_CLASSES, dtype=np.int64)[y]
    history = one_hot.fit(x, labels, batch_size=NUM_CLASSES, epochs=1, shuffle=False,
                          verbose=0).history
    _assert_same_weights(student, twin)
    for name in ("loss", "student_loss", "distillation_loss", "accuracy"):
        assert history[name][0] == pytest.approx(expected[name][0], rel=1e-5), name


@pytest.mark.parametrize("labels_shape", [(32, 3), (32, 4, 1)])
def test_labels_of_another_shape_say_what_to_pass(student, teacher, tiny_data, labels_shape):
    x, _ = tiny_data
    distiller = _distiller(student, teacher)
    with pytest.raises(ValueError, match=(
            r"class ids of shape \(batch,\) or label vectors of shape "
            r"\(batch, num_classes=4\) \(one-hot or soft\). Received shape")):
        distiller.fit(x, np.zeros(labels_shape, np.int32), verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(labels_shape, np.int32))).batch(8)
    with pytest.raises(ValueError, match=r"label vectors of shape \(batch, num_classes=4\)"):
        distiller.fit(dataset, verbose=0)


def test_compile_with_a_temperature_names_kd_loss(student, teacher):
    distiller = tllm_tf.Distiller(student, teacher)
    with pytest.raises(ValueError, match=(
            r"has no `temperature`.*distillation_loss_fn=tllm_tf.KDLoss\(temperature=10\)")):
        distiller.compile(optimizer="adam", temperature=10)


def test_compile_refuses_keras_kl_divergence_on_logits(student, teacher):
    distiller = tllm_tf.Distiller(student, teacher)
    with pytest.raises(ValueError, match=r"KLDivergence cannot be a distillation loss.*KDLoss"):
        distiller.compile(optimizer="adam", distillation_loss_fn=keras.losses.KLDivergence())


def test_compile_refuses_alpha_and_beta_both_zero(student, teacher):
    distiller = tllm_tf.Distiller(student, teacher)
    with pytest.raises(ValueError, match=r"alpha \+ beta > 0.*Received: alpha=0, beta=0"):
        distiller.compile(optimizer="sgd", alpha=0, beta=0)


def test_a_file_path_as_a_model_says_to_load_it(teacher):
    with pytest.raises(ValueError, match=(
            r"Expected the student to be a keras.Model.*student='student.keras' \(a str\)"
            r".*load_keras_model")):
        tllm_tf.Distiller("student.keras", teacher)


class _Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(NUM_CLASSES)

    def call(self, inputs):
        return self.dense(keras.ops.reshape(inputs, (-1, 8 * 8 * 3)))


def test_built_subclassed_models_need_num_classes_and_then_train(tiny_data):
    x, y = tiny_data
    student, teacher = _Subclassed(name="sub_student"), _Subclassed(name="sub_teacher")
    student(x[:1])
    teacher(x[:1])
    with pytest.raises(ValueError, match=(
            r"neither the student 'sub_student' nor the teacher 'sub_teacher' has a "
            r"symbolic output \(subclassed models have none, built or not.*num_classes=")):
        tllm_tf.Distiller(student, teacher)
    distiller = tllm_tf.Distiller(student, teacher, num_classes=NUM_CLASSES)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])


def test_a_dict_output_student_is_refused_at_construction(teacher):
    inputs = keras.Input(IMAGE_SHAPE)
    logits = keras.layers.Dense(NUM_CLASSES)(keras.layers.Flatten()(inputs))
    student = keras.Model(inputs, {"logits": logits}, name="dict_student")
    with pytest.raises(ValueError, match=(
            r"student 'dict_student' returns a dict with keys \['logits'\].*one logits "
            r"tensor")):
        tllm_tf.Distiller(student, teacher)


def test_a_softmax_applied_as_an_op_is_detected(student):
    inputs = keras.Input(IMAGE_SHAPE)
    teacher = keras.Model(inputs, keras.ops.softmax(make_mlp("inner")(inputs)),
                          name="op_teacher")
    with pytest.raises(ValueError, match=r"teacher 'op_teacher' ends in a softmax.*logits"):
        tllm_tf.Distiller(student, teacher)


@keras.saving.register_keras_serializable(package="tllm_tf_tests")
def _half_cross_entropy(labels, logits):
    return 0.5 * keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def test_a_registered_student_loss_function_survives_keras_save_and_load(
        student, teacher, tiny_data, tmp_path):
    x, y = tiny_data
    distiller = _distiller(student, teacher, student_loss_fn=_half_cross_entropy)
    distiller.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.student_loss_fn is _half_cross_entropy
    half = 0.5 * np.mean(_cross_entropy_by_hand(y, student(x)))
    for model in (distiller, loaded):
        assert model.evaluate(x, y, verbose=0, return_dict=True)["student_loss"] == (
            pytest.approx(half, rel=1e-5))


def test_an_unregistered_student_loss_function_is_refused_at_save(
        student, teacher, tmp_path):
    def unregistered(labels, logits):
        return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)

    for index, loss_fn in enumerate(
            (unregistered, lambda labels, logits: unregistered(labels, logits))):
        distiller = _distiller(student, teacher, student_loss_fn=loss_fn)
        path = str(tmp_path / f"distiller_{index}.keras")
        with pytest.raises(ValueError, match=(
                r"Cannot save student_loss_fn=.*register_keras_serializable")):
            distiller.save(path)
        assert not os.path.exists(path)
        with pytest.raises(ValueError, match=r"Cannot save student_loss_fn="):
            keras.saving.save_model(distiller, path)


def test_evaluate_logs_the_training_objective_with_regularisation(teacher, tiny_data):
    # As in Keras, val_loss is the loss of fit on other data: the same terms,
    # the same keys, the regularisation included.
    x, y = tiny_data
    keras.utils.set_random_seed(1)
    student = make_mlp("student", weight_decay=0.01)
    mask = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    distiller = _distiller(student, teacher, alpha=0.3, beta=0.7, metrics=["accuracy"])
    distiller.set_class_mask(mask)
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0,
                            validation_data=(x, y)).history
    assert set(history) == {
        name for key in ("loss", "student_loss", "distillation_loss",
                         "num_undistillable_classes", "accuracy")
        for name in (key, f"val_{key}")}
    logits, teacher_logits = student(x), teacher(x)
    student_loss = _ce(y, logits)
    kd = tllm_tf.kd_loss(teacher_logits, logits, temperature=4.0)
    gated = np.where(mask[y] > 0, kd, student_loss)
    expected = np.mean(0.3 * student_loss + 0.7 * gated) + float(tf.add_n(student.losses))
    evaluation = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert evaluation["loss"] == pytest.approx(expected, rel=1e-5)
    assert evaluation["student_loss"] == pytest.approx(float(np.mean(student_loss)), rel=1e-5)
    assert evaluation["distillation_loss"] == pytest.approx(float(np.mean(kd)), rel=1e-5)
    assert evaluation["num_undistillable_classes"] == 2
    assert history["val_loss"][0] == pytest.approx(expected, rel=1e-5)


def test_num_undistillable_classes_is_the_mask_the_epoch_trained_with(
        student, teacher, tiny_data):
    x, y = tiny_data
    distiller = _distiller(student, teacher)
    distiller.set_class_mask([0, 1, 1, 1])
    history = distiller.fit(x, y, batch_size=8, epochs=2, verbose=0).history
    assert history["num_undistillable_classes"] == [1, 1]


def _huge_logit_teacher(x):
    """A teacher whose weights fit in float16 but whose largest logits do not."""
    teacher = make_mlp("huge_teacher", width=16)
    kernel, bias = teacher.layers[-1].get_weights()
    scale = 2 * 65504 / np.abs(teacher.predict(x, verbose=0)).max()
    assert np.abs(kernel).max() * scale < 65504
    teacher.layers[-1].set_weights([kernel * scale, bias * scale])
    return teacher


def test_a_float16_teacher_that_overflows_inside_stops_training_naming_it(
        student, tiny_data):
    from tllm_tf.pipeline import training_guards
    x, y = tiny_data
    # Hidden activations beyond float16's range, logits within it: in float16 the hidden
    # units are inf and the logits NaN (inf - inf), which clipping cannot mend.
    teacher = make_mlp("overflowing_teacher", width=16)
    hidden = keras.Model(teacher.inputs, teacher.layers[-2].output)
    scale = 4 * 65504 / np.abs(hidden.predict(x, verbose=0)).max()
    (kernel, bias), (last_kernel, last_bias) = (teacher.layers[-2].get_weights(),
                                                teacher.layers[-1].get_weights())
    assert np.abs(kernel).max() * scale < 65504
    teacher.layers[-2].set_weights([kernel * scale, bias * scale])
    teacher.layers[-1].set_weights([last_kernel / scale, last_bias])
    assert np.isfinite(teacher.predict(x, verbose=0)).all()  # In float32.
    distiller = tllm_tf.Distiller(student, teacher, teacher_dtype="float16")
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    with pytest.raises(training_guards.NonFiniteLossError,
                       match=r"The float16 teacher overflowed \(\d+ logits not finite this "
                             r"epoch\): use --teacher_dtype=bfloat16"):
        distiller.fit(x, y, batch_size=8, epochs=1, verbose=0,
                      callbacks=[training_guards.StopOnNonFiniteLoss()])


def test_a_float16_teacher_overflow_keeps_the_loss_finite_and_warns(
        student, tiny_data, caplog):
    x, y = tiny_data
    teacher = _huge_logit_teacher(x)
    distiller = tllm_tf.Distiller(student, teacher, teacher_dtype="float16")
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    with caplog.at_level("WARNING"):
        history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and history["teacher_logit_overflows"][0] > 0
    assert "teacher logits overflowed float16" in caplog.text
    assert "teacher_dtype='bfloat16'" in caplog.text
    assert all(np.isfinite(w).all() for w in student.get_weights())


def test_callbacks_can_be_given_by_position(student, teacher, tiny_data):
    # keras.Model.fit(x, y, batch_size, epochs, verbose, callbacks, ...)
    x, y = tiny_data
    distiller = _distiller(student, teacher)
    seen = []
    recorder = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))
    distiller.fit(x, y, 8, 2, 0, [recorder])
    assert seen == [0, 1]


@pytest.mark.parametrize("loss, message", [
    ("sparse_categorical_crossentropy", "not a name.*from_logits=True"),
    (keras.losses.SparseCategoricalCrossentropy(), "from_logits=False.*probabilities"),
    (keras.losses.CategoricalCrossentropy(), "CategoricalCrossentropy\\(from_logits=True\\)"),
])
def test_a_student_loss_on_probabilities_is_refused(student, teacher, loss, message):
    with pytest.raises(ValueError, match=message):
        _distiller(student, teacher, student_loss_fn=loss)


def test_a_student_loss_from_logits_is_taken(student, teacher, tiny_data):
    # Not the default's number: the samples of class 0 add no label loss.
    x, y = tiny_data
    expected = _clone(student)
    distiller = _distiller(student, teacher, student_loss_fn=(
        keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)))
    by_hand = np.where(y == 0, 0.0, _cross_entropy_by_hand(y, student(x)))
    assert distiller.evaluate(x, y, verbose=0, return_dict=True)["student_loss"] == (
        pytest.approx(np.mean(by_hand), rel=1e-5))
    _one_step(distiller, x, y)
    _manual_step(expected, teacher, x, y, lambda labels, s, t: (
        0.1 * tf.where(labels == 0, 0.0, _ce(labels, s))
        + 0.9 * tllm_tf.kd_loss(t, s, temperature=4.0)))
    _assert_same_weights(student, expected)


def test_export_serves_the_student(student, teacher, tiny_data, tmp_path):
    x, y = tiny_data
    distiller = _distiller(student, teacher)
    distiller.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "exported")
    distiller.export(path)
    loaded = tf.saved_model.load(path)
    served = loaded.serve(tf.constant(x))
    np.testing.assert_allclose(served.numpy(), student.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("name", ["distiller.h5", "distiller.hdf5"])
def test_legacy_h5_save_is_refused_with_the_formats_that_work(student, teacher, tmp_path, name):
    distiller = _distiller(student, teacher)
    with pytest.raises(ValueError, match="legacy .h5.*Save it as .keras.*save_weights"):
        distiller.save(str(tmp_path / name))
    assert not (tmp_path / name).exists()


def test_a_saved_distiller_with_a_policy_of_ones_own_names_the_registry(
        student, teacher, tmp_path, monkeypatch):
    from tllm_tf import policies

    monkeypatch.setitem(policies.POLICIES, "my_policy", policies.POLICIES["drop"])
    path = str(tmp_path / "distiller.keras")
    _distiller(student, teacher, masked_class_policy="my_policy").save(path)
    assert keras.models.load_model(path).masked_class_policy == "my_policy"
    monkeypatch.delitem(policies.POLICIES, "my_policy")
    with pytest.raises(ValueError, match=r"tllm_tf.policies.POLICIES\['my_policy'\] = "):
        keras.models.load_model(path)
