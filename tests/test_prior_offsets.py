"""Prior offsets: fitted on held-out logits, folded into the output bias, run by the stages."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest

import tllm_tf
from tllm_tf import calibration
from tllm_tf import prior_offsets
from tllm_tf.pipeline import fitting
from tllm_tf.pipeline import stages
from tllm_tf.pipeline import workdir_files
from tllm_tf.pipeline.config import RunConfig
from conftest import IMAGE_SHAPE
from conftest import KillAtEpochEnd as _KillAtEpochEnd
from conftest import Killed as _Killed
from conftest import make_mlp


def _softmax(logits):
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _biased_logits(seed=0, num_images=3000, num_classes=4):
    """Logits of a model that favours class 0 and neglects class 3, on balanced labels."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_images) % num_classes)
    logits = rng.normal(size=(num_images, num_classes)) + 2.0 * np.eye(num_classes)[labels]
    return logits + np.array([1.0, 0.3, 0.0, -1.3]), labels


def test_the_offsets_match_the_mean_probabilities_to_the_class_frequencies():
    logits, labels = _biased_logits()
    offsets = prior_offsets.fit_offsets(logits, labels, 4)
    np.testing.assert_allclose(_softmax(logits + offsets).mean(axis=0), [0.25] * 4, atol=1e-6)
    assert offsets.mean() == pytest.approx(0.0, abs=1e-12)
    # They undo the bias: the favoured class goes down, the neglected one up.
    assert offsets[0] < offsets[1] < offsets[2] < offsets[3]
    before = np.bincount(logits.argmax(axis=1), minlength=4)
    after = np.bincount((logits + offsets).argmax(axis=1), minlength=4)
    assert np.ptp(after) < np.ptp(before) / 4


def test_a_model_that_already_matches_gets_no_offsets_and_a_shift_changes_nothing():
    logits, labels = _biased_logits()
    matched = logits + prior_offsets.fit_offsets(logits, labels, 4)
    np.testing.assert_allclose(prior_offsets.fit_offsets(matched, labels, 4), 0.0, atol=1e-6)
    np.testing.assert_allclose(prior_offsets.fit_offsets(logits + 5.0, labels, 4),
                               prior_offsets.fit_offsets(logits, labels, 4), atol=1e-9)


def test_a_class_without_held_out_images_keeps_its_share():
    logits, labels = _biased_logits()
    kept = labels != 2
    share = _softmax(logits[kept]).mean(axis=0)[2]
    offsets = prior_offsets.fit_offsets(logits[kept], labels[kept], 4)
    mean = _softmax(logits[kept] + offsets).mean(axis=0)
    assert mean[2] == pytest.approx(share, abs=1e-6)
    np.testing.assert_allclose(mean[[0, 1, 3]], [(1 - share) / 3] * 3, atol=1e-6)


def test_a_class_every_image_gives_no_probability_gets_finite_offsets():
    # Class 3's logit 800 below the others: its probability is 0.0 in float64 on every image.
    logits, labels = _biased_logits()
    logits[:, 3] -= 800.0
    offsets = prior_offsets.fit_offsets(logits, labels, 4)
    assert np.all(np.isfinite(offsets))
    # Equal to the offsets of the same logits with nothing underflowing, shifted for class 3.
    shifted = prior_offsets.fit_offsets(logits + np.array([0, 0, 0, 790.0]), labels, 4)
    np.testing.assert_allclose(offsets, shifted + np.array([-197.5, -197.5, -197.5, 592.5]),
                               atol=1e-6)


def test_offsets_that_have_not_converged_are_warned_about(caplog):
    logits, labels = _biased_logits()
    with caplog.at_level("WARNING"):
        prior_offsets.fit_offsets(logits, labels, 4)
    assert "fit_offsets" not in caplog.text
    # Out of iterations 4e-8 off, above a tolerance of 1e-9: too little to warn about.
    with caplog.at_level("WARNING"):
        prior_offsets.fit_offsets(logits, labels, 4, max_iterations=3, tolerance=1e-9)
    assert "fit_offsets" not in caplog.text
    with caplog.at_level("WARNING"):
        prior_offsets.fit_offsets(logits, labels, 4, max_iterations=2)
    assert "after max_iterations=2 the mean predicted probabilities are still up to" \
        in caplog.text


