"""What the distilled students read from earlier stages: the teacher, the reference and an
earlier run's final mask.

The chief reads each file (checked: classes, image shape, the reference's
per-epoch rows) and every worker of a multi-worker run receives what it read.
"""

import dataclasses
import logging
import os

import keras
import numpy as np

from tllm_tf import callbacks
from tllm_tf import held_out_predictions as predictions_lib
from tllm_tf import identification
from tllm_tf import mask_log
from tllm_tf import reference as reference_lib
from tllm_tf.pipeline import model_io
from tllm_tf.pipeline import multi_worker
from tllm_tf.pipeline import workdir as workdir_lib
from tllm_tf.pipeline import workdir_files


def load_teacher(teacher_path, data):
    """Loads a teacher `.keras` file (safe mode) and checks its classes."""
    if not os.path.exists(teacher_path):
        raise ValueError(
            f"Teacher not found: {teacher_path!r}. Run --stage=teacher first or "
            "pass --teacher_path.")
    # Frozen, so its optimizer state (if saved) is not loaded.
    teacher = model_io.load_keras_model(teacher_path, role="teacher")
    outputs = teacher.outputs[0].shape[-1]
    if outputs != data.num_classes:
        raise ValueError(
            f"The teacher {teacher_path!r} outputs {outputs} classes but the data "
            f"set {data.name!r} has {data.num_classes}. Use a teacher trained on "
            "this data set.")
    image_shape = tuple(teacher.inputs[0].shape[1:])
    if image_shape != tuple(data.image_shape):
        raise ValueError(
            f"The teacher {teacher_path!r} takes images of shape {image_shape} but "
            f"the data set {data.name!r} has {tuple(data.image_shape)}. Use a teacher "
            "trained on this data set (or set --image_size to match).")
    return teacher


def warn_about_empty_held_out_classes(num_samples, class_names):
    """Logs the classes that have no held-out example (they keep distilling)."""
    empty = [str(class_names[c]) for c in np.flatnonzero(np.asarray(num_samples) == 0)]
    if empty:
        logging.warning(
            "%d class(es) have no held-out example: %s. They cannot be judged and keep "
            "being distilled. Raise --holdout_fraction to include them.",
            len(empty), ", ".join(empty))


def teacher_on_every_worker(strategy, teacher_path, data):
    """The teacher, built in `strategy`'s scope on every worker from the chief's file.

    The chief loads the file outside the scope (no collectives) and sends its
    architecture; every worker builds that in the scope, and then receives
    the chief's weights.
    """
    loaded = []

    def read_architecture():
        loaded.append(load_teacher(teacher_path, data))
        return loaded[0].to_json()

    architecture = multi_worker.run_on_chief(strategy, read_architecture)
    with strategy.scope():
        teacher = keras.models.model_from_json(architecture)
    if loaded:
        teacher.set_weights(loaded[0].get_weights())
    multi_worker.sync_variables(strategy, teacher.variables)
    return teacher


def read_reference(reference_path, num_classes, epoch_matched):
    """A reference file's final per-class accuracy, or with `epoch_matched` every epoch's."""
    if epoch_matched:
        try:
            accuracy = reference_lib.load_reference_history(reference_path)
        except reference_lib.MissingHistoryError:
            raise ValueError(
                f"--epoch_matched needs the reference's held-out accuracy after every "
                f"epoch, and {reference_path!r} has only the final one (it was written "
                "by an older tools/train.py, or without tllm_tf.ReferenceHistory). "
                "Re-run the reference stage (in a new --workdir, without "
                "--reference_path) to record it, or drop --epoch_matched.") from None
    else:
        accuracy = reference_lib.load_reference(reference_path)
    if accuracy.shape[-1] != num_classes:
        raise ValueError(
            f"The reference {reference_path!r} has {accuracy.shape[-1]} classes but "
            f"the data set has {num_classes}. Use the reference of this data set.")
    return accuracy


