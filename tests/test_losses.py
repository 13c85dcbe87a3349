"""Each distillation loss against a numpy transcription of its paper's formula."""

import json
import math
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tllm_tf import losses


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_kd_loss_matches_hand_computed_value():
    teacher = np.array([[1.0, 2.0, 3.0]], np.float32)
    student = np.array([[3.0, 2.0, 1.0]], np.float32)
    p = _softmax(teacher[0] / 2.0)
    q = _softmax(student[0] / 2.0)
    expected = 4.0 * sum(p[i] * math.log(p[i] / q[i]) for i in range(3))
    value = losses.kd_loss(teacher, student, temperature=2.0)
    assert value.shape == (1,)
    np.testing.assert_allclose(np.asarray(value), [expected], rtol=1e-5)


def test_kd_loss_scales_with_temperature_squared():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(5, 4)).astype(np.float32)
    student = rng.normal(size=(5, 4)).astype(np.float32)
    for temperature in (1.0, 3.0, 8.0):
        p = np.apply_along_axis(_softmax, 1, teacher / temperature)
        q = np.apply_along_axis(_softmax, 1, student / temperature)
        kl = np.sum(p * np.log(p / q), axis=1)
        np.testing.assert_allclose(
            np.asarray(losses.kd_loss(teacher, student, temperature)),
            temperature**2 * kl, rtol=1e-3, atol=1e-5 * temperature**2)


def test_kd_loss_is_zero_for_identical_logits_and_exact_for_large_ones():
    logits = np.array([[1000.0, -1000.0, 0.0]], np.float32)
    np.testing.assert_allclose(np.asarray(losses.kd_loss(logits, logits, 4.0)), [0.0], atol=1e-6)
    value = np.asarray(losses.kd_loss(logits, -logits, 1.0))
    # KL(one-hot(0) || softmax(-logits)) = -log q_0 = 2000 exactly.
    np.testing.assert_allclose(value, [2000.0], rtol=1e-5)


def test_kd_loss_class_follows_keras_order_and_reduces_to_mean():
    rng = np.random.default_rng(1)
    teacher = rng.normal(size=(6, 3)).astype(np.float32)
    student = rng.normal(size=(6, 3)).astype(np.float32)
    loss = losses.KDLoss(temperature=3.0)
    per_sample = np.asarray(losses.kd_loss(teacher, student, 3.0))
    np.testing.assert_allclose(float(loss(teacher, student)), per_sample.mean(), rtol=1e-5)
    assert float(loss(teacher, student)) != pytest.approx(float(loss(student, teacher)))


def test_kd_loss_config_round_trip():
    loss = losses.KDLoss(temperature=2.5, name="kd")
    clone = losses.KDLoss.from_config(loss.get_config())
    assert clone.temperature == 2.5 and clone.name == "kd"


def test_kd_loss_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        losses.KDLoss(temperature=0.0)


def test_registry_returns_instances_and_rejects_unknown_names():
    assert isinstance(losses.get_distillation_loss("kd", temperature=2.0), losses.KDLoss)
    instance = losses.KDLoss()
    assert losses.get_distillation_loss(instance) is instance
    with pytest.raises(ValueError, match="Unknown distillation loss"):
        losses.get_distillation_loss("dkd_typo")


# -- the paper formulas in numpy (float64), for values and gradients -----------------

NUM_CLASSES = 6


def _np_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _np_kl(p, q):
    keep = p > 0
    return float(np.sum(p[keep] * np.log(p[keep] / q[keep])))


def _np_zscore(z):
    return (z - z.mean()) / (z.std(ddof=1) + 1e-7)


def _ref_kd(t, s, y, temperature):
    del y
    p, q = _np_softmax(t / temperature), _np_softmax(s / temperature)
    return temperature**2 * _np_kl(p, q)


def _target_split(probs, y):
    """`[p_y, 1 - p_y]` and the non-target distribution, for a class id or a soft label."""
    if np.ndim(y) == 0:  # the paper: class y, and the softmax over the other classes
        return np.array([probs[y], 1.0 - probs[y]]), None
    # soft label (docs/losses.md): p_y = sum y_k p_k, non-targets weighted by 1 - y
    rest = (1.0 - y) * probs
    return np.array([np.dot(y, probs), rest.sum()]), rest / rest.sum()


