"""SavedModel export: raw images in, logits and probabilities out, written atomically."""

import os
import stat
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tllm_tf.pipeline import export as export_lib

MEAN, VARIANCE = [4.0, 8.0, 2.0], [4.0, 9.0, 1.0]


@pytest.fixture
def model(seeded):
    """A tiny classifier that, like build.build_classifier, takes raw images."""
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Normalization(mean=MEAN, variance=VARIANCE),
        keras.layers.Flatten(),
        keras.layers.Dense(4),
    ])


@pytest.fixture
def raw_images():
    return np.random.default_rng(0).uniform(0, 16, (5, 8, 8, 3)).astype(np.float32)


def _softmax(logits):
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


@pytest.mark.slow
def test_reloaded_in_a_fresh_process_gives_the_keras_outputs(
        zygote, model, raw_images, tmp_path):
    path = export_lib.export_saved_model(model, str(tmp_path / "saved_model"))
    np.save(tmp_path / "images.npy", raw_images)
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import tensorflow as tf
        loaded = tf.saved_model.load(sys.argv[1])
        images = np.load(sys.argv[2])
        default = loaded.signatures["serving_default"](images=tf.constant(images))
        as_uint8 = loaded.serve_uint8(tf.constant(images.astype(np.uint8)))
        np.savez(sys.argv[3], logits=default["logits"].numpy(),
                 probabilities=default["probabilities"].numpy(),
                 uint8_logits=as_uint8["logits"].numpy(), one=loaded.serve(images[:1])["logits"])
    """)
    # Forked from tests/zygote.py: TensorFlow imported, no model in memory.
    result = zygote.run(
        ["-c", script, path, str(tmp_path / "images.npy"), str(tmp_path / "outputs.npz")],
        timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(tmp_path / "outputs.npz")
    expected = model.predict(raw_images, verbose=0)
    np.testing.assert_allclose(outputs["logits"], expected, atol=1e-5)
    np.testing.assert_allclose(outputs["probabilities"], _softmax(expected), atol=1e-6)
    np.testing.assert_allclose(outputs["one"], expected[:1], atol=1e-5)
    uint8_expected = model.predict(raw_images.astype(np.uint8).astype(np.float32), verbose=0)
    np.testing.assert_allclose(outputs["uint8_logits"], uint8_expected, atol=1e-5)


def test_every_endpoint_refuses_images_of_another_size(model, tmp_path):
    path = export_lib.export_saved_model(model, str(tmp_path / "saved_model"))
    loaded = tf.saved_model.load(path)
    # The Dense model would flatten a (4, 16, 3) image to the same 192 values.
    other_shape = np.zeros((2, 4, 16, 3), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="not compatible with expected"):
        loaded.signatures["serving_default"](images=tf.constant(other_shape))
    with pytest.raises(tf.errors.InvalidArgumentError, match="not compatible with expected"):
        loaded.signatures["serve_uint8"](images=tf.constant(other_shape.astype(np.uint8)))


def test_serving_model_names_a_saved_model_without_logits(model, raw_images, tmp_path):
    module = tf.Module()
    module.model = model
    module.serve = tf.function(lambda images: {"scores": module.model(images)},
                               input_signature=[tf.TensorSpec((None, 8, 8, 3), tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "scores_only"))
    serving = export_lib.ServingModel(str(tmp_path / "scores_only"))
    with pytest.raises(ValueError, match=r"returns \['scores'\], not `logits`"):
        serving(raw_images)


def test_normalisation_is_inside_the_saved_model(model, raw_images, tmp_path):
    path = export_lib.export_saved_model(model, str(tmp_path / "saved_model"))
    loaded = tf.saved_model.load(path)  # Held: its functions need its variables.
    outputs = loaded.serve(raw_images)
    kernel, bias = model.layers[-1].get_weights()
    normalised = (raw_images - np.array(MEAN)) / np.sqrt(VARIANCE)
    by_hand = normalised.reshape(5, -1) @ kernel + bias
    np.testing.assert_allclose(outputs["logits"].numpy(), by_hand, atol=1e-4)
    assert outputs["probabilities"].dtype == tf.float32
    np.testing.assert_allclose(outputs["probabilities"].numpy().sum(axis=-1), 1.0, atol=1e-6)


def test_export_replaces_a_saved_model_and_leaves_no_temporary_directory(
        model, raw_images, tmp_path):
    path = str(tmp_path / "saved_model")
    export_lib.export_saved_model(model, path)
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel, bias + 1.0])
    export_lib.export_saved_model(model, path)
    assert os.listdir(tmp_path) == ["saved_model"]
    loaded = tf.saved_model.load(path)
    np.testing.assert_allclose(loaded.serve(raw_images)["logits"].numpy(), model.predict(raw_images, verbose=0), atol=1e-5)


def test_the_export_is_readable_as_a_directory_made_by_mkdir_would_be(model, tmp_path):
    previous = os.umask(0o022)
    try:
        path = export_lib.export_saved_model(model, str(tmp_path / "saved_model"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755


def test_a_failed_write_keeps_the_old_export(model, raw_images, tmp_path, monkeypatch):
    path = str(tmp_path / "saved_model")
    export_lib.export_saved_model(model, path)
    loaded = tf.saved_model.load(path)
    before = loaded.serve(raw_images)["logits"].numpy()

    def write_half_and_fail(obj, export_dir, *args, **kwargs):
        with open(os.path.join(export_dir, "saved_model.pb"), "w") as handle:
            handle.write("half")
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", write_half_and_fail)
    with pytest.raises(OSError, match="disk full"):
        export_lib.export_saved_model(model, path)
    assert os.listdir(tmp_path) == ["saved_model"]
    reloaded = tf.saved_model.load(path)
    after = reloaded.serve(raw_images)["logits"].numpy()
    np.testing.assert_array_equal(after, before)


def test_bad_paths_are_refused(model, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    with pytest.raises(ValueError, match="it is a file"):
        export_lib.export_saved_model(model, str(a_file))
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_text("keep me too")
    with pytest.raises(ValueError, match="not a SavedModel"):
        export_lib.export_saved_model(model, str(other))
    assert os.listdir(other) == ["cat.jpg"]
    with pytest.raises(ValueError, match="Received: path=''"):
        export_lib.export_saved_model(model, "")


def test_a_model_without_a_known_image_shape_is_refused(tmp_path):
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    with pytest.raises(ValueError, match="fully known image shape"):
        export_lib.export_saved_model(model, str(tmp_path / "saved_model"))
    assert not os.listdir(tmp_path)


def test_serving_model_reads_keras_files_and_saved_models_alike(model, raw_images, tmp_path):
    keras_path = str(tmp_path / "model.keras")
    model.save(keras_path)
    saved_model = export_lib.export_saved_model(model, str(tmp_path / "saved_model"))
    from_keras = export_lib.ServingModel(keras_path)
    from_saved_model = export_lib.ServingModel(saved_model)
    assert from_keras.input_shape == from_saved_model.input_shape == (None, 8, 8, 3)
    np.testing.assert_allclose(from_saved_model(raw_images), from_keras(raw_images), atol=1e-5)
    with pytest.raises(ValueError, match="Expected a .keras file or a SavedModel"):
        export_lib.ServingModel(str(tmp_path))


def test_a_mixed_precision_model_serves_float32(raw_images, tmp_path, seeded):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([
            keras.Input((8, 8, 3)), keras.layers.Normalization(mean=MEAN, variance=VARIANCE),
            keras.layers.Flatten(), keras.layers.Dense(4)])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    path = export_lib.export_saved_model(model, str(tmp_path / "saved_model"))
    loaded = tf.saved_model.load(path)
    outputs = loaded.serve(raw_images)
    assert outputs["logits"].dtype == outputs["probabilities"].dtype == tf.float32
    np.testing.assert_allclose(outputs["logits"].numpy(), model.predict(raw_images, verbose=0),
                               atol=1e-2)


def test_a_model_built_under_mirrored_strategy_exports(model, raw_images, tmp_path):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = keras.Sequential([
            keras.Input((8, 8, 3)), keras.layers.Normalization(mean=MEAN, variance=VARIANCE),
            keras.layers.Flatten(), keras.layers.Dense(4)])
    mirrored.set_weights(model.get_weights())
    path = export_lib.export_saved_model(mirrored, str(tmp_path / "saved_model"))
    loaded = tf.saved_model.load(path)
    np.testing.assert_allclose(loaded.serve(raw_images)["logits"].numpy(),
                               model.predict(raw_images, verbose=0), atol=1e-5)


def test_a_distiller_is_refused_naming_its_student(model, tmp_path):
    import tllm_tf

    distiller = tllm_tf.Distiller(model, keras.models.clone_model(model))
    with pytest.raises(ValueError, match=r"pass `distiller.student`"):
        export_lib.export_saved_model(distiller, str(tmp_path / "saved_model"))
    assert not os.listdir(tmp_path)
    export_lib.export_saved_model(distiller.student, str(tmp_path / "saved_model"))


def test_a_saved_model_folder_holding_other_files_is_not_replaced(model, tmp_path):
    path = tmp_path / "saved_model"
    export_lib.export_saved_model(model, str(path))
    (path / "model.keras").write_text("the user's")
    (path / "assets.extra").mkdir()
    with pytest.raises(ValueError, match=r"also holds \['assets.extra', 'model.keras'\]"):
        export_lib.export_saved_model(model, str(path))
    assert (path / "model.keras").read_text() == "the user's"
    assert (path / "assets.extra").is_dir() and (path / export_lib.SAVED_MODEL_FILE).exists()


def test_a_symbolic_link_is_refused_and_left_as_it_is(model, tmp_path):
    version = export_lib.export_saved_model(model, str(tmp_path / "v1"))
    current = tmp_path / "current"
    os.symlink(version, current)
    for given in (str(current), str(current) + os.sep):
        with pytest.raises(ValueError, match="symbolic link"):
            export_lib.export_saved_model(model, given)
    assert os.path.islink(current) and os.readlink(current) == version
    assert sorted(os.listdir(tmp_path)) == ["current", "v1"]


def test_a_model_that_outputs_probabilities_is_refused(tmp_path):
    layer_softmax = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                                      keras.layers.Dense(4, activation="softmax")])
    inputs = keras.Input((8, 8, 3))
    op_softmax = keras.Model(inputs, keras.layers.Lambda(tf.nn.softmax)(
        keras.layers.Dense(4)(keras.layers.Flatten()(inputs))))
    with pytest.raises(ValueError, match="softmax.*logits are expected"):
        export_lib.export_saved_model(layer_softmax, str(tmp_path / "a"))
    with pytest.raises(ValueError, match="outputs probabilities"):
        export_lib.export_saved_model(op_softmax, str(tmp_path / "b"))
    assert not os.listdir(tmp_path)


class SubclassedStudent(keras.Model):
    def __init__(self):
        super().__init__()
        self.flatten = keras.layers.Flatten()
        self.dense = keras.layers.Dense(4)

    def call(self, images):
        return self.dense(self.flatten(images))


def test_a_subclassed_model_is_exported_given_its_image_shape(raw_images, tmp_path, seeded):
    model = SubclassedStudent()
    model(raw_images)
    with pytest.raises(ValueError, match=r"records its input shape.*Pass the shape of one "
                                         r"image, e\.g\. export_saved_model\(model, path, "
                                         r"image_shape="):
        export_lib.export_saved_model(model, str(tmp_path / "saved_model"))
    path = export_lib.export_saved_model(model, str(tmp_path / "saved_model"),
                                         image_shape=(8, 8, 3))
    loaded = tf.saved_model.load(path)
    np.testing.assert_allclose(loaded.serve(raw_images)["logits"].numpy(),
                               model(raw_images).numpy(), atol=1e-5)


def test_a_destination_that_cannot_be_written_is_one_value_error(model, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    with pytest.raises(ValueError, match=r"its folder .*a_file' is a file"):
        export_lib.export_saved_model(model, str(a_file / "saved_model"))
    with pytest.raises(ValueError, match=r"Cannot write the export to .*a_file/deeper/saved"):
        export_lib.export_saved_model(model, str(a_file / "deeper" / "saved_model"))
    assert a_file.read_text() == "keep me"


def test_a_subclassed_model_that_outputs_probabilities_is_refused(raw_images, tmp_path, seeded):
    class SoftmaxStudent(SubclassedStudent):
        def call(self, images):
            return keras.ops.softmax(super().call(images))

    model = SoftmaxStudent()
    model(raw_images)
    with pytest.raises(ValueError, match="outputs probabilities"):
        export_lib.export_saved_model(model, str(tmp_path / "saved_model"), image_shape=(8, 8, 3))
    assert not os.listdir(tmp_path)


def test_a_full_disk_in_tensorflows_writer_is_an_os_error_and_keeps_the_old_export(
        model, raw_images, tmp_path, monkeypatch):
    # TensorFlow reports it as ResourceExhaustedError, which the tools printed as a traceback.
    path = export_lib.export_saved_model(model, str(tmp_path / "saved_model"))

    def disk_full(obj, export_dir, *args, **kwargs):
        os.makedirs(os.path.join(export_dir, "variables"), exist_ok=True)
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device [Op:SaveV2]")

    monkeypatch.setattr(tf.saved_model, "save", disk_full)
    with pytest.raises(OSError, match=r"Cannot write the SavedModel .*No space left on device"):
        export_lib.export_saved_model(model, path)
    assert os.listdir(tmp_path) == ["saved_model"]
    loaded = tf.saved_model.load(path)
    np.testing.assert_allclose(loaded.serve(raw_images)["logits"].numpy(),
                               model.predict(raw_images, verbose=0), atol=1e-5)


NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress")


def test_class_names_are_stored_and_name_each_images_class(model, raw_images, tmp_path):
    path = export_lib.export_saved_model(model, str(tmp_path / "saved_model"), class_names=NAMES)
    loaded = tf.saved_model.load(path)
    assert [n.decode() for n in loaded.class_names()["class_names"].numpy()] == list(NAMES)
    assert sorted(loaded.signatures) == ["class_names", "serve", "serve_uint8",
                                         "serving_default"]
    outputs = loaded.signatures["serving_default"](images=tf.constant(raw_images))
    expected = model.predict(raw_images, verbose=0).argmax(axis=-1)
    assert [n.decode() for n in outputs["class_name"].numpy()] == [NAMES[i] for i in expected]
    as_uint8 = loaded.serve_uint8(tf.constant(raw_images.astype(np.uint8)))
    assert as_uint8["class_name"].shape == (len(raw_images),)
    assert export_lib.ServingModel(path).class_names == NAMES


def test_without_class_names_the_export_has_no_names(model, raw_images, tmp_path):
    path = export_lib.export_saved_model(model, str(tmp_path / "saved_model"))
    loaded = tf.saved_model.load(path)
    assert sorted(loaded.serve(raw_images)) == ["logits", "probabilities"]
    assert not hasattr(loaded, export_lib.CLASS_NAMES_ENDPOINT)
    assert export_lib.ServingModel(path).class_names is None


@pytest.mark.parametrize("names, message", [
    (NAMES[:3], r"one class name per output of the model \(4\)\. Received 3"),
    (NAMES + ("Coat",), r"one class name per output of the model \(4\)\. Received 5"),
    (("a", "b", "a", "c"), r"distinct class names\. Received \['a'\] more than once"),
    (("a", "", "b", "c"), "one non-empty string per class"),
    (("a", 1, "b", "c"), "one non-empty string per class"),
    ((), "one non-empty string per class"),
])
def test_bad_class_names_are_refused_and_nothing_is_written(model, tmp_path, names, message):
    with pytest.raises(ValueError, match=message):
        export_lib.export_saved_model(model, str(tmp_path / "saved_model"), class_names=names)
    assert not os.listdir(tmp_path)
