"""Trains teacher -> reference student -> distilled students (KD, TLLM).

    python tools/train.py --flagfile=configs/demo.flags

Flags come from flag files (see configs/) and the command line; later ones
win. The run is written to --workdir; see tllm_tf/pipeline/workdir_files.py for its layout.
It prints the flags that differ from the defaults (config.json in the workdir
has them all), a line and a progress bar per stage (--verbose=2: a line per
epoch; 0: neither), then the per-class table, the accuracies and where the
SavedModels and the report are.
"""

import os

from absl import app
from absl import flags

from tllm_tf.pipeline import console

if __name__ == "__main__":  # Run, not imported: until main, Ctrl-C says one line.
    console.ctrl_c_ends_start_up()
# Before TensorFlow's first import (run_flags loads it): no start-up chatter.
console.quiet_tensorflow_start_up()

import run_flags  # noqa: E402  (tools/run_flags.py: one flag per RunConfig field)
import data_flags  # noqa: E402  (imported by run_flags: the data flags)
import tensorflow as tf  # noqa: E402
from tllm_tf.analysis import reporting  # noqa: E402
from tllm_tf.analysis import workdir_results  # noqa: E402
from tllm_tf.pipeline import multi_worker  # noqa: E402
from tllm_tf.pipeline import stages  # noqa: E402
from tllm_tf.pipeline import strategy as strategy_lib  # noqa: E402
from tllm_tf.pipeline import workdir_files  # noqa: E402
from tllm_tf.pipeline import worker_failures  # noqa: E402
from tllm_tf.pipeline.training_guards import NonFiniteLossError  # noqa: E402

FLAGS = flags.FLAGS
# --helpshort lists the flags defined in those modules too, not only this file's.
flags.adopt_module_key_flags(run_flags)
flags.adopt_module_key_flags(data_flags)
# How the messages of the input pipeline's own checks begin (tllm_tf/data/soft_label_store.py).
PIPELINE_CHECKS = ("The soft-label store's file", "The batch's images are not the views")
# What a shell reports for a command ended by Ctrl-C: 128 + SIGINT.


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required: where every stage writes its results.")
    console.plain_log_lines()
    try:
        config = run_flags.config_from_flags()
    except ValueError as error:
        raise app.UsageError(str(error))
    try:
        _train_and_report(config)
    except KeyboardInterrupt:
        console.exit_interrupted(
            f"What finished is kept in {config.workdir}: run the same command again to "
            "resume from the last checkpoint.")


def _train_and_report(config):
    """Runs the stages `config` asks for, then prints and writes the report."""
    # First, before any TensorFlow op: a multi-worker strategy configures
    # collectives, which is only possible at start-up.
    try:
        if config.strategy == "multi_worker":
            print(strategy_lib.joining_line(), flush=True)
        strategy = strategy_lib.make_strategy(config.strategy)
    except ValueError as error:
        console.exit_with_error(error)
    if not strategy_lib.is_chief(strategy):
        print("A non-chief worker: the chief writes every result; this process writes nothing.")
    elif config.verbose > 0:
        print(f"Flags that differ from the defaults: {console.config_summary(config)}")
    if config.mixed_precision:
        import keras
        keras.mixed_precision.set_global_policy("mixed_float16")
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    try:
        with worker_failures.shared(strategy):
            if stages.run(config, strategy) is None:
                return
            if config.stage == "store":  # It trains nothing: no model to report.
                print(f"Soft-label store complete: {config.teacher_store}")
                return
            try:
                results = workdir_results.load_results(config.workdir)
            except FileNotFoundError as error:  # No stage has a result: not a disk's doing.
                raise ValueError(str(error)) from None
        written = reporting.write_report(
            results, os.path.join(config.workdir, workdir_files.REPORT_DIR))
    except (ValueError, NonFiniteLossError, multi_worker.ChiefFailedError,
            worker_failures.WorkerFailedError) as error:
        # Bad input (data not found, a workdir of another configuration, a
        # corrupt checkpoint or result file, ...), a loss that became NaN, or
        # another worker that stopped on one of those: the message says what
        # to do; a traceback would only hide it. What was written is kept.
        console.exit_with_error(error)
    except OSError as error:  # A path that became unwritable, a full disk, ...
        console.exit_with_error(
            f"{error}. Anything that finished is kept in {config.workdir}: make the path "
            "writable (or free space), then run the same command again to resume.")
    except tf.errors.InvalidArgumentError as error:
        # A check inside the input pipeline (a damaged part of the soft-label store, batches
        # that are not its views): TensorFlow wraps its message in a graph traceback.
        message = _pipeline_check_message(error)
        if message is None:
            raise
        console.exit_with_error(
            f"{message} What finished is kept in {config.workdir}.")
    print()
    if results["models"]:  # Not after --stage=teacher alone: no student to compare.
        print(reporting.markdown_table(results))
    print("\n".join(reporting.summary_lines(results)))
    saved_models = [os.path.join(config.workdir, workdir_files.student_stage(student),
                                 workdir_files.SAVED_MODEL_DIR) for student in config.students]
    saved_models = [path for path in saved_models if os.path.exists(path)]
    if saved_models:
        print(f"SavedModel{'s' if len(saved_models) > 1 else ''} for serving: "
              + ", ".join(saved_models))
    print(f"Report: {written['report.md']}")


def _pipeline_check_message(error):
    """The message of the library's own check inside `error`, or None for another error."""
    for line in error.message.splitlines():
        for start in PIPELINE_CHECKS:
            if start in line:
                return line[line.index(start):].strip().rstrip("]").strip()
    return None


if __name__ == "__main__":
    console.ctrl_c_interrupts()
    app.run(main)
