r"""Test (or held-out) accuracy and per-class accuracy of a saved model.

    python tools/evaluate.py --model_path=runs/demo/student_tllm/model.keras \
        --dataset=digits --split=test --json=/tmp/eval.json

--model_path is a .keras file or a SavedModel directory. A .keras file is
loaded in safe mode: one that stores Python code (a Lambda layer) is refused.
A SavedModel is a TensorFlow graph that runs with your rights: evaluate only
SavedModels from a trusted source (docs/security.md). The data flags
(tools/data_flags.py) have the names and defaults of tools/train.py's: pass
the run's, e.g. --seed and --holdout_fraction, to get the splits it used (a
model in a workdir is checked against its config.json).
"""

from absl import app
from absl import flags

from tllm_tf import atomic
from tllm_tf.pipeline import console

if __name__ == "__main__":  # Run, not imported: until main, Ctrl-C says one line.
    console.ctrl_c_ends_start_up()
# Before TensorFlow's first import: no start-up chatter.
console.quiet_tensorflow_start_up()

import data_flags  # noqa: E402  (tools/data_flags.py: --dataset, --seed, ...)
from tllm_tf.analysis import evaluation  # noqa: E402
from tllm_tf.analysis import reporting  # noqa: E402

data_flags.define_evaluation_flags()
flags.DEFINE_string("model_path", None, "A .keras file or a SavedModel directory.", required=True)
flags.DEFINE_string("json", None, "Also write the result to this JSON file.")

FLAGS = flags.FLAGS
# --helpshort lists the flags defined in those modules too, not only this file's.
flags.adopt_module_key_flags(data_flags)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    console.plain_log_lines()
    try:
        if FLAGS.json:
            atomic.check_writable(FLAGS.json)  # Before the evaluation, not after it.
        batches, class_names = data_flags.load_batches([FLAGS.model_path])
        models = evaluation.model_names([FLAGS.model_path])
        results = evaluation.evaluate_models(models, batches, class_names=class_names)
    except (ValueError, OSError) as error:
        console.exit_with_error(error)
    except KeyboardInterrupt:
        console.exit_interrupted("Nothing was written.")
    (name,) = models
    print(f"{FLAGS.model_path} on {FLAGS.dataset} {FLAGS.split} "
          f"({sum(results['num_samples'])} examples):")
    print(f"accuracy: {100 * results['accuracy'][name]:.2f}%")
    print(reporting.markdown_table(results))
    if FLAGS.json:
        record = {"model_path": FLAGS.model_path, "dataset": FLAGS.dataset,
                  "split": FLAGS.split, "accuracy": results["accuracy"][name],
                  "class_names": results["class_names"],
                  "per_class_accuracy": reporting.to_json(results)["per_class_accuracy"][name],
                  "num_samples": results["num_samples"]}
        atomic.write_json(FLAGS.json, record)
        print(f"Wrote {FLAGS.json}")


if __name__ == "__main__":
    console.ctrl_c_interrupts()
    app.run(main)
