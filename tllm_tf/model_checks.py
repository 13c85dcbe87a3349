"""Checks of what a `Distiller` is given: models that return logits, labels it can read.

Each check fails before any step runs, with a message that names what was
received and what to pass instead; without them the same mistakes surface as
an `AttributeError` or a shape error from inside a compiled step.
"""

import keras
import numpy as np
import tensorflow as tf


def check_model(model, role):
    """Refuses anything but a Keras model that returns one logits tensor.

    Args:
        model: the student, the teacher or a model to export.
        role: what it is, for the message (`"student"`, `"teacher"`, ...).

    Raises:
        ValueError: for a non-Keras object (a file path, say), a model that
            returns a dict or list of outputs, or one that ends in a softmax
            (a `Softmax` layer, a `softmax` activation, or `keras.ops.softmax`
            applied to its output). A softmax written another way is found
            by `probe_output_size`.
    """
    if not isinstance(model, keras.layers.Layer):
        hint = (" Load the file first: tllm_tf.pipeline.model_io.load_keras_model(path) or "
                "keras.models.load_model(path)." if isinstance(model, str) else "")
        raise ValueError(
            f"Expected the {role} to be a keras.Model returning logits. Received: "
            f"{role}={model!r:.80} (a {type(model).__name__}).{hint}")
    structure = _output_structure(model)
    if isinstance(structure, (dict, list, tuple)):
        names = (f" with keys {sorted(structure)}" if isinstance(structure, dict)
                 else f" of {len(structure)}")
        raise ValueError(
            f"The {role} {model.name!r} returns a {type(structure).__name__}{names} of "
            "outputs; a model that returns one logits tensor is needed. Wrap "
            "it, e.g. keras.Model(model.inputs, model.output['logits']).")
    softmax = _final_softmax(model)
    if softmax is not None:
        raise ValueError(
            f"The {role} {model.name!r} ends in a softmax ({softmax}), so it outputs "
            "probabilities, and logits are expected: rebuild the last layer with "
            "`activation=None` (or drop the softmax); the weights can be copied over "
            "unchanged.")


def probe_output_size(model, role, like=None, image_shape=None):
    """Runs a built model on a batch of zeros and ones; refuses probabilities.

    Needs no data, so no data set is read (a partial read can truncate a
    cached one). A softmax however written (`tf.nn.softmax`, a `Lambda`, a
    layer after it) gives rows in `[0, 1]` that sum to 1 on any input; a
    model returning logits, trained or freshly initialised, does not on
    both rows (its logits on zeros are near 0 and sum to about 0).

    Args:
        model: the student, the teacher or a model to export.
        role: what it is, for the message (`"student"`, `"teacher"`, ...).
        like: a model whose input shape and dtype to use where `model` has
            no symbolic input (a subclassed one): the other model of the
            `Distiller`, which gets the same batch. Defaults to `None`.
        image_shape: the shape of one float32 input, for a model with no
            symbolic input and no `like`. Defaults to `None`.

    Returns:
        The last axis of the output (an int), or `None` where the model is
        not probed: unbuilt, an input shape not fully known or not single,
        an output that is not one tensor, or a call that fails (the first
        step then reports it).

    Raises:
        ValueError: if every row of the output is a probability vector.
    """
    outputs = _probe(model, like, image_shape)
    if outputs is None:
        return None
    tolerance = 1e-3 if outputs.dtype.itemsize >= 4 else 1e-2  # 16-bit rounding.
    rows = outputs.reshape(-1, outputs.shape[-1]).astype(np.float64)
    if (outputs.shape[-1] > 1 and np.all((rows >= -tolerance) & (rows <= 1 + tolerance))
            and np.allclose(rows.sum(axis=-1), 1.0, atol=tolerance)):
        raise ValueError(
            f"The {role} {model.name!r} outputs probabilities (rows in [0, 1] summing to 1 "
            "on a probe batch of zeros and ones), so it ends in a softmax, and logits are "
            "expected: remove the softmax (e.g. rebuild the last layer with "
            "`activation=None`; the weights can be copied over unchanged) so that the "
            f"{role} returns logits.")
    return int(outputs.shape[-1])