def _ref_dkd(t, s, y, temperature, alpha=1.0, beta=8.0):
    bt, ht = _target_split(_np_softmax(t / temperature), y)
    bs, hs = _target_split(_np_softmax(s / temperature), y)
    if ht is None:
        ht = _np_softmax(np.delete(t, y) / temperature)
        hs = _np_softmax(np.delete(s, y) / temperature)
    return temperature**2 * (alpha * _np_kl(bt, bs) + beta * _np_kl(ht, hs))


def _ref_kd_ls(t, s, y, temperature):
    return _ref_kd(_np_zscore(t), _np_zscore(s), y, temperature)


def _ref_dkd_ls(t, s, y, temperature, alpha=1.0, beta=8.0):
    return _ref_dkd(_np_zscore(t), _np_zscore(s), y, temperature, alpha, beta)


def _ref_nkd(t, s, y, temperature, gamma=1.5):
    bt, _ = _target_split(_np_softmax(t), y)
    bs, _ = _target_split(_np_softmax(s), y)
    if np.ndim(y) == 0:
        ht = _np_softmax(np.delete(t, y) / temperature)
        hs = _np_softmax(np.delete(s, y) / temperature)
    else:
        _, ht = _target_split(_np_softmax(t / temperature), y)
        _, hs = _target_split(_np_softmax(s / temperature), y)
    keep = ht > 0
    return -bt[0] * np.log(bs[0]) - gamma * temperature**2 * np.sum(ht[keep] * np.log(hs[keep]))


def _reference(fn, teacher, student, labels, **kwargs):
    """Per-sample values and d(sum)/d(student) by central differences, in float64."""
    teacher, student = teacher.astype(np.float64), student.astype(np.float64)
    values = np.array([fn(t, s, y, **kwargs) for t, s, y in zip(teacher, student, labels)])
    grads = np.zeros_like(student)
    h = 1e-6
    for i in range(student.shape[0]):
        for k in range(student.shape[1]):
            up, down = student[i].copy(), student[i].copy()
            up[k] += h
            down[k] -= h
            grads[i, k] = (fn(teacher[i], up, labels[i], **kwargs)
                           - fn(teacher[i], down, labels[i], **kwargs)) / (2 * h)
    return values, grads


def _tf_values_and_grads(fn, teacher, student, labels, **kwargs):
    student = tf.constant(student)
    with tf.GradientTape() as tape:
        tape.watch(student)
        labels = None if labels is None else tf.constant(labels)
        values = fn(tf.constant(teacher), student, labels=labels, **kwargs)
        total = tf.reduce_sum(values)
    return np.asarray(values), np.asarray(tape.gradient(total, student))


def _random_batch(seed):
    rng = np.random.default_rng(seed)
    teacher = (2.0 * rng.normal(size=(5, NUM_CLASSES))).astype(np.float32)
    student = (2.0 * rng.normal(size=(5, NUM_CLASSES))).astype(np.float32)
    ids = rng.integers(0, NUM_CLASSES, size=5).astype(np.int32)
    eye = np.eye(NUM_CLASSES, dtype=np.float32)
    soft = np.stack([
        0.7 * eye[0] + 0.3 * eye[3],                      # MixUp of two classes
        0.5 * eye[2] + 0.5 * eye[5],
        0.9 * eye[1] + 0.1 / NUM_CLASSES,                 # label smoothing
        eye[4],                                           # one-hot as floats
        rng.dirichlet(np.ones(NUM_CLASSES)).astype(np.float32),
    ]).astype(np.float32)
    return teacher, student, ids, soft


