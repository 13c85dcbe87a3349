"""What a `Distiller` batch carries: the images (with the teacher's logits from a store), the labels.

A batch's `x` is the images, or a dict of the images and the teacher's logits
(`tllm_tf.SoftLabelStore`); its `y` is class ids of shape `(batch,)` or
`(batch, 1)`, or label vectors of shape `(batch, num_classes)` (one-hot of
any dtype, or soft). The labels are checked in the graph, where a `tf.data`
pipeline's first bad batch is seen: a float class id that is not a whole
number, or one out of range, stops the step with the offending values.
"""

import tensorflow as tf

from tllm_tf import model_checks


def carries_teacher_logits(x):
    """Whether the batch's `x` brings the teacher's logits along (a soft-label store's)."""
    return isinstance(x, dict) and "teacher_logits" in x


def images(x):
    """The student's input: `x`, or `x["images"]` when `x` carries teacher logits.

    Args:
        x: the batch's `x`.

    Returns:
        The images tensor (or whatever `x` is, when it carries no logits).

    Raises:
        ValueError: on a dict with other keys than `images` and
            `teacher_logits`.
    """
    if not carries_teacher_logits(x):
        return x
    if set(x) != {"images", "teacher_logits"}:
        raise ValueError(
            "A batch that carries teacher logits is a dict with exactly the keys "
            "'images' and 'teacher_logits' (as tllm_tf.SoftLabelStore gives). "
            f"Received keys: {sorted(x)}")
    return x["images"]


def labels(y, num_classes):
    """The batch's labels as the losses take them.

    Args:
        y: the batch's labels.
        num_classes: the model's classes.

    Returns:
        `(labels, is_soft)`: int32 class ids `(batch,)` and `False`, or float32
        label vectors `(batch, num_classes)` and `True`.

    Raises:
        ValueError: on another shape (at trace time).
        tf.errors.InvalidArgumentError: when the step runs, on float class ids
            that are not whole numbers or class ids outside `[0, num_classes)`.
    """
    y = tf.convert_to_tensor(y)
    if y.shape.rank == 2 and y.shape[-1] == num_classes:
        # Soft labels, or one-hot ones (of any dtype): the same vectors.
        return tf.cast(y, "float32"), True
    if y.shape.rank == 2 and y.shape[-1] == 1:
        y = tf.squeeze(y, axis=-1)
    if y.shape.rank != 1:
        raise ValueError(model_checks.label_shape_message(y.shape, num_classes))
    checks = []
    if y.dtype.is_floating:
        # A cast alone would turn 2.7 into class 2 without a word.
        checks.append(tf.debugging.assert_equal(
            y, tf.round(y), message=(
                "Labels must be class ids (whole numbers). Fix the data set's labels: "
                "class ids, or label vectors of shape (batch, "
                f"num_classes={num_classes}) for soft labels. Offending labels:")))
    with tf.control_dependencies(checks):
        class_ids = tf.cast(y, "int32")
    message = (
        f"Labels must be class ids in [0, num_classes={num_classes}). "
        "Fix the data set's labels (or num_classes). Offending labels:"
    )
    with tf.control_dependencies([
        tf.debugging.assert_non_negative(class_ids, message=message),
        tf.debugging.assert_less(class_ids, num_classes, message=message),
    ]):
        return tf.identity(class_ids), False
