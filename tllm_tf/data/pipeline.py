"""Batched `tf.data` pipelines for training and evaluation.

(Over 300 lines: the shuffle buffer, each epoch's order and its augmentations
are one design, whose measurements the docstrings keep.)

Augmentation happens here, before the batch reaches the model, so the
teacher and the student of a `Distiller` see the very same augmented (and
mixed) images. Images stay in raw pixel scale; the model normalises them.
"""

import tensorflow as tf

from tllm_tf.data.augment import build_augmentation
from tllm_tf.data.batch_augment import BatchAugmentation

# The shuffle buffer of a data set whose size is unknown.
DEFAULT_SHUFFLE_BUFFER = 10_000
# The most the shuffle buffer of decoded images may take. Within it a data set
# of known size is shuffled whole, as a random permutation each epoch (the
# reference code's sampler): CIFAR's 45,000 images take 0.55 GB as float32.
SHUFFLE_BUFFER_BYTES = 2 * 1024**3
# For images of varying size (ImageNet: about 2.2 MB each once decoded, so
# about 2.2 GB); tfds writes its shards pre-shuffled.
VARYING_SIZE_SHUFFLE_BUFFER = 1_000

def _seeds(seed):
    # A stream of shape-(2,) seeds, new on every pass over the dataset (unless
    # built again for each pass) and the same on every run: the augmentations
    # are then pure functions of their inputs, which a parallel map reproduces
    # exactly, and a pass does not depend on how far earlier passes got.
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)


def _apart_from_image_seeds(pair):
    # The batch seeds: a stream apart from the per-image one, from the same seed.
    return tf.random.fold_in(pair, -1)


def _built_on_each_pass(build):
    # `build()`, built again when each pass over it starts: its shuffles and random
    # streams, new on every pass when built once, then draw on every pass what
    # they draw on their first.
    return tf.data.Dataset.from_tensors(0).flat_map(
        tf.autograph.experimental.do_not_convert(lambda _: build()))


