"""Tests of tllm_tf.data.pipeline."""

import numpy as np
import pytest
import tensorflow as tf

from tllm_tf.data.pipeline import make_pipeline
from tllm_tf.data.pipeline import reads_shuffled_train
from tllm_tf.data.pipeline import training_batches

NUM_EXAMPLES = 20
NUM_CLASSES = 4


def _dataset(num_examples=NUM_EXAMPLES):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (num_examples, 8, 8, 3)).astype(np.float32)
    labels = (np.arange(num_examples) % NUM_CLASSES).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((images, labels)), images, labels


def _epoch(dataset):
    return list(dataset.as_numpy_iterator())


def _assert_same_batches(first, second):
    assert len(first) == len(second)
    for (images_a, labels_a), (images_b, labels_b) in zip(first, second):
        np.testing.assert_array_equal(images_a, images_b)
        np.testing.assert_array_equal(labels_a, labels_b)


def test_batch_shapes_and_dtypes():
    dataset, _, _ = _dataset()
    batches = _epoch(make_pipeline(dataset, batch_size=8, training=True, augmentation="cifar"))
    assert [images.shape for images, _ in batches] == [(8, 8, 8, 3), (8, 8, 8, 3), (4, 8, 8, 3)]
    assert batches[0][0].dtype == np.float32 and batches[0][1].dtype == np.int32
    dropped = make_pipeline(dataset, batch_size=8, training=True, drop_remainder=True)
    assert len(_epoch(dropped)) == 2


def test_evaluation_keeps_order_and_images():
    dataset, images, labels = _dataset()
    batches = _epoch(make_pipeline(dataset, batch_size=8, training=False, augmentation="cifar"))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), images)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels)


def test_training_shuffles_and_keeps_every_example():
    dataset, _, labels = _dataset()
    batches = _epoch(make_pipeline(dataset, batch_size=8, training=True))
    seen = np.concatenate([b[1] for b in batches])
    assert sorted(seen) == sorted(labels)
    assert not np.array_equal(seen, labels)


def test_training_is_deterministic_with_a_seed_and_changes_per_epoch():
    dataset, _, _ = _dataset(64)
    kwargs = dict(batch_size=16, training=True, augmentation="cifar", seed=5)
    pipeline = make_pipeline(dataset, **kwargs)
    first_epoch, second_epoch = _epoch(pipeline), _epoch(pipeline)
    _assert_same_batches(first_epoch, _epoch(make_pipeline(dataset, **kwargs)))
    assert not np.array_equal(first_epoch[0][0], second_epoch[0][0])
    other_seed = _epoch(make_pipeline(dataset, **{**kwargs, "seed": 6}))
    assert not np.array_equal(first_epoch[0][0], other_seed[0][0])


def test_mixing_is_deterministic_and_gives_soft_labels():
    dataset, _, _ = _dataset()
    kwargs = dict(
        batch_size=8, training=True, augmentation="cifar", num_classes=NUM_CLASSES,
        mixup=0.2, cutmix=1.0, seed=1,
    )
    first = _epoch(make_pipeline(dataset, **kwargs))
    _assert_same_batches(first, _epoch(make_pipeline(dataset, **kwargs)))
    labels = first[0][1]
    assert labels.shape == (8, NUM_CLASSES) and labels.dtype == np.float32
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("mixing", [{}, {"mixup": 0.2, "cutmix": 1.0}, {"randaugment": True}])
def test_epochs_back_to_back_are_each_epoch_alone(mixing):
    # What makes resume exact: an epoch's batches depend on its seed alone, whether it is
    # built with the epochs before it (augmentations traced once) or on its own.
    dataset, _, _ = _dataset()
    kwargs = dict(batch_size=6, augmentation="cifar", num_classes=NUM_CLASSES, **mixing)
    together = _epoch(training_batches(dataset, epoch_seeds=[5, 6, 7], steps=3, **kwargs))
    alone = [batch for seed in (5, 6, 7) for batch in _epoch(
        make_pipeline(dataset, training=True, seed=seed, drop_remainder=True, **kwargs))]
    assert len(alone) == 9  # 20 images: three batches of 6 an epoch, 2 images dropped
    _assert_same_batches(together, alone)
    _assert_same_batches(
        _epoch(training_batches(dataset, epoch_seeds=[6, 7], steps=3, **kwargs)), alone[3:])


