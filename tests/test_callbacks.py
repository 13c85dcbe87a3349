import json
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

import tllm_tf
from tllm_tf import calibration
from tllm_tf import mask_log
from tllm_tf.analysis import reporting
from conftest import IMAGE_SHAPE, NUM_CLASSES, make_mlp


@pytest.fixture
def held_out():
    """Class 0 and class 1 examples share their inputs: a student cannot get
    both right, so at least one of them is below a perfect reference."""
    rng = np.random.default_rng(3)
    shared = rng.random((4,) + IMAGE_SHAPE, dtype=np.float32)
    others = rng.random((8,) + IMAGE_SHAPE, dtype=np.float32)
    x = np.concatenate([shared, shared, others])
    y = np.array([0] * 4 + [1] * 4 + [2] * 4 + [3] * 4, np.int32)
    return x, y


def _distiller(seed=0):
    keras.utils.set_random_seed(seed)
    distiller = tllm_tf.Distiller(make_mlp("student"), make_mlp("teacher", width=16))
    distiller.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=False)
    return distiller


def test_masks_classes_below_the_reference_with_a_compiled_step(tiny_data, held_out, tmp_path):
    x, y = tiny_data
    distiller = _distiller()
    assert not distiller.run_eagerly
    log_path = str(tmp_path / "mask_log.jsonl")
    callback = tllm_tf.UndistillableClassCallback(
        held_out, reference=[1.0, 1.0, 0.0, 0.0], log_path=log_path, warmup_epochs=0,
        sticky=False)
    history = distiller.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])

    student_accuracy = callback.student_accuracy
    assert min(student_accuracy[0], student_accuracy[1]) < 1.0
    expected = [c for c in range(NUM_CLASSES) if student_accuracy[c] < [1, 1, 0, 0][c]]
    assert expected and set(expected) <= {0, 1}
    assert distiller.undistillable_classes == expected
    assert history.history["num_undistillable_classes"][-1] == len(expected)
    np.testing.assert_allclose(
        student_accuracy, tllm_tf.per_class_accuracy(distiller, held_out, NUM_CLASSES))

    with open(log_path) as handle:
        records = [json.loads(line) for line in handle]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["class_mask"] == [0.0 if c in expected else 1.0 for c in range(4)]
    assert records[-1]["reference_accuracy"] == [1.0, 1.0, 0.0, 0.0]
    assert records[-1]["num_samples"] == [4, 4, 4, 4]


def test_update_schedule_follows_warmup_and_update_every(tiny_data, held_out, tmp_path):
    x, y = tiny_data
    log_path = str(tmp_path / "log.jsonl")
    callback = tllm_tf.UndistillableClassCallback(
        held_out, reference=np.ones(NUM_CLASSES), warmup_epochs=1, update_every=2,
        log_path=log_path, patience=1)
    history = _distiller().fit(x, y, batch_size=8, epochs=5, verbose=0, callbacks=[callback])
    with open(log_path) as handle:
        assert [json.loads(line)["epoch"] for line in handle] == [3, 5]
    counts = history.history["num_undistillable_classes"]
    assert counts[:2] == [0, 0] and counts[2] > 0


@pytest.mark.parametrize("epochs, warmup_epochs, update_every, expected", [
    (20, None, None, (10, 1)),   # The base study: one look an epoch, as the defaults were chosen.
    (60, None, None, (30, 3)),   # Three times the epochs: still ten looks, every third epoch.
    (240, 30, None, (30, 21)),
    (25, None, None, (12, 1)),   # Fewer than ten epochs a look apart: every epoch.
    (60, None, 1, (30, 1)),      # Given: kept.
    (0, None, None, (0, 1)),     # No fit yet.
])
def test_update_schedule_spreads_ten_looks_unless_given(
        epochs, warmup_epochs, update_every, expected):
    schedule = tllm_tf.callbacks.update_schedule(epochs, warmup_epochs, update_every)
    assert schedule == expected