CASES = [
    ("kd", losses.kd_loss, _ref_kd, {"temperature": 4.0}),
    ("kd_t1", losses.kd_loss, _ref_kd, {"temperature": 1.0}),
    ("dkd", losses.dkd_loss, _ref_dkd, {"temperature": 4.0, "alpha": 1.0, "beta": 8.0}),
    ("dkd_weights", losses.dkd_loss, _ref_dkd, {"temperature": 2.0, "alpha": 0.5, "beta": 2.0}),
    ("kd_ls", losses.kd_ls_loss, _ref_kd_ls, {"temperature": 2.0}),
    ("dkd_ls", losses.dkd_ls_loss, _ref_dkd_ls, {"temperature": 2.0, "alpha": 1.0, "beta": 6.0}),
    ("nkd", losses.nkd_loss, _ref_nkd, {"temperature": 1.0, "gamma": 1.5}),
    ("nkd_t3", losses.nkd_loss, _ref_nkd, {"temperature": 3.0, "gamma": 3.5}),
]


@pytest.mark.parametrize("label_kind", ["ids", "soft"])
@pytest.mark.parametrize("name,fn,reference,kwargs", CASES, ids=[c[0] for c in CASES])
def test_value_and_gradient_match_the_numpy_formula(name, fn, reference, kwargs, label_kind):
    teacher, student, ids, soft = _random_batch(seed=len(name))
    labels = ids if label_kind == "ids" else soft
    values, grads = _tf_values_and_grads(fn, teacher, student, labels, **kwargs)
    expected_values, expected_grads = _reference(reference, teacher, student, labels, **kwargs)
    assert values.shape == (5,)
    np.testing.assert_allclose(values, expected_values, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads, expected_grads, rtol=1e-5, atol=1e-5)


def test_kd_gradient_is_temperature_times_probability_gap():
    teacher, student, _, _ = _random_batch(seed=3)
    _, grads = _tf_values_and_grads(losses.kd_loss, teacher, student, None, temperature=4.0)
    expected = 4.0 * (_np_softmax(student / 4.0) - _np_softmax(teacher / 4.0))
    np.testing.assert_allclose(grads, expected, atol=1e-6)


@pytest.mark.parametrize("fn", [losses.dkd_loss, losses.dkd_ls_loss, losses.nkd_loss])
def test_one_hot_soft_labels_give_exactly_the_class_id_loss(fn):
    teacher, student, ids, _ = _random_batch(seed=5)
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[ids]
    np.testing.assert_array_equal(np.asarray(fn(teacher, student, ids)),
                                  np.asarray(fn(teacher, student, one_hot)))


def test_a_temperature_passed_where_the_labels_go_is_refused():
    # kd_loss takes its temperature third; kd_ls_loss(t, s, 3.0) took 3.0 for the ignored
    # labels and ran at T = 2, dkd_loss(t, s, 3.0) broadcast it into a meaningless loss.
    teacher, student, _, _ = _random_batch(seed=23)
    with pytest.raises(TypeError, match="positional argument"):
        losses.kd_ls_loss(teacher, student, 3.0)
    for temperature in (3.0, np.float32(3.0), tf.constant(3.0)):
        for fn in (losses.dkd_loss, losses.dkd_ls_loss, losses.nkd_loss):
            with pytest.raises(ValueError, match=r"Expected labels of shape \(batch,\) or "
                                                 r"\(batch, num_classes\). Received shape \(\)\. "
                                                 r"The labels come third"):
                fn(teacher, student, temperature)
    np.testing.assert_array_equal(
        np.asarray(losses.kd_ls_loss(teacher, student, temperature=3.0)),
        np.asarray(losses.KDLSLoss(temperature=3.0).call(teacher, student)))


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_nkd_gradient_where_the_student_matches_the_teacher_is_the_target_terms(temperature):
    # Only the non-target term's gradient vanishes at s = t: -t_y log s_y has gradient
    # t_y (s - e_y) in the student's logits.
    teacher, _, ids, _ = _random_batch(seed=29)
    _, grads = _tf_values_and_grads(losses.nkd_loss, teacher, teacher, ids,
                                    temperature=temperature, gamma=1.5)
    probabilities = _np_softmax(teacher.astype(np.float64))
    target = probabilities[np.arange(len(ids)), ids][:, None]
    expected = target * (probabilities - np.eye(NUM_CLASSES)[ids])
    np.testing.assert_allclose(grads, expected, atol=1e-6)
    assert np.abs(expected).max() > 0.01


