"""tllm_tf.data.soft_label_store and tllm_tf.data.top_k_logits, and the Distiller
training from stored teacher logits."""

import dataclasses
import glob
import json
import logging
import os
import re
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import tllm_tf
from tllm_tf.data import top_k_logits
from tllm_tf.data.pipeline import make_pipeline
from tllm_tf.data.soft_label_store import SoftLabelStore

from conftest import IMAGE_SHAPE, NUM_CLASSES, Killed, make_mlp

BATCH_SIZE = 8
NUM_EXAMPLES = 32
VIEWS = {"dataset": "synthetic", "num_examples": NUM_EXAMPLES, "seed": 0,
         "augmentation": "cifar", "mixup": 0.0, "batch_size": BATCH_SIZE}


def _images():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (NUM_EXAMPLES,) + IMAGE_SHAPE).astype(np.float32)
    labels = (np.arange(NUM_EXAMPLES) % NUM_CLASSES).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((images, labels))


def _epoch_views(seed=0, mixup=0.0, stop_after=None):
    """Epoch `e`'s training batches, seeded by `(seed, e)` as the pipeline does."""
    examples = _images()

    def views(epoch):
        batches = make_pipeline(
            examples, batch_size=BATCH_SIZE, training=True, augmentation="cifar",
            num_classes=NUM_CLASSES, mixup=mixup, seed=seed * 100_003 + epoch,
            drop_remainder=True)
        if stop_after is not None and epoch == stop_after[0]:
            return _KilledAfter(batches, stop_after[1])
        return batches
    return views


class _KilledAfter:
    """A batch iterable that stops the build, as a kill would, after `count` batches."""

    def __init__(self, batches, count):
        self.batches, self.count = batches, count

    def skip(self, count):
        return _KilledAfter(self.batches.skip(count), self.count)

    def __iter__(self):
        for index, batch in enumerate(self.batches):
            if index == self.count:
                raise Killed()
            yield batch


def _teacher(seed=0):
    keras.utils.set_random_seed(seed)
    return make_mlp("teacher", width=16)


def _store(directory, teacher, views=None, **kwargs):
    kwargs.setdefault("views_fingerprint", VIEWS)
    kwargs.setdefault("num_classes", NUM_CLASSES)
    return SoftLabelStore(directory, teacher, views or _epoch_views(), **kwargs)


# -- the compression ------------------------------------------------------------

def _softmax(logits, temperature=1.0):
    scaled = logits / temperature
    exp = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def test_top_k_plus_rest_keeps_the_top_probabilities_and_the_rest_mass():
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 3.0, (5, 7)).astype(np.float32)
    top_logits, top_classes, rest = (np.asarray(v) for v in top_k_logits.compress(logits, 3))
    order = np.argsort(-logits, axis=1)[:, :3]
    np.testing.assert_array_equal(top_classes, order)
    np.testing.assert_array_equal(top_logits, np.take_along_axis(logits, order, axis=1))
    others = np.ones_like(logits, bool)
    np.put_along_axis(others, order, False, axis=1)
    expected_rest = np.log(np.where(others, np.exp(logits.astype(np.float64)), 0).sum(axis=1))
    np.testing.assert_allclose(rest, expected_rest, rtol=1e-6)

    rebuilt = top_k_logits.reconstruct(top_logits, top_classes, rest, 7)
    # Temperature 1: the top classes' probabilities and the rest's total are exact.
    true, approx = _softmax(logits.astype(np.float64)), _softmax(rebuilt.astype(np.float64))
    np.testing.assert_allclose(np.take_along_axis(approx, order, axis=1),
                               np.take_along_axis(true, order, axis=1), rtol=1e-5)
    np.testing.assert_allclose((approx * others).sum(1), (true * others).sum(1), rtol=1e-5)
    # The rest is spread evenly: each of the 4 other classes gets r - log 4.
    np.testing.assert_allclose(rebuilt[others].reshape(5, 4), (rest - np.log(4))[:, None]
                               .repeat(4, axis=1), rtol=1e-6)
    # T = 4: ratios among the top classes exact, the rest's mass an upper bound.
    true, approx = _softmax(logits.astype(np.float64), 4.0), _softmax(rebuilt, 4.0)
    top_true = np.take_along_axis(true, order, axis=1)
    top_approx = np.take_along_axis(approx, order, axis=1)
    np.testing.assert_allclose(top_approx / top_approx[:, :1], top_true / top_true[:, :1],
                               rtol=1e-5)
    assert np.all((approx * others).sum(1) >= (true * others).sum(1) - 1e-6)


