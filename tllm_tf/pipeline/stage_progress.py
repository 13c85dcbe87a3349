"""A stage's progress on the terminal: one live bar, or one line per epoch.

Keras's own `Progbar` counts steps of one epoch, redraws with `\\r` and ANSI
colours even into a file (it takes any POSIX system for a terminal) and
prints counts as `0.0000e+00`; a stage of 60 epochs needs one bar over its
epochs that a log file gets as one line.
"""

import numbers
import sys
import time

import keras

from tllm_tf.pipeline import console

class StageProgress(keras.callbacks.Callback):
    """Shows the progress of `fit` over its epochs.

    With `verbose=1`, one bar over the stage's epochs: redrawn in place on a
    terminal (at most every `interval` seconds, and after each epoch), with
    the time left; written once, when training ends, to anything else. With
    `verbose=2`, one line per epoch with every logged metric instead.

    Args:
        verbose: 1 (a bar) or 2 (a line per epoch). Defaults to `1`.
        metrics: the logged metrics the bar shows, by name (TLLM adds
            `"num_undistillable_classes"`). Defaults to `("loss", "accuracy")`.
        stream: where to write. Defaults to `sys.stdout` at each write.
        interval: seconds between redraws on a terminal. Defaults to `0.5`.
        prefix: written before each line. Defaults to `"  "`.

    Example:
        >>> model.fit(batches, epochs=60, verbose=0, callbacks=[StageProgress()])
    """

    def __init__(self, verbose=1, metrics=("loss", "accuracy"), stream=None, interval=0.5,
                 prefix="  "):
        super().__init__()
        if verbose not in (1, 2):
            raise ValueError(f"Expected verbose to be 1 or 2. Received: verbose={verbose}")
        self.verbose = verbose
        self.metrics = tuple(metrics)
        self.stream = stream
        self.interval = interval
        self.prefix = prefix

    def _stream(self):
        return self.stream or sys.stdout

    def _live(self):
        stream = self._stream()
        return self.verbose == 1 and hasattr(stream, "isatty") and stream.isatty()

    def on_train_begin(self, logs=None):
        self._epochs = self.params["epochs"]
        self._steps = self.params.get("steps") or None
        self._start_time = time.monotonic()
        self._first_epoch = None
        self._epochs_done = 0.0
        self._metrics = {}
        self._last_draw = 0.0
        self._drawn_width = 0
        self._epoch_start = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch
        self._epochs_done = float(epoch)
        self._epoch_start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if not self._live() or not self._steps:
            return
        self._epochs_done = int(self._epochs_done) + min((batch + 1) / self._steps, 0.999)
        self._keep_metrics(logs)
        if time.monotonic() - self._last_draw >= self.interval:
            self._draw(finished=False)

    def on_epoch_end(self, epoch, logs=None):
        self._epochs_done = float(epoch + 1)
        self._keep_metrics(logs)
        if self.verbose == 2:
            took = console.format_duration(time.monotonic() - self._epoch_start)
            shown = {name: value for name, value in (logs or {}).items()
                     if isinstance(value, numbers.Real)}
            self._write(f"{self.prefix}epoch {epoch + 1}/{self._epochs} - "
                        f"{console.format_metrics(shown)} - {took}\n")
        elif self._live():
            self._draw(finished=False)

    def on_train_end(self, logs=None):
        if self.verbose == 1 and self._first_epoch is not None:
            self._draw(finished=True)

    def _keep_metrics(self, logs):
        for name in self.metrics:
            if logs and name in logs:
                self._metrics[name] = float(logs[name])

    def _seconds_left(self):
        done_here = self._epochs_done - (self._first_epoch or 0)
        if done_here <= 0:
            return None
        elapsed = time.monotonic() - self._start_time
        return elapsed / done_here * (self._epochs - self._epochs_done)

    def _draw(self, finished):
        seconds = time.monotonic() - self._start_time if finished else self._seconds_left()
        line = self.prefix + console.progress_line(
            self._epochs_done, self._epochs, self._metrics, seconds, finished=finished)
        if self._live():
            padding = " " * max(self._drawn_width - len(line), 0)
            self._write("\r" + line + padding + ("\n" if finished else ""))
            self._drawn_width = 0 if finished else len(line)
        elif finished:
            self._write(line + "\n")
        self._last_draw = time.monotonic()

    def _write(self, text):
        stream = self._stream()
        stream.write(text)
        stream.flush()