def shuffle_buffer_size(image_spec, num_examples=None):
    """The shuffle buffer for `num_examples` images of `image_spec`.

    A buffer as large as the data set shuffles it whole each epoch; a smaller
    one only within a window, so that an image's place in an epoch follows
    its place in the data set (a correlation of 0.79 was measured on CIFAR's
    45,000 images with a buffer of 10,000).

    Args:
        image_spec: `tf.TensorSpec` of one image, e.g. `dataset.element_spec[0]`.
        num_examples: the data set's size, or `None` if unknown.

    Returns:
        As many images as fit in `SHUFFLE_BUFFER_BYTES` (2 GiB; about 3,500
        of 224x224x3 float32), and at most `num_examples`, or, when that is
        unknown, `DEFAULT_SHUFFLE_BUFFER`; `VARYING_SIZE_SHUFFLE_BUFFER` for
        images of varying size.
    """
    if not image_spec.shape.is_fully_defined():
        return VARYING_SIZE_SHUFFLE_BUFFER
    image_bytes = max(1, image_spec.shape.num_elements() * image_spec.dtype.size)
    wanted = DEFAULT_SHUFFLE_BUFFER if num_examples is None else num_examples
    return max(1, min(wanted, SHUFFLE_BUFFER_BYTES // image_bytes))


def reads_shuffled_train(dataset, shuffled_train, shuffle_buffer=None):
    """Whether training reads `shuffled_train` each epoch rather than `dataset`.

    It does where there is one and the shuffle buffer cannot hold the whole
    data set (see `training_batches`); a data set of unknown size counts as
    larger than the buffer.

    Args:
        dataset: the unbatched training split, e.g. `DataSplits.train`.
        shuffled_train: its `DataSplits.shuffled_train`, or `None`.
        shuffle_buffer: the buffer, in examples. Defaults to `None`:
            `shuffle_buffer_size` of `dataset`.

    Returns:
        A bool.
    """
    if shuffled_train is None:
        return False
    size = int(dataset.cardinality())
    if shuffle_buffer is None:
        shuffle_buffer = shuffle_buffer_size(dataset.element_spec[0], size if size >= 0 else None)
    return not 0 <= size <= shuffle_buffer


def _check_batchable(dataset, augmentation):
    image_shape = dataset.element_spec[0].shape
    if not image_shape.is_fully_defined():
        raise ValueError(
            f"Images of varying size cannot be batched (image shape "
            f"{image_shape}). Use augmentation='imagenet', which crops and "
            f"resizes every image to `image_size`. Received: "
            f"augmentation={augmentation!r}"
        )


def make_pipeline(
    dataset,
    *,
    batch_size,
    training,
    augmentation="none",
    image_size=None,
    num_classes=None,
    seed=0,
    cache=False,
    shuffle_buffer=None,
    mixup=0.0,
    cutmix=0.0,
    randaugment=False,
    drop_remainder=False,
    shuffled_train=None,
):
    """Turns a split of `DataSplits` into batches for `fit` or `evaluate`.

    Order: cache (of the un-augmented images), shuffle (training), per-image
    augmentation (parallel map), batch, batch augmentation (training:
    RandAugment, MixUp, CutMix), prefetch. The teacher and the student see the
    same augmented images, since augmentation happens here and not in either
    model. With a given `seed` the batches are the same on every run; the
    shuffle order and the random augmentations change from epoch to epoch.

    Args:
        dataset: unbatched `(image float32, label int32)` dataset, e.g.
            `DataSplits.train`.
        batch_size: examples per batch.
        training: whether to shuffle and apply the random augmentations;
            otherwise the recipe's evaluation transform is applied.
        augmentation: a key of `augment.AUGMENTATIONS`: `"none"`, `"cifar"`
            or `"imagenet"`. Defaults to `"none"`.
        image_size: output side for `"imagenet"` (which defaults to 224).
            Defaults to `None`.
        num_classes: number of classes; needed for MixUp and CutMix.
            Defaults to `None`.
        seed: seed of the shuffle and of every augmentation. Defaults to `0`.
        cache: whether to cache the images in memory before augmentation.
            Defaults to `False`.
        shuffle_buffer: shuffle buffer size, in examples. Defaults to
            `None`: `shuffle_buffer_size(...)` of the images and the data
            set's size: the whole data set for CIFAR, Fashion-MNIST and the
            digits, `1_000` for images of varying size (decoded ImageNet
            images take about 2 MB each).
        mixup: MixUp's `alpha`; `0` turns it off. Defaults to `0.0`.
        cutmix: CutMix's Beta parameter in `[0, 1]`; `0` turns it off.
            Defaults to `0.0`.
        randaugment: whether to apply RandAugment. Defaults to `False`.
        drop_remainder: whether to drop the last, smaller batch. Defaults
            to `False`.
        shuffled_train: `DataSplits.shuffled_train` of the split being
            trained on, read instead of `dataset` when the data set is larger
            than the shuffle buffer (see `training_batches`). It replaces
            `dataset` whole: `cache` then caches nothing that training reads,
            and a `map` or `filter` applied to `dataset` would be lost (a
            `dataset` of unknown size is refused; for a transformed split pass
            `None`). Defaults to `None`.

    Returns:
        A `tf.data.Dataset` of `(images, labels)`: images float32
        `(batch, height, width, channels)`; labels int32 `(batch,)`, or
        float32 soft vectors `(batch, num_classes)` when training with MixUp
        or CutMix.

    Raises:
        ValueError: on a bad `batch_size` or `shuffle_buffer`, an unknown
            augmentation, bad mixing parameters, images of varying size
            with an augmentation that does not resize them, or a
            `shuffled_train` that does not match `dataset` (see
            `training_batches`).
    """
    if cache:
        dataset = dataset.cache()
    if training:
        batches = training_batches(
            dataset, batch_size=batch_size, epoch_seeds=[seed], augmentation=augmentation,
            image_size=image_size, num_classes=num_classes, shuffle_buffer=shuffle_buffer,
            mixup=mixup, cutmix=cutmix, randaugment=randaugment, drop_remainder=drop_remainder,
            shuffled_train=shuffled_train, reshuffle_each_pass=True)
    else:
        _check_batch_size(batch_size)
        recipe = build_augmentation(augmentation, image_size=image_size)
        batches = _batched(dataset.map(lambda image, label: (recipe.eval(image), label),
                                       num_parallel_calls=tf.data.AUTOTUNE),
                           batch_size, drop_remainder, augmentation)
    return finished(batches)


def training_batches(
    dataset,
    *,
    batch_size,
    epoch_seeds,
    steps=None,
    augmentation="none",
    image_size=None,
    num_classes=None,
    shuffle_buffer=None,
    mixup=0.0,
    cutmix=0.0,
    randaugment=False,
    drop_remainder=False,
    shuffled_train=None,
    reshuffle_each_pass=False,
):
    """Training batches of one or more epochs back to back, each drawn by its own seed.

    Epoch `i` is `dataset` shuffled, augmented and mixed by `epoch_seeds[i]`
    alone, so the batches of an epoch do not depend on the epochs before it
    (a resumed run sees the batches an uninterrupted one saw). Each epoch's
    shuffle and seed streams are built on their own, which is cheap; the
    augmentations are traced once for all the epochs (one map each over
    their concatenation): traced per epoch, the demo's 60 epochs took 6-7 s
    a stage to build, against about 1 s.

    A shuffle buffer as large as the data set shuffles it whole. A smaller
    one only mixes a window of the order the images come in: where that is
    the files' order (an image folder lists its classes one after another)
    an epoch's first batches would hold a few classes. So where the data set
    is larger than the buffer and its source draws its own order
    (`shuffled_train`), each epoch reads `shuffled_train(seed)`, the files
    shuffled by the epoch's seed, and the buffer mixes that further. One
    epoch's tfds reader takes about 80 ms and 1.3 MB to set up, whatever the
    shards (10 s and 150-190 MB for 120 epochs, built up front; about 50
    more idle threads, not growing with the epochs).

    The epochs are built inside a `tf.data` function, made again at the
    start of each pass, so that every pass repeats the first (unless
    `reshuffle_each_pass`). Against building them once (2 CPU cores; the
    batches are the same): 240 CIFAR-size epochs took 6 s to make instead
    of 2.5-3.4 s, and their first batch 2.5-2.9 s instead of 1-2 s. Read
    through a tfds `shuffled_train` (8 shards), 240 epochs' first batch took
    13.8 s instead of 5.2 s, each further pass 7.3-7.8 s to start instead
    of 0.5-0.7 s, and 290 MB more (120 epochs: 9.0 s, 4.3 s, 150 MB). A
    stage reads its epochs once, or twice under a distribution strategy.

    Args:
        dataset: unbatched `(image float32, label int32)` dataset.
        batch_size: examples per batch.
        epoch_seeds: one seed per epoch (an int; `None` draws an unseeded
            epoch: without a global seed a new one on each pass, under
            `keras.utils.set_random_seed` the same on every pass and build).
        steps: batches per epoch, the rest dropped; needed for more than one
            epoch. Defaults to `None`: every batch of the one epoch.
        augmentation, image_size, num_classes, shuffle_buffer, mixup,
        cutmix, randaugment, drop_remainder: as `make_pipeline`'s.
        shuffled_train: `DataSplits.shuffled_train` of `dataset`: a function
            of a seed returning `dataset` in an order drawn from it, read in
            its place (what was applied to `dataset` is not). Defaults to
            `None`: `dataset` as it is.
        reshuffle_each_pass: whether each pass over the result draws its
            epochs again (new orders, new augmentations), as `make_pipeline`
            needs for `fit(epochs=N)`, which reads its one epoch N times.
            Defaults to `False`: every pass gives the batches of the first,
            so a pass read before training changes nothing (under a
            distribution strategy Keras' `fit` reads a batch, then starts
            again from the first).

    Returns:
        A `tf.data.Dataset` of batches, not prefetched (`finished` adds
        that).

    Raises:
        ValueError: as `make_pipeline`, several epochs without `steps`, a
            data set of known size with fewer than `steps * batch_size`
            images, or, with a `shuffled_train` read in its place, a
            `dataset` of unknown size (a filtered split) or a
            `shuffled_train` of another size or element spec.
    """
    _check_batch_size(batch_size)
    epoch_seeds = list(epoch_seeds)
    if len(epoch_seeds) > 1 and not steps:
        raise ValueError(f"Expected steps >= 1 for {len(epoch_seeds)} epochs. Received: "
                         f"steps={steps}")
    size = int(dataset.cardinality())
    if steps and 0 <= size < steps * batch_size:
        # Fewer images would let a batch span two epochs (and an epoch depend on the last).
        raise ValueError(
            f"Expected at least steps * batch_size = {steps * batch_size} images an epoch. "
            f"Received: {size} images, steps={steps}, batch_size={batch_size}.")
    if shuffle_buffer is None:
        shuffle_buffer = shuffle_buffer_size(dataset.element_spec[0], size if size >= 0 else None)
    if shuffle_buffer < 1:
        raise ValueError(
            f"Expected shuffle_buffer >= 1. Received: shuffle_buffer={shuffle_buffer}"
        )
    recipe = build_augmentation(augmentation, image_size=image_size)
    examples_per_epoch = None if steps is None else steps * batch_size
    # Where the buffer holds the whole set it shuffles it whole: the source's order is moot.
    reordered = reads_shuffled_train(dataset, shuffled_train, shuffle_buffer)

    if reordered:
        _check_shuffled_train(shuffled_train, epoch_seeds[0], dataset, size)
    each_pass = (lambda build: build()) if reshuffle_each_pass else _built_on_each_pass

    def examples(seed):
        source = shuffled_train(seed) if reordered else dataset
        shuffled = source.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        pairs = tf.data.Dataset.zip(shuffled, _seeds(seed))
        return pairs if examples_per_epoch is None else pairs.take(examples_per_epoch)

    augmented = each_pass(lambda: _one_after_another(
        [examples(seed) for seed in epoch_seeds], examples_per_epoch)).map(
        lambda example, image_seed: (recipe.train(example[0], image_seed), example[1]),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    # Each epoch brings a whole number of batches (its size checked above, where known),
    # so no batch spans two epochs.
    batches = _batched(augmented, batch_size, drop_remainder, augmentation)
    if not (randaugment or mixup or cutmix):
        return batches
    # Every batch passes its own seed, from which the layers' draws derive: the
    # constructor's seed, for calls without one, is never used here.
    batch_augmentation = BatchAugmentation(
        num_classes, mixup=mixup, cutmix=cutmix, randaugment=randaugment, seed=0)
    batch_seeds = each_pass(lambda: _one_after_another(
        [_seeds(seed) if steps is None else _seeds(seed).take(steps) for seed in epoch_seeds],
        steps)).map(_apart_from_image_seeds)
    return tf.data.Dataset.zip(batches, batch_seeds).map(
        lambda batch, batch_seed: batch_augmentation(*batch, seed=batch_seed),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def _check_shuffled_train(shuffled_train, seed, dataset, size):
    # Read in place of `dataset` of `size` images: refused where that would lose what
    # was applied to it. Every seed's draw has the same size and spec: `seed`'s stands
    # for all.
    if size < 0:
        raise ValueError(
            "Expected a data set of known size with shuffled_train, which is read in its place: "
            "a filtered or transformed split would lose what was applied to it. Pass "
            "shuffled_train=None for such a split.")
    drawn = shuffled_train(seed)
    drawn_size = int(drawn.cardinality())
    if drawn_size != size or drawn.element_spec != dataset.element_spec:
        raise ValueError(
            f"Expected shuffled_train to give the {size} images of the data set, as "
            f"{dataset.element_spec}. Received {drawn_size}, as {drawn.element_spec}: it "
            "belongs to another training split (a DataSplits whose train was replaced "
            "needs its shuffled_train replaced too, or set to None).")


def _one_after_another(datasets, length):
    """`datasets` concatenated, each of `length` elements (or the only one, of any length).

    Each is closed, with its threads, as soon as it ends: one pick past each
    one's last element ends it (it yields nothing). `Dataset.concatenate`
    would keep every finished one open until the whole stream ends.
    """
    if len(datasets) == 1:
        return datasets[0]
    order = tf.data.Dataset.range(len(datasets)).flat_map(
        lambda index: tf.data.Dataset.from_tensors(index).repeat(length + 1))
    return tf.data.Dataset.choose_from_datasets(datasets, order, stop_on_empty_dataset=False)


def _check_batch_size(batch_size):
    if batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1. Received: batch_size={batch_size}")


def _batched(dataset, batch_size, drop_remainder, augmentation):
    _check_batchable(dataset, augmentation)
    return dataset.batch(
        batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE
    )


def finished(batches):
    """`batches`, deterministic in order whatever the parallelism, and prefetched."""
    options = tf.data.Options()
    options.deterministic = True
    return batches.with_options(options).prefetch(tf.data.AUTOTUNE)