def test_dkd_excludes_the_target_exactly_when_logits_exceed_1000():
    # The reference code subtracts 1000 from the target logit; at 3000 the
    # target would still dominate the "non-target" softmax.
    teacher = np.array([[3000.0, 0.0, 1.0, 2.0]], np.float32)
    student = np.array([[0.0, 3000.0, 1.0, 2.0]], np.float32)
    value, grads = _tf_values_and_grads(losses.dkd_loss, teacher, student, np.array([0]),
                                        temperature=1.0, alpha=1.0, beta=1.0)
    non_target_t = _np_softmax(np.array([0.0, 1.0, 2.0]))
    log_non_target_s = np.array([3000.0, 1.0, 2.0]) - np.logaddexp.reduce([3000.0, 1.0, 2.0])
    nckd = np.sum(non_target_t * (np.log(non_target_t) - log_non_target_s))
    tckd = 3000.0  # -log p_student(target): the teacher puts all its mass on the target
    np.testing.assert_allclose(value, [tckd + nckd], rtol=1e-6)
    assert np.all(np.isfinite(grads))


def test_dkd_target_terms_stay_exact_for_a_confident_teacher():
    # 1 - p_y underflows to 0 in float32 if taken as 1 - softmax; in log space it does not.
    teacher = np.array([[40.0, 0.0, 0.0]], np.float32)
    student = np.array([[0.0, 0.0, 0.0]], np.float32)
    value = float(losses.dkd_loss(teacher, student, np.array([0]), temperature=1.0,
                                  alpha=1.0, beta=0.0)[0])
    log_rest = math.log(2.0) - 40.0  # log(1 - p_y) of the teacher
    p_y = 1.0 / (1.0 + 2.0 * math.exp(-40.0))
    expected = p_y * math.log(p_y / (1 / 3)) + math.exp(log_rest) * (log_rest - math.log(2 / 3))
    np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_logit_standardisation_ignores_the_student_logits_scale_and_shift():
    teacher, student, ids, _ = _random_batch(seed=7)
    for fn, args in ((losses.kd_ls_loss, ()), (losses.dkd_ls_loss, (ids,))):
        np.testing.assert_allclose(np.asarray(fn(teacher, 3.0 * student + 5.0, *args)),
                                   np.asarray(fn(teacher, student, *args)), rtol=1e-4)


def test_logit_standardisation_has_finite_gradients_for_constant_logits():
    teacher, _, ids, _ = _random_batch(seed=8)
    student = np.zeros_like(teacher)
    for fn in (losses.kd_ls_loss, losses.dkd_ls_loss):
        values, grads = _tf_values_and_grads(fn, teacher, student, ids, temperature=2.0)
        assert np.all(np.isfinite(values)) and np.all(np.isfinite(grads))


# -- the Keras wrappers, the registry, serialisation ---------------------------------

WRAPPERS = [
    (losses.KDLoss, {"temperature": 3.0}),
    (losses.DKDLoss, {"temperature": 3.0, "alpha": 0.5, "beta": 6.0}),
    (losses.KDLSLoss, {"temperature": 3.0}),
    (losses.DKDLSLoss, {"temperature": 3.0, "alpha": 2.0, "beta": 2.0}),
    (losses.NKDLoss, {"temperature": 3.0, "gamma": 3.5}),
]


def test_registry_covers_every_wrapper():
    assert losses.DISTILLATION_LOSSES == {
        "kd": losses.KDLoss, "dkd": losses.DKDLoss, "kd_ls": losses.KDLSLoss,
        "dkd_ls": losses.DKDLSLoss, "nkd": losses.NKDLoss}


