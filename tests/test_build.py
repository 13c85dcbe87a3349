"""Tests of tllm_tf.pipeline.build's training batches."""

import dataclasses
import os

import pytest
import tensorflow as tf

from tllm_tf.pipeline import build
from tllm_tf.pipeline.config import RunConfig

EPOCHS = 6


def _native_threads():
    """Threads of this process, TensorFlow's own included (`threading` sees Python's only)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


@pytest.mark.parametrize("mixup", [0.0, 0.4])
def test_training_batches_have_a_static_batch_size(mixup):
    # tf.distribute splits a batch of known size between replicas with `rebatch`; XLA needs it.
    config = RunConfig(workdir="unused", epochs=2, batch_size=32, seed=0, mixup=mixup)
    batches = build.train_batches(build.load_data(config), config, 0, 2)
    assert batches.element_spec[0].shape[0] == 32


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_past_epochs_pipelines_are_closed():
    config = RunConfig(workdir="unused", epochs=EPOCHS, batch_size=64, seed=0)
    data = build.load_data(config)
    steps = build.steps_per_epoch(data, config)
    counts = []
    for step, _ in enumerate(build.train_batches(data, config, 0, EPOCHS)):
        if step % steps == steps - 1:
            counts.append(_native_threads())
    assert len(counts) == EPOCHS
    # Each epoch's pipeline started threads that outlived it: about 2 more per epoch.
    assert max(counts) - counts[0] <= 2, f"threads at each epoch's end: {counts}"


def test_the_store_takes_the_runs_top_k_dtype_and_files_of_bounded_size(tmp_path, monkeypatch):
    from conftest import make_mlp
    config = RunConfig(workdir="unused", batch_size=64, teacher_store=str(tmp_path / "store"),
                       teacher_store_top_k=3, teacher_store_dtype="float32")
    data = build.load_data(config)
    teacher = make_mlp("teacher", input_shape=data.image_shape, num_classes=data.num_classes)
    store = build.soft_label_store(config, data, teacher)
    assert (store.top_k, store.dtype, store.batches_per_shard) == (3, "float32", None)
    # An epoch whose float32 logits exceed the bound is split into files of as many batches
    # as fit (ImageNet's epoch was one file of 5 GB, held in memory while built).
    monkeypatch.setattr(build, "STORE_FILE_BYTES", 64 * data.num_classes * 4 * 5)
    assert build.soft_label_store(config, data, teacher).batches_per_shard == 5


def test_a_worker_whose_store_is_not_the_chiefs_is_told_to_share_it(tmp_path, monkeypatch):
    # The chief builds the store in its own folder; a worker with a folder of its own found
    # it empty only when it read it, told to "call build(epochs) first".
    from conftest import make_mlp
    from tllm_tf.pipeline import multi_worker
    from tllm_tf.pipeline import stages
    config = RunConfig(workdir="unused", batch_size=64, epochs=2, num_train=200,
                       teacher_store=str(tmp_path / "worker_store"))
    data = build.load_data(config)
    teacher = make_mlp("teacher", input_shape=data.image_shape, num_classes=data.num_classes)
    monkeypatch.setattr(multi_worker, "run_on_chief", lambda strategy, function: 4)
    monkeypatch.setattr(stages, "STORE_VISIBLE_WAIT_S", 0.0)  # Not the shared file system's.
    with pytest.raises(ValueError, match=r"This worker's --teacher_store='.*worker_store' holds "
                                         r"0 of the 2 epochs the chief has just stored"):
        stages._complete_store(config, data, tf.distribute.get_strategy(), teacher, "student_kd")


def _folder_run(tmp_path, **overrides):
    """A run on an image folder of 3 classes x 8 images, written one class after another."""
    import numpy as np
    import tensorflow as tf
    from tllm_tf import data as data_lib
    for label, name in enumerate(("a", "b", "c")):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for index in range(8):
            image = np.full((4, 4, 3), 30 * label + index, np.uint8)
            (tmp_path / "pets" / name / f"{index}.png").write_bytes(
                tf.io.encode_png(image).numpy())
    config = RunConfig(workdir="unused", dataset=data_lib.IMAGE_FOLDER,
                       image_folder=str(tmp_path / "pets"), image_size=4, batch_size=6,
                       epochs=2, holdout_fraction=0.25, **overrides)
    return config, build.load_data(config)


def _labels_of(batches):
    return [list(labels) for _, labels in batches.as_numpy_iterator()]


def test_a_folder_larger_than_the_shuffle_buffer_is_read_in_a_new_order_each_epoch(
        tmp_path, monkeypatch):
    from conftest import make_mlp
    from tllm_tf.data import pipeline
    config, data = _folder_run(tmp_path, teacher_store=str(tmp_path / "store"))
    teacher = make_mlp("teacher", input_shape=data.image_shape, num_classes=data.num_classes)
    assert "training_order" not in build.soft_label_store(config, data, teacher).fingerprint
    # A buffer of 2 images of the 12 (4 a class): the files' order, one class after another,
    # would give an epoch's first batch classes a and b only, b once at most.
    monkeypatch.setattr(pipeline, "SHUFFLE_BUFFER_BYTES", 2 * 4 * 4 * 3 * 4)
    batches = _labels_of(build.train_batches(data, config, 0, 2))
    assert len(batches) == 4 and len(set(batches[0])) == len(set(batches[2])) == 3
    assert batches[:2] != batches[2:]
    assert _labels_of(build.train_batches(data, config, 1, 2)) == batches[2:]  # Resumed.
    cached = dataclasses.replace(config, cache=True)
    assert _labels_of(build.train_batches(data, cached, 0, 2)) == batches
    # A store built before would hold other views: its fingerprint says so.
    assert build.soft_label_store(config, data, teacher).fingerprint["training_order"] == (
        "drawn by the source each epoch")


@pytest.mark.parametrize("stage, cached", [
    ("teacher", False), ("store", False), ("reference", True), ("student", True),
    ("all", True)])
def test_the_held_out_split_is_read_into_memory_only_by_stages_that_read_it(
        monkeypatch, stage, cached):
    received = {}
    monkeypatch.setattr(build.data_lib, "load_dataset",
                        lambda name, **kwargs: received.update(kwargs))
    build.load_data(RunConfig(workdir="unused", stage=stage, teacher_store="unused"))
    assert received["cache_held_out"] is cached


def test_every_classifier_takes_its_images_under_one_name_in_keras_export(tmp_path):
    # Keras's export names the serving input after the input layer: numbered, it differed
    # between the models of one run, and a client written for one student failed on the other.
    import tensorflow as tf

    data = build.load_data(RunConfig(workdir="unused", seed=0))
    signatures = []
    for number, name in enumerate(["mlp_4", "mlp_4", "cnn_tiny"]):
        path = str(tmp_path / str(number))
        build.build_classifier(name, data).export(path, verbose=False)
        signature = tf.saved_model.load(path).signatures["serving_default"]
        signatures.append(sorted(signature.structured_input_signature[1]))
    assert signatures == [["images"]] * 3

