"""Tests of tllm_tf.reference_resolution: each kind of reference, resolved for one fit."""

import json
import logging

import numpy as np
import pytest
import tensorflow as tf

import tllm_tf
from conftest import IMAGE_SHAPE, NUM_CLASSES, make_mlp
from tllm_tf import held_out_predictions
from tllm_tf.reference_resolution import resolve_reference

LABELS = np.arange(8, dtype=np.int32) % NUM_CLASSES
COUNTS = np.bincount(LABELS, minlength=NUM_CLASSES)


def _resolve(reference, **kwargs):
    kwargs = dict(dict(rule="paired", epoch_matched=None, prior_offsets=None), **kwargs)
    images = np.zeros((len(LABELS),) + IMAGE_SHAPE, np.float32)
    held_out = tf.data.Dataset.from_tensor_slices((images, LABELS)).batch(4)
    return resolve_reference(reference, held_out, NUM_CLASSES, COUNTS, **kwargs)


def test_per_class_accuracies_fall_back_to_the_unpaired_rule_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        resolved = _resolve([0.5, 0.6, 0.7, 0.8])
    assert (resolved.rule, resolved.matched, resolved.predictions) == ("unpaired", False, None)
    np.testing.assert_array_equal(resolved.history, [[0.5, 0.6, 0.7, 0.8]])
    assert "per-class accuracies only" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _resolve([0.5, 0.6, 0.7, 0.8], rule="unpaired")
    assert not caplog.text


def test_predictions_of_several_epochs_are_epoch_matched_unless_told():
    correct = np.array([[True] * 8, [True, False] * 4])
    predictions = tllm_tf.ReferencePredictions(labels=LABELS, correct=correct)
    resolved = _resolve(predictions)
    assert (resolved.rule, resolved.matched, resolved.source) == ("paired", True, "the reference")
    np.testing.assert_array_equal(resolved.history, [[1, 1, 1, 1], [1, 0, 1, 0]])
    final_only = _resolve(predictions, epoch_matched=False)
    np.testing.assert_array_equal(final_only.history, [[1, 0, 1, 0]])


def test_a_model_is_evaluated_on_the_held_out_images():
    resolved = _resolve(make_mlp("reference"))
    assert resolved.rule == "paired" and not resolved.matched
    np.testing.assert_array_equal(resolved.predictions.labels, LABELS)
    with pytest.raises(ValueError, match="epoch_matched=True needs the reference's per-epoch"):
        _resolve(make_mlp("reference"), epoch_matched=True)


def test_the_unpaired_rule_asked_for_reads_per_image_results_as_per_class_accuracies():
    # Asked for the unpaired rule with a model or its predictions, the paired rule judged.
    correct = np.array([[True, False] * 4])
    predictions = tllm_tf.ReferencePredictions(labels=LABELS, correct=correct)
    resolved = _resolve(predictions, rule="unpaired")
    assert (resolved.rule, resolved.predictions) == ("unpaired", None)
    np.testing.assert_array_equal(resolved.history, [[1, 0, 1, 0]])
    model = make_mlp("reference")
    paired, unpaired = (_resolve(model, rule=rule) for rule in ("paired", "unpaired"))
    assert (unpaired.rule, unpaired.predictions) == ("unpaired", None)
    np.testing.assert_array_equal(unpaired.history, paired.history)


@pytest.mark.parametrize("reference, epoch_matched, message", [
    ([0.5, 0.5, 0.5], None, "3 per-class accuracies but the model has num_classes=4"),
    ([[0.5] * 4], False, "Expected a reference of rank 1"),
    ([0.5] * 4, True, "Expected a reference of rank 2"),
])
def test_a_reference_of_the_wrong_shape_is_refused(reference, epoch_matched, message):
    with pytest.raises(ValueError, match=message):
        _resolve(reference, epoch_matched=epoch_matched)


def test_the_predictions_beside_a_reference_file_are_read_with_the_paired_rule_only(tmp_path):
    reference_path = tmp_path / "reference.json"
    reference_path.write_text("{}")
    assert held_out_predictions.sibling_predictions(reference_path, "paired") is None
    sibling = tmp_path / held_out_predictions.PREDICTIONS_FILE
    sibling.write_bytes(b"")
    assert held_out_predictions.sibling_predictions(reference_path, "paired") == str(sibling)
    assert held_out_predictions.sibling_predictions(reference_path, "unpaired") is None


def test_predictions_cross_to_other_workers_as_json_unchanged():
    predictions = held_out_predictions.ReferencePredictions(
        labels=np.array([0, 2, 1], np.int32),
        correct=np.array([[True, False, True], [False, False, True]]), prior_offsets=True)
    back = held_out_predictions.ReferencePredictions.from_dict(json.loads(json.dumps(predictions.to_dict())))
    np.testing.assert_array_equal(back.labels, predictions.labels)
    assert back.labels.dtype == np.int32 and back.correct.dtype == bool
    np.testing.assert_array_equal(back.correct, predictions.correct)
    assert back.prior_offsets is True