@pytest.mark.parametrize("cls,kwargs", WRAPPERS, ids=lambda v: getattr(v, "__name__", ""))
def test_wrapper_round_trips_through_config_and_keras_serialization(cls, kwargs):
    teacher, student, ids, soft = _random_batch(seed=11)
    key = next(k for k, v in losses.DISTILLATION_LOSSES.items() if v is cls)
    loss = losses.get_distillation_loss(key, **kwargs)
    assert isinstance(loss, cls)
    for name, value in kwargs.items():
        assert getattr(loss, name) == value
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(loss)))
    assert serialized["registered_name"] == f"tllm_tf>{cls.__name__}"
    clones = [cls.from_config(loss.get_config()),
              keras.saving.deserialize_keras_object(serialized)]
    for clone in clones:
        assert type(clone) is cls and clone.get_config() == loss.get_config()
        for labels in (ids, soft):
            np.testing.assert_array_equal(np.asarray(clone.call(teacher, student, labels)),
                                          np.asarray(loss.call(teacher, student, labels)))
    assert set(cls.config_fields) == set(kwargs)


def test_wrapper_calls_the_pure_function_with_its_settings():
    teacher, student, ids, _ = _random_batch(seed=12)
    loss = losses.DKDLoss(temperature=2.0, alpha=0.5, beta=3.0)
    np.testing.assert_array_equal(
        np.asarray(loss.call(teacher, student, ids)),
        np.asarray(losses.dkd_loss(teacher, student, ids, temperature=2.0, alpha=0.5, beta=3.0)))


def test_losses_that_need_labels_say_so_when_called_keras_style():
    teacher, student, _, _ = _random_batch(seed=13)
    with pytest.raises(ValueError, match=r"DKDLoss needs the labels"):
        losses.DKDLoss()(teacher, student)
    assert np.isfinite(float(losses.KDLSLoss()(teacher, student)))


_TEMPERATURE_BOUND = ("Expected temperature > 0 and finite (at most 1e+19: the losses compute "
                      "in float32).")
_WEIGHT_BOUND = ">= 0 and finite (at most 1e+38: the losses compute in float32)."


@pytest.mark.parametrize("cls,kwargs,message", [
    (losses.KDLoss, {"temperature": 0}, f"{_TEMPERATURE_BOUND} Received: temperature=0"),
    (losses.DKDLoss, {"temperature": -1.0}, f"{_TEMPERATURE_BOUND} Received: temperature=-1.0"),
    (losses.DKDLoss, {"alpha": -1}, f"Expected alpha {_WEIGHT_BOUND} Received: alpha=-1"),
    (losses.DKDLSLoss, {"beta": float("nan")}, f"Expected beta {_WEIGHT_BOUND} Received: beta=nan"),
    (losses.NKDLoss, {"gamma": "1.5"}, f"Expected gamma {_WEIGHT_BOUND} Received: gamma='1.5'"),
    (losses.KDLSLoss, {"temperature": "2"}, f"{_TEMPERATURE_BOUND} Received: temperature='2'"),
    # Each gave a NaN or infinite loss before.
    (losses.KDLoss, {"temperature": float("inf")},
     f"{_TEMPERATURE_BOUND} Received: temperature=inf"),
    (losses.KDLoss, {"temperature": 1e30}, f"{_TEMPERATURE_BOUND} Received: temperature=1e+30"),
    (losses.DKDLoss, {"beta": float("inf")}, f"Expected beta {_WEIGHT_BOUND} Received: beta=inf"),
    (losses.NKDLoss, {"gamma": 1e39}, f"Expected gamma {_WEIGHT_BOUND} Received: gamma=1e+39"),
])
def test_bad_arguments_raise_keras_style_messages(cls, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cls(**kwargs)


def test_the_largest_accepted_temperature_gives_a_finite_loss():
    teacher, student, _, _ = _random_batch(seed=19)
    assert np.all(np.isfinite(np.asarray(losses.KDLoss(temperature=1e19).call(teacher, student))))


# -- the Distiller's entry point ------------------------------------------------------


class _LogitMSE(keras.losses.Loss):
    """A user-written distillation loss that knows nothing of labels."""

    def call(self, y_true, y_pred):
        return keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)


class _LabelAware(keras.losses.Loss):
    def call(self, teacher_logits, student_logits, labels):
        return keras.ops.cast(labels, "float32") + 0.0 * student_logits[:, 0]


class _VarArgs(keras.losses.Loss):
    takes_labels = False

    def call(self, *args):
        return keras.ops.sum(args[0] - args[1], axis=-1)


