"""Per-image augmentation recipes for the training and evaluation pipelines.

Two kinds, applied at two places of a `tf.data` pipeline (see `pipeline.py`);
the second lives in `batch_augment.py`:

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
import math
from typing import Callable, Optional

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
        eval_description: what `eval` does, in words (`"identity"`), so that
            two recipes' evaluations can be told alike or apart; `None` (the
            default): alike only with the same recipe.
    """

    name: str
    train: Callable
    eval: Callable
    eval_description: Optional[str] = None


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


def _crop_window(shape, seed, area_range, aspect_ratio_range, attempts=10):
    """`(top, left, height, width)` of a random-resized crop, as torchvision samples it.

    Up to `attempts` draws of an area share (uniform) and an aspect ratio
    (uniform in log); the first that fits the image is placed uniformly at
    random; if none fits, the central crop of the whole image clamped to the
    aspect ratio range. TensorFlow's `sample_distorted_bounding_box` draws
    otherwise and gives smaller crops (a mean area of 0.37 of the image
    against torchvision's 0.43 with the defaults).
    """
    height, width = tf.unstack(tf.cast(shape[:2], tf.float32))
    area_seed, ratio_seed, offset_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    area = height * width * tf.random.stateless_uniform(
        [attempts], area_seed, area_range[0], area_range[1])
    low_ratio, high_ratio = aspect_ratio_range
    ratio = tf.exp(tf.random.stateless_uniform(
        [attempts], ratio_seed, math.log(low_ratio), math.log(high_ratio)))
    crop_width, crop_height = tf.round(tf.sqrt(area * ratio)), tf.round(tf.sqrt(area / ratio))
    fits = ((crop_width > 0) & (crop_width <= width)
            & (crop_height > 0) & (crop_height <= height))
    first = tf.argmax(tf.cast(fits, tf.int32))  # 0 when none fits: the fallback's then.
    image_ratio = width / height
    fallback_width = tf.where(image_ratio > high_ratio, tf.round(height * high_ratio), width)
    fallback_height = tf.where(image_ratio < low_ratio, tf.round(width / low_ratio), height)
    any_fits = tf.reduce_any(fits)
    crop_height = tf.where(any_fits, crop_height[first], fallback_height)
    crop_width = tf.where(any_fits, crop_width[first], fallback_width)
    uniform = tf.random.stateless_uniform([2], offset_seed)
    top = tf.where(any_fits, tf.floor(uniform[0] * (height - crop_height + 1)),
                   tf.floor((height - crop_height) / 2))
    left = tf.where(any_fits, tf.floor(uniform[1] * (width - crop_width + 1)),
                    tf.floor((width - crop_width) / 2))
    return tuple(tf.cast(v, tf.int32) for v in (top, left, crop_height, crop_width))


def random_resized_crop(
    image, seed, size, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3)
):
    """Crops a random area and aspect ratio of an image, resized to a square.

    The window is drawn as torchvision's `RandomResizedCrop` draws it (the
    field's ImageNet recipe), with TensorFlow's stateless random numbers.

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
    top, left, height, width = _crop_window(
        tf.shape(image), seed, area_range, aspect_ratio_range)
    crop = image[top:top + height, left:left + width]
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
        name="none", train=lambda image, seed: image, eval=lambda image: image,
        eval_description="identity",
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

    return Augmentation(name="cifar", train=train, eval=lambda image: image,
                        eval_description="identity")


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
        eval_description=f"resized and centre-cropped to {size}x{size}",
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


def evaluation_transform(name, image_size=None):
    """What the recipe `name` does to an image it evaluates, in words.

    Args:
        name: a key of `AUGMENTATIONS`.
        image_size: as `build_augmentation`'s. Defaults to `None`.

    Returns:
        Its `eval_description`, or `"<name>'s"` for a recipe without one.

    Raises:
        ValueError: as `build_augmentation`.
    """
    return build_augmentation(name, image_size).eval_description or f"{name}'s"
