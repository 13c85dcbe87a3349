"""Image augmentation for the training and evaluation pipelines.

Two kinds, applied at two places of a `tf.data` pipeline (see `pipeline.py`):

* Per-image recipes, found by name in `AUGMENTATIONS`: random crops and flips
  for training, a fixed resize and crop for evaluation. They are pure
  functions of the image and a per-image seed: Keras' random layers keep their
  seed in a variable that the calls of a parallel `map` race on, so their
  output changes from run to run even with a fixed seed.
* `BatchAugmentation`: RandAugment, MixUp and CutMix with the Keras 3 layers,
  applied to whole batches, each batch with its own seed: the layers' draws
  are derived from it, not from their seed variables.

Images stay in raw pixel scale (0-255); normalisation happens in the model.

References: He et al. 2016 (the CIFAR recipe), Szegedy et al. 2015
(random-resized crop), Cubuk et al. 2020 (RandAugment), Zhang et al. 2018
(MixUp), Yun et al. 2019 (CutMix).
"""

import dataclasses
from typing import Callable

import keras
import tensorflow as tf

DEFAULT_IMAGENET_SIZE = 224
# Evaluation resizes the shorter side to size / 0.875 (256 for 224) and then
# takes the central crop, the usual ImageNet protocol.
_IMAGENET_EVAL_CROP_FRACTION = 0.875


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """A per-image augmentation recipe.

    Attributes:
        name: registry name, e.g. `"cifar"`.
        train: `(image, seed) -> image`, random; `seed` is a shape `(2,)`
            integer tensor, so the same seed gives the same image.
        eval: `image -> image`, deterministic.
    """

    name: str
    train: Callable
    eval: Callable


def pad_and_random_crop(image, seed, padding=4, padding_mode="constant"):
    """Pads an image on every side, then crops it back to its size at random.

    Args:
        image: float tensor `(height, width, channels)`.
        seed: shape `(2,)` integer tensor.
        padding: pixels added on each side. Defaults to `4`.
        padding_mode: `"constant"` (zeros, as in the ResNet paper and
            torchvision's `RandomCrop(32, padding=4)`), `"reflect"` or
            `"symmetric"`. Defaults to `"constant"`.

    Returns:
        A tensor with the shape of `image`.
    """
    paddings = [[padding, padding], [padding, padding], [0, 0]]
    padded = tf.pad(image, paddings, mode=padding_mode.upper())
    cropped = tf.image.stateless_random_crop(padded, tf.shape(image), seed=seed)
    return tf.ensure_shape(cropped, image.shape)


def random_resized_crop(
    image, seed, size, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3)
):
    """Crops a random area and aspect ratio of an image, resized to a square.

    Args:
        image: float tensor `(height, width, channels)`, any height and width.
        seed: shape `(2,)` integer tensor.
        size: side of the output square.
        area_range: range of the crop's share of the image area. Defaults to
            `(0.08, 1.0)`.
        aspect_ratio_range: range of the crop's width / height. Defaults to
            `(3 / 4, 4 / 3)`.

    Returns:
        A float32 tensor `(size, size, channels)`.
    """
    whole_image = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=whole_image,
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, crop_size)
    resized = tf.image.resize(crop, (size, size), antialias=True)
    return tf.ensure_shape(resized, (size, size, image.shape[-1]))


def resize_and_center_crop(image, size, crop_fraction=_IMAGENET_EVAL_CROP_FRACTION):
    """Resizes the shorter side to `size / crop_fraction`, then crops the centre.

    Args:
        image: float tensor `(height, width, channels)`, any height and width.
        size: side of the output square.
        crop_fraction: share of the resized shorter side that is kept.
            Defaults to `0.875`.

    Returns:
        A float32 tensor `(size, size, channels)`.
    """
    shorter_side = round(size / crop_fraction)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = shorter_side / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    resized = tf.image.resize(image, new_shape, antialias=True)
    top = (new_shape[0] - size) // 2
    left = (new_shape[1] - size) // 2
    cropped = tf.image.crop_to_bounding_box(resized, top, left, size, size)
    return tf.ensure_shape(cropped, (size, size, image.shape[-1]))


