r"""Exports a trained `.keras` classifier as a SavedModel for serving.

    python tools/export.py --model_path=runs/demo/student_tllm/model.keras \
        --export_dir=runs/demo/student_tllm/saved_model

The SavedModel takes raw images (preprocessing included) and returns logits
and probabilities; see tllm_tf/pipeline/export.py and docs/report.md.
"""

from absl import app
from absl import flags

from tllm_tf.pipeline import console

flags.DEFINE_string("model_path", None, "The .keras model to export (a saved Distiller: its "
                    "student).", required=True)
flags.DEFINE_string("export_dir", None, "The SavedModel directory to write (replaced if "
                    "it holds a SavedModel and nothing else).", required=True)
flags.DEFINE_bool("accept_uint8", True, "Also add a `serve_uint8` endpoint for uint8 images.")

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    console.plain_log_lines()
    console.quiet_tensorflow_start_up()  # Before TensorFlow's first import.
    from tllm_tf.distiller import Distiller
    from tllm_tf.pipeline import export as export_lib
    from tllm_tf.pipeline import model_io

    try:
        # Safe mode: a file that stores Python code is refused, before anything is written.
        model = model_io.load_keras_model(FLAGS.model_path, role="model")
        if isinstance(model, Distiller):
            print(f"{FLAGS.model_path} is a saved Distiller: exporting its student "
                  f"{model.student.name!r}, the network that serves.")
            model = model.student
        export_lib.export_saved_model(model, FLAGS.export_dir, accept_uint8=FLAGS.accept_uint8)
    except (ValueError, OSError) as error:  # OSError: an --export_dir it cannot write.
        console.exit_with_error(error)
    except KeyboardInterrupt:
        console.exit_interrupted(f"Nothing was written to {FLAGS.export_dir} (an export "
                                 "already there is kept).")
    endpoints = "serve (= serving_default)" + (", serve_uint8" if FLAGS.accept_uint8 else "")
    print(f"Wrote {FLAGS.export_dir}: raw images {model.input_shape} -> "
          f"{{logits, probabilities}}; endpoints: {endpoints}.")


if __name__ == "__main__":
    app.run(main)