def test_all_classes_kept_reconstructs_the_logits_exactly():
    logits = np.random.default_rng(2).normal(0.0, 5.0, (4, 6)).astype(np.float32)
    top_logits, top_classes, rest = (np.asarray(v) for v in top_k_logits.compress(logits, 6))
    assert np.all(np.isneginf(rest))
    np.testing.assert_array_equal(
        top_k_logits.reconstruct(top_logits, top_classes, rest, 6), logits)


def test_float16_storage_clips_to_its_finite_range():
    stored = top_k_logits.to_storage([1e6, -1e6, 1.5, -np.inf], "float16")
    assert stored.dtype == np.float16
    np.testing.assert_array_equal(stored, [65504.0, -65504.0, 1.5, -np.inf])


# -- the store --------------------------------------------------------------------

def test_stored_logits_are_the_teachers_on_the_same_mixup_views(tmp_path):
    teacher = _teacher()
    views = _epoch_views(mixup=0.4)
    store = _store(tmp_path, teacher, views, top_k=NUM_CLASSES, dtype="float32")
    assert store.build(epochs=2) == 2 * NUM_EXAMPLES // BATCH_SIZE
    batches = list(store.dataset(epochs=2))
    fresh = list(views(0)) + list(views(1))
    assert len(batches) == len(fresh) == 8
    for (x, labels), (images, fresh_labels) in zip(batches, fresh):
        np.testing.assert_array_equal(x["images"], images)
        np.testing.assert_array_equal(labels, fresh_labels)
        np.testing.assert_array_equal(x["teacher_logits"], teacher(images, training=False))
    assert batches[0][1].shape == (BATCH_SIZE, NUM_CLASSES)  # mixed: soft labels
    # Epoch 0 and epoch 1 are different views.
    assert not np.array_equal(batches[0][0]["images"], batches[4][0]["images"])


def test_batches_of_other_views_are_refused_when_read(tmp_path):
    store = _store(tmp_path, _teacher())
    store.build(epochs=2)
    wrong_epoch = store.attach(_epoch_views()(1), start_epoch=0, epochs=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="not the views"):
        list(wrong_epoch)
    # The same seeds under another global seed are other views too.
    keras.utils.set_random_seed(1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="same global seed"):
        list(store.dataset(epochs=1))
    with pytest.raises(ValueError, match=r"holds epochs 0-1.*build\(epochs=3\)"):
        store.dataset(epochs=3)


def _arrays(directory):
    arrays = {}
    for path in sorted(glob.glob(os.path.join(directory, "epoch_*.npz"))):
        with np.load(path) as loaded:
            arrays[os.path.basename(path)] = {key: loaded[key] for key in loaded}
    return arrays


def test_a_killed_build_resumes_from_its_shards_and_equals_a_one_shot_build(tmp_path):
    teacher = _teacher()
    one_shot = _store(tmp_path / "one_shot", teacher, batches_per_shard=1)
    assert one_shot.build(epochs=3) == 12
    killed = _store(tmp_path / "killed", teacher, _epoch_views(stop_after=(1, 2)),
                    batches_per_shard=1)
    with pytest.raises(Killed):
        killed.build(epochs=3)
    assert killed.built_epochs == 1
    assert len(glob.glob(str(tmp_path / "killed" / "epoch_00001_part_*.npz"))) == 2
    assert not glob.glob(str(tmp_path / "killed" / ".*.tmp"))
    # A new process: the layout comes from store.json, the teacher runs on
    # the 2 + 4 batches that were missing only.
    resumed = _store(tmp_path / "killed", teacher)
    assert resumed.batches_per_shard == 1
    assert resumed.build(epochs=3) == 6
    assert resumed.build(epochs=3) == 0
    expected, actual = _arrays(tmp_path / "one_shot"), _arrays(tmp_path / "killed")
    assert sorted(actual) == sorted(expected) and len(actual) == 12
    for name, arrays in expected.items():
        assert sorted(actual[name]) == sorted(arrays)
        for key, value in arrays.items():
            np.testing.assert_array_equal(actual[name][key], value, err_msg=f"{name} {key}")