def test_default_update_schedule_takes_ten_looks_after_the_warmup(tiny_data, held_out, tmp_path):
    x, y = tiny_data
    log_path = str(tmp_path / "log.jsonl")
    callback = tllm_tf.UndistillableClassCallback(
        held_out, reference=np.ones(NUM_CLASSES), warmup_epochs=2, log_path=log_path)
    assert callback.get_config()["update_every"] is None
    _distiller().fit(x, y, batch_size=8, epochs=22, verbose=0, callbacks=[callback])
    with open(log_path) as handle:
        assert [json.loads(line)["epoch"] for line in handle] == [4, 6, 8, 10, 12, 14, 16, 18,
                                                                  20, 22]


def test_max_updates_closes_the_window_and_keeps_the_mask(tiny_data, held_out, tmp_path):
    """Two updates (epochs 2 and 3), then the mask of epoch 3 to the end, even if the rule would
    now unmask a class: a class judged behind by a perfect reference stays behind."""
    x, y = tiny_data
    log_path = str(tmp_path / "log.jsonl")
    callback = tllm_tf.UndistillableClassCallback(
        held_out, reference=np.ones(NUM_CLASSES), rule="unpaired", warmup_epochs=1,
        max_updates=2, sticky=False, patience=1, log_path=log_path)
    distiller = _distiller()
    history = distiller.fit(x, y, batch_size=8, epochs=6, verbose=0, callbacks=[callback])
    with open(log_path) as handle:
        records = [json.loads(line) for line in handle]
    assert [r["epoch"] for r in records] == [2, 3]
    counts = history.history["num_undistillable_classes"]
    assert counts[0] == 0 and counts[2:] == [counts[2]] * 4 and counts[2] > 0
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(distiller.class_mask),
                                  records[-1]["class_mask"])


def test_max_updates_spends_the_level_over_its_own_updates(tiny_data, held_out):
    """A sticky mask divides the level by the updates the fit will make: fewer with a window."""
    x, y = tiny_data
    looks = {}
    for max_updates in (None, 2):
        callback = tllm_tf.UndistillableClassCallback(
            held_out, reference=np.ones(NUM_CLASSES), rule="unpaired", warmup_epochs=0,
            max_updates=max_updates)
        _distiller().fit(x, y, batch_size=8, epochs=5, verbose=0, callbacks=[callback])
        looks[max_updates] = callback._looks
    assert looks == {None: 5, 2: 2}


def test_reference_from_a_model_is_evaluated_once_at_train_begin(tiny_data, held_out):
    x, y = tiny_data
    keras.utils.set_random_seed(5)
    reference_model = make_mlp("reference")
    calls = []
    original_call = reference_model.call

    def counting_call(*args, **kwargs):
        calls.append(1)
        return original_call(*args, **kwargs)

    reference_model.call = counting_call
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=reference_model)
    _distiller().fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[callback])
    assert len(calls) == 1  # traced once inside one compiled pass
    np.testing.assert_allclose(
        callback.reference_accuracy,
        tllm_tf.per_class_accuracy(reference_model, held_out, NUM_CLASSES))


def test_reference_from_json_file(tiny_data, held_out, tmp_path):
    x, y = tiny_data
    path = str(tmp_path / "reference.json")
    tllm_tf.save_reference(path, [0.5, 0.25, np.nan, 1.0], num_samples=[4, 4, 0, 4])
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=path)
    _distiller().fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    np.testing.assert_array_equal(callback.reference_accuracy, [0.5, 0.25, np.nan, 1.0])


def test_one_instance_can_be_reused_for_several_fits(tiny_data, held_out):
    x, y = tiny_data
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=[1.0, 1.0, 0.0, 0.0])
    for seed in (0, 1):
        distiller = _distiller(seed)
        distiller.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
        np.testing.assert_allclose(
            callback.student_accuracy,
            tllm_tf.per_class_accuracy(distiller, held_out, NUM_CLASSES))


def test_fits_of_the_same_model_reuse_the_traced_per_class_pass(tiny_data, held_out):
    x, y = tiny_data
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=[1.0, 1.0, 0.0, 0.0])
    distiller = _distiller()
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    correctness = callback._correctness
    for _ in range(2):
        distiller.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert callback._correctness is correctness
    assert correctness._run.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(
        callback.student_accuracy, tllm_tf.per_class_accuracy(distiller, held_out, NUM_CLASSES))


