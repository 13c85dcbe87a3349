r"""Exports a trained `.keras` classifier as a SavedModel for serving.

    python tools/export.py --model_path=runs/demo/student_tllm/model.keras \
        --export_dir=runs/demo/student_tllm/saved_model

The SavedModel takes raw images (preprocessing included) and returns logits,
probabilities and the most probable class's name; see
tllm_tf/pipeline/export.py and docs/report.md. The class names are those of
the `test_per_class.json` beside the model (a stage of tools/train.py), or
`--class_names`.
"""

import os

from absl import app
from absl import flags

from tllm_tf.pipeline import console

flags.DEFINE_string("model_path", None, "The .keras model to export (a saved Distiller: its "
                    "student).", required=True)
flags.DEFINE_string("export_dir", None, "The SavedModel directory to write (replaced if "
                    "it holds a SavedModel and nothing else).", required=True)
flags.DEFINE_bool("accept_uint8", True, "Also add a `serve_uint8` endpoint for uint8 images.")
flags.DEFINE_list("class_names", None, "The class names to store in the SavedModel, one per "
                  "output, in order, comma-separated. Defaults to those of the "
                  "test_per_class.json beside --model_path (a stage of tools/train.py), if "
                  "there is one. Empty: store none.")

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
        class_names, source = _class_names(FLAGS.model_path)
        export_lib.export_saved_model(model, FLAGS.export_dir, accept_uint8=FLAGS.accept_uint8,
                                      class_names=class_names)
    except (ValueError, OSError) as error:  # OSError: an --export_dir it cannot write.
        console.exit_with_error(error)
    except KeyboardInterrupt:
        console.exit_interrupted(f"Nothing was written to {FLAGS.export_dir} (an export "
                                 "already there is kept).")
    endpoints = "serve (= serving_default)" + (", serve_uint8" if FLAGS.accept_uint8 else "")
    if class_names:
        outputs = "{logits, probabilities, class_name}"
        endpoints += f", {export_lib.CLASS_NAMES_ENDPOINT}"
        names = f"class names from {source}"
    else:
        outputs = "{logits, probabilities}"
        names = "no class names (pass --class_names to store them)"
    print(f"Wrote {FLAGS.export_dir}: raw images {model.input_shape} -> {outputs}; "
          f"{names}; endpoints: {endpoints}.")


def _class_names(model_path):
    """The class names to export and where they come from: `(names or None, source)`."""
    from tllm_tf.analysis import workdir_results
    from tllm_tf.pipeline import workdir_files

    if FLAGS.class_names is not None:
        return (FLAGS.class_names or None), "--class_names"
    stage_dir = os.path.dirname(os.path.abspath(model_path))
    path = os.path.join(stage_dir, workdir_files.PER_CLASS_FILE)
    if not os.path.exists(path):
        return None, None
    names = workdir_results.read_per_class(
        stage_dir, remedy="Pass the class names with --class_names (empty: store none).")[0]
    return names, path


if __name__ == "__main__":
    app.run(main)