def _check_no_image_size(name, image_size):
    if image_size is not None:
        raise ValueError(
            f"Augmentation {name!r} keeps the input size and takes no "
            f"`image_size`; use 'imagenet' to crop and resize. Received: "
            f"image_size={image_size}"
        )


def no_augmentation(image_size=None):
    """The identity recipe.

    Args:
        image_size: must be `None`. Defaults to `None`.

    Returns:
        An `Augmentation`.
    """
    _check_no_image_size("none", image_size)
    return Augmentation(
        name="none", train=lambda image, seed: image, eval=lambda image: image
    )


def cifar_augmentation(image_size=None, padding=4, padding_mode="constant"):
    """The CIFAR recipe: pad, random crop back to size, flip; eval: identity.

    Args:
        image_size: must be `None`; the crop keeps the input size. Defaults
            to `None`.
        padding: pixels padded on each side. Defaults to `4`.
        padding_mode: see `pad_and_random_crop`. Defaults to `"constant"`.

    Returns:
        An `Augmentation`.
    """
    _check_no_image_size("cifar", image_size)

    def train(image, seed):
        crop_seed, flip_seed = tf.unstack(tf.random.split(seed, 2))
        image = pad_and_random_crop(image, crop_seed, padding, padding_mode)
        return tf.image.stateless_random_flip_left_right(image, flip_seed)

    return Augmentation(name="cifar", train=train, eval=lambda image: image)


def imagenet_augmentation(image_size=None):
    """The ImageNet recipe for images of any size.

    Training: random-resized crop to `image_size` and horizontal flip.
    Evaluation: resize the shorter side to `image_size / 0.875`, central crop.

    Args:
        image_size: side of the output square. Defaults to `224`.

    Returns:
        An `Augmentation`.
    """
    size = DEFAULT_IMAGENET_SIZE if image_size is None else int(image_size)

    def train(image, seed):
        crop_seed, flip_seed = tf.unstack(tf.random.split(seed, 2))
        image = random_resized_crop(image, crop_seed, size)
        return tf.image.stateless_random_flip_left_right(image, flip_seed)

    return Augmentation(
        name="imagenet",
        train=train,
        eval=lambda image: resize_and_center_crop(image, size),
    )


AUGMENTATIONS = {
    "none": no_augmentation,
    "cifar": cifar_augmentation,
    "imagenet": imagenet_augmentation,
}


def build_augmentation(name, image_size=None):
    """Builds the per-image recipe registered under `name`.

    Args:
        name: a key of `AUGMENTATIONS`.
        image_size: output side for the recipes that resize (`"imagenet"`).
            Defaults to `None`.

    Returns:
        An `Augmentation`.

    Raises:
        ValueError: on an unknown name.
    """
    if name not in AUGMENTATIONS:
        raise ValueError(
            f"Unknown augmentation {name!r}. Expected one of "
            f"{sorted(AUGMENTATIONS)}."
        )
    return AUGMENTATIONS[name](image_size=image_size)


class _BatchSeedGenerator(keras.random.SeedGenerator):
    """A `SeedGenerator` whose draws derive from the current batch's seed.

    Keras' random layers take every seed from a `SeedGenerator`, whose state
    is a variable. In a `tf.data` pipeline that variable is shared by every
    pass over the dataset and advanced by every batch computed, including
    those that prefetching computes for an iterator that is then dropped:
    Keras' `fit` under a distribution strategy takes one batch from such an
    iterator before training. The batches of a pass then depended on
    timing. Between `use(seed)` and the next `use`, the `i`-th draw is
    `fold_in(seed, i)`, a pure function of the batch's seed; with no batch
    seed, draws advance the state as usual.
    """

    _batch_seed = None
    _draws = 0

    def use(self, seed):
        """Derives the next draws from `seed` (shape `(2,)`), or `None`."""
        self._batch_seed, self._draws = seed, 0

    def next(self, ordered=True):
        if self._batch_seed is None:
            return super().next(ordered)
        self._draws += 1
        return tf.random.fold_in(self._batch_seed, self._draws)