class _Scalar(keras.losses.Loss):
    def call(self, y_true, y_pred):
        return keras.ops.mean(y_true - y_pred)


def _squared(teacher_logits, student_logits, labels=None, *, temperature=3.0):
    return keras.ops.mean(keras.ops.square(teacher_logits - student_logits), axis=-1)


def _squared_no_default(teacher_logits, student_logits, labels=None, *, temperature):
    return _squared(teacher_logits, student_logits, temperature=temperature)


@pytest.mark.parametrize("function, temperature", [(_squared, 3.0), (_squared_no_default, None)])
def test_a_two_line_subclass_takes_its_functions_default_temperature(
        monkeypatch, function, temperature):
    loss_class = type("Squared", (losses.LogitDistillationLoss,),
                      {"function": staticmethod(function)})
    monkeypatch.setitem(losses.DISTILLATION_LOSSES, "squared", loss_class)
    assert loss_class(temperature=2).temperature == 2.0  # Given, it wins.
    if temperature is None:
        with pytest.raises(ValueError, match=r"Squared needs a temperature: pass "
                                             r"temperature=\.\.\., or give the temperature "
                                             r"argument of its function a default"):
            losses.get_distillation_loss("squared")
        return
    loss = losses.get_distillation_loss("squared")
    assert loss.temperature == temperature
    assert type(loss).from_config(loss.get_config()).temperature == temperature


def test_per_sample_loss_passes_labels_only_to_losses_that_take_them():
    teacher, student, ids, soft = _random_batch(seed=14)
    mse = losses.per_sample_distillation_loss(_LogitMSE(), teacher, student, ids)
    np.testing.assert_allclose(np.asarray(mse), np.mean((teacher - student) ** 2, axis=-1),
                               rtol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(losses.per_sample_distillation_loss(_LabelAware(), teacher, student, ids)),
        ids.astype(np.float32))
    np.testing.assert_allclose(
        np.asarray(losses.per_sample_distillation_loss(_VarArgs(), teacher, student, ids)),
        np.sum(teacher - student, axis=-1), rtol=1e-5)
    for key, cls in losses.DISTILLATION_LOSSES.items():
        for labels in (ids, soft):
            np.testing.assert_array_equal(
                np.asarray(losses.per_sample_distillation_loss(cls(), teacher, student, labels)),
                np.asarray(cls().call(teacher, student, labels)))


def test_per_sample_loss_refuses_a_loss_reduced_to_a_scalar():
    teacher, student, ids, _ = _random_batch(seed=15)
    with pytest.raises(ValueError, match=r"one loss per sample.*Received shape \(\)"):
        losses.per_sample_distillation_loss(_Scalar(), teacher, student, ids)


