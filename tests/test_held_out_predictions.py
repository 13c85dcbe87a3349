"""Tests of the reference's calibrated scores in its predictions (`tllm_tf.held_out_predictions`).

The file's other checks are in test_callbacks.py, test_bad_input.py and test_security.py.
"""

import os

import keras
import numpy as np
import pytest

import tllm_tf
from tllm_tf import calibration
from tllm_tf import held_out_predictions as predictions_lib
from conftest import NUM_CLASSES, make_mlp

LABELS = np.array([0, 1, 2, 3])
CORRECT = np.array([[True, False, True, True], [True, True, True, False]])
SCORES = np.array([[0.9, 0.2, 0.6, 0.7], [0.95, 0.6, 0.5, 0.1]])


def test_scores_round_trip_through_the_file_and_a_dict(tmp_path):
    path = str(tmp_path / "predictions.npz")
    tllm_tf.save_predictions(path, LABELS, CORRECT, scores=SCORES)
    loaded = tllm_tf.load_predictions(path)
    np.testing.assert_allclose(loaded.scores, SCORES, rtol=1e-6)
    np.testing.assert_allclose(loaded.scores_at_epoch(0), SCORES[0], rtol=1e-6)
    np.testing.assert_allclose(loaded.scores_at_epoch(9), SCORES[1], rtol=1e-6)
    again = tllm_tf.ReferencePredictions.from_dict(loaded.to_dict())
    np.testing.assert_array_equal(again.scores, loaded.scores)
    # A file written without scores (as before they were recorded) has none.
    tllm_tf.save_predictions(path, LABELS, CORRECT)
    assert tllm_tf.load_predictions(path).scores is None
    assert tllm_tf.ReferencePredictions.from_dict(
        tllm_tf.load_predictions(path).to_dict()).scores is None


def test_scores_of_another_shape_are_not_written(tmp_path):
    with pytest.raises(ValueError, match=r"Expected scores of correct's shape \(2, 4\)"):
        tllm_tf.save_predictions(str(tmp_path / "p.npz"), LABELS, CORRECT, scores=SCORES[:1])


@pytest.mark.parametrize("scores, message", [
    (SCORES[:, :3], "inconsistent: .*scores float64 \\(2, 3\\)"),
    (np.ones((2, 4), np.int64), "inconsistent: .*scores int64"),
    (SCORES + 1.0, "scores outside \\[0, 1\\]"),
    (np.full((2, 4), np.nan), "scores outside \\[0, 1\\]"),
])
def test_a_file_with_bad_scores_is_refused(tmp_path, scores, message):
    path = str(tmp_path / "predictions.npz")
    np.savez(path, labels=LABELS.astype(np.int32), correct=CORRECT, scores=scores)
    with pytest.raises(ValueError, match=message):
        tllm_tf.load_predictions(path)


def test_the_recorder_writes_each_epochs_scores(tiny_data, tmp_path):
    x, y = tiny_data
    keras.utils.set_random_seed(1)
    model = make_mlp("reference")
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    path, log_dir = str(tmp_path / "predictions.npz"), str(tmp_path / "rows")
    os.makedirs(log_dir)
    recorder = tllm_tf.PredictionRecorder((x, y), NUM_CLASSES, path=path, log_dir=log_dir,
                                          prior_offsets=True)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[recorder])
    predictions = tllm_tf.load_predictions(path)
    correct, _, scores = calibration.PerImageScores(model, NUM_CLASSES, with_offsets=True)((x, y))
    np.testing.assert_array_equal(predictions.final, correct)
    np.testing.assert_allclose(predictions.scores[-1], scores, rtol=1e-6)
    assert predictions.scores.shape == (2, len(y))
    # The rows of a killed run gather back with their scores.
    labels, rows, row_scores = predictions_lib.read_rows(log_dir, 2)
    np.testing.assert_array_equal(labels, y)
    np.testing.assert_array_equal(rows, predictions.correct)
    np.testing.assert_allclose(row_scores, predictions.scores)


def test_rows_written_before_scores_gather_without_them(tmp_path):
    for epoch in (1, 2):
        np.save(str(tmp_path / f"epoch-{epoch}.npy"), np.stack([LABELS, CORRECT[epoch - 1]]))
    labels, rows, scores = predictions_lib.read_rows(str(tmp_path), 2)
    np.testing.assert_array_equal(rows, CORRECT)
    np.testing.assert_array_equal(labels, LABELS)
    assert scores is None
