"""Per-channel image statistics of a dataset.

They normalise the images of a data set without published statistics (an
image folder, a tfds set other than CIFAR and ImageNet).
"""

import tensorflow as tf

STATISTICS_IMAGES = 2048


def channel_statistics(dataset, max_images=STATISTICS_IMAGES):
    """Per-channel mean and standard deviation of the first images.

    Args:
        dataset: unbatched `(image, label)` dataset; images may differ in size.
        max_images: number of images read. Defaults to `2048`.

    Returns:
        `(mean, std)`, two tuples of floats in the images' raw scale.

    Raises:
        ValueError: if the dataset is empty.
    """
    num_channels = dataset.element_spec[0].shape[-1]

    def moments(image, label):
        pixels = tf.reshape(tf.cast(image, tf.float64), [-1, num_channels])
        return (
            tf.reduce_sum(pixels, axis=0),
            tf.reduce_sum(tf.square(pixels), axis=0),
            tf.cast(tf.shape(pixels)[0], tf.float64),
        )

    zeros = tf.zeros([num_channels], tf.float64)
    total, total_squares, count = (
        dataset.take(max_images)
        .map(moments, num_parallel_calls=tf.data.AUTOTUNE)
        .reduce(
            (zeros, zeros, tf.constant(0.0, tf.float64)),
            lambda state, new: tuple(a + b for a, b in zip(state, new)),
        )
    )
    if count == 0:
        raise ValueError("Cannot compute the image statistics of an empty dataset.")
    mean = total / count
    # Clipped at 0: rounding can make E[x^2] - E[x]^2 slightly negative.
    std = tf.sqrt(tf.maximum(total_squares / count - tf.square(mean), 0.0))
    return tuple(float(v) for v in mean.numpy()), tuple(float(v) for v in std.numpy())
