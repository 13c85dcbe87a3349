"""A student judged against a baseline on the held-out split (`tllm_tf.held_out_check`)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tllm_tf
from tllm_tf import held_out_check


def test_discordant_images_decide_not_the_images_both_get_right_or_wrong():
    tllm = np.array([True] * 40 + [False] * 40 + [True] * 12 + [False] * 3)
    refit = np.array([True] * 40 + [False] * 40 + [False] * 12 + [True] * 3)
    check = held_out_check.compare(refit, tllm, significance=0.05, names=("refit", "tllm"))
    assert (check.behind, check.ahead) == (12, 3)
    # P(X >= 12) for X ~ Binomial(15, 1/2).
    expected = sum(math.comb(15, k) for k in range(12, 16)) / 2 ** 15
    assert check.p_value == pytest.approx(expected)
    assert check.candidate_behind and check.to_json()["kept"] == "tllm"
    # The JSON names the two models: refit_check.json keeps the keys it has always had.
    assert check.to_json()["tllm_accuracy"] == pytest.approx(52 / 95)
    assert check.to_json()["refit_accuracy"] == pytest.approx(43 / 95)
    # The verdict names the p-value and the level it was judged at, not "beyond noise".
    assert check.verdict() == "behind it (p = 0.0176 < 0.05)"
    assert check.line() == (
        "held-out accuracy 45.26% against the tllm's 54.74% (12 images only the tllm gets "
        "right, 3 only the refit), behind it (p = 0.0176 < 0.05): the refit takes the tllm's "
        "weights")


@pytest.mark.parametrize("behind, ahead", [(0, 0), (5, 5), (3, 12), (6, 3)])
def test_a_candidate_no_worse_beyond_noise_is_kept(behind, ahead):
    tllm = np.array([True] * behind + [False] * ahead + [True] * 50)
    refit = np.array([False] * behind + [True] * ahead + [True] * 50)
    check = held_out_check.compare(refit, tllm, significance=0.05, names=("refit", "tllm"))
    assert not check.candidate_behind
    assert check.to_json()["kept"] == "refit"
    assert check.line().endswith(
        f"), not behind it (p = {check.p_value:.3g} >= 0.05): the refit is kept")


def test_the_level_is_the_one_given():
    tllm, refit = np.array([True] * 5), np.array([False] * 5)  # p = 1/32.
    assert held_out_check.compare(refit, tllm, significance=0.05).candidate_behind
    assert not held_out_check.compare(refit, tllm, significance=0.01).candidate_behind


def test_models_judged_on_different_images_are_refused():
    with pytest.raises(ValueError, match="judged on the same held-out images"):
        held_out_check.compare(np.ones(5, bool), np.ones(6, bool), significance=0.05)


def _fixed_classifier(predicted_class):
    """A model that predicts `predicted_class` for every image."""
    inputs = keras.Input((2,))
    bias = keras.initializers.Constant(np.eye(3)[predicted_class] * 5.0)
    logits = keras.layers.Dense(3, kernel_initializer="zeros", bias_initializer=bias)(inputs)
    return keras.Model(inputs, logits)


def test_check_compares_two_models_image_by_image():
    labels = np.array([0, 0, 0, 1, 1, 2])
    held_out = tf.data.Dataset.from_tensor_slices((np.zeros((6, 2), np.float32), labels)).batch(4)
    check = held_out_check.check(_fixed_classifier(1), _fixed_classifier(0), held_out,
                                 num_classes=3, significance=0.05, names=("student", "reference"))
    assert (check.behind, check.ahead) == (3, 2)
    assert (check.baseline_accuracy, check.candidate_accuracy) == (
        pytest.approx(0.5), pytest.approx(1 / 3))
    assert not check.candidate_behind and check.kept == "student"
    assert set(check.to_json()) == {"student_accuracy", "reference_accuracy", "behind", "ahead",
                                    "p_value", "significance", "kept"}


def _held_out(labels):
    labels = np.array(labels)
    return tf.data.Dataset.from_tensor_slices(
        (np.zeros((len(labels), 2), np.float32), labels)).batch(4)


def test_a_student_behind_the_reference_takes_its_weights():
    student, reference = _fixed_classifier(1), _fixed_classifier(0)
    check = tllm_tf.keep_baseline_if_behind(student, reference, _held_out([0] * 8 + [1]),
                                            num_classes=3)
    assert (check.behind, check.ahead, check.kept) == (8, 1, "reference")
    for weight, expected in zip(student.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(weight, expected)


def test_a_student_not_behind_the_reference_keeps_its_own_weights():
    student, reference = _fixed_classifier(1), _fixed_classifier(0)
    before = student.get_weights()
    check = tllm_tf.keep_baseline_if_behind(student, reference, _held_out([0] * 3 + [1] * 3),
                                            num_classes=3)
    assert check.kept == "student" and isinstance(check, tllm_tf.HeldOutCheck)
    for weight, expected in zip(student.get_weights(), before, strict=True):
        np.testing.assert_array_equal(weight, expected)


def test_a_reference_of_another_architecture_is_refused_before_anything_changes():
    student = _fixed_classifier(1)
    before = student.get_weights()
    inputs = keras.Input((2,))
    hidden = keras.layers.Dense(4)(inputs)
    wider = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    with pytest.raises(ValueError, match="same architecture"):
        tllm_tf.keep_baseline_if_behind(student, wider, _held_out([0] * 8), num_classes=3)
    for weight, expected in zip(student.get_weights(), before, strict=True):
        np.testing.assert_array_equal(weight, expected)


def _judged_weights(judged):
    """A `before_replacing` that records the weights of each candidate it is given."""
    return lambda candidate: judged.append(candidate.get_weights())


def test_before_replacing_sees_the_candidate_with_its_own_weights_once():
    student, reference = _fixed_classifier(1), _fixed_classifier(0)
    own = student.get_weights()
    judged = []
    check = tllm_tf.keep_baseline_if_behind(
        student, reference, _held_out([0] * 8 + [1]), num_classes=3,
        before_replacing=_judged_weights(judged))
    assert check.kept == "reference" and len(judged) == 1
    for weight, expected in zip(judged[0], own, strict=True):
        np.testing.assert_array_equal(weight, expected)
    # And the candidate took the reference's weights after it.
    for weight, expected in zip(student.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(weight, expected)


def test_before_replacing_is_not_called_for_a_candidate_that_is_kept():
    judged = []
    check = tllm_tf.keep_baseline_if_behind(
        _fixed_classifier(1), _fixed_classifier(0), _held_out([0] * 3 + [1] * 3), num_classes=3,
        before_replacing=_judged_weights(judged))
    assert check.kept == "student" and judged == []