def test_confident_logits_are_fitted_in_a_few_iterations(caplog):
    # With the fixed-point step alone these ended a thousand iterations 2e-4 off, with a
    # warning (as the study's students did): a class's mean probability moved much less than
    # its offset. Newton's step fits them in a few.
    logits, labels = _biased_logits()
    logits = logits + 10.0 * np.eye(4)[labels]
    with caplog.at_level("WARNING"):
        offsets = prior_offsets.fit_offsets(logits, labels, 4, max_iterations=10)
    assert "fit_offsets" not in caplog.text
    np.testing.assert_allclose(_softmax(logits + offsets).mean(axis=0), [0.25] * 4, rtol=1e-6)


def test_class_ids_of_shape_n_1_are_read_as_class_ids():
    # keras.datasets' CIFAR layout: (n, 1) integer labels, not one-hot vectors.
    model, images, labels = _model_and_images(1, 400)
    flat = tllm_tf.apply_prior_offsets(model, (images, labels), num_classes=4)
    model, images, labels = _model_and_images(1, 400)
    column = tllm_tf.apply_prior_offsets(model, (images, labels[:, None]), num_classes=4)
    np.testing.assert_allclose(column["offsets"], flat["offsets"], atol=1e-9)
    assert column["held_out_accuracy_after"] == flat["held_out_accuracy_after"]


