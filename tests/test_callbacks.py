import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tllm_tf
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
        held_out, reference=[1.0, 1.0, 0.0, 0.0], log_path=log_path)
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
        log_path=log_path)
    history = _distiller().fit(x, y, batch_size=8, epochs=5, verbose=0, callbacks=[callback])
    with open(log_path) as handle:
        assert [json.loads(line)["epoch"] for line in handle] == [3, 5]
    counts = history.history["num_undistillable_classes"]
    assert counts[:2] == [0, 0] and counts[2] > 0


def _judge(callback, student_accuracy, num_samples=(10, 10, 10, 10)):
    return callback.compute_mask(np.asarray(student_accuracy, float), np.asarray(num_samples))


def _begun(callback, distiller=None):
    callback.set_model(distiller or _distiller())
    callback.on_train_begin()
    return callback


def test_margin_min_samples_and_missing_reference_keep_distilling(held_out):
    callback = _begun(tllm_tf.UndistillableClassCallback(
        held_out, reference=[0.9, 0.9, np.nan, 0.9], margin=0.05, min_samples=5))
    mask = _judge(callback, [0.86, 0.84, 0.0, 0.1], num_samples=(10, 10, 10, 4))
    # 0.86 is within the margin; 0.84 is not; class 2 has no reference;
    # class 3 has too few held-out samples to be judged.
    np.testing.assert_array_equal(mask, [1, 0, 1, 1])


@pytest.mark.parametrize("sticky, expected", [(True, [0, 1, 1, 1]), (False, [1, 1, 1, 1])])
def test_sticky_keeps_a_masked_class_masked(held_out, sticky, expected):
    callback = _begun(tllm_tf.UndistillableClassCallback(
        held_out, reference=[0.5] * 4, sticky=sticky))
    np.testing.assert_array_equal(_judge(callback, [0.4, 0.6, 0.6, 0.6]), [0, 1, 1, 1])
    np.testing.assert_array_equal(_judge(callback, [0.6, 0.6, 0.6, 0.6]), expected)


def test_sticky_set_is_read_back_from_a_restored_mask(held_out):
    distiller = _distiller()
    distiller.set_class_mask([1, 1, 0, 1])
    callback = _begun(tllm_tf.UndistillableClassCallback(
        held_out, reference=[0.5] * 4, sticky=True), distiller)
    np.testing.assert_array_equal(_judge(callback, [0.9] * 4), [1, 1, 0, 1])


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
    counter = callback._counter
    for _ in range(2):
        distiller.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert callback._counter is counter
    assert counter._count.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(
        callback.student_accuracy, tllm_tf.per_class_accuracy(distiller, held_out, NUM_CLASSES))


def test_accepts_a_batched_dataset(tiny_data, held_out):
    x, y = tiny_data
    dataset = tf.data.Dataset.from_tensor_slices(held_out).batch(5)
    callback = tllm_tf.UndistillableClassCallback(dataset, reference=[1.0, 1.0, 0.0, 0.0])
    distiller = _distiller()
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert distiller.undistillable_classes


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
        held_out, reference=history, epoch_matched=True, log_path=log_path)
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
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=np.ones((3, 4)))
    with pytest.raises(ValueError, match="rank 1.*epoch_matched=False"):
        _distiller().fit(x, y, epochs=1, verbose=0, callbacks=[callback])


def test_smoothing_averages_the_accuracies_over_updates(held_out):
    reference = [0.5] * 4
    plain = _begun(tllm_tf.UndistillableClassCallback(held_out, reference=reference))
    smooth = _begun(tllm_tf.UndistillableClassCallback(
        held_out, reference=reference, smoothing=0.5))
    first, second = [0.8, 0.4, 0.6, 0.6], [0.3, 0.4, 0.6, 0.45]
    np.testing.assert_array_equal(_judge(plain, first), [1, 0, 1, 1])
    np.testing.assert_array_equal(_judge(smooth, first), [1, 0, 1, 1])
    np.testing.assert_array_equal(_judge(plain, second), [0, 0, 1, 0])
    # Moving averages: 0.55, 0.4, 0.6, 0.525; only class 1 stays below 0.5.
    np.testing.assert_array_equal(_judge(smooth, second), [1, 0, 1, 1])


