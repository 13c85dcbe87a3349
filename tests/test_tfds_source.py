"""Tests of tllm_tf.data.tfds_source on tfds' mocked data.

`tfds.testing.mock_data` replaces the stored examples with random ones but
keeps tfds' builders, decoders and read path. The dataset_info.json written
by `_prepared` gives the mock real split names and sizes.
"""

import collections
import hashlib
import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import prepared_tfds as _prepared
from conftest import written_tfds
from tllm_tf.data import tfds_source
from tllm_tf.data.pipeline import (
    DEFAULT_SHUFFLE_BUFFER,
    VARYING_SIZE_SHUFFLE_BUFFER,
    make_pipeline,
    shuffle_buffer_size,
    training_batches,
)
from tllm_tf.data.errors import DamagedDataError
from tllm_tf.data.errors import DataNotFoundError
from tllm_tf.data.errors import UnlabelledDataError
from tllm_tf.data.statistics import channel_statistics
from tllm_tf.data.tfds_source import load_tfds

NUM_EXAMPLES = 200


def _examples(dataset):
    """Maps a hash of each image to its label."""
    return {
        hashlib.sha1(image.tobytes()).hexdigest(): int(label)
        for image, label in dataset.as_numpy_iterator()
    }


def test_cifar10_shapes_dtypes_and_metadata(tmp_path):
    with _prepared(tmp_path, "cifar10"):
        splits = load_tfds("cifar10", holdout_fraction=0.1)
        image, label = next(iter(splits.train))
    assert splits.name == "cifar10"
    assert splits.num_classes == 10
    # The real names come with the prepared files; the mock has ids only.
    assert len(splits.class_names) == 10
    assert splits.image_shape == (32, 32, 3)
    assert image.shape == (32, 32, 3) and image.dtype == tf.float32
    assert label.dtype == tf.int32
    assert float(tf.reduce_max(image)) > 1.0  # raw pixel scale, not 0-1
    np.testing.assert_allclose(splits.mean, np.array([0.4914, 0.4822, 0.4465]) * 255)
    np.testing.assert_allclose(splits.std, np.array([0.2470, 0.2435, 0.2616]) * 255)


def test_held_out_is_a_disjoint_stratified_part_of_train(tmp_path):
    with _prepared(tmp_path, "cifar10"):
        full = _examples(load_tfds("cifar10").train)
        splits = load_tfds("cifar10", holdout_fraction=0.2, seed=0)
        train, held_out = _examples(splits.train), _examples(splits.held_out)
        test_size = len(list(splits.test))
    assert len(full) == NUM_EXAMPLES
    assert not set(train) & set(held_out)
    assert {**train, **held_out} == full
    assert splits.num_train == len(train) == splits.train.cardinality()
    assert len(held_out) == splits.held_out.cardinality()
    per_class = collections.Counter(full.values())
    held_per_class = collections.Counter(held_out.values())
    assert set(held_per_class) == set(range(10))
    for class_id, count in per_class.items():
        assert held_per_class[class_id] == round(0.2 * count)
    assert test_size == NUM_EXAMPLES


def test_held_out_split_is_seeded(tmp_path):
    with _prepared(tmp_path, "cifar10"):
        first = _examples(load_tfds("cifar10", holdout_fraction=0.1, seed=3).held_out)
        again = _examples(load_tfds("cifar10", holdout_fraction=0.1, seed=3).held_out)
        other = _examples(load_tfds("cifar10", holdout_fraction=0.1, seed=4).held_out)
    assert first == again
    assert first != other


def test_without_holdout_train_is_whole(tmp_path):
    with _prepared(tmp_path, "cifar10"):
        splits = load_tfds("cifar10")
        assert len(list(splits.held_out)) == 0
        assert len(list(splits.train)) == NUM_EXAMPLES
    assert splits.num_train == NUM_EXAMPLES


def test_cifar100_every_class_held_out(tmp_path):
    with _prepared(tmp_path, "cifar100", num_examples=1000):
        splits = load_tfds("cifar100", holdout_fraction=0.5, seed=0)
        held_labels = [int(label) for _, label in splits.held_out.as_numpy_iterator()]
    assert splits.num_classes == 100 and len(splits.class_names) == 100
    assert set(held_labels) == set(range(100))
    np.testing.assert_allclose(splits.std, np.array([0.2675, 0.2565, 0.2761]) * 255)


