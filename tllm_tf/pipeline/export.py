"""Writing a trained classifier as a SavedModel for serving, and reading it back.

The SavedModel takes raw images (the model's own normalisation layer is part
of the graph) and returns a dict with `logits` and `probabilities` (and, when
exported with class names, `class_name`), so a caller needs neither Keras nor
this package:

    loaded = tf.saved_model.load(path)
    outputs = loaded.signatures["serving_default"](images=raw_images)
    outputs["probabilities"]
    loaded.class_names()["class_names"]  # One name per column, if exported with them.
"""

import contextlib
import logging
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from tllm_tf import atomic
from tllm_tf import model_checks
from tllm_tf.pipeline import model_io

SAVED_MODEL_FILE = "saved_model.pb"
# What a SavedModel folder holds (`keras.export.ExportArchive` writes the first four); replacing
# an export deletes the folder, so one holding anything else is refused.
SAVED_MODEL_ENTRIES = frozenset(
    {SAVED_MODEL_FILE, "variables", "assets", "fingerprint.pb", "saved_model.pbtxt"})
KERAS_SUFFIX = model_io.KERAS_SUFFIX
# The endpoint (and signature) that returns the class names, in the order of the logits.
CLASS_NAMES_ENDPOINT = "class_names"


def _input_shape(model, image_shape):
    if image_shape is not None:
        shape = (None, *image_shape)
    else:
        try:
            shape = model.input_shape
        except (AttributeError, ValueError):
            # A subclassed model records no input shape, even once called.
            raise ValueError(
                "Expected a model that records its input shape (one built from a "
                f"keras.Input). Received: {model.name!r}, a {type(model).__name__} without "
                "one. Pass the shape of one image, e.g. export_saved_model(model, path, "
                "image_shape=(32, 32, 3)).") from None
    if not isinstance(shape, tuple) or not all(
            isinstance(d, (int, type(None))) for d in shape):
        raise ValueError(
            "Expected a model with one image input. Received: "
            f"input_shape={shape}")
    if any(d is None for d in shape[1:]):
        raise ValueError(
            "Expected a model with a fully known image shape (batch dimension "
            f"aside). Received: input_shape={shape}")
    return (None,) + tuple(shape[1:])


def _check_destination(path):
    if not path:
        raise ValueError(f"Expected a directory path to export to. Received: path={path!r}")
    if os.path.islink(path):
        # Replacing it would replace the link with a folder, not the folder it points to.
        raise ValueError(
            f"Expected a directory path to export to, but it is a symbolic link (to "
            f"{os.readlink(path)!r}). Export to a new folder and point the link at it, or "
            f"export to the folder it points to. Received: path={path!r}")
    if os.path.isfile(path):
        raise ValueError(
            f"Expected a directory path to export to, but it is a file. Received: path={path!r}")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise ValueError(
            f"Expected a directory path to export to, but its folder {parent!r} is a file. "
            f"Received: path={path!r}")
    entries = set(os.listdir(path)) if os.path.isdir(path) else set()
    if entries and SAVED_MODEL_FILE not in entries:
        # Replacing a SavedModel is fine; wiping an unrelated directory is not.
        raise ValueError(
            "Refusing to replace a non-empty directory that is not a SavedModel. "
            f"Received: path={path!r}")
    others = sorted(entries - SAVED_MODEL_ENTRIES)
    if entries and others:
        raise ValueError(
            f"Refusing to replace the SavedModel at {path!r}: the folder also holds "
            f"{others}, which replacing it would delete. Move them out of it, or export to "
            f"another folder. Received: path={path!r}")


def _checked_class_names(class_names):
    if class_names is None:
        return None
    names = list(class_names)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(
            "Expected class_names to be one non-empty string per class, in the order of the "
            f"model's outputs. Received: class_names={class_names!r}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(
            f"Expected distinct class names. Received {repeated} more than once in "
            f"class_names={names!r}")
    return names


