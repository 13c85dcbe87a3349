"""Trains teacher -> reference student -> distilled students (KD, TLLM).

    python tools/train.py --flagfile=configs/demo.flags

Flags come from flag files (see configs/) and the command line; later ones
win. The run is written to --workdir; see tllm_tf/stages.py for its layout.
"""

import os
import sys

# Before TensorFlow is imported: keep its C++ start-up chatter out of the output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

import run_flags  # noqa: E402  (tools/run_flags.py: one flag per RunConfig field)
from tllm_tf import reporting  # noqa: E402
from tllm_tf import stages  # noqa: E402

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required: where every stage writes its results.")
    try:
        config = run_flags.config_from_flags()
    except ValueError as error:
        raise app.UsageError(str(error))
    logging.info("Configuration:\n%s", config.to_json())
    # First, before any TensorFlow op: a multi-worker strategy configures
    # collectives, which is only possible at start-up.
    strategy = stages.make_strategy(config.strategy)
    if not stages.is_chief(strategy):
        print("A non-chief worker: the chief writes every result; this process writes nothing.")
    else:
        print(f"Writing to {config.workdir} (configuration in config.json there).")
    if config.mixed_precision:
        import keras
        keras.mixed_precision.set_global_policy("mixed_float16")
    if config.deterministic:
        import tensorflow as tf
        tf.config.experimental.enable_op_determinism()
    try:
        finished = stages.run(config, strategy)
    except ValueError as error:
        # Bad input (data not found, a workdir of another configuration, a
        # corrupt checkpoint, ...): the message says what to do; a traceback
        # would only hide it. Nothing already written has been changed.
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(1)
    if finished is None:
        return
    results = reporting.load_results(config.workdir)
    print(reporting.markdown_table(results))
    print("\n".join(reporting.summary_lines(results)))


if __name__ == "__main__":
    app.run(main)