def _probe(model, like, image_shape=None):
    """`model`'s output on zeros and ones of its input shape, as an array, or None."""
    source = model if getattr(model, "inputs", None) else like
    inputs = getattr(source, "inputs", None)
    if not getattr(model, "built", False):
        return None
    if inputs and len(inputs) == 1:
        shape, dtype = tuple(inputs[0].shape[1:]), inputs[0].dtype
    elif image_shape is not None and not inputs:
        shape, dtype = tuple(image_shape), "float32"
    else:
        return None
    if any(size is None for size in shape):
        return None
    try:
        dtype = keras.backend.standardize_dtype(dtype)
        batch = np.stack([np.zeros(shape, dtype), np.ones(shape, dtype)])  # No strings.
        outputs = model(batch, training=False)
    except Exception:  # Keras raises many types; the first step reports any of them.
        return None
    if not hasattr(outputs, "shape") or len(outputs.shape) < 2:
        return None
    return keras.ops.convert_to_numpy(outputs)


def output_size(model):
    """The size of a model's single logits output, or None if it has no symbolic output.

    Args:
        model: a Keras model (a subclassed or unbuilt one has no symbolic
            output).

    Returns:
        The last axis of the output's shape (an int, or `None` where
        unknown), or `None`.

    Raises:
        ValueError: if the model has more than one output.
    """
    outputs = getattr(model, "outputs", None)
    if not outputs:
        return None
    if len(outputs) != 1:
        raise ValueError(
            f"Expected a model with one logits output; {model.name!r} has "
            f"{len(outputs)} outputs."
        )
    return outputs[0].shape[-1]


def check_num_classes(num_classes, models, fix):
    """Refuses `num_classes` where a model's symbolic output has another size.

    Args:
        num_classes: the number of classes given.
        models: role -> model, e.g. `{"student": student}`; a model without a
            symbolic output is not checked.
        fix: the message's last sentence; `{size}` in it becomes the model's
            output size.

    Raises:
        ValueError: `num_classes=N disagrees with the <role>, which outputs
            M logits. <fix>`.
    """
    for role, model in models.items():
        size = output_size(model)
        if size is not None and size != num_classes:
            raise ValueError(f"num_classes={num_classes} disagrees with the {role}, which "
                             f"outputs {size} logits. {fix.format(size=size)}")


def input_shape(model):
    """A model's single input shape without the batch axis, or None if it has no symbolic one."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        return None
    return tuple(inputs[0].shape[1:])


def check_same_inputs(student, teacher):
    """Refuses a teacher that takes inputs of another shape than the student.

    The `Distiller` gives both models the same batch, so a teacher of other
    inputs would fail inside the first step. Unknown sizes (`None`) match any,
    and a model without a single symbolic input is not checked.

    Args:
        student: the student `keras.Model`.
        teacher: the teacher `keras.Model`.

    Raises:
        ValueError: if both input shapes are known and differ.
    """
    student_shape, teacher_shape = input_shape(student), input_shape(teacher)
    if student_shape is None or teacher_shape is None or _same_shape(student_shape, teacher_shape):
        return
    raise ValueError(
        "Teacher and student must take inputs of the same shape: the Distiller gives both "
        f"the same batch. Received: teacher {teacher.name!r} takes {(None,) + teacher_shape}, "
        f"student {student.name!r} takes {(None,) + student_shape}. Use a teacher trained on "
        "the student's images (or resize the images inside one of the models).")


def _same_shape(shape, other):
    """Whether two shapes agree, a `None` size matching any."""
    return len(shape) == len(other) and all(
        size is None or other_size is None or size == other_size
        for size, other_size in zip(shape, other))


def _output_structure(model):
    try:
        return model.output
    except (AttributeError, ValueError):  # Subclassed or never called.
        return None


def _final_operation(model):
    """The operation that produces a model's output, looking into nested models."""
    outputs = getattr(model, "outputs", None)
    if outputs and len(outputs) == 1:
        history = getattr(outputs[0], "_keras_history", None)
        operation = getattr(history, "operation", None)
    else:
        layers = getattr(model, "layers", None)
        operation = layers[-1] if layers else None
    if isinstance(operation, keras.Model) and operation is not model:
        return _final_operation(operation)
    return operation


