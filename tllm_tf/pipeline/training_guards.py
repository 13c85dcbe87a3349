"""Callbacks that stop a run that has gone wrong, with a message that says where."""

import math

import keras


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `NonFiniteLossError` naming the epoch and step of a NaN/inf loss.

    Unlike `keras.callbacks.TerminateOnNaN`, which ends `fit` quietly, this
    stops the run with an error before the epoch's end, so the epoch
    checkpoint keeps the last good state and nothing later overwrites it.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"The training loss became {float(loss)} at epoch {self._epoch + 1}, "
                f"step {batch + 1}. Training stopped; the last checkpoint (end of "
                f"epoch {self._epoch}) is kept. Lower --learning_rate, check the "
                "data for NaN/inf values, or turn off --mixed_precision."
            )