def test_imagenet_uses_validation_and_keeps_sizes(tmp_path):
    with _prepared(tmp_path, "imagenet2012", splits=("train", "validation"), num_examples=20):
        splits = load_tfds("imagenet2012", image_size=160)
        sizes = {image.shape for image, _ in splits.test.as_numpy_iterator()}
    assert splits.image_shape == (160, 160, 3)
    assert splits.test.element_spec[0].shape.as_list() == [None, None, 3]
    assert len(sizes) > 1  # images keep their own sizes
    np.testing.assert_allclose(splits.mean, np.array([0.485, 0.456, 0.406]) * 255)


def test_other_sets_get_computed_statistics(tmp_path):
    with _prepared(tmp_path, "mnist"):
        splits = load_tfds("mnist", holdout_fraction=0.1)
    assert splits.image_shape == (28, 28, 1)
    # The mock draws pixels uniformly from 0..254.
    np.testing.assert_allclose(splits.mean, [127.0], atol=3.0)
    np.testing.assert_allclose(splits.std, [73.6], atol=3.0)


def test_channel_statistics_of_images_of_varying_size():
    images = [np.full((2, 3, 2), [1.0, 5.0]), np.full((4, 1, 2), [3.0, 5.0])]
    dataset = tf.data.Dataset.from_generator(
        lambda: ((image, 0) for image in images),
        output_signature=(
            tf.TensorSpec((None, None, 2), tf.float64),
            tf.TensorSpec((), tf.int32),
        ),
    )
    mean, std = channel_statistics(dataset)
    # 6 pixels of 1 and 4 of 3 in channel 0; channel 1 is constant.
    np.testing.assert_allclose(mean, [1.8, 5.0])
    np.testing.assert_allclose(std, [np.sqrt(0.96), 0.0], atol=1e-12)


