"""Callbacks that stop a run that has gone wrong, with a message that says where."""

import math

import keras
import numpy as np


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `NonFiniteLossError` naming the epoch and step of a NaN/inf loss.

    Unlike `keras.callbacks.TerminateOnNaN`, which ends `fit` quietly, this
    stops the run with an error before the epoch's end, so the epoch
    checkpoint keeps the last good state and nothing later overwrites it.
    At the epoch's end it also checks the weights: a NaN in an image can leave
    a plain Keras model's loss finite (oneDNN's fused matmul or convolution +
    ReLU maps NaN to 0) while the gradient turns the weights NaN. Put it
    before the checkpoint callback.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        stopped = (f"The training loss became {float(loss)} at epoch {self._epoch + 1}, "
                   f"step {batch + 1}. Training stopped; {_kept(self._epoch)}.")
        overflows = int((logs or {}).get("teacher_logit_overflows", 0))
        if overflows:
            # Clipping saves a logit beyond float16's range, not one that is NaN because
            # a hidden activation overflowed inside the teacher.
            raise NonFiniteLossError(
                f"{stopped} The float16 teacher overflowed ({overflows} logits not finite "
                "this epoch): use --teacher_dtype=bfloat16 (float32's range) or float32.")
        raise NonFiniteLossError(
            f"{stopped} Lower --learning_rate, check the data for NaN/inf values, or turn "
            "off --mixed_precision.")

    def on_epoch_end(self, epoch, logs=None):
        broken = [weight.path for weight in self.model.trainable_weights
                  if not np.all(np.isfinite(keras.ops.convert_to_numpy(weight)))]
        if broken:
            raise NonFiniteLossError(
                f"The weights became NaN or infinite in epoch {epoch + 1} ({broken[0]}"
                f"{f' and {len(broken) - 1} more' if len(broken) > 1 else ''}), though the "
                f"loss stayed finite. Training stopped; {_kept(epoch)}. Check the data for "
                "NaN/inf values (a NaN pixel does this), or lower --learning_rate.")


def _kept(epochs_done):
    """What a stopped stage keeps, after `epochs_done` finished epochs (of this fit's count)."""
    if epochs_done == 0:
        return "no epoch had finished, so there is no checkpoint to keep"
    return f"the last checkpoint (end of epoch {epochs_done}) is kept"