def reference_on_every_worker(strategy, reference_path, num_classes, config):
    """The chief's reference, on every worker.

    With the paired rule and a predictions file beside the reference file: a
    `ReferencePredictions`; otherwise the per-class accuracies of
    `read_reference` (the callback then judges with the unpaired rule and
    says so).
    """
    def read():
        sibling = predictions_lib.sibling_predictions(reference_path, config.rule)
        accuracy = read_reference(reference_path, num_classes, config.epoch_matched)
        if sibling is None:
            return accuracy.tolist()
        predictions = predictions_lib.load_predictions(sibling)
        if not identification.reads_scores(config.rule):
            # They travel as JSON: a large held-out split's scores are many megabytes.
            predictions = dataclasses.replace(predictions, scores=None)
        return predictions.to_dict()

    values = multi_worker.run_on_chief(strategy, read)
    if isinstance(values, dict):
        return predictions_lib.ReferencePredictions.from_dict(values)
    return np.array(values, dtype=np.float64)


def reference_model_path(reference_path):
    """The label-only reference's `model.keras`, beside its `reference.json`.

    Raises:
        ValueError: there is none (a `--reference_path` written without its
            model); `--reference_fallback` needs the reference's weights.
    """
    path = os.path.join(os.path.dirname(reference_path), workdir_files.MODEL_FILE)
    if not os.path.exists(path):
        raise ValueError(
            f"--reference_fallback gives a student that is behind the label-only reference "
            f"the reference's weights, and there is no {workdir_files.MODEL_FILE} beside "
            f"{reference_path!r}. Train the reference in this workdir (--stage=all or "
            f"--stage=reference, without --reference_path), point --reference_path at a "
            f"reference stage's {workdir_files.REFERENCE_FILE} with its model, or pass "
            f"--noreference_fallback.")
    return path


def check_reference_model(reference_path):
    """Loads the reference's `model.keras` once, so a damaged one is refused before training.

    Raises:
        ValueError: there is none (see `reference_model_path`), or it cannot
            be loaded.
    """
    model_io.load_keras_model(reference_model_path(reference_path), role="reference")


def read_final_mask(workdir, num_classes):
    """The classes an earlier run's tllm student had masked when it finished.

    Args:
        workdir: the earlier run's `--workdir`.
        num_classes: the classes of this run's data set.

    Returns:
        A sorted tuple of class ids: those masked by its last mask update
        (`student_tllm/mask_log.jsonl`), or, if it made no update, its own
        `--masked_classes`.

    Raises:
        ValueError: if the earlier run has no finished tllm student, its
            mask log is missing or empty where its schedule made updates, or
            its mask has another number of classes.
    """
    stage_dir = os.path.join(workdir, workdir_files.student_stage("tllm"))
    if not os.path.exists(os.path.join(stage_dir, workdir_files.PER_CLASS_FILE)):
        raise ValueError(
            f"--masked_classes_from={workdir!r} has no finished tllm student "
            f"({os.path.join(stage_dir, workdir_files.PER_CLASS_FILE)} is missing). Name the "
            "--workdir of a run with --students=tllm that has trained to the end.")
    log_path = os.path.join(stage_dir, workdir_files.MASK_LOG_FILE)
    updates = mask_log.load_mask_history(log_path) if os.path.exists(log_path) else []
    if updates:
        mask = updates[-1]["class_mask"]
        classes, fits = np.flatnonzero(mask <= 0.0), mask.size == num_classes
    else:  # No update: it masked its own --masked_classes throughout, if none was due.
        earlier = workdir_lib.read_config(os.path.join(workdir, workdir_files.CONFIG_FILE))
        due = callbacks.scheduled_updates(
            earlier.epochs, earlier.warmup_epochs, earlier.update_every, earlier.max_updates)
        if due:
            raise ValueError(
                f"{log_path} is missing or empty, but the tllm student of {workdir!r} updated "
                f"its mask ({due} updates were due in its {earlier.epochs} epochs): without "
                "its log the classes it masked are unknown. Restore the file, or delete "
                f"{stage_dir} and run that run's command again to train the tllm student again.")
        classes = sorted(earlier.masked_classes)
        fits = all(c < num_classes for c in classes)
    if not fits:
        raise ValueError(
            f"--masked_classes_from={workdir!r} was trained on another data set: its mask does "
            f"not fit this one's {num_classes} classes. Name a run on the same data set.")
    return tuple(int(c) for c in classes)


def final_mask_on_every_worker(strategy, workdir, num_classes):
    """`read_final_mask(workdir, num_classes)`, read by the chief, on every worker."""
    return tuple(multi_worker.run_on_chief(
        strategy, lambda: list(read_final_mask(workdir, num_classes))))