def test_accepts_a_batched_dataset(tiny_data, held_out):
    x, y = tiny_data
    dataset = tf.data.Dataset.from_tensor_slices(held_out).batch(5)
    callback = tllm_tf.UndistillableClassCallback(dataset, reference=[1.0, 1.0, 0.0, 0.0],
                                                  patience=1)
    distiller = _distiller()
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert distiller.undistillable_classes


def test_by_default_a_class_is_masked_when_behind_at_two_updates_in_a_row(tiny_data, held_out):
    x, y = tiny_data
    # A perfect reference on classes 0 and 1: behind at every update the student misses them.
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=[1.0, 1.0, 0.0, 0.0],
                                                  rule="unpaired", warmup_epochs=0)
    distiller = _distiller()
    history = distiller.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    counts = history.history["num_undistillable_classes"]
    assert counts[0] == 0 and counts[1] > 0


# -- bad input ---------------------------------------------------------------

def test_rejects_reference_of_the_wrong_length(tiny_data, held_out):
    x, y = tiny_data
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=[1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="3 per-class accuracies.*num_classes=4"):
        _distiller().fit(x, y, epochs=1, verbose=0, callbacks=[callback])


@pytest.mark.parametrize("kwargs, message", [
    ({"margin": -0.1}, "margin >= 0"),
    ({"warmup_epochs": -1}, "warmup_epochs >= 0"),
    ({"update_every": 0}, "update_every >= 1"),
    ({"max_updates": 0}, r"max_updates >= 1 or None. Received: max_updates=0"),
    ({"min_samples": 0}, "min_samples >= 1"),
])
def test_rejects_bad_arguments(held_out, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tllm_tf.UndistillableClassCallback(held_out, reference=[1.0] * 4, **kwargs)


def test_rejects_a_model_without_a_class_mask(tiny_data, held_out):
    x, y = tiny_data
    model = make_mlp("plain")
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=[1.0] * 4)
    with pytest.raises(ValueError, match="needs a tllm_tf.Distiller"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])


# -- guards against noisy per-class accuracy ----------------------------------

def _log_records(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def test_epoch_matched_compares_with_the_reference_of_the_same_epoch(
        tiny_data, held_out, tmp_path):
    x, y = tiny_data
    log_path = str(tmp_path / "log.jsonl")
    # Epoch 1: a reference of 0 flags nothing; epoch 2: a reference of 1 flags
    # every class the student misses; epochs 3-4 reuse the last row (0.0).
    history = np.array([[0.0] * 4, [1.0] * 4, [0.0] * 4])
    callback = tllm_tf.UndistillableClassCallback(
        held_out, reference=history, epoch_matched=True, log_path=log_path, warmup_epochs=0,
        sticky=False, patience=1)
    _distiller().fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[callback])
    records = _log_records(log_path)
    assert [r["reference_accuracy"] for r in records] == [
        [0.0] * 4, [1.0] * 4, [0.0] * 4, [0.0] * 4]
    assert [r["num_undistillable_classes"] for r in records[::2]] == [0, 0]
    second = records[1]
    expected = [0.0 if a < 1.0 else 1.0 for a in second["student_accuracy"]]
    assert second["class_mask"] == expected and 0.0 in expected


def test_epoch_matched_reads_a_reference_history_file(tiny_data, held_out, tmp_path):
    x, y = tiny_data
    path = str(tmp_path / "reference.json")
    tllm_tf.save_reference(path, [0.5] * 4, per_epoch_accuracy=[[0.1] * 4, [0.5] * 4])
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=path, epoch_matched=True)
    _distiller().fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    np.testing.assert_array_equal(callback.reference_accuracy, [0.1] * 4)


@pytest.mark.parametrize("make_reference, message", [
    (lambda path: make_mlp("reference"), "not a model"),
    (lambda path: path, "no per-epoch accuracy"),
    (lambda path: [1.0] * 4, "rank 2"),
])
def test_epoch_matched_needs_a_per_epoch_reference(
        tiny_data, held_out, tmp_path, make_reference, message):
    x, y = tiny_data
    path = str(tmp_path / "reference.json")
    tllm_tf.save_reference(path, [0.5] * 4)
    callback = tllm_tf.UndistillableClassCallback(
        held_out, reference=make_reference(path), epoch_matched=True)
    with pytest.raises(ValueError, match=message):
        _distiller().fit(x, y, epochs=1, verbose=0, callbacks=[callback])


