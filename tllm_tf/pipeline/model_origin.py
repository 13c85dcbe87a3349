"""Whether a model from a workdir was made from the data this run or evaluation reads.

A `--teacher_path` trained on another split of the data has seen this run's
held-out images, where the students are compared class by class; a model
evaluated on other splits, another preprocessing or other files of an image
folder than its run's is scored on images it trained on, or on pixels it
never saw. Each check reads the config.json (and the `DATA_FILE` of its
splits' digests, which image folders and Fashion-MNIST record) of the run
that wrote the model file, and refuses naming the flags or the splits that
differ; a model outside a workdir is not checked.
"""

import json
import os

from tllm_tf import json_checks
from tllm_tf.data import augment
from tllm_tf.data.sources import augmentation_image_size
from tllm_tf.pipeline import workdir as workdir_lib
from tllm_tf.pipeline import workdir_files

# The fields of a run that decide its held-out split: a teacher trained with
# other values has trained on this run's held-out images. An image folder's
# files are compared by their digests (`DataSplits.split_digests`).
SPLIT_FIELDS = ("dataset", "seed", "holdout_fraction")


def run_config(model_path):
    """`(values, path)` of the config.json of the workdir a model file was trained in.

    `values` is None when there is none, or the file is not a run's config.
    """
    stage_dir = os.path.dirname(os.path.abspath(model_path))
    for directory in (os.path.dirname(stage_dir), stage_dir):
        path = os.path.join(directory, workdir_files.CONFIG_FILE)
        if os.path.isfile(path) and os.path.getsize(path) <= workdir_lib.MAX_CONFIG_BYTES:
            try:
                # Checked again on the open file: a FIFO swapped in now would hang the run.
                values = json.loads(json_checks.read_capped(
                    path, workdir_lib.MAX_CONFIG_BYTES, kind="run configuration", remedy=""))
            except (OSError, ValueError, RecursionError):
                return None, path
            # Only a run's config.json, not any file of that name.
            is_run_config = isinstance(values, dict) and {"workdir", *SPLIT_FIELDS} <= set(values)
            return (values if is_run_config else None), path
    return None, None


def _split_fields_differing(values, current):
    """The `SPLIT_FIELDS` a run's config.json `values` (or None) and `current` both set, unequal."""
    if values is None:
        return []
    return [name for name in SPLIT_FIELDS
            if name in values and name in current and values[name] != current[name]]


def check_evaluation_splits(model_path, **split_values):
    """Refuses to evaluate a model on splits other than those of the run that trained it.

    Another `seed` or `holdout_fraction` puts images the model trained on into
    the held-out and test splits (for the digits, every split is drawn by the
    seed), so the accuracy comes out too high. A model without its workdir's
    config.json is not checked.

    Args:
        model_path: the `.keras` file or SavedModel folder, in its stage folder.
        **split_values: the evaluation's `dataset`, `seed` and
            `holdout_fraction`.

    Raises:
        ValueError: naming each differing flag and its value in the run.
    """
    values, path = run_config(model_path)
    differences = [f"--{name}={values[name]!r}"
                   for name in _split_fields_differing(values, split_values)]
    if differences:
        raise ValueError(
            f"{model_path!r} was trained by the run of {path}, on other splits than these "
            f"flags give: evaluated so, images it trained on would count. Pass that run's "
            f"data flags: {' '.join(differences)}.")


def check_evaluation_preprocessing(model_path, *, dataset, augmentation, image_size):
    """Refuses to evaluate a model through another preprocessing than its run's.

    Recipes whose evaluation is the same (`"none"` and `"cifar"`: the image
    as it is) are taken for each other. A model without its workdir's
    config.json, or whose run's recipe cannot be built here, is not checked.

    Args:
        model_path: the `.keras` file or SavedModel folder, in its stage folder.
        dataset: the evaluation's `--dataset`.
        augmentation: its `--augmentation`.
        image_size: its `--image_size`, or None.

    Raises:
        ValueError: naming what each does to an image and the run's flags.
    """
    values, path = run_config(model_path)
    if values is None or "augmentation" not in values:
        return
    try:
        before = augment.evaluation_transform(values["augmentation"], augmentation_image_size(
            values["dataset"], values["augmentation"], values.get("image_size")))
    except (ValueError, TypeError):
        return
    now = augment.evaluation_transform(
        augmentation, augmentation_image_size(dataset, augmentation, image_size))
    if before != now:
        raise ValueError(
            f"{model_path!r} was trained by the run of {path}, which evaluated its images "
            f"{before}; these flags evaluate them {now}, so the accuracy would not be the "
            f"run's. Pass that run's --augmentation={values['augmentation']}"
            + (f" --image_size={values['image_size']}" if values.get("image_size") else "")
            + ".")


