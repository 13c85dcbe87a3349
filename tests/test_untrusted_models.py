"""Model files from elsewhere: what loading them may run (docs/security.md)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.backend.common import global_state
from keras.src.saving import serialization_lib

from tllm_tf.pipeline import export
from tllm_tf.pipeline import model_io


class _WritesAFile(tf.Module):
    """A SavedModel whose graph writes a file when it is called: code with the caller's rights."""

    def __init__(self, marker):
        super().__init__()
        self.marker = marker

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    def serve(self, x):
        tf.io.write_file(self.marker, "ran\n")
        return tf.matmul(x, tf.ones([4, 3]))


def _saved_model(directory, marker):
    tf.saved_model.save(_WritesAFile(str(marker)), str(directory))
    return directory


def test_unsafe_deserialization_set_elsewhere_does_not_open_a_model_file(tmp_path):
    # A .keras file whose TFSMLayer loads (and runs) an external SavedModel: Keras's safe
    # mode refuses it, but keras.config.enable_unsafe_deserialization() turns that off.
    marker = tmp_path / "ran.txt"
    inputs = keras.Input((4,))
    layer = keras.layers.TFSMLayer(str(_saved_model(tmp_path / "sm", marker)),
                                   call_endpoint="serve")
    keras.Model(inputs, layer(inputs)).save(tmp_path / "tfsm.keras")
    keras.config.enable_unsafe_deserialization()
    try:
        with pytest.raises(model_io.UnsafeModelError, match="Keras's safe mode refuses it"):
            model_io.load_keras_model(tmp_path / "tfsm.keras")
        # The process's own setting is left as it was.
        assert serialization_lib.in_safe_mode() is False
    finally:
        global_state.set_global_attribute("safe_mode_saving", None)  # Keras's default.
    assert not marker.exists()


def test_a_folder_named_like_a_model_file_is_not_run_as_a_saved_model(tmp_path):
    marker = tmp_path / "ran.txt"
    _saved_model(tmp_path / "looks_safe.keras", marker)
    for spelling in ("looks_safe.keras", "looks_safe.keras/", "looks_safe.keras/.",
                     "./looks_safe.keras//"):
        with pytest.raises(ValueError, match="is a folder, not a .keras file"):
            export.ServingModel(os.path.join(tmp_path, spelling))
    os.rename(tmp_path / "looks_safe.keras", tmp_path / "looks_safe.KERAS")
    with pytest.raises(ValueError, match="is a folder, not a .keras file"):
        export.ServingModel(tmp_path / "looks_safe.KERAS")
    os.rename(tmp_path / "looks_safe.KERAS", tmp_path / "looks_safe.keras")
    assert not marker.exists()
    # The same SavedModel under its own name is one (the caller's choice to trust it).
    os.rename(tmp_path / "looks_safe.keras", tmp_path / "saved_model")
    served = export.ServingModel(tmp_path / "saved_model")
    np.testing.assert_allclose(served(np.ones((1, 4), np.float32)), [[4.0] * 3])


@pytest.mark.parametrize("version, refused", [
    ("3.8.0", True), ("3.13.2", True), ("3.14.0", False), ("3.15.1", False), ("4.0.0rc1", False)])
def test_a_keras_whose_safe_mode_can_be_bypassed_loads_no_file(tmp_path, monkeypatch, version,
                                                               refused):
    path = str(tmp_path / "model.keras")
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]).save(path)
    monkeypatch.setattr(keras, "__version__", version)
    if refused:
        with pytest.raises(model_io.UnsafeModelError,
                           match=rf"with Keras {version}: .*pip install 'keras>=3\.14'"):
            model_io.load_keras_model(path, role="teacher")
    else:
        assert model_io.load_keras_model(path, role="teacher").output_shape == (None, 3)
