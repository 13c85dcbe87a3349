"""Tests of tllm_tf.data.tfds_source on tfds' mocked data.

`tfds.testing.mock_data` replaces the stored examples with random ones but
keeps tfds' builders, decoders and read path. The dataset_info.json written
by `_prepared` gives the mock real split names and sizes.
"""

import collections
import hashlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import prepared_tfds as _prepared
from conftest import written_tfds
from tllm_tf.data.tfds_source import DataNotFoundError, channel_statistics, load_tfds

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
