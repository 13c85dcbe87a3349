"""Tests of tllm_tf.data.augment and tllm_tf.data.batch_augment."""

import numpy as np
import pytest
import tensorflow as tf

from tllm_tf.data.augment import (
    AUGMENTATIONS,
    build_augmentation,
    cifar_augmentation,
    pad_and_random_crop,
    random_resized_crop,
    resize_and_center_crop,
)
from tllm_tf.data.batch_augment import BatchAugmentation


def _seed(i):
    return tf.constant([i, 7], tf.int64)


def _random_image(shape, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(0, 255, shape), tf.float32)


def test_registry_names_and_unknown_name():
    assert sorted(AUGMENTATIONS) == ["cifar", "imagenet", "none"]
    with pytest.raises(ValueError, match="Unknown augmentation 'autoaugment'"):
        build_augmentation("autoaugment")


@pytest.mark.parametrize("name", ["none", "cifar"])
def test_recipes_that_keep_the_size_reject_image_size(name):
    with pytest.raises(ValueError, match="image_size"):
        build_augmentation(name, image_size=64)


def test_crop_is_a_window_of_the_padded_image():
    image = _random_image((12, 12, 3))
    padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]]).numpy()
    for i in range(5):
        crop = pad_and_random_crop(image, _seed(i)).numpy()
        windows = [
            padded[top : top + 12, left : left + 12]
            for top in range(9)
            for left in range(9)
        ]
        assert any(np.array_equal(crop, window) for window in windows)


def test_crop_of_a_constant_image():
    image = tf.fill((12, 12, 3), 100.0)
    for i in range(5):
        reflected = pad_and_random_crop(image, _seed(i), padding_mode="reflect")
        np.testing.assert_array_equal(reflected, image)
        zero_padded = pad_and_random_crop(image, _seed(i)).numpy()
        assert set(np.unique(zero_padded)) <= {0.0, 100.0}
        # No 4-pixel shift reaches the central 4x4 pixels with padding.
        np.testing.assert_array_equal(zero_padded[4:8, 4:8], 100.0)


def test_cifar_recipe_shapes_and_seeds():
    recipe = build_augmentation("cifar")
    image = _random_image((8, 8, 3))
    out = recipe.train(image, _seed(0))
    assert out.shape == (8, 8, 3) and out.dtype == tf.float32
    np.testing.assert_array_equal(out, recipe.train(image, _seed(0)))
    assert not np.array_equal(out, recipe.train(image, _seed(1)))
    np.testing.assert_array_equal(recipe.eval(image), image)


def test_flip_is_a_flip():
    # Without padding the crop keeps the whole image; only the flip acts.
    recipe = cifar_augmentation(padding=0)
    image = _random_image((8, 8, 3))
    outcomes = set()
    for i in range(20):
        out = recipe.train(image, _seed(i)).numpy()
        if np.array_equal(out, image):
            outcomes.add("same")
        else:
            np.testing.assert_array_equal(out, image.numpy()[:, ::-1])
            outcomes.add("flipped")
    assert outcomes == {"same", "flipped"}


@pytest.mark.parametrize("shape", [(30, 50, 3), (64, 20, 3), (7, 7, 3)])
def test_imagenet_recipe_output_size(shape):
    recipe = build_augmentation("imagenet", image_size=16)
    image = _random_image(shape)
    assert recipe.train(image, _seed(0)).shape == (16, 16, 3)
    assert recipe.eval(image).shape == (16, 16, 3)


def test_random_resized_crop_of_a_constant_image_is_constant():
    image = tf.fill((40, 30, 3), 42.0)
    for i in range(5):
        out = random_resized_crop(image, _seed(i), size=16)
        np.testing.assert_allclose(out, 42.0, rtol=1e-5)


def test_center_crop_keeps_the_middle():
    # Column index as the pixel value: the central crop of a 20x40 image,
    # resized to 9x18 (shorter side 8 / 0.875), spans the middle columns.
    columns = tf.tile(tf.range(40, dtype=tf.float32)[None, :, None], [20, 1, 1])
    out = resize_and_center_crop(columns, size=8).numpy()[..., 0]
    assert out.shape == (8, 8)
    np.testing.assert_allclose(out, np.broadcast_to(out[:1], out.shape), atol=1e-4)
    np.testing.assert_allclose(out[0, ::-1] + out[0], 39.0, atol=0.5)  # centred


def _constant_batch(num_classes=4, side=8):
    values = 10.0 * (np.arange(num_classes) + 1)
    images = tf.constant(
        np.broadcast_to(values[:, None, None, None], (num_classes, side, side, 3)), tf.float32
    )
    return images, tf.range(num_classes, dtype=tf.int32), values


def test_mixup_labels_are_soft_and_match_the_images():
    images, labels, values = _constant_batch()
    mixed_images, mixed_labels = BatchAugmentation(4, mixup=1.0, seed=0)(images, labels)
    assert mixed_labels.shape == (4, 4) and mixed_labels.dtype == tf.float32
    assert np.any(mixed_labels.numpy().max(axis=1) < 0.99)  # something mixed
    np.testing.assert_allclose(tf.reduce_sum(mixed_labels, axis=1), 1.0, rtol=1e-6)
    # Each image is the label-weighted sum of the class images.
    np.testing.assert_allclose(
        mixed_images[:, 0, 0, 0], mixed_labels.numpy() @ values, rtol=1e-4
    )