def test_a_per_epoch_reference_needs_epoch_matched(tiny_data, held_out):
    x, y = tiny_data
    callback = tllm_tf.UndistillableClassCallback(
        held_out, reference=np.ones((3, 4)), epoch_matched=False)
    with pytest.raises(ValueError, match="rank 1.*epoch_matched=False"):
        _distiller().fit(x, y, epochs=1, verbose=0, callbacks=[callback])


def test_patience_state_lives_in_the_model_across_fits(tiny_data, held_out):
    # The streak is in the Distiller's variables (so checkpoints keep it): a
    # second fit of the same model continues it; a new model starts afresh.
    x, y = tiny_data
    callback = tllm_tf.UndistillableClassCallback(
        held_out, reference=[1.0] * 4, patience=2, rule="unpaired")
    distiller = _distiller()
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert distiller.undistillable_classes == []
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert distiller.undistillable_classes
    fresh = _distiller()
    fresh.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert fresh.undistillable_classes == []


@pytest.mark.parametrize("rule", ["unpaired", "paired_calibrated"])
def test_resume_from_saved_weights_continues_the_rule_exactly(tiny_data, held_out, tmp_path, rule):
    """Patience and smoothing state travel with the weights, as the mask does."""
    x, y = tiny_data
    reference = [0.9] * 4
    if rule == "paired_calibrated":  # The calibrated gaps and their standard errors smoothed.
        reference = tllm_tf.ReferencePredictions(
            labels=held_out[1], correct=np.ones((1, len(held_out[1])), bool),
            scores=np.linspace(0.6, 0.95, len(held_out[1]))[np.newaxis])
    kwargs = dict(reference=reference, rule=rule, patience=2, smoothing=0.5,
                  warmup_epochs=0, sticky=False)
    whole = _distiller()
    whole.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
              callbacks=[tllm_tf.UndistillableClassCallback(held_out, **kwargs)])
    first = _distiller()
    first.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[tllm_tf.UndistillableClassCallback(held_out, **kwargs)])
    path = str(tmp_path / "epoch1.weights.h5")
    first.save_weights(path)
    resumed = _distiller(seed=7)
    resumed.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0)  # builds the optimizer
    resumed.load_weights(path)
    resumed.optimizer.iterations.assign(first.optimizer.iterations)
    for variable, value in zip(resumed.optimizer.variables, first.optimizer.variables):
        variable.assign(value)
    resumed.fit(x, y, batch_size=8, epochs=3, initial_epoch=1, shuffle=False, verbose=0,
                callbacks=[tllm_tf.UndistillableClassCallback(held_out, **kwargs)])
    np.testing.assert_array_equal(resumed.class_mask.numpy(), whole.class_mask.numpy())
    np.testing.assert_allclose(resumed.identification_state.numpy(),
                               whole.identification_state.numpy(), rtol=1e-6)
    assert np.isfinite(whole.identification_state.numpy()[1:3]).all()  # Averages were kept.


def test_paired_rule_with_a_reference_model(tiny_data, held_out, tmp_path):
    x, y = tiny_data
    keras.utils.set_random_seed(5)
    reference_model = make_mlp("reference")
    log_path = str(tmp_path / "log.jsonl")
    callback = tllm_tf.UndistillableClassCallback(
        held_out, reference=reference_model, log_path=log_path)
    _distiller().fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert callback.effective_rule == "paired"
    record = _log_records(log_path)[0]
    assert record["rule"] == "paired"
    reference_correct = np.argmax(reference_model.predict(held_out[0], verbose=0), -1) == held_out[1]
    student_correct = np.argmax(callback.model.predict(held_out[0], verbose=0), -1) == held_out[1]
    expected = np.bincount(held_out[1][reference_correct & ~student_correct], minlength=4)
    assert record["behind_counts"] == expected.tolist()
    assert len(record["p_values"]) == NUM_CLASSES