def test_fractional_class_ids_are_refused_before_the_offsets_reach_the_bias():
    model, images, labels = _model_and_images(1, 40)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="whole numbers"):
        tllm_tf.apply_prior_offsets(model, (images, labels + 0.7), num_classes=4)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize("logits, labels, message", [
    (np.zeros((5, 3)), np.zeros(5, int), r"logits of shape \(num_images, 4\)"),
    (np.zeros((5, 4)), np.zeros(4, int), "as many labels"),
    (np.zeros((5, 4)), np.full(5, 4), r"labels in \[0, 4\)"),
    (np.zeros((0, 4)), np.zeros(0, int), "Received: none"),
])
def test_bad_logits_or_labels_are_refused_with_what_was_received(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        prior_offsets.fit_offsets(logits, labels, 4)


def _wrapped_model(head_activation=None):
    """A zoo-like model: normalisation, then a nested network ending in a Dense head."""
    inputs = keras.Input(shape=(3,))
    hidden = keras.layers.Dense(5, activation="relu")(inputs)
    network = keras.Model(inputs, keras.layers.Dense(4, activation=head_activation)(hidden))
    return keras.Sequential([keras.Input(shape=(3,)), keras.layers.Normalization(mean=0.0,
                             variance=1.0), network])


def test_the_offsets_are_added_to_the_nested_output_bias():
    keras.utils.set_random_seed(0)
    model = _wrapped_model()
    images = np.random.default_rng(0).normal(size=(7, 3)).astype("float32")
    before = model(images).numpy()
    offsets = np.array([0.5, -0.25, 0.0, 1.0])
    prior_offsets.add_to_output_bias(model, offsets)
    np.testing.assert_allclose(model(images).numpy(), before + offsets, atol=1e-6)


def test_a_head_that_is_not_linear_is_refused_by_name():
    with pytest.raises(ValueError, match="linear Dense layer with a bias of 4 units. "
                                         "Received: Dense 'dense_"):
        prior_offsets.add_to_output_bias(_wrapped_model("softmax"), np.zeros(4))


def _model_and_images(seed, num_images):
    """A wrapped model and random images with labels of 4 classes."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    return (_wrapped_model(), rng.normal(size=(num_images, 3)).astype("float32"),
            rng.integers(0, 4, size=num_images))


def test_apply_prior_offsets_reports_the_held_out_accuracy_it_made():
    model, images, labels = _model_and_images(1, 400)
    result = tllm_tf.apply_prior_offsets(model, (images, labels), num_classes=4)
    predicted = model(images).numpy().argmax(axis=1)
    assert result["held_out_accuracy_after"] == pytest.approx(np.mean(predicted == labels))
    np.testing.assert_allclose(_softmax(model(images).numpy().astype(np.float64)).mean(axis=0),
                               np.bincount(labels, minlength=4) / 400, atol=1e-5)
    assert len(result["offsets"]) == 4


def _run(tmp_path, name, **changes):
    # The rule judges without offsets here, so both runs mask alike whatever the final offsets.
    return RunConfig(workdir=str(tmp_path / name), num_train=200, teacher_model="cnn_tiny",
                     epochs=2, warmup_epochs=0, masked_classes=(3,), verbose=0,
                     **dict(dict(rule_prior_offsets=False), **changes))


def _weights(workdir, stage):
    return keras.models.load_model(
        os.path.join(workdir, stage, workdir_files.MODEL_FILE), compile=False).get_weights()


def _offsets(workdir, stage):
    with open(os.path.join(workdir, stage, workdir_files.PRIOR_OFFSETS_FILE)) as handle:
        return np.array(json.load(handle)["offsets"], dtype=np.float32)


def test_the_stages_add_offsets_to_the_final_students_and_change_nothing_else(tmp_path):
    defaults = RunConfig(workdir=str(tmp_path / "defaults"))
    assert defaults.prior_offsets and defaults.rule_prior_offsets  # The defaults since 2026-12-05.
    plain = _run(tmp_path, "plain", prior_offsets=False)
    offset = _run(tmp_path, "offset", prior_offsets=True)
    stages.run(plain)
    stages.run(offset)
    # What the rule reads is the same: the reference's held-out record and the mask log.
    for name in (workdir_files.REFERENCE_STAGE + "/" + workdir_files.REFERENCE_FILE,
                 "student_tllm/" + workdir_files.MASK_LOG_FILE):
        with open(os.path.join(plain.workdir, name)) as a, open(
                os.path.join(offset.workdir, name)) as b:
            assert a.read() == b.read()
    assert not os.path.exists(os.path.join(plain.workdir, "student_tllm",
                                           workdir_files.PRIOR_OFFSETS_FILE))
    # The tllm student and the reference: the trained weights, the last bias plus the offsets.
    for stage in ("student_tllm", workdir_files.REFERENCE_STAGE):
        without, with_offsets = _weights(plain.workdir, stage), _weights(offset.workdir, stage)
        for a, b in zip(without[:-1], with_offsets[:-1], strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(with_offsets[-1], without[-1] + _offsets(offset.workdir, stage),
                                   atol=1e-6)
    assert os.path.exists(os.path.join(offset.workdir, "student_tllm_refit",
                                       workdir_files.PRIOR_OFFSETS_FILE))
    # The test accuracy without the offsets is the run's without them, kept beside them.
    for stage in ("student_tllm", workdir_files.REFERENCE_STAGE):
        with open(os.path.join(offset.workdir, stage, workdir_files.PRIOR_OFFSETS_FILE)) as f:
            record = json.load(f)
        with open(os.path.join(plain.workdir, stage, workdir_files.PER_CLASS_FILE)) as f:
            plain_record = json.load(f)
        assert record["test_accuracy_without_offsets"] == plain_record["accuracy"]
        assert (record["test_per_class_accuracy_without_offsets"]
                == plain_record["per_class_accuracy"])


def test_a_student_killed_before_its_offsets_resumes_to_the_uninterrupted_result(
        tmp_path, monkeypatch):
    whole = _run(tmp_path, "whole", prior_offsets=True, students=("tllm",))
    stages.run(whole)
    killed = dataclasses.replace(
        whole, workdir=str(tmp_path / "killed"), stage="student",
        teacher_path=os.path.join(whole.workdir, "teacher", workdir_files.MODEL_FILE),
        reference_path=os.path.join(whole.workdir, "reference", workdir_files.REFERENCE_FILE))
    original = fitting.stage_callbacks

    def killed_at_the_last_epoch(stage_dir, chief, start_epoch):
        return original(stage_dir, chief, start_epoch) + [_KillAtEpochEnd(1)]

    monkeypatch.setattr(fitting, "stage_callbacks", killed_at_the_last_epoch)
    with pytest.raises(_Killed):
        stages.run(killed)
    monkeypatch.undo()
    stages.run(killed)
    for a, b in zip(_weights(killed.workdir, "student_tllm"), _weights(whole.workdir, "student_tllm"),
                    strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_correctness_with_offsets_judges_the_offset_predictions_and_leaves_the_model():
    model, images, labels = _model_and_images(2, 300)
    before = model(images).numpy()
    correct, judged_labels = prior_offsets.per_image_correctness(
        model, 4, with_offsets=True)((images, labels))
    offsets = prior_offsets.fit_offsets(before, labels, 4)
    np.testing.assert_array_equal(correct, (before + offsets).argmax(axis=1) == labels)
    np.testing.assert_array_equal(judged_labels, labels)
    np.testing.assert_array_equal(model(images).numpy(), before)
    assert isinstance(prior_offsets.per_image_correctness(model, 4), tllm_tf.metrics.PerImageCorrectness)


@pytest.mark.parametrize("rule", ["paired", "paired_calibrated"])
def test_the_rule_with_offsets_reads_a_reference_recorded_with_offsets(tmp_path, rule):
    # Without offsets on the final models, so the saved reference is the one it recorded.
    config = _run(tmp_path, "rule", rule_prior_offsets=True, prior_offsets=False,
                  students=("tllm",), rule=rule)
    stages.run(config)
    reference_dir = os.path.join(config.workdir, workdir_files.REFERENCE_STAGE)
    recorded = tllm_tf.load_predictions(tllm_tf.predictions_path(
        os.path.join(reference_dir, workdir_files.REFERENCE_FILE)))
    data = stages.build.load_data(config)
    held_out = stages.build.eval_batches(data.held_out, config)
    reference = keras.models.load_model(os.path.join(reference_dir, workdir_files.MODEL_FILE))
    correct, _ = prior_offsets.per_image_correctness(reference, 10, with_offsets=True)(held_out)
    np.testing.assert_array_equal(recorded.final, correct)  # The last epoch, with its offsets.
    raw, _ = prior_offsets.per_image_correctness(reference, 10)(held_out)
    assert not np.array_equal(raw, correct)  # So the offsets are what was recorded.
    # With each epoch's calibrated scores, for rule="paired_calibrated".
    _, _, scores = calibration.PerImageScores(reference, 10, with_offsets=True)(held_out)
    assert recorded.scores.shape == recorded.correct.shape
    np.testing.assert_allclose(recorded.scores[-1], scores, atol=1e-6)
    with open(os.path.join(config.workdir, "student_tllm", workdir_files.MASK_LOG_FILE)) as log:
        records = [json.loads(line) for line in log]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {r["rule"] for r in records} == {rule}


def test_a_distiller_is_refused_by_name(seeded):
    student = make_mlp("student")
    teacher = make_mlp("teacher", width=16)
    bias_before = keras.ops.convert_to_numpy(teacher.layers[-1].bias)
    images = np.random.default_rng(0).random((16,) + IMAGE_SHAPE, dtype=np.float32)
    labels = np.arange(16) % 4
    with pytest.raises(ValueError, match=r"pass `distiller.student`"):
        tllm_tf.apply_prior_offsets(tllm_tf.Distiller(student, teacher), (images, labels),
                                    num_classes=4)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(teacher.layers[-1].bias),
                                  bias_before)
