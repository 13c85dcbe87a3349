"""Tests of tllm_tf.pipeline.build's training batches."""

import os

import pytest

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
