"""A run resumed at epoch `e` trains on the MixUp batches of an uninterrupted run.

`build.train_batches` draws each epoch from its own seed, `(seed, e)`.
Keras' `fit` under a distribution strategy first takes one batch from an
iterator that it then drops (to build the model), and prefetching has
computed more batches by then: the batches that follow must not depend on
how many. They did while the Keras layers drew from their seed variables.
"""

import numpy as np
import pytest
import tensorflow as tf

from tllm_tf.pipeline import build
from tllm_tf.pipeline.config import RunConfig

EPOCHS = 3
RESUME_AT = 2


@pytest.fixture(scope="module")
def config():
    return RunConfig(workdir="unused", mixup=0.4, batch_size=32, seed=0)


@pytest.fixture(scope="module")
def data(config):
    return build.load_data(config)


def _fit_like_batches(dataset, strategy, count):
    """The first `count` global batches as `fit` under `strategy` sees them."""
    if strategy is not None:
        dataset = strategy.experimental_distribute_dataset(dataset)
        next(iter(dataset))
    batches = []
    for step, (images, labels) in enumerate(dataset):
        if step == count:
            break
        if strategy is not None:
            images, labels = (tf.concat(strategy.experimental_local_results(x), 0)
                              for x in (images, labels))
        batches.append((images.numpy(), labels.numpy()))
    return batches


@pytest.mark.parametrize("distributed", [False, True])
def test_resumed_epoch_has_the_uninterrupted_batches(config, data, distributed):
    strategy = None
    if distributed:
        devices = [device.name for device in tf.config.list_logical_devices("CPU")[:2]]
        strategy = tf.distribute.MirroredStrategy(
            devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    steps = build.steps_per_epoch(data, config)
    uninterrupted = _fit_like_batches(
        build.train_batches(data, config, 0, EPOCHS), strategy, EPOCHS * steps)
    resumed = _fit_like_batches(
        build.train_batches(data, config, RESUME_AT, EPOCHS), strategy, steps)
    assert len(resumed) == steps
    for (images, labels), (expected_images, expected_labels) in zip(
            resumed, uninterrupted[RESUME_AT * steps:], strict=True):
        assert labels.shape == (config.batch_size, data.num_classes)
        np.testing.assert_array_equal(images, expected_images)
        np.testing.assert_array_equal(labels, expected_labels)
    assert np.any(uninterrupted[0][1].max(axis=1) < 0.99), "nothing was mixed"