class BatchAugmentation:
    """RandAugment, MixUp and CutMix on whole batches, with the Keras 3 layers.

    Call it on `(images, labels)` with integer labels `(batch,)`. When MixUp
    or CutMix is on, the labels come back as float32 soft vectors
    `(batch, num_classes)` summing to 1; otherwise they are unchanged. With
    both on, each batch gets one of the two, with equal chance.

    In a `tf.data` pipeline pass each batch its own `seed` (see `__call__`):
    the output is then a pure function of the batch and its seed, which a
    parallel `map`, and every pass over the dataset, reproduces exactly.

    Args:
        num_classes: number of classes; needed when MixUp or CutMix is on.
            Defaults to `None`.
        mixup: MixUp's `alpha`; `0` turns MixUp off. Keras draws the mixing
            weight from Beta(alpha, alpha) for each image and mixes each
            image with its partner in a random permutation of the batch.
            Defaults to `0.0`.
        cutmix: CutMix's Beta parameter in `[0, 1]`; `0` turns CutMix off.
            Keras weighs the labels by the area of a real-valued box and
            pastes the whole pixels inside it, so the two can differ by up
            to a pixel per side. Defaults to `0.0`.
        randaugment: whether to apply RandAugment (2 operations of magnitude
            0.5). Keras draws the operations once per batch; magnitudes vary
            per image. Defaults to `False`.
        seed: seed of the draws of calls without a batch `seed`. Defaults
            to `0`.

    Raises:
        ValueError: on a negative `mixup`, a `cutmix` outside `[0, 1]`, or
            mixing without `num_classes`.
    """

    def __init__(
        self, num_classes=None, *, mixup=0.0, cutmix=0.0, randaugment=False, seed=0
    ):
        if mixup < 0:
            raise ValueError(f"Expected mixup >= 0. Received: mixup={mixup}")
        if not 0 <= cutmix <= 1:
            raise ValueError(
                f"Expected 0 <= cutmix <= 1 (Keras' CutMix bounds its Beta "
                f"parameter by 1). Received: cutmix={cutmix}"
            )
        if (mixup or cutmix) and not num_classes:
            raise ValueError(
                "MixUp and CutMix mix labels, so they need `num_classes` to "
                f"one-hot them. Received: num_classes={num_classes}"
            )
        self.num_classes = num_classes
        self._randaugment = self._mixup = self._cutmix = None
        if randaugment:
            self._randaugment = keras.layers.RandAugment(value_range=(0, 255), seed=seed)
        if mixup:
            self._mixup = keras.layers.MixUp(alpha=mixup, seed=seed)
        if cutmix:
            self._cutmix = keras.layers.CutMix(factor=(cutmix, cutmix), seed=seed)
        # One generator for every draw (RandAugment hands its own to the
        # layers it applies), so draws never repeat within a batch.
        self._seed_generator = _BatchSeedGenerator(seed, name="batch_seeds")
        for layer in (self._randaugment, self._mixup, self._cutmix):
            if layer is not None:
                layer.generator = self._seed_generator

    @property
    def mixes_labels(self):
        """Whether the output labels are soft `(batch, num_classes)` vectors."""
        return self._mixup is not None or self._cutmix is not None

    def __call__(self, images, labels, seed=None):
        """Augments a batch.

        Args:
            images: float tensor `(batch, height, width, channels)`.
            labels: integer tensor `(batch,)`.
            seed: this batch's seed, a shape `(2,)` integer tensor; the same
                seed gives the same output. `None` draws from a stateful
                generator seeded by the constructor's `seed`: each call
                differs, and in a `tf.data` map the output would depend on
                how many batches earlier passes computed. Defaults to `None`.

        Returns:
            `(images, labels)`: labels as described in the class docs.
        """
        self._seed_generator.use(seed)
        if self._randaugment is not None:
            images = self._randaugment(images, training=True)
        if not self.mixes_labels:
            return images, labels
        batch = {
            "images": images,
            "labels": tf.one_hot(tf.cast(labels, tf.int32), self.num_classes),
        }
        if self._mixup is not None and self._cutmix is not None:
            use_mixup = keras.random.uniform((), seed=self._seed_generator) < 0.5
            batch = tf.cond(
                use_mixup,
                lambda: self._mixup(batch, training=True),
                lambda: self._cutmix(batch, training=True),
            )
        elif self._mixup is not None:
            batch = self._mixup(batch, training=True)
        else:
            batch = self._cutmix(batch, training=True)
        return batch["images"], batch["labels"]