def test_a_store_of_another_teacher_or_other_views_is_refused(tmp_path):
    _store(tmp_path, _teacher(0)).build(epochs=1)
    with pytest.raises(ValueError) as error:
        _store(tmp_path, _teacher(1), views_fingerprint=dict(VIEWS, seed=1, mixup=0.2))
    message = str(error.value)
    for field in ("teacher_sha256", "seed: stored 0, now 1", "mixup: stored 0.0, now 0.2"):
        assert field in message
    assert "delete this one to rebuild it" in message and "batch_size" not in message
    with pytest.raises(ValueError, match="dtype: stored 'float16', now 'float32'; "
                                         "top_k: stored 4 \\(every class\\), now 2"):
        _store(tmp_path, _teacher(0), top_k=2, dtype="float32")
    reopened = _store(tmp_path, _teacher(0))  # dtype as stored, every class
    assert (reopened.top_k, reopened.dtype, reopened.built_epochs) == (4, "float16", 1)


def test_every_class_by_default_refuses_a_top_k_store_and_reads_a_full_one(tmp_path):
    # top_k=None once took the stored value: asked for every class, a top-3 store was
    # read without a word (its 3 kept logits and a flat rest).
    teacher = _teacher()
    _store(tmp_path / "top3", teacher, top_k=3).build(epochs=1)
    with pytest.raises(ValueError, match=re.escape(
            f"top_k: stored 3, now {NUM_CLASSES} (every class)")):
        _store(tmp_path / "top3", teacher)
    _store(tmp_path / "full", teacher).build(epochs=1)
    for top_k in (None, NUM_CLASSES, NUM_CLASSES + 5):
        assert _store(tmp_path / "full", teacher, top_k=top_k).top_k == NUM_CLASSES


def test_the_runs_top_k_0_is_every_class_and_refuses_a_top_k_store(tmp_path):
    # tools/train.py --teacher_store_top_k=0 (the default) once read a top-3 store
    # built by an earlier run with --teacher_store_top_k=3, computing 0 batches.
    from tllm_tf.pipeline import build
    from tllm_tf.pipeline.config import RunConfig
    config = RunConfig(workdir="unused", batch_size=64, teacher_store=str(tmp_path / "store"),
                       teacher_store_top_k=3)
    data = build.load_data(config)
    teacher = make_mlp("teacher", input_shape=data.image_shape, num_classes=data.num_classes)
    assert build.soft_label_store(config, data, teacher).build(epochs=1) > 0
    every_class = dataclasses.replace(config, teacher_store_top_k=0)
    with pytest.raises(ValueError, match=re.escape(
            f"top_k: stored 3, now {data.num_classes} (every class)")):
        build.soft_label_store(every_class, data, teacher)
    full = dataclasses.replace(every_class, teacher_store=str(tmp_path / "full"))
    assert build.soft_label_store(full, data, teacher).build(epochs=1) > 0
    # A full store records top_k = num_classes: 0 reads it, as before.
    assert json.loads((tmp_path / "full" / "store.json").read_text())["fingerprint"][
        "top_k"] == data.num_classes
    assert build.soft_label_store(full, data, teacher).build(epochs=1) == 0


@pytest.mark.parametrize("argument", [dict(top_k=0), dict(top_k=2.5), dict(top_k=-1),
                                      dict(batches_per_shard=0), dict(batches_per_shard=1.5),
                                      dict(num_classes=0), dict(num_classes=2.5)])