def test_cutmix_labels_match_the_pasted_area():
    images, labels, values = _constant_batch(side=32)
    mixed_images, mixed_labels = BatchAugmentation(4, cutmix=1.0, seed=1)(images, labels)
    np.testing.assert_allclose(tf.reduce_sum(mixed_labels, axis=1), 1.0, rtol=1e-6)
    assert np.any(mixed_labels.numpy().max(axis=1) < 0.99)  # something pasted
    # Keras weighs the labels by the area of the real-valued box and pastes
    # the pixels inside it, so the two differ by at most a pixel per side:
    # a share of 4 / 32 of the image, times the largest value gap (30).
    np.testing.assert_allclose(
        tf.reduce_mean(mixed_images, axis=[1, 2, 3]), mixed_labels.numpy() @ values, atol=3.75
    )


def test_mixup_and_cutmix_together():
    images, labels, _ = _constant_batch()
    augment = BatchAugmentation(4, mixup=0.2, cutmix=1.0, seed=0)
    for _ in range(3):
        _, mixed_labels = augment(images, labels)
        np.testing.assert_allclose(tf.reduce_sum(mixed_labels, axis=1), 1.0, rtol=1e-6)


def test_randaugment_alone_keeps_shapes_and_labels():
    images, labels, _ = _constant_batch()
    out_images, out_labels = BatchAugmentation(randaugment=True, seed=0)(images, labels)
    assert out_images.shape == images.shape
    np.testing.assert_array_equal(out_labels, labels)


def test_a_batch_seed_makes_the_output_a_function_of_the_batch():
    images, labels, _ = _constant_batch()
    augment = BatchAugmentation(4, mixup=1.0, cutmix=1.0, randaugment=True, seed=0)

    def call(seed):
        return augment(images, labels, seed=tf.constant(seed, tf.int64))

    first_images, first_labels = call([3, 4])
    again_images, again_labels = call([3, 4])
    np.testing.assert_array_equal(first_images, again_images)
    np.testing.assert_array_equal(first_labels, again_labels)
    assert not np.array_equal(first_labels, call([3, 5])[1])
    # Traced as in a tf.data map, it captures no variable to read.
    traced = tf.function(lambda s: augment(images, labels, seed=s)).get_concrete_function(
        tf.TensorSpec((2,), tf.int64))
    assert not [t for t in traced.captured_inputs if t.dtype == tf.resource]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mixup=0.2), "num_classes"),
        (dict(num_classes=4, mixup=-1.0), "mixup >= 0"),
        (dict(num_classes=4, cutmix=2.0), "cutmix <= 1"),
    ],
)
def test_batch_augmentation_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchAugmentation(**kwargs)


def _torchvision_window(height, width, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params, written out in numpy."""
    for _ in range(10):
        area = height * width * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w, h = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return h, w
    if width / height < ratio[0]:
        return round(width / ratio[0]), width
    if width / height > ratio[1]:
        return height, round(height * ratio[1])
    return height, width


def test_random_resized_crop_windows_are_drawn_as_torchvision_draws_them():
    from tllm_tf.data.augment import _crop_window
    rng = np.random.default_rng(0)
    for shape in [(300, 400), (120, 500)]:
        seeds = tf.stack([tf.range(1500, dtype=tf.int64), tf.fill([1500], np.int64(7))], axis=1)
        windows = tf.function(lambda seeds, shape=shape: tf.map_fn(
            lambda seed: tf.stack(_crop_window(
                tf.constant(shape + (3,)), seed, (0.08, 1.0), (3 / 4, 4 / 3))),
            seeds, fn_output_signature=tf.int32))
        ours = windows(seeds).numpy().astype(float)
        theirs = np.array([_torchvision_window(*shape, rng) for _ in range(1500)], float)
        our_area = ours[:, 2] * ours[:, 3] / np.prod(shape)
        their_area = theirs[:, 0] * theirs[:, 1] / np.prod(shape)
        # Mean area share: 0.43 for both (TensorFlow's own sampler gave 0.37).
        assert abs(our_area.mean() - their_area.mean()) < 0.025
        assert abs(np.mean(our_area > 0.5) - np.mean(their_area > 0.5)) < 0.05
        top, left, height, width = ours.T
        assert (top >= 0).all() and (left >= 0).all()
        assert (top + height <= shape[0]).all() and (left + width <= shape[1]).all()


def test_a_crop_window_that_never_fits_is_the_central_crop_clamped_to_the_ratio():
    from tllm_tf.data.augment import _crop_window
    # A 10x200 strip cannot hold a crop of ratio <= 4/3 and area >= 90% of it.
    top, left, height, width = (int(v) for v in _crop_window(
        tf.constant([10, 200, 3]), _seed(3), (0.9, 1.0), (3 / 4, 4 / 3)))
    assert (height, width) == (10, 13) and top == 0 and left == (200 - 13) // 2
