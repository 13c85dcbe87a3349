"""Tests of the calibrated per-image scores (`tllm_tf.calibration`)."""

import keras
import numpy as np
import pytest

from tllm_tf import calibration
from tllm_tf import prior_offsets
from conftest import NUM_CLASSES, make_mlp


def _mean_log_loss(logits, labels, temperature):
    return -np.mean(np.log(calibration.true_class_probabilities(logits, labels, temperature)))


@pytest.mark.parametrize("planted", [0.5, 1.0, 3.0])
def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_at(planted):
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(20000, 5))
    probabilities = np.exp(logits / planted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in probabilities])
    fitted = calibration.fit_temperature(logits, labels)
    assert fitted == pytest.approx(planted, rel=0.05)
    # It is the minimum of the mean log-loss, not only near it.
    best = _mean_log_loss(logits, labels, fitted)
    for other in (fitted * 0.999, fitted * 1.001):
        assert _mean_log_loss(logits, labels, other) > best


def test_logits_that_get_every_image_right_end_where_the_log_loss_is_flat():
    logits = np.array([[5.0, 0.0], [0.0, 4.0], [3.0, -1.0]])
    labels = np.array([0, 1, 0])
    # The log-loss falls without end as the temperature does: the search stops where it is
    # flat, every image's calibrated score 1 to within the tolerance.
    temperature = calibration.fit_temperature(logits, labels)
    assert calibration.MIN_TEMPERATURE <= temperature < 0.5
    np.testing.assert_allclose(calibration.calibrated_scores(logits, labels), 1.0, atol=1e-9)
    # Every image wrong: the log-loss falls as the temperature rises, to the highest.
    assert calibration.fit_temperature(logits, 1 - labels) == pytest.approx(
        calibration.MAX_TEMPERATURE)


def test_true_class_probabilities_by_hand():
    logits = np.array([[np.log(3.0), 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(
        calibration.true_class_probabilities(logits, [0, 1]), [0.75, 0.5])
    # At temperature 2 the first image's odds are sqrt(3) to 1.
    np.testing.assert_allclose(
        calibration.true_class_probabilities(logits, [0, 1], temperature=2.0),
        [np.sqrt(3) / (1 + np.sqrt(3)), 0.5])


@pytest.mark.parametrize("logits, labels", [
    (np.zeros((0, 3)), np.zeros(0, int)), (np.zeros((4, 3)), np.zeros(3, int)),
    (np.zeros(4), np.zeros(4, int))])
def test_bad_shapes_are_refused(logits, labels):
    with pytest.raises(ValueError, match="Expected logits .num_images, num_classes."):
        calibration.fit_temperature(logits, labels)


@pytest.mark.parametrize("with_offsets", [False, True])
def test_per_image_scores_read_the_models_logits(tiny_data, with_offsets):
    x, y = tiny_data
    keras.utils.set_random_seed(2)
    model = make_mlp("model")
    correct, labels, scores = calibration.PerImageScores(
        model, NUM_CLASSES, with_offsets=with_offsets)((x, y))
    logits = model.predict(x, verbose=0).astype(np.float64)
    if with_offsets:
        logits = logits + prior_offsets.fit_offsets(logits, y, NUM_CLASSES)
    np.testing.assert_array_equal(labels, y)
    np.testing.assert_array_equal(correct, logits.argmax(axis=1) == y)
    np.testing.assert_allclose(scores, calibration.calibrated_scores(logits, y), atol=1e-6)
    # Judged as the rule's other judges judge the same model.
    expected_correct, _ = prior_offsets.per_image_correctness(
        model, NUM_CLASSES, with_offsets=with_offsets)((x, y))
    np.testing.assert_array_equal(correct, expected_correct)