@pytest.mark.parametrize("rule, cap", [("paired_calibrated", 1.0), ("paired_capped", 0.9)])
def test_the_calibrated_rules_with_a_reference_model(tiny_data, held_out, tmp_path, rule, cap):
    x, y = tiny_data
    keras.utils.set_random_seed(5)
    reference_model = make_mlp("reference")
    # Trained on the held-out images themselves, so that it is sure of some: a cap then bites.
    reference_model.compile(optimizer=keras.optimizers.Adam(0.01),
                            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    reference_model.fit(*held_out, epochs=50, verbose=0)
    log_path = str(tmp_path / "log.jsonl")
    callback = tllm_tf.UndistillableClassCallback(
        held_out, reference=reference_model, rule=rule, log_path=log_path, warmup_epochs=0)
    _distiller().fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    record = _log_records(log_path)[0]
    assert record["rule"] == callback.effective_rule == rule
    images, labels = held_out
    # Each model's scores at its own temperature, fitted on the held-out images, then capped.
    student_scores = calibration.calibrated_scores(
        callback.model.student.predict(images, verbose=0), labels)
    reference_scores = calibration.calibrated_scores(
        reference_model.predict(images, verbose=0), labels)
    if cap < 1.0:  # Only a cap that bites tells the rules apart.
        assert (np.maximum(student_scores, reference_scores) > cap).any()
    differences = np.minimum(reference_scores, cap) - np.minimum(student_scores, cap)
    expected_mean = [differences[labels == c].mean() for c in range(NUM_CLASSES)]
    np.testing.assert_allclose(record["mean_score_gap"], expected_mean, atol=1e-5)
    expected_error = [differences[labels == c].std(ddof=1) / 2 for c in range(NUM_CLASSES)]
    np.testing.assert_allclose(record["score_gap_standard_error"], expected_error, atol=1e-5)
    assert len(record["p_values"]) == NUM_CLASSES


@pytest.mark.parametrize("rule", ["paired_calibrated", "paired_capped"])
def test_the_calibrated_rules_refuse_predictions_without_scores(tiny_data, held_out, rule):
    x, y = tiny_data
    reference = tllm_tf.ReferencePredictions(
        labels=held_out[1], correct=np.ones((1, len(held_out[1])), bool))
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=reference, rule=rule)
    with pytest.raises(ValueError, match=f"rule='{rule}' compares.*hold none: they were "
                                         "recorded before scores.*Re-run the reference stage"):
        _distiller().fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])


@pytest.mark.parametrize("sticky, looks", [(True, 3), (False, 1)])
def test_the_log_records_the_level_of_each_look(tiny_data, held_out, tmp_path, sticky, looks):
    # A sticky mask spends the significance over the planned looks; the report reads it back.
    x, y = tiny_data
    keras.utils.set_random_seed(5)
    log_path = str(tmp_path / "log.jsonl")
    callback = tllm_tf.UndistillableClassCallback(
        held_out, reference=make_mlp("reference"), log_path=log_path, warmup_epochs=0,
        significance=0.06, correction="benjamini_hochberg", sticky=sticky)
    _distiller().fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[callback])
    records = _log_records(log_path)
    assert len(records) == 3
    for record in records:
        assert record["significance_per_look"] == pytest.approx(0.06 / looks)
        assert record["correction"] == "benjamini_hochberg"
    # What the report makes of it: the last look, judged at its own level.
    limit = reporting.detection_limit(
        {"mask_history": mask_log.load_mask_history(log_path), "class_names": None})
    assert limit["epoch"] == 3 and limit["level"] == pytest.approx(0.06 / looks / NUM_CLASSES)
    discordant = np.add(records[-1]["behind_counts"], records[-1]["ahead_counts"])
    assert [row["discordant"] for row in limit["classes"]] == discordant.tolist()


def test_per_class_reference_falls_back_to_unpaired_with_a_warning(tiny_data, held_out, caplog):
    x, y = tiny_data
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=[0.5] * 4)
    with caplog.at_level("WARNING"):
        _distiller().fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert callback.effective_rule == "unpaired"
    assert "unpaired rule" in caplog.text


