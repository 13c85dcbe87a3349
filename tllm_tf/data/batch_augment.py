"""RandAugment, MixUp and CutMix on whole batches, seeded per batch.

The batch-level half of the augmentation (the per-image recipes:
`augment.py`), with the Keras 3 layers. Each batch gets its own seed and the
layers' draws derive from it, not from their seed variables, so a batch's
augmentation does not depend on how many batches were computed before it
(Cubuk et al. 2020, Zhang et al. 2018, Yun et al. 2019).
"""

import keras
import tensorflow as tf


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
            to a pixel per side: on 32x32 images a few percent of the label
            weight, on the digits' 8x8 up to about a quarter. Defaults to
            `0.0`.
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
