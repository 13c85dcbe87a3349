import math

import numpy as np
import pytest

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