def test_the_unpaired_rule_asked_for_with_a_reference_model_judges(tiny_data, held_out, tmp_path):
    # The paired rule judged, and the log said so, wherever the reference had per-image
    # results: a model or its predictions.
    x, y = tiny_data
    log_path = str(tmp_path / "mask_log.jsonl")
    callback = tllm_tf.UndistillableClassCallback(
        held_out, reference=make_mlp("reference"), rule="unpaired", warmup_epochs=0,
        log_path=log_path)
    _distiller().fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert callback.effective_rule == "unpaired"
    with open(log_path) as handle:
        (record,) = [json.loads(line) for line in handle]
    assert record["rule"] == "unpaired" and "behind_counts" not in record


@pytest.mark.parametrize("reference, warned", [
    ([0.9, 0.1, 0.8, 0.25], "classes [1, 3] right on no more than chance (25%) of their "
                            "held-out images (10%, 25%)"),
    ([0.9, 0.3, 0.8, 0.6], None)])
def test_a_reference_that_has_not_learned_a_class_is_warned_about(
        tiny_data, held_out, caplog, reference, warned):
    x, y = tiny_data
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=reference)
    with caplog.at_level("WARNING"):
        _distiller().fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    if warned:
        assert warned in caplog.text
        assert "in effect not judged" in caplog.text
    else:
        assert "has not learned" not in caplog.text


def test_reference_predictions_of_another_split_are_refused(tiny_data, held_out, tmp_path):
    x, y = tiny_data
    reference_path = str(tmp_path / "reference.json")
    tllm_tf.save_reference(reference_path, [0.5] * 4)
    tllm_tf.save_predictions(tllm_tf.predictions_path(reference_path),
                             labels=np.arange(12) % 4, correct=np.ones((1, 12), bool))
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=reference_path)
    with pytest.raises(ValueError, match="another held-out split.*12 images.*16"):
        _distiller().fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])


@pytest.mark.parametrize("rule", ["paired", "paired_calibrated"])
def test_no_class_behind_trains_exactly_as_kd(tiny_data, held_out, rule):
    """No harm by construction: a mask of ones is plain KD, bit for bit."""
    x, y = tiny_data
    kd = _distiller()
    kd.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    tllm = _distiller()
    reference = tllm_tf.ReferencePredictions(
        labels=held_out[1], correct=np.zeros((1, len(held_out[1])), bool),
        scores=np.zeros((1, len(held_out[1])), np.float32))
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=reference, rule=rule)
    tllm.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[callback])
    assert tllm.undistillable_classes == []
    for a, b in zip(kd.student.get_weights(), tllm.student.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_get_config_has_every_argument(held_out):
    callback = tllm_tf.UndistillableClassCallback(
        held_out, reference=[0.5] * 4, margin=0.02, warmup_epochs=3, update_every=2,
        sticky=True, min_samples=5, epoch_matched=True, smoothing=0.3, patience=2,
        margin_standard_errors=1.5, epochs=12)
    assert callback.get_config() == {
        "rule": "paired", "significance": 0.05, "correction": "holm", "margin": 0.02, "warmup_epochs": 3, "update_every": 2, "sticky": True,
        "min_samples": 5, "log_path": None, "epoch_matched": True, "smoothing": 0.3,
        "patience": 2, "margin_standard_errors": 1.5, "masked_classes": [],
        "max_updates": None, "prior_offsets": None, "epochs": 12,
    }
    assert tllm_tf.UndistillableClassCallback(
        held_out, reference=[0.5] * 4, prior_offsets=True).get_config()["prior_offsets"] is True
    assert tllm_tf.UndistillableClassCallback(
        held_out, reference=[0.5] * 4, masked_classes=[3, 1]).get_config()["masked_classes"] == [3, 1]
    assert tllm_tf.UndistillableClassCallback(
        held_out, reference=[0.5] * 4, max_updates=3).get_config()["max_updates"] == 3


def test_masked_classes_are_never_distilled_from_the_first_step(tiny_data, held_out, tmp_path):
    """The same training as a mask set by hand before `fit`, and kept through the rule's updates."""
    x, y = tiny_data
    by_hand = _distiller()
    by_hand.set_class_mask([1.0, 1.0, 0.0, 1.0])
    by_hand.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    fixed = _distiller()
    nothing_behind = tllm_tf.ReferencePredictions(
        labels=held_out[1], correct=np.zeros((1, len(held_out[1])), bool))
    log_path = str(tmp_path / "log.jsonl")
    callback = tllm_tf.UndistillableClassCallback(
        held_out, reference=nothing_behind, masked_classes=[2], warmup_epochs=0,
        log_path=log_path)
    fixed.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[callback])
    assert fixed.undistillable_classes == [2]
    assert [r["class_mask"] for r in _log_records(log_path)] == [[1.0, 1.0, 0.0, 1.0]] * 2
    for a, b in zip(by_hand.student.get_weights(), fixed.student.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_masked_classes_outside_the_model_are_refused_at_train_begin(tiny_data, held_out):
    x, y = tiny_data
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=[1.0] * 4,
                                                  masked_classes=[4])
    with pytest.raises(ValueError, match=r"classes \[4\].*4 classes, ids 0 to 3"):
        _distiller().fit(x, y, epochs=1, verbose=0, callbacks=[callback])