def _class_sorted(num_examples=24, num_classes=3):
    """A set whose files come one class after another, and its source's drawn order."""
    labels = np.repeat(np.arange(num_classes), num_examples // num_classes).astype(np.int32)
    images = np.arange(num_examples, dtype=np.float32).reshape(-1, 1, 1, 1) * np.ones(
        (1, 2, 2, 1), np.float32)
    files = tf.data.Dataset.from_tensor_slices((images, labels))

    def shuffled_train(seed):
        return files.shuffle(num_examples, seed=seed, reshuffle_each_iteration=True)

    return files, shuffled_train


def test_a_set_larger_than_the_buffer_is_read_in_an_order_drawn_each_epoch():
    files, shuffled_train = _class_sorted()
    kwargs = dict(batch_size=6, epoch_seeds=[3, 4], steps=4, shuffle_buffer=4)
    assert reads_shuffled_train(files, shuffled_train, shuffle_buffer=4)
    windowed = _epoch(training_batches(files, **kwargs))
    drawn = _epoch(training_batches(files, shuffled_train=shuffled_train, **kwargs))
    # A buffer of 4 over the files' order: the first batch holds class 0 and at most one
    # image of class 1. Read in the drawn order, the classes mix from the first batch.
    assert set(windowed[0][1]) <= {0, 1} and list(windowed[0][1]).count(1) <= 1
    assert len(set(drawn[0][1])) == 3
    for epoch in (drawn[:4], drawn[4:]):  # Every image once an epoch.
        assert sorted(np.concatenate([labels for _, labels in epoch])) == [0] * 8 + [1] * 8 + [2] * 8
    assert not np.array_equal(drawn[0][1], drawn[4][1])  # Another order each epoch.
    # Exact resume: epoch 4 alone is the second epoch built together.
    _assert_same_batches(
        _epoch(training_batches(files, shuffled_train=shuffled_train, batch_size=6,
                                epoch_seeds=[4], steps=4, shuffle_buffer=4)), drawn[4:])
    _assert_same_batches(
        drawn, _epoch(training_batches(files, shuffled_train=shuffled_train, **kwargs)))


def test_a_drawn_order_of_another_training_split_is_refused():
    files, shuffled_train = _class_sorted()
    with pytest.raises(ValueError, match="Expected shuffled_train to give the 10 images .* "
                                         "Received 24"):
        training_batches(files.take(10), shuffled_train=shuffled_train, batch_size=2,
                         epoch_seeds=[0], shuffle_buffer=4)
    # Read in its place, shuffled_train would undo what was applied to the split.
    with pytest.raises(ValueError, match="Expected a data set of known size"):
        training_batches(files.filter(lambda image, label: label < 2),
                         shuffled_train=shuffled_train, batch_size=2, epoch_seeds=[0])
    recast = files.map(lambda image, label: (image, tf.cast(label, tf.int64)))
    with pytest.raises(ValueError, match="as .*int64.* Received 24, as .*int32"):
        training_batches(recast, shuffled_train=shuffled_train, batch_size=2, epoch_seeds=[0],
                         shuffle_buffer=4)


def test_a_set_the_buffer_holds_is_shuffled_whole_whatever_its_source_offers():
    files, shuffled_train = _class_sorted()
    assert not reads_shuffled_train(files, shuffled_train)
    assert not reads_shuffled_train(files, None, shuffle_buffer=4)
    kwargs = dict(batch_size=6, training=True, seed=2)
    _assert_same_batches(_epoch(make_pipeline(files, **kwargs)),
                         _epoch(make_pipeline(files, shuffled_train=shuffled_train, **kwargs)))


def test_cache_changes_no_batch_where_the_order_is_drawn_each_epoch():
    files, shuffled_train = _class_sorted()
    kwargs = dict(batch_size=6, training=True, seed=2, shuffle_buffer=4,
                  shuffled_train=shuffled_train)
    _assert_same_batches(_epoch(make_pipeline(files, cache=True, **kwargs)),
                         _epoch(make_pipeline(files, **kwargs)))


def test_several_epochs_need_their_steps_and_the_images_for_them():
    dataset, _, _ = _dataset()
    with pytest.raises(ValueError, match="Expected steps >= 1 for 2 epochs"):
        training_batches(dataset, batch_size=4, epoch_seeds=[0, 1])
    # 20 images cannot make 3 batches of 8 an epoch: a batch would span two epochs.
    with pytest.raises(ValueError, match=r"at least steps \* batch_size = 24 images"):
        training_batches(dataset, batch_size=8, epoch_seeds=[0, 1], steps=3)


def test_epochs_of_whole_batches_keep_a_static_batch_size():
    dataset, _, _ = _dataset()
    batches = training_batches(dataset, batch_size=4, epoch_seeds=[0, 1], steps=5,
                               drop_remainder=True)
    assert batches.element_spec[0].shape.as_list() == [4, 8, 8, 3]


def test_an_unseeded_pipeline_still_works():
    dataset, _, _ = _dataset()
    assert len(_epoch(make_pipeline(dataset, batch_size=8, training=True, seed=None))) == 3


def test_randaugment_is_deterministic():
    dataset, _, labels = _dataset(8)
    kwargs = dict(batch_size=8, training=True, randaugment=True, seed=3)
    first = _epoch(make_pipeline(dataset, **kwargs))
    _assert_same_batches(first, _epoch(make_pipeline(dataset, **kwargs)))
    assert first[0][0].shape == (8, 8, 8, 3)
    assert sorted(first[0][1]) == sorted(labels)


def test_batch_augmentation_does_not_depend_on_an_abandoned_pass():
    # Keras' fit under a distribution strategy takes one batch from an
    # iterator that it then drops, after prefetching has computed more.
    dataset, _, _ = _dataset(128)
    kwargs = dict(
        batch_size=4, training=True, num_classes=NUM_CLASSES, mixup=0.2, cutmix=1.0,
        randaugment=True, seed=1,
    )
    whole = make_pipeline(dataset, **kwargs)
    _epoch(whole)
    abandoned = make_pipeline(dataset, **kwargs)
    next(iter(abandoned))
    _assert_same_batches(_epoch(abandoned), _epoch(whole))


def test_every_pass_over_training_batches_gives_the_first_pass_batches():
    # Also where each epoch is read through shuffled_train, drawn again on each pass.
    dataset, _, _ = _dataset(64)

    def shuffled_train(seed):
        return dataset.shuffle(64, seed=seed, reshuffle_each_iteration=True)

    batches = training_batches(
        dataset, shuffled_train=shuffled_train, shuffle_buffer=4, batch_size=8,
        epoch_seeds=[1, 2], steps=8, num_classes=NUM_CLASSES, mixup=0.2, randaugment=True)
    first = _epoch(batches)
    next(iter(batches))
    _assert_same_batches(_epoch(batches), first)
    # make_pipeline's one epoch, which fit(epochs=N) reads N times, is drawn again each pass.
    one_epoch = make_pipeline(dataset, batch_size=8, training=True, seed=1)
    first, second = _epoch(one_epoch), _epoch(one_epoch)
    assert any((a[1] != b[1]).any() for a, b in zip(first, second))


def test_evaluation_does_not_mix():
    dataset, _, labels = _dataset()
    batches = _epoch(
        make_pipeline(dataset, batch_size=8, training=False, num_classes=NUM_CLASSES, mixup=0.2)
    )
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels)