def test_bad_sizes_are_refused(tmp_path, argument):
    # 0 once read as "the default", silently; num_classes=0 was named top_k=0,
    # 2.5 truncated to 2.
    (name, value), = argument.items()
    with pytest.raises(ValueError, match=f"Expected an integer {name} >= 1. Received: "
                                         f"{name}={value}"):
        _store(tmp_path, _teacher(), **argument)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="Expected dtype in"):
        _store(tmp_path, _teacher(), dtype="bfloat16")
    with pytest.raises(ValueError, match="may not set \\['top_k'\\]"):
        _store(tmp_path, _teacher(), views_fingerprint={"top_k": 3})
    with pytest.raises(ValueError, match="views are empty"):
        _store(tmp_path, _teacher(), lambda epoch: _images().batch(8).take(0)).build(1)


def test_bad_build_and_reading_arguments_are_named(tmp_path):
    for views_fingerprint in (None, {"seed": object()}):
        with pytest.raises(ValueError, match="Expected views_fingerprint to be a dict"):
            _store(tmp_path, _teacher(), views_fingerprint=views_fingerprint)
    store = _store(tmp_path, _teacher())
    for epochs in (2.5, -1, True):
        with pytest.raises(ValueError, match=re.escape(
                f"Expected an integer epochs >= 0. Received: epochs={epochs!r}")):
            store.build(epochs)
    # Once a TypeError from functools.reduce.
    with pytest.raises(ValueError, match="holds no epoch yet: call build"):
        store.dataset()
    store.build(epochs=1)
    with pytest.raises(ValueError, match="Expected 0 <= start_epoch < epochs"):
        store.dataset(start_epoch=1, epochs=1)


@pytest.mark.parametrize("num_classes", [3, 5])
def test_num_classes_other_than_the_teachers_is_refused_at_build(tmp_path, num_classes):
    # Once built without a word, and refused (or worse, not) only when read.
    store = _store(tmp_path, _teacher(), num_classes=num_classes)
    with pytest.raises(ValueError, match=f"teacher gives {NUM_CLASSES} logits per image, but "
                                         f"the soft-label store was given "
                                         f"num_classes={num_classes}"):
        store.build(epochs=1)
    assert not glob.glob(str(tmp_path / "epoch_*"))


def test_another_batches_per_shard_is_refused_and_an_older_store_reads_as_one_per_epoch(
        tmp_path):
    teacher = _teacher()
    _store(tmp_path, teacher, batches_per_shard=1).build(epochs=1)
    # Once accepted: the build skipped the wrong number of batches.
    with pytest.raises(ValueError, match="batches_per_shard: stored 1, now 2"):
        _store(tmp_path, teacher, batches_per_shard=2)
    older = tmp_path / "older"
    _store(older, teacher).build(epochs=1)
    record = json.loads((older / "store.json").read_text())
    del record["batches_per_shard"]
    (older / "store.json").write_text(json.dumps(record))
    assert _store(older, teacher).batches_per_shard is None
    with pytest.raises(ValueError, match="batches_per_shard: stored None, now 1"):
        _store(older, teacher, batches_per_shard=1)


def test_epoch_files_without_a_store_file_are_refused(tmp_path):
    # Once: with store.json deleted, another teacher's build computed 0 batches and
    # read the first teacher's logits.
    _store(tmp_path, _teacher(0)).build(epochs=1)
    with pytest.raises(ValueError, match="teacher_sha256"):
        _store(tmp_path, _teacher(1))
    os.remove(tmp_path / "store.json")
    with pytest.raises(ValueError, match=re.escape(
            f"The soft-label store in {tmp_path} has epoch files (epoch_00000.json, ") +
            ".*" + re.escape("no store.json") + ".*" +
            re.escape(f"Delete the whole folder {tmp_path}")):
        _store(tmp_path, _teacher(1))
    assert not (tmp_path / "store.json").exists()