@pytest.mark.parametrize("kwargs, message", [
    ({"smoothing": 1.0}, "0 <= smoothing < 1"),
    ({"smoothing": -0.1}, "0 <= smoothing < 1"),
    ({"patience": 0}, "patience >= 1"),
    ({"margin_standard_errors": -1.0}, "margin_standard_errors >= 0"),
    ({"masked_classes": [1, 1]}, "distinct class ids >= 0"),
    ({"masked_classes": [-1]}, "distinct class ids >= 0"),
])
def test_rejects_bad_guard_arguments(held_out, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tllm_tf.UndistillableClassCallback(held_out, reference=[1.0] * 4, **kwargs)


def test_defaults_wait_half_the_fit_match_epochs_and_spend_the_level(tiny_data, held_out, tmp_path):
    x, y = tiny_data
    log_path = str(tmp_path / "log.jsonl")
    history = np.full((4, NUM_CLASSES), 0.5)
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=history, log_path=log_path)
    _distiller().fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[callback])
    assert [r["epoch"] for r in _log_records(log_path)] == [3, 4]  # warm-up: half of 4
    assert callback._resolved.matched and callback._looks == 2


@pytest.mark.parametrize("recorded_with, judged_with, message", [
    (False, True, "recorded without prior offsets, and this callback judges with them"),
    (True, False, "recorded with prior offsets, and this callback judges without them"),
])
def test_a_reference_recorded_otherwise_than_the_callback_judges_is_refused(
        tiny_data, held_out, recorded_with, judged_with, message):
    x, y = tiny_data
    recorded = tllm_tf.ReferencePredictions(
        labels=held_out[1], correct=np.ones((1, len(held_out[1])), bool),
        prior_offsets=recorded_with)
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=recorded,
                                                  prior_offsets=judged_with)
    with pytest.raises(ValueError, match=message):
        _distiller().fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])


def test_prior_offsets_need_the_paired_rules_predictions(tiny_data, held_out):
    x, y = tiny_data
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=[0.5] * 4,
                                                  prior_offsets=True)
    with pytest.raises(ValueError, match="needs the reference's held-out predictions"):
        _distiller().fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])


def test_the_predictions_file_keeps_whether_offsets_judged_it(tmp_path):
    path = str(tmp_path / "predictions.npz")
    tllm_tf.save_predictions(path, [0, 1], [[True, False]], prior_offsets=True)
    assert tllm_tf.load_predictions(path).prior_offsets
    tllm_tf.save_predictions(path, [0, 1], [[True, False]])
    assert not tllm_tf.load_predictions(path).prior_offsets
    # A file of an earlier version has no such entry: judged without offsets.
    np.savez(str(tmp_path / "old.npz"), labels=np.array([0, 1], np.int32),
             correct=np.array([[True, False]]))
    assert not tllm_tf.load_predictions(str(tmp_path / "old.npz")).prior_offsets


