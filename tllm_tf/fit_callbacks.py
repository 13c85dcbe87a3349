"""The callbacks `Distiller.fit` arranges and adds.

At each epoch end, a callback that updates the class mask (such as
`tllm_tf.UndistillableClassCallback`) must run before those that save or read
the model: Keras runs callbacks in list order, and a `BackupAndRestore` or
`ModelCheckpoint` listed first would save the epoch as done without the
mask update it ends with, so a resumed run would train its next epoch with
the old mask.
"""

import logging

import keras

# The objective's value: it jumps when a class is masked, so a drop in it is
# not a better student.
_OBJECTIVE_LOGS = ("loss", "val_loss")


def _updates_class_mask(callback):
    return getattr(callback, "updates_class_mask", False)


def _warn_of_objective_monitors(callbacks):
    for callback in callbacks:
        monitor = getattr(callback, "monitor", None)
        if monitor in _OBJECTIVE_LOGS:
            logging.warning(
                "%s monitors %r, the distillation objective: it jumps when the class "
                "mask changes (a masked class's samples move from the distillation term "
                "to the label term), so it would stop, keep or slow down on the mask, "
                "not on the student. Monitor %r (the label term alone) or %r instead.",
                type(callback).__name__, monitor,
                monitor.replace("loss", "student_loss"),
                monitor.replace("loss", "accuracy"))


def arrange(callbacks, teacher_dtype=None):
    """The callbacks of a `Distiller.fit`, mask updaters first.

    Args:
        callbacks: the callbacks given to `fit`: a list, a
            `keras.callbacks.CallbackList`, or `None`.
        teacher_dtype: the Distiller's `teacher_dtype`; with `"float16"` a
            callback that warns of clipped teacher logits is added. Defaults
            to `None`.

    Returns:
        A new list: the callbacks that update the class mask (an attribute
        `updates_class_mask = True`), then the others, each group in the
        given order. Monitors of `loss` or `val_loss` beside a mask updater
        are warned about. A `CallbackList` is returned itself, its
        callbacks arranged in place: Keras's `fit` uses a `CallbackList` as
        given (its `History` and progress bar included).
    """
    given = callbacks
    if isinstance(given, keras.callbacks.CallbackList):
        callbacks = list(given.callbacks)
    else:
        callbacks = list(callbacks or [])
    updaters = [callback for callback in callbacks if _updates_class_mask(callback)]
    if updaters:
        _warn_of_objective_monitors(callbacks)
    arranged = updaters + [callback for callback in callbacks
                           if not _updates_class_mask(callback)]
    # Once: a CallbackList reused for another fit already holds it.
    if teacher_dtype == "float16" and not any(
            isinstance(callback, WarnOnTeacherOverflow) for callback in arranged):
        arranged.append(WarnOnTeacherOverflow())
    if isinstance(given, keras.callbacks.CallbackList):
        given.callbacks[:] = arranged
        return given
    return arranged


class WarnOnTeacherOverflow(keras.callbacks.Callback):
    """Warns, at epoch end, of teacher logits clipped to float16's range."""

    def on_epoch_end(self, epoch, logs=None):
        overflows = (logs or {}).get("teacher_logit_overflows", 0)
        if overflows:
            logging.warning(
                "Epoch %d: %d teacher logits overflowed float16 (|logit| > 65504) and "
                "were clipped to +-65504, so the distillation targets are approximate (a "
                "logit that is NaN because the teacher overflowed inside cannot be clipped: "
                "the loss is then NaN). Use teacher_dtype='bfloat16' (float32's range) or "
                "'float32'.",
                epoch + 1, int(overflows))