def test_two_stores_opened_on_one_empty_folder_cannot_share_it(tmp_path):
    # Once: B, opened before A built, skipped writing store.json at build and read
    # A's logits (0 batches computed).
    first, second = _store(tmp_path, _teacher(0)), _store(tmp_path, _teacher(1))
    first.build(epochs=1)
    record = (tmp_path / "store.json").read_text()
    with pytest.raises(ValueError, match="teacher_sha256: stored"):
        second.build(epochs=1)
    assert (tmp_path / "store.json").read_text() == record
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    # An open store whose store.json is deleted does not write a new one over old parts.
    os.remove(tmp_path / "store.json")
    with pytest.raises(ValueError, match="has epoch files"):
        first.build(epochs=1)


@pytest.mark.parametrize("content", ['{"fingerprint": {', "{}", "[]", '{"fingerprint": 3}'])
def test_a_store_file_that_is_not_a_stores_record_is_refused(tmp_path, content):
    # `{}` once turned the fingerprint check off: any teacher reused the store.
    (tmp_path / "store.json").write_text(content)
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'store.json'} is not a soft-label store's record") +
            ".*" + re.escape(f"Delete the directory {tmp_path}")):
        _store(tmp_path, _teacher())


def _cut_short(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_a_build_killed_before_an_epochs_index_completes_that_epoch(tmp_path):
    # One file per epoch, the default: the resumed build once failed with
    # `int * None`, on every run.
    teacher = _teacher()
    _store(tmp_path, teacher).build(epochs=2)
    expected = _arrays(tmp_path)
    os.remove(tmp_path / "epoch_00001.json")
    resumed = _store(tmp_path, teacher)
    assert resumed.build(epochs=2) == 0
    assert resumed.built_epochs == 2
    # Killed with the part itself unreadable: the epoch is computed again.
    os.remove(tmp_path / "epoch_00001.json")
    _cut_short(tmp_path / "epoch_00001_part_00000.npz")
    assert resumed.build(epochs=2) == NUM_EXAMPLES // BATCH_SIZE
    actual = _arrays(tmp_path)
    assert sorted(actual) == sorted(expected)
    for name, arrays in expected.items():
        for key, value in arrays.items():
            np.testing.assert_array_equal(actual[name][key], value, err_msg=f"{name} {key}")
    assert len(list(resumed.dataset(epochs=2))) == 8


def _damage(directory, how):
    part = directory / "epoch_00001_part_00000.npz"
    if how == "part cut short":
        _cut_short(part)
    elif how == "part missing":
        os.remove(part)
    elif how == "part not a zip":
        part.write_bytes(b"not a zip file")
    elif how == "part lacks an array":
        np.savez(part, top_logits=np.zeros((8, NUM_CLASSES), np.float16))
    else:
        (directory / "epoch_00001.json").write_text('{"parts": ')


@pytest.mark.parametrize("how", ["part cut short", "part missing", "part not a zip",
                                 "part lacks an array", "index not JSON"])
def test_build_rebuilds_an_epoch_whose_files_are_missing_or_damaged(tmp_path, caplog, how):
    # Once found only when training reached that epoch, in a traceback that
    # named no file; build skipped the epoch.
    teacher = _teacher()
    _store(tmp_path, teacher, batches_per_shard=2).build(epochs=3)
    expected = _arrays(tmp_path)
    _damage(tmp_path, how)
    with caplog.at_level(logging.WARNING):
        assert _store(tmp_path, teacher).build(epochs=3) == NUM_EXAMPLES // BATCH_SIZE
    assert f"{tmp_path}: epoch 1 is damaged" in caplog.text
    actual = _arrays(tmp_path)
    assert sorted(actual) == sorted(expected)
    for name, arrays in expected.items():
        for key, value in arrays.items():
            np.testing.assert_array_equal(actual[name][key], value, err_msg=f"{name} {key}")


def test_a_damaged_or_missing_part_met_when_reading_is_named(tmp_path):
    store = _store(tmp_path, _teacher(), batches_per_shard=2)
    store.build(epochs=2)
    part = tmp_path / "epoch_00001_part_00000.npz"
    _cut_short(part)
    with pytest.raises(tf.errors.OpError, match=re.escape(
            f"The soft-label store's file {part} is damaged") + ".*" +
            re.escape("Delete it and run the same command again")):
        list(store.dataset(epochs=2))
    os.remove(part)
    # Once "Input dataset was expected to contain 8 elements but contained only 6".
    with pytest.raises(ValueError, match=re.escape(
            f"The soft-label store's file {part} is missing. Call build")):
        store.dataset(epochs=2)


def _edit(part, how):
    """Rewrites a part's arrays, self-consistently as a hand edit would be."""
    with np.load(part) as loaded:
        arrays = {key: loaded[key] for key in loaded}
    if how == "a batch fewer":
        arrays = {key: value[:BATCH_SIZE] if key != "batch_sizes" and key != "image_sums"
                  else value[:1] for key, value in arrays.items()}
    elif how == "a row fewer":
        arrays = {key: value[:-1] if key not in ("batch_sizes", "image_sums") else value
                  for key, value in arrays.items()}
    elif how == "a logit not finite":
        arrays["top_logits"][3, 1] = np.nan
    else:  # A class id beyond num_classes.
        arrays["top_classes"][0, 0] = NUM_CLASSES
    np.savez(part, **arrays)


@pytest.mark.parametrize("how, problem", [
    ("a batch fewer", "it holds 1 batches, where the epoch expects 2"),
    ("a row fewer", "its 15 logit rows are not its batch sizes' sum, 16"),
    ("a logit not finite", "a logit is not finite"),
    ("a class out of range", f"a class id is not in [0, num_classes={NUM_CLASSES})")])
def test_a_part_edited_by_hand_is_named_when_read(tmp_path, how, problem):
    # Once: a row fewer failed in a RaggedTensor check naming no file, a batch fewer
    # as "not the views" (the next epoch's batch met its sum), a class out of range
    # in put_along_axis, and a NaN logit was trained on.
    top_k = 2 if how == "a class out of range" else None
    store = _store(tmp_path, _teacher(), batches_per_shard=2, top_k=top_k)
    store.build(epochs=2)
    part = tmp_path / "epoch_00001_part_00000.npz"
    _edit(part, how)
    with pytest.raises(tf.errors.OpError, match=re.escape(
            f"The soft-label store's file {part} is damaged ({problem}). Delete it and run "
            "the same command again")):
        list(store.dataset(epochs=2))


@pytest.mark.parametrize("written", ["part", "index", "store.json"])
def test_a_full_disk_names_the_store_file_being_written(tmp_path, monkeypatch, written):
    # Once "[Errno 28] No space left on device", naming no file.
    from tllm_tf import atomic

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if written == "part":
        monkeypatch.setattr(np, "savez", no_space)
        path = tmp_path / "epoch_00000_part_00000.npz"
    else:
        path = tmp_path / ("epoch_00000.json" if written == "index" else "store.json")
        write_json = atomic.write_json

        def no_space_for_path(target, *args, **kwargs):
            if os.fspath(target) == str(path):
                no_space()
            return write_json(target, *args, **kwargs)

        monkeypatch.setattr(atomic, "write_json", no_space_for_path)
    with pytest.raises(OSError, match=re.escape(
            "[Errno 28] No space left on device while writing the soft-label store's "
            f"file {path}")) as error:
        _store(tmp_path, _teacher()).build(epochs=1)
    assert error.value.errno == 28 and not path.exists()


def test_build_removes_the_temporary_files_a_killed_write_left(tmp_path):
    stale = [".store.json.ab12cd34.tmp", ".epoch_00000_part_00000.npz.x_y_z123.tmp",
             ".epoch_00003.json.qwertyui.tmp"]
    # Not the store's names, or young enough to be another build's write in progress.
    kept = ["notes.tmp", ".other.json.abcdefgh.tmp", ".epoch_00002.npz.abcdefgh.tmp",
            ".epoch_00001_part_00000.npz.inflight.tmp"]
    long_ago = time.time() - 3600
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"partial")
        if name != kept[-1]:
            os.utime(tmp_path / name, (long_ago, long_ago))
    _store(tmp_path, _teacher()).build(epochs=1)
    left = sorted(name for name in os.listdir(tmp_path) if name.endswith(".tmp"))
    assert left == sorted(kept)