def test_by_default_the_callback_judges_as_the_reference_was_recorded(tiny_data, held_out):
    x, y = tiny_data
    for recorded_with in (True, False):
        callback = tllm_tf.UndistillableClassCallback(held_out, reference=tllm_tf.ReferencePredictions(
            labels=held_out[1], correct=np.ones((1, len(held_out[1])), bool),
            prior_offsets=recorded_with))
        _distiller().fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
        assert isinstance(callback._correctness, tllm_tf.prior_offsets.PerImageCorrectnessWithOffsets) \
            == recorded_with


def _loop_kwargs():
    return dict(reference=[0.6, 0.5, 0.4, 0.3], rule="unpaired", patience=1)


def test_a_training_split_over_fits_with_epochs_plans_as_one_fit(tiny_data, held_out):
    x, y = tiny_data
    whole = _distiller()
    whole.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0,
              callbacks=[tllm_tf.UndistillableClassCallback(held_out, **_loop_kwargs())])
    looped = _distiller()
    callback = tllm_tf.UndistillableClassCallback(held_out, epochs=4, **_loop_kwargs())
    for epoch in range(4):
        looped.fit(x, y, batch_size=8, epochs=epoch + 1, initial_epoch=epoch, shuffle=False,
                   verbose=0, callbacks=[callback])
    assert whole.undistillable_classes  # something to compare
    np.testing.assert_array_equal(looped.class_mask.numpy(), whole.class_mask.numpy())
    np.testing.assert_array_equal(looped.identification_state.numpy(),
                                  whole.identification_state.numpy())
    with pytest.raises(ValueError, match="runs to epoch 5, past the callback's epochs=4"):
        looped.fit(x, y, batch_size=8, epochs=5, initial_epoch=4, verbose=0,
                   callbacks=[callback])


def test_a_loop_of_fits_without_epochs_is_warned_about(tiny_data, held_out, caplog):
    x, y = tiny_data
    distiller = _distiller()
    callback = tllm_tf.UndistillableClassCallback(held_out, **_loop_kwargs())
    with caplog.at_level(logging.WARNING):
        distiller.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
        distiller.fit(x, y, batch_size=8, epochs=2, initial_epoch=1, verbose=0,
                      callbacks=[callback])
    assert "this fit has epochs=2, the last one had 1" in caplog.text
    assert "epochs=TOTAL" in caplog.text
    assert "start again" not in caplog.text  # It continued the count.


@pytest.mark.parametrize("planned", [None, 3])
def test_fits_that_count_from_epoch_0_again_on_one_model_are_warned_about(
        tiny_data, held_out, caplog, planned):
    # fit(epochs=1) in a loop: with epochs=3 no look ever came, without it each fit looked at
    # the whole level, and neither said a word.
    x, y = tiny_data
    distiller, other = _distiller(), _distiller(1)
    callback = tllm_tf.UndistillableClassCallback(held_out, epochs=planned, **_loop_kwargs())
    with caplog.at_level(logging.WARNING):
        distiller.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
        other.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
        assert "start again" not in caplog.text  # Another model: another training.
        other.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert ("this fit starts at epoch 1, but the last fit of this model ran to epoch 1"
            in caplog.text)
    assert "initial_epoch=e" in caplog.text


def test_a_held_out_set_that_reshuffles_is_refused_before_training(tiny_data, held_out):
    x, y = tiny_data
    distiller = _distiller()
    shuffled = tf.data.Dataset.from_tensor_slices(held_out).shuffle(
        16, seed=1, reshuffle_each_iteration=True).batch(4)
    reference = make_mlp("reference")
    with pytest.raises(ValueError, match="in another order.*no .shuffle"):
        distiller.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[
            tllm_tf.UndistillableClassCallback(shuffled, reference=reference)])
    assert int(distiller.optimizer.iterations) == 0


def test_validation_logs_count_the_same_mask(tiny_data, held_out):
    x, y = tiny_data
    distiller = _distiller()
    history = distiller.fit(
        x, y, batch_size=8, epochs=2, verbose=0, validation_data=held_out,
        callbacks=[tllm_tf.UndistillableClassCallback(held_out, warmup_epochs=0,
                                                      **_loop_kwargs())])
    assert history.history["num_undistillable_classes"][-1] > 0
    assert (history.history["val_num_undistillable_classes"]
            == history.history["num_undistillable_classes"])
