"""What the tools print: TensorFlow's start-up held back, one-line summaries, progress lines.

Imports no TensorFlow: the tools call `quiet_tensorflow_start_up()` before
anything loads it. The progress bar's Keras callback is
`stage_progress.StageProgress`; its text comes from `progress_line` here.

Why TensorFlow's start-up lines need a file descriptor: TensorFlow 2.21 logs
through Abseil's C++ logging, which writes everything to fd 2 until
`absl::InitializeLog()` is called, whatever TF_CPP_MIN_LOG_LEVEL says
("Could not find cuda drivers", "oneDNN custom operations are on"); and on a
machine without a GPU, finding the devices logs an error ("failed call to
cuInit") that TF_CPP_MIN_LOG_LEVEL hides only together with every real error
(level 3). So the import and the device search run with fd 2 sent to a file,
and what that file holds is written back, less the known start-up lines.
"""

import dataclasses
import logging
import os
import re
import signal
import sys
import tempfile

# TensorFlow's C++ start-up lines that are no news: a GPU-capable build on a
# machine without a GPU, CPU features, the Abseil notice itself.
START_UP_CHATTER = re.compile("|".join([
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"cudart_stub\.cc",
    r"Could not find cuda drivers",
    r"failed call to cuInit",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation_placer\.cc",
    r"oneDNN custom operations are on",
    r"TF_ENABLE_ONEDNN_OPTS",
    r"cpu_feature_guard\.cc",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"rebuild TensorFlow with the appropriate compiler flags",
    r"TF-TRT Warning",
]))


def ctrl_c_ends_start_up():
    """Until `ctrl_c_interrupts`, Ctrl-C ends the tool with one line and exit status 130.

    A tool imports TensorFlow for seconds before its `main` runs; Ctrl-C then
    printed a traceback through TensorFlow's modules. Nothing is changed
    where SIGINT is not Python's default: ignored (a job started in the
    background keeps running) or handled by the caller.
    """
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _end_start_up)


def _end_start_up(signum, frame):
    del signum, frame  # The handler's signature.
    print("Interrupted while starting: nothing was written.", file=sys.stderr, flush=True)
    sys.exit(INTERRUPTED_EXIT_STATUS)


def ctrl_c_interrupts():
    """Ctrl-C raises `KeyboardInterrupt` again, for `main` (after `ctrl_c_ends_start_up`)."""
    if signal.getsignal(signal.SIGINT) is _end_start_up:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def quiet_tensorflow_start_up():
    """Imports TensorFlow and finds its devices without their start-up lines.

    Every other line written to standard error meanwhile (a real error, a
    Python warning) is written back when the import is done, or fails.
    TensorFlow's Python logger is set to errors only, as
    `TF_CPP_MIN_LOG_LEVEL=2` (set here unless already set) does for its C++
    logging: retracing notes and SavedModel INFO lines stay out of the output.
    Does nothing when TensorFlow is already imported.
    """
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            # Finding the devices (not creating them) is where cuInit fails.
            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not START_UP_CHATTER.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def plain_log_lines():
    """Log records as `WARNING: message`, and none below warnings unless --verbosity says so.

    Call in a tool's `main` (absl's handler exists once `app.run` started).
    The absl prefix (`W1203 09:33:20.252683 1401... stages.py:347]`) is for
    log files; a terminal reader needs the level and the message.
    """
    from absl import flags
    from absl import logging as absl_logging

    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
    absl_logging.get_absl_handler().setFormatter(
        logging.Formatter("%(levelname)s: %(message)s"))


INTERRUPTED_EXIT_STATUS = 130


def exit_interrupted(what_is_kept):
    """Ends a tool stopped by Ctrl-C: one line saying `what_is_kept`, exit status 130."""
    if sys.stdout.isatty():
        print(flush=True)  # Ends the line of a progress bar.
    print(f"Interrupted. {what_is_kept}", file=sys.stderr)
    sys.exit(INTERRUPTED_EXIT_STATUS)


def exit_with_error(error):
    """Ends a tool on bad input that is not a flag's: `Error: <message>` and exit status 1.

    For a refusal the message explains (data not found, a workdir or study root of another
    configuration, nothing to report). absl's `UsageError` would print the tool's whole help
    first and bury the message; it stays for bad flags (unknown, unparsable or out of range).
    """
    print(f"Error: {error}", file=sys.stderr)
    sys.exit(1)


def _flag(name, value):
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    if isinstance(value, (tuple, list)):
        value = ",".join(str(item) for item in value)
    return f"--{name}={value}"


def config_summary(config):
    """The fields of a dataclass config that differ from their defaults, as flags.

    Args:
        config: a dataclass instance such as `RunConfig`; fields without a
            default (the workdir) are left out.

    Returns:
        One line, e.g. `"--students=distilled,tllm --mixup=0.4 --epochs=60"`, or
        `"the defaults"`.

    Example:
        >>> config_summary(RunConfig(workdir="runs/a", epochs=60, cache=True))
        '--epochs=60 --cache'
    """
    flags = [_flag(field.name, getattr(config, field.name))
             for field in dataclasses.fields(config)
             if field.default is not dataclasses.MISSING
             and getattr(config, field.name) != field.default]
    return " ".join(flags) or "the defaults"


def format_duration(seconds):
    """`41s`, `3:07` or `1:02:09`."""
    seconds = int(round(max(seconds, 0)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}:{seconds:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def format_metrics(metrics):
    """`loss: 0.4120 - accuracy: 0.8730 - num_undistillable_classes: 2`: counts as integers."""
    parts = []
    for name, value in metrics.items():
        if name.startswith("num_"):
            parts.append(f"{name}: {int(round(float(value)))}")
        else:
            parts.append(f"{name}: {float(value):.4f}")
    return " - ".join(parts)


def progress_line(epochs_done, epochs, metrics, seconds, finished=False, width=20):
    """One line of a stage's progress bar.

    Args:
        epochs_done: epochs completed, a fraction inside an epoch.
        epochs: the stage's epochs.
        metrics: dict name -> value to show, in order.
        seconds: the time left, or with `finished` the time taken; `None`
            when not known yet.
        finished: whether the stage has stopped. Defaults to `False`.
        width: characters of the bar. Defaults to `20`.

    Returns:
        E.g. `"[######..............] epoch 19/60 - loss: 0.4120 - 0:41 left"`.
    """
    fraction = min(max(epochs_done / max(epochs, 1), 0.0), 1.0)
    filled = int(fraction * width)
    # The epoch under way, 1-based; when stopped, the last one completed.
    epoch = int(epochs_done) if finished else min(int(epochs_done) + 1, epochs)
    parts = [f"[{'#' * filled}{'.' * (width - filled)}] epoch {epoch}/{epochs}"]
    if metrics:
        parts.append(format_metrics(metrics))
    if seconds is not None:
        parts.append(format_duration(seconds) + ("" if finished else " left"))
    return " - ".join(parts)
