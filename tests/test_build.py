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
