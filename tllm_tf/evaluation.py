"""Test and per-class accuracy of saved models on a data set.

Feeds `tools/evaluate.py` and the saved-model mode of `tools/report.py`; the
result has the layout of `reporting.load_results`, so both print and plot
the same way.
"""

import os

from tllm_tf import data as data_lib
from tllm_tf import export as export_lib
from tllm_tf import metrics as metrics_lib

SPLITS = ("test", "held_out")


def load_splits(dataset, *, seed=0, holdout_fraction=0.2, data_dir=None):
    """Loads data set `dataset` with the splits training used.

    The test split of a source depends only on `seed` and the held-out split
    also on `holdout_fraction`, so passing a run's values reproduces its
    splits.

    Args:
        dataset: data set name. Only `"digits"` for now.
        seed: the run's `--seed`. Defaults to `0`.
        holdout_fraction: the run's `--holdout_fraction`. Defaults to `0.2`.
        data_dir: tfds data directory (for tfds sources). Defaults to `None`.

    Returns:
        A `tllm_tf.data.DataSplits`.

    Raises:
        ValueError: on a data set this build cannot load.
    """
    del data_dir  # Used by the tfds and image-folder sources once they exist.
    if dataset == "digits":
        return data_lib.load_digits(holdout_fraction=holdout_fraction, seed=seed)
    raise ValueError(
        f"Evaluation can load only 'digits' so far; tfds and image-folder sources "
        f"are not wired in yet. Received: dataset={dataset!r}")


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


def evaluate_models(models, split, *, class_names, batch_size=256):
    """Accuracy and per-class accuracy of each model on one split.

    Args:
        models: a dict name -> model, where a model is a `.keras` path, a
            SavedModel path, or anything called as `model(images,
            training=False)` returning logits. The first one is the baseline
            the others are compared with.
        split: an unbatched `tf.data.Dataset` of `(raw image, label)`.
        class_names: one name per class.
        batch_size: evaluation batch size. Defaults to `256`.

    Returns:
        A results dict as `reporting.load_results` returns, without a mask.

    Raises:
        ValueError: if `models` is empty, or a path is not a saved model or
            takes images of another shape.
    """
    if not models:
        raise ValueError("Expected at least one model to evaluate. Received: models={}")
    num_classes = len(class_names)
    batched = split.batch(batch_size)
    image_shape = tuple(split.element_spec[0].shape)
    per_class, accuracy, num_samples = {}, {}, None
    for name, model in models.items():
        if isinstance(model, (str, os.PathLike)):
            model = export_lib.ServingModel(model)
            if tuple(model.input_shape[1:]) != image_shape:
                raise ValueError(
                    f"Model {name!r} takes images of shape {model.input_shape[1:]}, the "
                    f"data set has {image_shape}. Received: path={model.path!r}")
        correct, total = metrics_lib.PerClassCounter(model, num_classes)(batched)
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