def test_top_k_store_is_smaller_and_its_kd_loss_close(tmp_path):
    teacher = _teacher()
    exact = _store(tmp_path / "exact", teacher, top_k=NUM_CLASSES, dtype="float32")
    small = _store(tmp_path / "small", teacher, top_k=2)
    exact.build(1), small.build(1)
    def bytes_per_view(directory):
        arrays = _arrays(directory)["epoch_00000_part_00000.npz"]
        return sum(arrays[key].nbytes for key in arrays
                   if key not in ("batch_sizes", "image_sums")) / NUM_EXAMPLES

    # float32 logits: 4 x 4 bytes; float16 top 2, uint8 classes, float16 rest: 4 + 2 + 2.
    assert bytes_per_view(tmp_path / "exact") == 16 and bytes_per_view(tmp_path / "small") == 8
    assert small.size_on_disk() > 0
    student_logits = tf.zeros((BATCH_SIZE, NUM_CLASSES))
    for (x_exact, _), (x_small, _) in zip(exact.dataset(), small.dataset()):
        true = tllm_tf.kd_loss(x_exact["teacher_logits"], student_logits, temperature=1.0)
        approx = tllm_tf.kd_loss(x_small["teacher_logits"], student_logits, temperature=1.0)
        # With a uniform student at T = 1, KD differs only by the teacher's
        # entropy inside the rest, at most log 2 nats times the rest's mass.
        assert np.all(np.abs(np.asarray(true) - np.asarray(approx)) <= np.log(2) + 1e-3)