def test_cache_gives_the_same_batches():
    dataset, _, _ = _dataset()
    kwargs = dict(batch_size=8, training=True, augmentation="cifar", seed=2)
    cached = make_pipeline(dataset, cache=True, **kwargs)
    _assert_same_batches(_epoch(cached), _epoch(make_pipeline(dataset, **kwargs)))


def _varying_sizes():
    shapes = [(10, 14, 3), (20, 9, 3), (12, 12, 3)]
    return tf.data.Dataset.from_generator(
        lambda: ((np.full(shape, 50.0, np.float32), 1) for shape in shapes),
        output_signature=(
            tf.TensorSpec((None, None, 3), tf.float32),
            tf.TensorSpec((), tf.int32),
        ),
    )


@pytest.mark.parametrize("training", [True, False])
def test_imagenet_recipe_batches_images_of_varying_size(training):
    pipeline = make_pipeline(
        _varying_sizes(), batch_size=3, training=training, augmentation="imagenet", image_size=8
    )
    (images, labels), = _epoch(pipeline)
    assert images.shape == (3, 8, 8, 3)
    np.testing.assert_allclose(images, 50.0, rtol=1e-5)


def test_images_of_varying_size_need_a_resizing_recipe():
    with pytest.raises(ValueError, match="augmentation='imagenet'"):
        make_pipeline(_varying_sizes(), batch_size=3, training=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=4, shuffle_buffer=0), "shuffle_buffer"),
        (dict(batch_size=4, mixup=0.2), "num_classes"),
        (dict(batch_size=4, augmentation="auto"), "Unknown augmentation"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    dataset, _, _ = _dataset()
    with pytest.raises(ValueError, match=message):
        make_pipeline(dataset, training=True, **kwargs)