def test_per_sample_loss_traces_with_an_unknown_batch_size():
    teacher, student, ids, soft = _random_batch(seed=16)
    loss = losses.DKDLSLoss()

    @tf.function(input_signature=[tf.TensorSpec([None, NUM_CLASSES])] * 2
                 + [tf.TensorSpec([None, NUM_CLASSES])])
    def soft_step(t, s, y):
        return losses.per_sample_distillation_loss(loss, t, s, y)

    @tf.function(input_signature=[tf.TensorSpec([None, NUM_CLASSES])] * 2
                 + [tf.TensorSpec([None], tf.int32)])
    def id_step(t, s, y):
        return losses.per_sample_distillation_loss(loss, t, s, y)

    np.testing.assert_allclose(np.asarray(soft_step(teacher, student, soft)),
                               np.asarray(loss.call(teacher, student, soft)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(id_step(teacher, student, ids)),
                               np.asarray(loss.call(teacher, student, ids)), rtol=1e-5)


@pytest.mark.parametrize("keras_loss", [
    keras.losses.KLDivergence(),
    keras.losses.CategoricalCrossentropy(),
    keras.losses.CategoricalCrossentropy(from_logits=True),
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
], ids=lambda loss: type(loss).__name__)
def test_keras_losses_on_probabilities_are_refused_with_the_fix_named(keras_loss):
    with pytest.raises(ValueError, match=re.escape("tllm_tf.KDLoss(temperature=...)")):
        losses.check_logit_loss(keras_loss)
    with pytest.raises(ValueError, match=type(keras_loss).__name__):
        losses.get_distillation_loss(keras_loss)


def test_logit_losses_pass_the_check():
    for loss in (losses.KDLoss(), losses.DKDLoss(), keras.losses.MeanSquaredError(), _LogitMSE()):
        losses.check_logit_loss(loss)
        assert losses.get_distillation_loss(loss) is loss


def test_the_docs_example_of_adding_a_loss_works(monkeypatch):
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "docs", "losses.md")
    page = open(path).read()
    section = page[page.index("## Adding a loss"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[:code.index("```")]
    monkeypatch.setattr(losses, "DISTILLATION_LOSSES", dict(losses.DISTILLATION_LOSSES))
    namespace = {}
    exec(compile(code, "docs/losses.md", "exec"), namespace)
    teacher, student, ids, _ = _random_batch(seed=17)
    loss = losses.get_distillation_loss("logit_mse", temperature=2.0, scale=3.0)
    expected = 3.0 * np.mean(((teacher - student) / 2.0) ** 2, axis=-1)
    np.testing.assert_allclose(
        np.asarray(losses.per_sample_distillation_loss(loss, teacher, student, ids)), expected,
        rtol=1e-5)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert (type(clone).__name__, clone.temperature, clone.scale) == ("LogitMSELoss", 2.0, 3.0)
    with pytest.raises(ValueError, match="Expected scale >= 0 and finite .* Received: scale=-1"):
        namespace["LogitMSELoss"](scale=-1)


@pytest.mark.parametrize("name", ["kd", "dkd", "nkd"])
def test_a_minus_infinity_teacher_logit_gives_the_limit_not_nan(name):
    # A class the teacher rules out entirely (logit -inf, probability 0)
    # adds nothing to KL(p || q): the value is the limit of a very negative
    # logit, and finite, as are the student's gradients.
    rng = np.random.default_rng(3)
    teacher = rng.normal(size=(4, 5)).astype(np.float32)
    student = tf.constant(rng.normal(size=(4, 5)).astype(np.float32))
    labels = np.array([0, 1, 2, 3])
    ruled_out, very_negative = teacher.copy(), teacher.copy()
    ruled_out[:, 4] = -np.inf
    very_negative[:, 4] = -1e4
    loss = losses.DISTILLATION_LOSSES[name]()
    with tf.GradientTape() as tape:
        tape.watch(student)
        value = loss.call(tf.constant(ruled_out), student, labels)
    gradient = tape.gradient(value, student)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(gradient))
    np.testing.assert_allclose(np.asarray(value),
                               np.asarray(loss.call(very_negative, student, labels)),
                               rtol=1e-5, atol=1e-6)


def test_a_registered_name_whose_class_needs_arguments_asks_for_an_instance(monkeypatch):
    class NoDefaults(losses.LogitDistillationLoss):
        function = staticmethod(losses.kd_loss)

        def __init__(self, temperature, **kwargs):
            super().__init__(temperature, **kwargs)

    monkeypatch.setitem(losses.DISTILLATION_LOSSES, "no_defaults", NoDefaults)
    with pytest.raises(ValueError, match=r"'no_defaults' \(NoDefaults\) cannot be built from "
                                         r"its name.*'temperature'.*Pass an instance"):
        losses.get_distillation_loss("no_defaults")
    assert losses.get_distillation_loss("no_defaults", temperature=2.0).temperature == 2.0


def test_an_argument_the_loss_does_not_take_is_named_with_those_it_takes():
    with pytest.raises(ValueError, match=re.escape(
            "The distillation loss 'kd' (KDLoss) has no argument 'beta': its arguments are "
            "['temperature', 'reduction', 'name', 'dtype']. Received: 'kd' with arguments "
            "{'temperature': 2.0, 'beta': 8}.")):
        losses.get_distillation_loss("kd", temperature=2.0, beta=8)
    with pytest.raises(ValueError, match=r"'nkd' \(NKDLoss\) has no argument 'alpha', 'beta'"):
        losses.get_distillation_loss("nkd", alpha=1.0, beta=8.0)