def export_saved_model(model, path, *, accept_uint8=True, image_shape=None, class_names=None):
    """Writes `model` as a SavedModel with a raw-image serving signature.

    Endpoints (each also a signature):

    * `serve` (alias `serving_default`): float32 images
      `(None, *image_shape)` in the data set's raw pixel scale ->
      `{"logits": float32 (None, num_classes), "probabilities": float32}`,
      plus `"class_name"` (string `(None,)`, the most probable class's
      name) when `class_names` are given.
    * `serve_uint8` (if `accept_uint8`): the same for uint8 images.
    * `class_names` (if `class_names` are given): no input ->
      `{"class_names": string (num_classes,)}`, the name of each column.

    The export is written to a temporary directory beside `path` and then
    renamed into place, so `path` never holds a half-written model; an
    existing SavedModel at `path` is replaced, unless its folder also holds
    other files (they would be deleted with it).

    Args:
        model: a `keras.Model` with one image input that returns logits and
            includes its preprocessing (as `build.build_classifier` builds).
        path: the SavedModel directory to write.
        accept_uint8: whether to add the `serve_uint8` endpoint. Defaults to
            `True`.
        image_shape: the shape of one image, e.g. `(32, 32, 3)`, for a model
            that does not record its input shape (a subclassed one). Defaults
            to `None`: the model's own.
        class_names: one name per output, in order (a data set's
            `class_names`), stored in the SavedModel. Defaults to `None`:
            none stored, and the outputs are class ids only.

    Returns:
        `path`.

    Raises:
        ValueError: if `model` is a `Distiller` (export its `student`) or
            ends in a softmax (`model_checks.check_model`,
            `model_checks.probe_output_size`: its "logits" would be
            probabilities), if `path` is empty, a file, a symbolic link, a
            non-empty directory that is not a SavedModel or a SavedModel's
            folder holding other files too, or cannot be written, or if the
            model's input shape is not one fully known image shape, or if
            `class_names` are not one distinct non-empty string per output.
        OSError: if writing fails (a full disk, say); an earlier export at
            `path` is kept as it was.

    Example:

    ```python
    export_saved_model(student, "runs/demo/student_tllm/saved_model",
                       class_names=data.class_names)
    ```
    """
    if hasattr(model, "student") and hasattr(model, "class_mask"):
        raise ValueError(
            "Expected the classifier to serve, not the Distiller that trained it: pass "
            "`distiller.student`. Received: a tllm_tf.Distiller, which also holds the "
            "teacher and the class mask.")
    path = os.fspath(path)
    if path:  # "link/" would be the folder the link points to.
        path = path.rstrip(os.sep) or path
    _check_destination(path)
    names = _checked_class_names(class_names)
    model_checks.check_model(model, "model to export")
    shape = _input_shape(model, image_shape)
    model_checks.probe_output_size(model, "model to export", image_shape=shape[1:])

    def serve(images):
        # `serving_default` checks only the dtype: a model that flattens or pools would
        # answer images of another size, wrongly.
        images = tf.ensure_shape(images, shape)
        logits = tf.cast(model(images, training=False), tf.float32)
        outputs = {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}
        if names is not None:
            if logits.shape[-1] != len(names):  # Known when traced: a graph-time refusal.
                raise ValueError(
                    f"Expected one class name per output of the model ({logits.shape[-1]}). "
                    f"Received {len(names)}: class_names={names!r}")
            outputs["class_name"] = tf.gather(tf.constant(names), tf.argmax(logits, axis=-1))
        return outputs

    def serve_uint8(images):
        return serve(tf.cast(images, tf.float32))

    archive = keras.export.ExportArchive()
    archive.track(model)
    # The first endpoint also becomes `serving_default`.
    archive.add_endpoint(
        "serve", serve, [tf.TensorSpec(shape, tf.float32, name="images")])
    if accept_uint8:
        archive.add_endpoint(
            "serve_uint8", serve_uint8, [tf.TensorSpec(shape, tf.uint8, name="images")])
    if names is not None:
        archive.add_endpoint(
            CLASS_NAMES_ENDPOINT, lambda: {"class_names": tf.constant(names)}, [])

    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        # Named as atomic's temporaries, so that a stage resumed after a kill removes it.
        temporary = tempfile.mkdtemp(prefix=atomic.temporary_prefix(path), suffix=".tmp",
                                     dir=parent)
    except OSError as error:
        raise ValueError(
            f"Cannot write the export to {path!r}: {error.strerror or error} "
            f"({type(error).__name__}, in {parent!r}). Choose a folder you can write "
            "to.") from None
    # mkdtemp's directory is owner-only; a model server running as another
    # user must be able to read the export, as with a directory made by mkdir.
    os.chmod(temporary, 0o777 & ~atomic.current_umask())
    try:
        with _tensorflow_logs_at_warning():
            archive.write_out(temporary, verbose=False)
        _replace_directory(temporary, path)
    except tf.errors.OpError as error:
        # TensorFlow's own writer reports a full disk or a failed write as its error types,
        # which callers do not take for a file-system error.
        raise OSError(f"Cannot write the SavedModel {path!r}: {error.message}") from error
    finally:
        if os.path.exists(temporary):
            shutil.rmtree(temporary)
    return path


