"""Tests of what a student stage reads before it trains (`tllm_tf.pipeline.stage_inputs`).

Its other checks (teachers, empty held-out classes) are in test_bad_input.py and test_security.py.
"""

import types

import numpy as np
import pytest
import tensorflow as tf

import tllm_tf
from tllm_tf.pipeline import stage_inputs


@pytest.mark.parametrize("rule, has_scores", [("paired", False), ("paired_calibrated", True),
                                              ("paired_capped", True)])
def test_the_reference_reaches_the_workers_with_the_scores_its_rule_reads(tmp_path, rule,
                                                                          has_scores):
    reference_path = str(tmp_path / "reference.json")
    tllm_tf.save_reference(reference_path, [0.5] * 4, num_samples=[2] * 4)
    labels = np.arange(8) % 4
    tllm_tf.save_predictions(tllm_tf.predictions_path(reference_path), labels,
                             np.ones((1, 8), bool), scores=np.full((1, 8), 0.75))
    config = types.SimpleNamespace(rule=rule, epoch_matched=False)
    predictions = stage_inputs.reference_on_every_worker(
        tf.distribute.get_strategy(), reference_path, 4, config)
    np.testing.assert_array_equal(predictions.labels, labels)
    # Scores travel only to a rule that reads them (they go as JSON to every worker).
    assert (predictions.scores is not None) == has_scores
    if has_scores:
        np.testing.assert_allclose(predictions.scores, 0.75)