def _final_softmax(model):
    """Describes the softmax a model's output comes out of, or None."""
    operation = _final_operation(model)
    if operation is None:
        return None
    name = getattr(operation, "name", type(operation).__name__)
    if type(operation).__name__ == "Softmax":  # The layer, or keras.ops.softmax.
        return f"{name!r}"
    activation = getattr(operation, "activation", None)
    if getattr(activation, "__name__", None) == "softmax":
        return f"{name!r} has activation='softmax'"
    return None


def check_student_loss(loss_fn):
    """Refuses a label loss the Distiller cannot call on the student's logits.

    Args:
        loss_fn: the `student_loss_fn` given to `Distiller.compile`.

    Raises:
        ValueError: for a string (Keras resolves loss names to losses on
            probabilities), or a Keras loss built with `from_logits=False`:
            given logits, it trains on a meaningless target, silently.
    """
    if isinstance(loss_fn, str):
        raise ValueError(
            f"student_loss_fn takes a loss object or function, not a name: "
            f"Received: student_loss_fn={loss_fn!r}. The student returns logits: pass "
            "keras.losses.SparseCategoricalCrossentropy(from_logits=True) (class ids), "
            "keras.losses.CategoricalCrossentropy(from_logits=True) (label vectors), or "
            "leave it unset for that cross-entropy.")
    if getattr(loss_fn, "from_logits", None) is False:
        raise ValueError(
            f"student_loss_fn={type(loss_fn).__name__}(from_logits=False) reads the "
            "student's output as probabilities, but the student returns logits. Pass "
            f"{type(loss_fn).__name__}(from_logits=True).")


def check_label_array(y, num_classes, name="Labels"):
    """Refuses label arrays the Distiller would misread, before any step runs.

    Accepted: class ids of shape `(n,)` or `(n, 1)` in `[0, num_classes)`,
    and label vectors of shape `(n, num_classes)` (one-hot, integer or
    float, or soft).

    Args:
        y: the labels.
        num_classes: the model's classes.
        name: what the labels are, to open the message. Defaults to `"Labels"`.

    Raises:
        ValueError: on another shape, class ids out of range, or float class
            ids that are not whole numbers.
    """
    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[-1] == num_classes:
        return
    if labels.ndim > 2 or (labels.ndim == 2 and labels.shape[-1] != 1):
        raise ValueError(label_shape_message(labels.shape, num_classes))
    if labels.size == 0:
        return
    if labels.dtype.kind == "f":
        fractional = labels[~np.isfinite(labels) | (labels != np.round(labels))]
        if fractional.size:
            raise ValueError(
                f"{name} must be class ids (whole numbers); found {fractional.size} that "
                f"are not, e.g. {np.unique(fractional)[:5].tolist()} of dtype {labels.dtype}. "
                "Fix the data set's labels: class ids, or label vectors of shape "
                f"(n, num_classes={num_classes}) for soft labels.")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{name} must be class ids in [0, num_classes={num_classes}). "
            f"Found {bad.size} outside, e.g. {np.unique(bad)[:5].tolist()}. "
            "Fix the data set's labels (or num_classes)."
        )


def label_shape_message(shape, num_classes):
    """The error message for labels of an unreadable shape.

    Args:
        shape: the labels' shape as received.
        num_classes: the model's classes.

    Returns:
        A string naming the accepted shapes and `shape`.
    """
    accepted = (f"Labels must be class ids of shape (batch,) or label vectors of shape "
                f"(batch, num_classes={num_classes}) (one-hot or soft).")
    if getattr(shape, "rank", 0) is None:
        # A tf.numpy_function or tf.py_function loses the shape.
        return (f"{accepted} Received labels of unknown rank (as tf.numpy_function and "
                "tf.py_function give): set their shape in the data set, e.g. "
                "labels = tf.ensure_shape(labels, (None,)).")
    return f"{accepted} Received shape {tuple(shape)}."


