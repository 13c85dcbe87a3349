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