def test_not_prepared_names_the_ways_to_provide_it(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        load_tfds("cifar10", data_dir=str(tmp_path))
    message = str(error.value)
    assert isinstance(error.value, ValueError)
    for hint in ("'cifar10'", "data_dir", "tfds build cifar10", "download=True"):
        assert hint in message


def test_imagenet_not_prepared_asks_for_manual_dir(tmp_path):
    with pytest.raises(DataNotFoundError, match="manual_dir") as error:
        load_tfds("imagenet2012", data_dir=str(tmp_path))
    assert "ILSVRC2012_img_train.tar" in str(error.value)


def test_unknown_name_says_where_to_find_names():
    with pytest.raises(ValueError, match="list_builders") as error:
        load_tfds("cifar1000")
    assert "cifar100" in str(error.value)


def test_rejects_a_set_that_is_not_image_classification(tmp_path):
    with _prepared(tmp_path, "imdb_reviews"):
        with pytest.raises(ValueError, match="not an image classification"):
            load_tfds("imdb_reviews")


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("damage", ["delete", "halve", "cut_3_bytes"])
def test_damaged_prepared_set_is_refused_at_load(tmp_path, damage, split):
    written_tfds(tmp_path, "fashion_mnist", num_examples=40)
    shard, = (tmp_path / "fashion_mnist").glob(f"*/fashion_mnist-{split}.tfrecord*")
    if damage == "delete":
        shard.unlink()
    else:
        size = shard.stat().st_size
        shard.write_bytes(shard.read_bytes()[: size // 2 if damage == "halve" else size - 3])
    # Also the test split, which training reads only at its end.
    with pytest.raises(DataNotFoundError, match="incomplete or damaged") as error:
        load_tfds("fashion_mnist", data_dir=str(tmp_path), holdout_fraction=0.1)
    message = str(error.value)
    assert f"Delete {shard.parent} and prepare it again" in message
    assert f"tfds build fashion_mnist --data_dir={tmp_path}" in message
    assert isinstance(error.value.__cause__, tf.errors.OpError)


def _written_with_labels(data_dir, labels, name="mnist", num_examples=40):
    """Prepares `name` in `data_dir` through tfds' builder and writer.

    `labels` maps each split to the label of all its examples, or to `None`
    for random labels; -1 is tfds' label of an unlabelled example.
    """
    builder = tfds.builder(name, data_dir=str(data_dir))
    image_shape = builder.info.features["image"].shape
    num_classes = builder.info.features["label"].num_classes

    def examples(split):
        rng = np.random.default_rng(len(split))
        for index in range(num_examples):
            label = labels[split]
            yield f"{split}_{index}", {
                "image": rng.integers(0, 256, image_shape, dtype=np.uint8),
                "label": int(rng.integers(num_classes)) if label is None else label,
            }

    builder._split_generators = lambda dl_manager: {split: examples(split) for split in labels}
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def test_unlabelled_test_split_falls_back_to_validation(tmp_path, caplog):
    # As tfds' imagenet2012 with ILSVRC2012_img_test.tar: a test split of -1 labels.
    _written_with_labels(tmp_path, {"train": None, "test": -1, "validation": 3})
    with caplog.at_level("WARNING"):
        splits = load_tfds("mnist", data_dir=str(tmp_path), holdout_fraction=0.25)
    test_labels = [int(label) for _, label in splits.test.as_numpy_iterator()]
    assert test_labels == [3] * 40
    assert "its test split has no labels (label -1), so the 'validation' split" in caplog.text


def test_no_labelled_test_split_is_refused(tmp_path):
    _written_with_labels(tmp_path, {"train": None, "test": -1})
    with pytest.raises(UnlabelledDataError, match="no labelled test split") as error:
        load_tfds("mnist", data_dir=str(tmp_path), holdout_fraction=0.25)
    assert "'test' has 40 of 40 labels -1" in str(error.value)
    assert "labelled 'validation' split" in str(error.value)
    assert isinstance(error.value, DataNotFoundError)


def test_unlabelled_train_examples_are_refused(tmp_path):
    _written_with_labels(tmp_path, {"train": -1, "test": None})
    with pytest.raises(UnlabelledDataError, match="train split .* 40 of 40 examples without"):
        load_tfds("mnist", data_dir=str(tmp_path), holdout_fraction=0.25)
    # Without a held-out split the labels are checked as read: here by the image
    # statistics at load, for ImageNet or CIFAR by training.
    with pytest.raises(tf.errors.InvalidArgumentError, match="without a label"):
        next(iter(load_tfds("mnist", data_dir=str(tmp_path)).train))


def _counting_train_reads(monkeypatch):
    """A variable that counts the examples every later read of a train split gives."""
    train_reads = tf.Variable(0, dtype=tf.int64)
    read_undecoded = tfds_source._read_undecoded

    def counted(builder, split, **kwargs):
        def count(example):
            train_reads.assign_add(1)
            return example

        undecoded = read_undecoded(builder, split, **kwargs)
        return undecoded.map(count) if split == "train" else undecoded

    monkeypatch.setattr(tfds_source, "_read_undecoded", counted)
    return train_reads


def test_held_out_passes_read_the_train_split_once(tmp_path, monkeypatch):
    written_tfds(tmp_path, "fashion_mnist", num_examples=100)
    train_reads = _counting_train_reads(monkeypatch)
    splits = load_tfds("fashion_mnist", data_dir=str(tmp_path), holdout_fraction=0.2)
    # The labels' pass, the pass that fills the held-out cache, and the image statistics'.
    assert int(train_reads.numpy()) == 300
    reads, passes = [], []
    for _ in range(3):
        before = int(train_reads.numpy())
        passes.append(list(splits.held_out.as_numpy_iterator()))
        reads.append(int(train_reads.numpy()) - before)
    assert reads == [0, 0, 0]
    # In the train split's order, as the filter without a cache gives them.
    whole = [(image, label) for image, label in
             load_tfds("fashion_mnist", data_dir=str(tmp_path)).train.as_numpy_iterator()]
    held_hashes = {hashlib.sha1(image.tobytes()).hexdigest() for image, _ in passes[0]}
    in_train_order = [(image, label) for image, label in whole
                      if hashlib.sha1(image.tobytes()).hexdigest() in held_hashes]
    assert 0 < len(passes[0]) == int(splits.held_out.cardinality())
    for held_out_pass in passes:
        for (image, label), (expected_image, expected_label) in zip(
                held_out_pass, in_train_order, strict=True):
            np.testing.assert_array_equal(image, expected_image)
            assert label == expected_label


def test_a_held_out_split_left_uncached_reads_the_train_split_on_each_pass(tmp_path,
                                                                          monkeypatch):
    # For a run that does not read it (a teacher alone): no pass at load, no memory.
    written_tfds(tmp_path, "fashion_mnist", num_examples=100)
    cached = _image_hashes(load_tfds("fashion_mnist", data_dir=str(tmp_path),
                                     holdout_fraction=0.2).held_out)
    train_reads = _counting_train_reads(monkeypatch)
    splits = load_tfds("fashion_mnist", data_dir=str(tmp_path), holdout_fraction=0.2,
                       cache_held_out=False)
    at_load = int(train_reads.numpy())
    passes = [_image_hashes(splits.held_out) for _ in range(2)]
    # At load the labels' pass and the image statistics' (no fill); then the whole train
    # split on each held-out pass.
    assert at_load == 100 + 100
    assert int(train_reads.numpy()) - at_load == 2 * 100
    assert passes == [cached, cached] and int(splits.held_out.cardinality()) == len(cached)


def test_a_held_out_read_that_stops_early_leaves_it_whole(tmp_path):
    # Once tfds' reader, cancelled under the held-out filter, reported the end of the
    # split to a cache still being filled by a read that stopped early (preflight's
    # peek): every later pass saw a few examples (about one try in three).
    written_tfds(tmp_path, "cifar100", num_examples=1000)
    sizes = []
    for seed in range(12):
        held_out = load_tfds("cifar100", data_dir=str(tmp_path), holdout_fraction=0.1,
                             seed=seed).held_out
        assert any(True for _ in held_out.take(1))
        sizes.append(sum(1 for _ in held_out))
    assert sizes == [100] * 12


def test_a_train_split_that_changes_between_reads_is_refused(tmp_path, monkeypatch):
    written_tfds(tmp_path, "fashion_mnist", num_examples=100)
    read_undecoded = tfds_source._read_undecoded
    examples_read = tf.Variable(0, dtype=tf.int64)

    def changing(builder, split, **kwargs):
        # The labels' pass reads all 100 examples; the second pass half of them.
        undecoded = read_undecoded(builder, split, **kwargs)
        if split != "train":
            return undecoded
        return undecoded.filter(lambda _: examples_read.assign_add(1) <= 150)

    monkeypatch.setattr(tfds_source, "_read_undecoded", changing)
    # 21 of the 100 held out; 9 of them among the 50 the second pass reads.
    with pytest.raises(DamagedDataError,
                       match=r"Expected 21 held-out examples in a second read .* Received: 9\. "
                             rf"The record files in {re.escape(str(tmp_path))}\S*fashion_mnist"):
        load_tfds("fashion_mnist", data_dir=str(tmp_path), holdout_fraction=0.2)


def _image_hashes(dataset, labelled=None):
    """The hashes of one pass's images, in order; and into `labelled`, hash to label."""
    hashes = []
    for image, label in dataset.as_numpy_iterator():
        hashes.append(hashlib.sha1(image.tobytes()).hexdigest())
        if labelled is not None:
            labelled[hashes[-1]] = int(label)
    return hashes


@pytest.mark.parametrize("holdout_fraction", [None, 0.2])
def test_the_training_split_can_be_read_with_its_shards_in_an_order_drawn_from_a_seed(
        tmp_path, holdout_fraction):
    written_tfds(tmp_path, "fashion_mnist", num_examples=64, num_shards=8)
    splits = load_tfds("fashion_mnist", data_dir=str(tmp_path), holdout_fraction=holdout_fraction)
    labels, drawn_labels = {}, {}
    files = _image_hashes(splits.train, labels)
    drawn = splits.shuffled_train(5)
    first_pass, second_pass = _image_hashes(drawn, drawn_labels), _image_hashes(drawn)
    # The same images (the held-out ones left out), their shards in another order.
    assert sorted(first_pass) == sorted(files) and first_pass != files
    assert second_pass != first_pass  # Drawn again on a further pass.
    assert _image_hashes(splits.shuffled_train(5)) == first_pass
    assert _image_hashes(splits.shuffled_train(6)) != first_pass
    assert int(drawn.cardinality()) == splits.num_train == len(files)
    assert drawn_labels == labels


def test_imagenet_trains_from_shards_in_a_drawn_order(tmp_path):
    # Through tfds' mocked imagenet2012 (images of varying size); a buffer of 2 of its 20
    # training images stands for ImageNet's 1,000 of 1.28 million.
    with _prepared(tmp_path, "imagenet2012", splits=("train", "validation"), num_examples=20):
        splits = load_tfds("imagenet2012", image_size=8, holdout_fraction=0.2)
        drawn_for = []

        def shuffled_train(seed):
            drawn_for.append(seed)
            return splits.shuffled_train(seed)

        batches = list(training_batches(
            splits.train, shuffled_train=shuffled_train, shuffle_buffer=2,
            batch_size=4, epoch_seeds=[0, 1], steps=4, augmentation="imagenet",
            image_size=8).as_numpy_iterator())
    # The first seed's draw checked against the split, then each epoch read in the order
    # its seed draws.
    assert drawn_for == [0, 0, 1]
    assert [images.shape for images, _ in batches] == [(4, 8, 8, 3)] * 8
    # 20 images of 1,000 classes: a fifth of each class rounds to none held out.
    assert int(splits.held_out.cardinality()) == 0 and splits.num_train == 20


def test_shuffle_buffer_of_images_of_varying_size_is_bounded():
    # ImageNet's decoded images: 10,000 of them in a shuffle buffer took 17-22 GB.
    num_images = 3 * VARYING_SIZE_SHUFFLE_BUFFER
    images = tf.data.Dataset.range(num_images).map(
        lambda index: (tf.fill(tf.stack([2 + index % 2, 3, 3]), 1.0), tf.cast(index, tf.int32)))
    assert not images.element_spec[0].shape.is_fully_defined()
    batches = make_pipeline(images, batch_size=num_images, training=True,
                            augmentation="imagenet", image_size=4)
    _, indices = next(iter(batches))
    # The k-th image out of a buffer of B images is one of the first B + k in.
    assert np.all(indices.numpy() < VARYING_SIZE_SHUFFLE_BUFFER + np.arange(num_images))
    assert sorted(indices.numpy()) == list(range(num_images))


@pytest.mark.parametrize("shape, num_examples", [((32, 32, 3), 45_000), ((28, 28, 1), 60_000),
                                                  ((8, 8, 1), 1_150)])
def test_small_images_are_shuffled_whole(shape, num_examples):
    # CIFAR, Fashion-MNIST and the digits: a permutation each epoch, as the reference code's.
    spec = tf.TensorSpec(shape, tf.float32)
    assert shuffle_buffer_size(spec, num_examples) == num_examples
    assert shuffle_buffer_size(spec) == DEFAULT_SHUFFLE_BUFFER  # Size unknown.
    assert shuffle_buffer_size(tf.TensorSpec((224, 224, 3), tf.float32), 1_000_000) == 3_566


def test_a_data_set_of_known_size_is_shuffled_beyond_a_window():
    num_images = 12_000
    images = tf.data.Dataset.range(num_images).map(
        lambda index: (tf.zeros([1, 1, 1]), tf.cast(index, tf.int32)))
    batches = make_pipeline(images, batch_size=num_images, training=True)
    _, indices = next(iter(batches))
    # With a window of 10,000 the first 100 out would all be among the first 10,100 in.
    assert np.any(indices.numpy()[:100] >= DEFAULT_SHUFFLE_BUFFER + 100)
    assert sorted(indices.numpy()) == list(range(num_images))


@pytest.mark.parametrize("name, error, message", [
    ("fashion_mnist:3.0.1", DataNotFoundError, "The tfds data set 'fashion_mnist:3.0.1' is not "
                                               "prepared"),
    ("fashion_mnist/plain", ValueError, "BuilderConfig plain not found"),
])
def test_a_tfds_name_with_a_version_or_config_goes_to_tfds_not_to_a_loader(
        tmp_path, name, error, message):
    # Near "fashion_mnist", a set with a loader of its own, yet tfds' to read.
    from tllm_tf.data import load_dataset
    with pytest.raises(error, match=re.escape(message)):
        load_dataset(name, holdout_fraction=0.2, data_dir=str(tmp_path))


def test_a_set_with_a_train_split_alone_is_refused_naming_the_way_forward():
    from types import SimpleNamespace

    builder = SimpleNamespace(info=SimpleNamespace(splits={"train": None}))
    with pytest.raises(ValueError, match=r"neither a test nor a validation split\. Splits: "
                                         r"\['train'\]\. Export its images .*--dataset=image_folder"):
        tfds_source._test_candidates(builder, "tf_flowers")


def test_images_of_varying_size_without_a_resizing_augmentation_leave_no_workdir(tmp_path):
    # Refused once the teacher stage batched them, the run had already written its config.json,
    # and the corrected flags then found the workdir a run of another configuration.
    from tllm_tf.pipeline import stages
    from tllm_tf.pipeline.config import RunConfig

    workdir = tmp_path / "run"
    with _prepared(tmp_path, "imagenet2012", splits=("train", "validation"), num_examples=20):
        config = RunConfig(workdir=str(workdir), dataset="imagenet2012", data_dir=str(tmp_path),
                           augmentation="none", teacher_model="mlp_8", student_model="mlp_4",
                           epochs=1, teacher_epochs=1, holdout_fraction=0.5, verbose=0)
        with pytest.raises(ValueError, match=r"--augmentation=none: Images of varying size "
                                             r"cannot be batched.*augmentation='imagenet'"):
            stages.run(config)
    assert not workdir.exists()