def check_evaluation_images(model_path, data, split, test_image_folder):
    """Refuses to evaluate a model on other images than its run's split of that name.

    The held-out split, and the test split drawn from `--image_folder`, are
    parts of the folder's files: another folder's, or the same folder with
    files added or removed, puts images the model trained on into them; so
    does the other source of a data set that has two (Fashion-MNIST's).
    Only the evaluated split is compared: the same images as the run's split
    of that name are images the model did not train on, whatever training
    subset the run took (`--num_train`, which the evaluation does not take).
    A test split from `--test_image_folder` is any images the user chooses.
    A model whose workdir records no digests (a run before the record, a
    model outside a workdir) is not checked.

    Args:
        model_path: the `.keras` file or SavedModel folder, in its stage folder.
        data: the evaluation's `DataSplits`.
        split: the split evaluated, `"test"` or `"held_out"`.
        test_image_folder: the evaluation's `--test_image_folder`, or None.

    Raises:
        ValueError: naming the splits whose files differ (or the
            `--test_image_folder` the run had otherwise) and the fix.
    """
    if split == "test" and test_image_folder:
        return
    values, path, changed = _files_changed_since_run(model_path, data, (split,))
    if not changed:
        return
    setting = _test_folder_setting(values, test_image_folder)
    if (values or {}).get("image_folder"):
        fix = ("Pass that run's --image_folder and --test_image_folder, or give other images "
               "to evaluate on as --test_image_folder (with --split=test).")
    else:
        dataset = (values or {}).get("dataset")
        named = f"--dataset={dataset!r}" if dataset else "the data set"
        fix = (f"Evaluate with the copy of {named} that run read (the images differ: "
               f"{workdir_lib.OTHER_SOURCE}).")
    raise ValueError(
        f"{model_path!r} was trained by the run of {path} on other files than these flags "
        "give: " + (setting or f"{workdir_lib.splits_text(changed)} of the images differ")
        + f". Evaluated on its {split.replace('_', '-')} split, images it trained on may "
        f"count. {fix}")


def _files_changed_since_run(model_path, data, splits):
    """Which of `splits` hold other files in `data` than in the run that trained `model_path`.

    Args:
        model_path: a model file in its stage folder.
        data: this run's or evaluation's `DataSplits`.
        splits: the split names compared.

    Returns:
        `(values, path, changed)`: that run's config.json values and path
        (`run_config`), and the names of the splits whose digests differ;
        `changed` is empty where the run recorded no digests or `data` has
        none.

    Raises:
        ValueError: if the run's `DATA_FILE` is not one a run wrote.
    """
    values, path = run_config(model_path)
    if path is None:
        return values, path, []
    recorded = workdir_lib.recorded_split_digests(os.path.dirname(path))
    return values, path, workdir_lib.changed_splits(recorded, data.split_digests, splits)


def _test_folder_setting(values, test_image_folder):
    """How a run and these flags differ in having a `--test_image_folder`, in words.

    With a test folder the image folder's files are all training and
    held-out images; without, a part of them is the test split: the two split
    the same files otherwise.

    Args:
        values: the run's config.json values, or None.
        test_image_folder: these flags' `--test_image_folder`, or None.

    Returns:
        A phrase naming both settings, or None where both have one or neither.
    """
    before = (values or {}).get("test_image_folder")
    if bool(before) == bool(test_image_folder):
        return None
    if before:
        return f"its run had --test_image_folder={before!r}, these flags have none"
    return ("its run drew its test split from --image_folder (no --test_image_folder), these "
            f"flags have --test_image_folder={test_image_folder!r}")


def check_teacher_origin(config):
    """Refuses a `--teacher_path` trained on another split of the data.

    A teacher trained with another `--seed` or `--holdout_fraction` has
    trained on images of this run's held-out split, where TLLM compares the
    students class by class. Its workdir's config.json (next to its stage
    directory) says what it was trained with; a teacher without one is not
    checked.
    """
    values, path = run_config(config.teacher_path)
    current = {name: getattr(config, name) for name in SPLIT_FIELDS}
    differences = [f"--{name}: {values[name]!r} for the teacher, {current[name]!r} now"
                   for name in _split_fields_differing(values, current)]
    if differences:
        raise ValueError(
            f"The teacher {config.teacher_path!r} was trained on another split of the "
            f"data (its workdir's {path}):\n  " + "\n  ".join(differences)
            + "\nIt has trained on images of this run's held-out split, so the "
            "comparison of students there would be biased. Use a teacher trained "
            "with this run's --dataset, --seed and --holdout_fraction.")


def check_teacher_images(config, data):
    """Refuses a `--teacher_path` whose run held out other images than this run.

    Its workdir's `DATA_FILE` records the digests of its splits (an image
    folder's files; Fashion-MNIST's images, whose order differs between its
    two sources); a teacher of the same files, moved, has the same. Only the
    held-out split is compared: a run trains on none of its held-out images,
    so a teacher that held out these same images has not trained on any of
    them, whatever else it learnt from (the study's teachers learn from more
    images than its students: `--teacher_num_train`). A teacher whose workdir
    records no digests (another data set, or a run before the record) is not
    checked.

    Args:
        config: the run's `RunConfig`, with `teacher_path` set.
        data: its `DataSplits`.

    Raises:
        ValueError: if the held-out images differ, or if the teacher's
            `DATA_FILE` is not one a run wrote.
    """
    values, path, changed = _files_changed_since_run(config.teacher_path, data,
                                                     ("held_out",))
    setting = _test_folder_setting(values, config.test_image_folder)
    if changed and setting:
        raise ValueError(
            f"The teacher {config.teacher_path!r} was trained on other splits of "
            f"--image_folder={config.image_folder!r}: {setting}, so it may have trained on "
            "images of this run's held-out split. Give this run the teacher's "
            "--test_image_folder setting, or leave --teacher_path out.")
    if changed:
        what = ("(their paths in the folder, classes and sizes)" if config.image_folder
                else f"({workdir_lib.OTHER_SOURCE})")
        raise ValueError(
            f"The teacher {config.teacher_path!r} held out other images than this run of "
            f"{workdir_lib.images_named_by(config)}: the images of its held-out split {what} "
            "differ from this run's (its workdir recorded them in "
            f"{os.path.join(os.path.dirname(path), workdir_files.DATA_FILE)}), so it may "
            "have trained on images of this run's held-out split. Use a teacher trained on "
            "these images (a moved folder or copy is fine), or leave --teacher_path out.")
