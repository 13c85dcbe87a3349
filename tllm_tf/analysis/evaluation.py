"""Test and per-class accuracy of saved models on a data set.

Feeds `tools/evaluate.py` and the saved-model mode of `tools/report.py`; the
result has the layout of `workdir_results.load_results`, so both print and plot
the same way.
"""

import os

import tensorflow as tf

from tllm_tf.pipeline import export as export_lib
from tllm_tf import metrics as metrics_lib


def model_names(paths):
    """Short unique column names for model paths.

    `name=path` keeps `name`; `.../student_kd/model.keras` and
    `.../student_kd/saved_model` both become `student_kd`; other files lose
    their `.keras` suffix. Repeated names get `_2`, `_3`, ...

    Returns:
        A dict name -> path, in the order given.
    """
    named = {}
    for entry in paths:
        name, separator, path = entry.partition("=")
        if not separator:
            path = entry
            base = os.path.basename(os.path.normpath(path))
            if base in ("model.keras", "saved_model"):
                base = os.path.basename(os.path.dirname(os.path.normpath(path)))
            name = base[:-len(".keras")] if base.endswith(".keras") else base
        unique, count = name, 1
        while unique in named:
            count += 1
            unique = f"{name}_{count}"
        named[unique] = path
    return named


def evaluate_models(models, batches, *, class_names):
    """Accuracy and per-class accuracy of each model on one data set.

    Args:
        models: a dict name -> model, where a model is a `.keras` path
            (loaded in safe mode by `model_io.load_keras_model`), a
            SavedModel path (a graph that runs with the caller's rights:
            trusted sources only), or anything called as `model(images,
            training=False)` returning logits. The first one is the baseline
            the others are compared with.
        batches: a batched `tf.data.Dataset` of `(raw images, labels)`, e.g.
            `tllm_tf.data.make_pipeline(data.test, batch_size=256,
            training=False)`.
        class_names: one name per class; a SavedModel exported with other
            class names is refused.

    Returns:
        A results dict as `workdir_results.load_results` returns, without a mask.

    Raises:
        ValueError: if `models` is empty, or a path is not a saved model, or a
            model takes images of another shape, outputs another number of
            classes than the data set has or was exported with other class
            names (`model_io.UnsafeModelError` for a
            `.keras` file that stores Python code).
    """
    if not models:
        raise ValueError("Expected at least one model to evaluate. Received: models={}")
    num_classes = len(class_names)
    image_shape = tuple(batches.element_spec[0].shape[1:])
    image = _first_image(batches)
    per_class, accuracy, num_samples = {}, {}, None
    for name, model in models.items():
        if isinstance(model, (str, os.PathLike)):
            model = export_lib.ServingModel(model)
            if tuple(model.input_shape[1:]) != image_shape:
                raise ValueError(
                    f"Model {name!r} takes images of shape {model.input_shape[1:]}, the "
                    f"data set has {image_shape}. Received: path={model.path!r}")
            if model.class_names is not None and model.class_names != tuple(class_names):
                raise ValueError(
                    f"Model {name!r} ({model.path}) was exported for the classes "
                    f"{list(model.class_names)}, but the data set's are {list(class_names)}. "
                    "Evaluate it on the data set it was trained on (the data flags of the "
                    "run that trained it).")
        if image is not None:
            _check_output_size(name, model, image, num_classes)
        correct, total = metrics_lib.PerClassCounter(model, num_classes)(batches)
        per_class[name] = metrics_lib.accuracy_from_counts(correct, total)
        accuracy[name] = float(correct.sum() / max(total.sum(), 1))
        num_samples = [int(n) for n in total]
    return {
        "class_names": list(class_names),
        "models": list(models),
        "per_class": per_class,
        "accuracy": accuracy,
        "num_samples": num_samples,
        "final_mask": None,
        "mask_history": [],
    }


def _first_image(batches):
    """A batch of one image of `batches`' shape and dtype, or None when it has none.

    Zeros where the spec gives the whole shape: a peek at the data (a first
    read that stops early) could close an in-memory cache on what it read.
    """
    spec = batches.element_spec[0]
    if spec.shape[1:].is_fully_defined():
        return tf.zeros((1,) + tuple(spec.shape[1:]), spec.dtype)
    for batch in batches.take(1):
        return batch[0][:1]
    return None


def _check_output_size(name, model, image, num_classes):
    """Refuses a model with another number of outputs than the data set has classes.

    Its arg-max would still be read as a class id: a model of another data set
    would get an accuracy, and undistillable classes, that mean nothing.
    """
    outputs = model(image, training=False).shape[-1]
    if outputs != num_classes:
        path = f" ({model.path})" if isinstance(model, export_lib.ServingModel) else ""
        raise ValueError(
            f"Model {name!r}{path} outputs {outputs} classes but the data set has "
            f"{num_classes}. Evaluate a model trained on this data set, or pass the data "
            "flags (--dataset, ...) of the run that trained it.")
