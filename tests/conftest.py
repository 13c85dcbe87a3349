"""Shared test set-up: quiet TensorFlow, two logical CPUs, tiny seeded models."""

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from tllm_tf.pipeline import workdir_files  # noqa: E402

# MirroredStrategy tests need two devices; logical devices must be configured
# before TensorFlow initialises them, so it happens at import time.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

NUM_CLASSES = 4
IMAGE_SHAPE = (8, 8, 3)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_mlp(name, width=8, num_classes=NUM_CLASSES, input_shape=IMAGE_SHAPE,
             output_activation=None, weight_decay=0.0):
    """A tiny MLP returning logits (or probabilities if asked)."""
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(width, activation="relu", kernel_regularizer=regularizer)(x)
    outputs = keras.layers.Dense(num_classes, activation=output_activation,
                                 kernel_regularizer=regularizer)(x)
    return keras.Model(inputs, outputs, name=name)


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state (Python, numpy, TensorFlow, Keras),
    whichever tests ran before it in its process: `make test` shares the files out
    between two processes (pytest-xdist), in an order that varies from run to run."""
    keras.utils.set_random_seed(0)


@pytest.fixture(autouse=True, scope="module")
def seeded_module():
    """The same for a module's own fixtures, set up before any test's `seeded`."""
    keras.utils.set_random_seed(0)


@pytest.fixture
def tiny_data(seeded):
    rng = np.random.default_rng(0)
    x = rng.random((32,) + IMAGE_SHAPE, dtype=np.float32)
    y = np.arange(32, dtype=np.int32) % NUM_CLASSES
    return x, y


@pytest.fixture
def student(seeded):
    return make_mlp("student", width=6)


@pytest.fixture
def teacher(seeded):
    return make_mlp("teacher", width=16)


@contextlib.contextmanager
def prepared_tfds(tmp_path, name, splits=("train", "test"), num_examples=200):
    """Mocks a prepared tfds data set in `tmp_path`: tfds' real builder and
    read path, random examples, real split names and sizes."""
    builder = tfds.builder(name, data_dir=str(tmp_path))
    builder.info.set_splits(
        tfds.core.SplitDict(
            [
                tfds.core.SplitInfo(name=split, shard_lengths=[num_examples], num_bytes=0)
                for split in splits
            ]
        )
    )
    builder.data_path.mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_path)
    with tfds.testing.mock_data(
        num_examples=num_examples,
        policy=tfds.testing.MockPolicy.USE_FILES,
        data_dir=str(tmp_path),
    ):
        yield


def written_tfds(data_dir, name, splits=("train", "test"), num_examples=200, num_shards=None):
    """Prepares the image-classification set `name` in `data_dir` from random examples,
    through tfds' own builder and writer: real record files, read as a downloaded set's are.

    Faster to read than `prepared_tfds`' mock, which draws and encodes every example again
    on every pass: for tests that read a set many times (a whole run), not for the tests
    of the mock's specifics (images of random sizes, text features). `num_shards`: files a
    split, as a large set has (tfds' choice by size, one for these, when `None`)."""
    builder = tfds.builder(name, data_dir=str(data_dir))
    features = builder.info.features

    def examples(split):
        rng = np.random.default_rng(len(split))
        for index in range(num_examples):
            example = {}
            for key, feature in features.items():
                if isinstance(feature, tfds.features.Image):
                    example[key] = rng.integers(0, 256, feature.shape, dtype=np.uint8)
                elif isinstance(feature, tfds.features.ClassLabel):
                    example[key] = int(rng.integers(feature.num_classes))
                elif isinstance(feature, tfds.features.Text):
                    example[key] = f"{split}_{index}"
                else:
                    raise ValueError(f"No random values for {key}: {feature}")
            yield f"{split}_{index}", example

    builder._split_generators = lambda dl_manager: {split: examples(split) for split in splits}
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False,
                                                     num_shards=num_shards))


class Killed(Exception):
    """Raised by `KillAtEpochEnd`: a run stopped as if killed, after its callbacks so far."""


class KillAtEpochEnd(keras.callbacks.Callback):
    """Stops a fit at the end of 0-based `epoch`, for resume tests."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Killed()


def students_only(finished, workdir):
    """The `RunConfig` of `finished`'s student stage in another workdir, from `finished`'s
    teacher and reference: a run whose students can be killed and resumed on their own."""
    return dataclasses.replace(
        finished, workdir=str(workdir), stage="student",
        teacher_path=os.path.join(finished.workdir, "teacher", workdir_files.MODEL_FILE),
        reference_path=os.path.join(finished.workdir, "reference", workdir_files.REFERENCE_FILE))


def checkpointed_epoch(stage_dir):
    """The epoch a running stage has checkpointed (0 before its first), read while it writes."""
    try:
        with open(os.path.join(stage_dir, "checkpoint", "checkpoint.json")) as handle:
            return json.load(handle)["epoch"]
    except (OSError, ValueError):
        return 0


@contextlib.contextmanager
def within(seconds=20):
    """Fails the block with `TimeoutError` once it has run `seconds`: for a read that
    could wait for ever (on a FIFO), so that a test fails rather than hangs."""

    def expire(signum, frame):
        raise TimeoutError(f"Still running after {seconds} s: it waits (on a FIFO?).")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# The demo flag file at reduced size: 200 images (6 batches of 32), the teacher 1 epoch, the
# students 3 (a warm-up epoch, then two mask updates).
DEMO_COMMAND = ["tools/train.py", "--flagfile=configs/demo.flags", "--epochs=3",
                "--teacher_epochs=1", "--num_train=200", "--warmup_epochs=1",
                "--steps_per_execution=8"]


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory, zygote):
    """`DEMO_COMMAND` run twice, each time in a process of its own: the first run trains
    every stage, the second finds them done.

    The first is started as a user starts it, TensorFlow's start-up included; the second,
    whose start-up would be the first's, is forked from the zygote (tests/zygote.py).
    Returns `(workdir, first, second)`, the runs as `CompletedProcess`es. One pair of runs
    for the tests of what a run writes (test_train_e2e.py) and prints (test_cli_output.py).
    """
    workdir = tmp_path_factory.mktemp("demo") / "demo"
    command = [*DEMO_COMMAND, f"--workdir={workdir}"]
    # The tool sets what it needs: no TF_CPP_MIN_LOG_LEVEL from the tests' environment.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    first = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True,
                           text=True, timeout=900, env=env)
    return workdir, first, zygote.run(command, timeout=900, env=env)


@pytest.fixture(scope="session")
def zygote(tmp_path_factory):
    """Starts processes forked from one that has imported TensorFlow (tests/zygote.py):
    `zygote.run(args, timeout)` for `subprocess.run([python, *args], capture_output=True,
    text=True)`, `zygote.popen(args, env=, stdout=PATH, stderr=PATH)` for `Popen`. For the
    tests of what a process does after its start-up, which is the zygote's."""
    from zygote import Zygote

    server = Zygote(str(tmp_path_factory.mktemp("zygote")))
    yield server
    server.close()