def test_smoothing_also_averages_an_epoch_matched_reference(held_out):
    callback = _begun(tllm_tf.UndistillableClassCallback(
        held_out, reference=[[0.0] * 4, [1.0] * 4], epoch_matched=True, smoothing=0.5))
    callback.reference_accuracy = callback._reference_at(0)
    np.testing.assert_array_equal(_judge(callback, [0.4] * 4), [1, 1, 1, 1])
    callback.reference_accuracy = callback._reference_at(1)
    # Reference average 0.5, student average 0.45 and 0.55.
    np.testing.assert_array_equal(_judge(callback, [0.5, 0.7, 0.5, 0.7]), [0, 1, 0, 1])


def test_patience_needs_consecutive_updates_behind(held_out):
    callback = _begun(tllm_tf.UndistillableClassCallback(
        held_out, reference=[0.5] * 4, patience=2))
    np.testing.assert_array_equal(_judge(callback, [0.4, 0.4, 0.6, 0.6]), [1, 1, 1, 1])
    np.testing.assert_array_equal(_judge(callback, [0.4, 0.6, 0.4, 0.6]), [0, 1, 1, 1])
    np.testing.assert_array_equal(_judge(callback, [0.4, 0.4, 0.6, 0.6]), [0, 1, 1, 1])
    np.testing.assert_array_equal(_judge(callback, [0.6, 0.4, 0.6, 0.6]), [1, 0, 1, 1])


def test_patience_state_is_reset_by_a_new_fit(tiny_data, held_out):
    x, y = tiny_data
    callback = tllm_tf.UndistillableClassCallback(
        held_out, reference=[1.0] * 4, patience=2)
    distiller = _distiller()
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert distiller.undistillable_classes == []
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert distiller.undistillable_classes == []


def test_margin_in_standard_errors(held_out):
    # n = 50: for accuracies 0.86 / 0.9 the pooled p is (50 * 0.88 + 1) / 52,
    # se = sqrt(2 p (1 - p) / 50) = 0.0684; for 0.98 / 1.0 it is 0.0336.
    reference = [0.9, 0.9, 1.0, 1.0]
    counts = (50, 50, 50, 50)
    student = [0.86, 0.80, 0.98, 0.94]
    plain = _begun(tllm_tf.UndistillableClassCallback(held_out, reference=reference))
    np.testing.assert_array_equal(_judge(plain, student, counts), [0, 0, 0, 0])
    guarded = _begun(tllm_tf.UndistillableClassCallback(
        held_out, reference=reference, margin_standard_errors=1.0))
    np.testing.assert_array_equal(_judge(guarded, student, counts), [1, 0, 1, 0])
    # The fixed margin adds to the one in standard errors.
    both = _begun(tllm_tf.UndistillableClassCallback(
        held_out, reference=reference, margin_standard_errors=1.0, margin=0.03))
    np.testing.assert_array_equal(_judge(both, student, counts), [1, 1, 1, 1])


def test_get_config_has_every_argument(held_out):
    callback = tllm_tf.UndistillableClassCallback(
        held_out, reference=[0.5] * 4, margin=0.02, warmup_epochs=3, update_every=2,
        sticky=True, min_samples=5, epoch_matched=True, smoothing=0.3, patience=2,
        margin_standard_errors=1.5)
    assert callback.get_config() == {
        "margin": 0.02, "warmup_epochs": 3, "update_every": 2, "sticky": True,
        "min_samples": 5, "log_path": None, "epoch_matched": True, "smoothing": 0.3,
        "patience": 2, "margin_standard_errors": 1.5,
    }


@pytest.mark.parametrize("kwargs, message", [
    ({"smoothing": 1.0}, "0 <= smoothing < 1"),
    ({"smoothing": -0.1}, "0 <= smoothing < 1"),
    ({"patience": 0}, "patience >= 1"),
    ({"margin_standard_errors": -1.0}, "margin_standard_errors >= 0"),
])
def test_rejects_bad_guard_arguments(held_out, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tllm_tf.UndistillableClassCallback(held_out, reference=[1.0] * 4, **kwargs)