# -- the Distiller ------------------------------------------------------------------

def _distiller(teacher):
    keras.utils.set_random_seed(7)
    distiller = tllm_tf.Distiller(make_mlp("student", width=6), teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      distillation_loss_fn=tllm_tf.KDLoss(temperature=4.0))
    return distiller


def test_a_student_trained_from_the_exact_store_equals_one_trained_live(tmp_path):
    teacher = _teacher()
    live, stored = _distiller(teacher), _distiller(teacher)
    # After the last set_random_seed: tf.data's seeds combine with the global one.
    views = _epoch_views()
    store = _store(tmp_path, teacher, views, top_k=NUM_CLASSES, dtype="float32")
    store.build(epochs=3)
    for a, b in zip(live.student.weights, stored.student.weights):
        np.testing.assert_array_equal(a, b)
    live_batches = views(0).concatenate(views(1)).concatenate(views(2))
    live_history = live.fit(live_batches, epochs=1, verbose=0).history
    stored_history = stored.fit(store.dataset(epochs=3), epochs=1, verbose=0).history
    for a, b in zip(live.student.weights, stored.student.weights):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for key in ("loss", "student_loss", "distillation_loss"):
        assert stored_history[key] == pytest.approx(live_history[key], rel=1e-6)
    # The stored path does not run the teacher: a teacher whose weights are
    # now wrong changes nothing.
    for weight in teacher.weights:
        weight.assign(weight * 0.0)
    x, _ = next(iter(store.dataset(epochs=1)))
    assert np.abs(np.asarray(x["teacher_logits"])).max() > 0
    np.testing.assert_array_equal(stored.predict(x, verbose=0),
                                  stored.student.predict(x["images"], verbose=0))


def test_a_batch_dict_needs_exactly_images_and_teacher_logits():
    distiller = _distiller(_teacher())
    batch = {"pixels": tf.zeros((2,) + IMAGE_SHAPE), "teacher_logits": tf.zeros((2, 4))}
    with pytest.raises(ValueError, match="exactly the keys 'images' and 'teacher_logits'"):
        distiller.train_on_batch(batch, np.zeros(2, np.int32))