@contextlib.contextmanager
def _tensorflow_logs_at_warning():
    """TensorFlow's Python logger at WARNING or above while the block runs.

    Writing a SavedModel logs INFO lines (inputs renamed in signatures,
    "Assets written to", fingerprint and sharding timings) whatever
    `verbose` says, once per endpoint; a caller can do nothing with them.
    """
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _replace_directory(source, destination):
    """Moves `source` to `destination`, replacing an existing directory there."""
    if not os.path.exists(destination):
        os.replace(source, destination)
        return
    # A directory cannot be renamed over a non-empty one: move the old one
    # aside first, so `destination` is at every moment either old or new.
    old = tempfile.mkdtemp(prefix=atomic.temporary_prefix(destination), suffix=".old",
                           dir=os.path.dirname(os.path.abspath(destination)))
    os.rmdir(old)
    os.replace(destination, old)
    os.replace(source, destination)
    shutil.rmtree(old)


class ServingModel:
    """A SavedModel (or `.keras` file) loaded for inference: raw images -> logits.

    Calls like a Keras model (`model(images, training=False)`), so it works
    with `tllm_tf.metrics.PerClassCounter`.

    Args:
        path: a `.keras` file, a SavedModel written by `export_saved_model`,
            or one written by `keras.Model.export` (its `serve` returns
            logits).

    A `.keras` file is loaded by `model_io.load_keras_model` (safe mode; one
    that stores Python code is refused). A SavedModel is a TensorFlow graph
    that runs with the caller's rights (it may read and write files): load
    only SavedModels from a trusted source (docs/security.md).

    Attributes:
        class_names: the class names a SavedModel was exported with (a
            tuple of str, in the order of the logits), or `None` (a `.keras`
            file, or an export without them).

    Raises:
        ValueError: if `path` is neither, a folder named `.keras`, or a
            `.keras` file that cannot be loaded (`model_io.UnsafeModelError`
            if it stores Python code).
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.class_names = None
        # "x.keras/", "x.keras/." and "x.KERAS" name the same folder.
        reads_as_keras = os.path.normpath(self.path).lower().endswith(KERAS_SUFFIX)
        if reads_as_keras and os.path.isdir(self.path):
            # A SavedModel runs its graph with the caller's rights: never under a name
            # that reads as a .keras file, which is loaded in safe mode.
            raise ValueError(
                f"{self.path!r} is a folder, not a {KERAS_SUFFIX} file: a folder is read as "
                "a SavedModel, whose graph runs with your rights. Rename it (without "
                f"{KERAS_SUFFIX}) if it is a SavedModel you trust.")
        if self.path.endswith(KERAS_SUFFIX):
            self._keras_model = model_io.load_keras_model(self.path, role="model")
            self._serve = None
            self.input_shape = self._keras_model.input_shape
        elif os.path.exists(os.path.join(self.path, SAVED_MODEL_FILE)):
            self._keras_model = None
            self._loaded = tf.saved_model.load(self.path)
            if not hasattr(self._loaded, "serve"):
                raise ValueError(
                    f"Expected a SavedModel with a `serve` endpoint. Received: path={self.path!r}")
            self._serve = self._loaded.serve
            spec = self._serve.input_signature[0]
            self.input_shape = tuple(spec.shape.as_list())
            if hasattr(self._loaded, CLASS_NAMES_ENDPOINT):
                names = getattr(self._loaded, CLASS_NAMES_ENDPOINT)()["class_names"]
                self.class_names = tuple(name.decode("utf-8") for name in names.numpy())
        else:
            raise ValueError(
                "Expected a .keras file or a SavedModel directory (with "
                f"{SAVED_MODEL_FILE}). Received: path={self.path!r}")

    def __call__(self, images, training=False):
        if self._keras_model is not None:
            return self._keras_model(images, training=False)
        outputs = self._serve(tf.cast(images, tf.float32))
        if not isinstance(outputs, dict):
            return outputs
        if "logits" not in outputs:
            raise ValueError(
                f"The SavedModel {self.path!r} returns {sorted(outputs)}, not `logits`: "
                "export it with tllm_tf.export_saved_model (tools/export.py), or give its "
                "`serve` endpoint a `logits` output.")
        return outputs["logits"]