def count_elements(dataset, what="data set"):
    """The number of elements of a finite `dataset`, read in a whole pass where unknown.

    Never a peek: a first read that stops early can close an in-memory cache
    under a filter on what it has read, and every later pass reads that part.

    Args:
        dataset: a `tf.data.Dataset`.
        what: its name in the error message. Defaults to `"data set"`.

    Returns:
        An int.

    Raises:
        ValueError: if `dataset` repeats forever.
    """
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            f"The {what} repeats forever: pass one pass of it (no .repeat()).")
    if cardinality == tf.data.UNKNOWN_CARDINALITY:
        cardinality = int(dataset.reduce(np.int64(0), lambda count, _: count + 1))
    return cardinality


def check_held_out_data(dataset, model,
                        consequence="no class can be judged and TLLM would train as plain KD"):
    """Refuses a held-out data set that cannot judge any class.

    Args:
        dataset: the `tf.data.Dataset` of `(x, y)` a callback measures on;
            one of unknown size (a filtered one) is counted in a whole pass.
        model: the model it measures (a `Distiller`: its student's input).
        consequence: what an empty data set would mean, for the message.
            Defaults to `"no class can be judged and TLLM would train as
            plain KD"`.

    Raises:
        ValueError: if the data set is not batched (its images have the rank
            of one image), has images of another shape than the model takes,
            is empty (TLLM would then train as plain KD, or fail deep inside
            a compiled pass) or repeats forever.
    """
    spec = dataset.element_spec
    images = spec[0] if isinstance(spec, (tuple, list)) else spec
    inputs = getattr(getattr(model, "student", model), "inputs", None)
    if inputs and getattr(images, "shape", None) is not None and images.shape.rank is not None:
        if images.shape.rank == len(inputs[0].shape) - 1:
            raise ValueError(
                f"The held-out data set is not batched: its images have shape "
                f"{tuple(images.shape)} and the model takes batches of "
                f"{tuple(inputs[0].shape)}. Batch it, e.g. held_out.batch(256).")
        if not _same_shape(tuple(images.shape[1:]), tuple(inputs[0].shape[1:])):
            raise ValueError(
                f"The held-out images have shape {tuple(images.shape[1:])} but the model "
                f"takes {tuple(inputs[0].shape[1:])}. Pass the held-out split of the data "
                "set the model was trained on.")
    if count_elements(dataset, what="held-out data set") == 0:
        raise ValueError(
            f"The held-out data set is empty, so {consequence}. Pass a held-out split of "
            "the training data (the pipeline's --holdout_fraction, e.g. 0.2).")


def held_out_class_ids(dataset, num_classes):
    """The class ids of a held-out data set's labels, in order, checked to be in range.

    One pass over the labels alone. Label vectors `(batch, num_classes)`
    (one-hot of any dtype, or soft) count as their arg-max, as the per-image
    pass reads them.

    Args:
        dataset: a batched `tf.data.Dataset` of `(x, y)`.
        num_classes: the model's classes.

    Returns:
        An int64 array `(num_images,)`.

    Raises:
        ValueError: on a class id outside `[0, num_classes)`, which would
            otherwise count as an image no model gets right.
    """
    return checked_class_ids(
        [batch_class_ids(labels.numpy(), num_classes)
         for labels in dataset.map(lambda *batch: batch[1])], num_classes)


def batch_class_ids(labels, num_classes):
    """A batch's labels as class ids, as the per-image passes read them.

    Args:
        labels: a batch's labels (an array).
        num_classes: the model's classes.

    Returns:
        Label vectors `(batch, num_classes)` (one-hot of any dtype, or soft)
        as their arg-max; class ids of shape `(batch,)` or `(batch, 1)`,
        keras.datasets' layout, flattened, as they are (unchecked).
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[-1] == num_classes:
        return labels.argmax(axis=-1)
    return labels.reshape(-1)


def checked_class_ids(batches, num_classes, name="Held-out labels"):
    """The class ids of `batches` (from `batch_class_ids`) in one int64 array, checked.

    Args:
        batches: a list of class-id arrays.
        num_classes: the model's classes.
        name: what the labels are, to open a message. Defaults to
            `"Held-out labels"`.

    Returns:
        An int64 array `(num_images,)`.

    Raises:
        ValueError: as `check_label_array` (checked before the cast, which
            would make a class id of 2.7 class 2).
    """
    class_ids = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    check_label_array(class_ids, num_classes, name=name)
    return class_ids.astype(np.int64)
