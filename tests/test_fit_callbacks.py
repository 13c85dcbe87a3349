"""Tests of tllm_tf.fit_callbacks: the order and warnings of Distiller.fit's callbacks."""

import logging

import keras
import numpy as np
import pytest

import tllm_tf
from conftest import IMAGE_SHAPE, make_mlp
from tllm_tf import fit_callbacks


@pytest.fixture
def held_out():
    rng = np.random.default_rng(3)
    x = rng.random((16,) + IMAGE_SHAPE, dtype=np.float32)
    return x, np.arange(16, dtype=np.int32) % 4


def _distiller():
    keras.utils.set_random_seed(0)
    distiller = tllm_tf.Distiller(make_mlp("student"), make_mlp("teacher", width=16))
    distiller.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=False)
    return distiller


def _callback(held_out):
    # The mask changes from look to look: a lost update shows.
    return tllm_tf.UndistillableClassCallback(
        held_out, reference=[0.6, 0.5, 0.4, 0.3], rule="unpaired", warmup_epochs=0,
        sticky=False, patience=1)


class _StopAfterSecondEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("interrupted")


def _state(distiller):
    return [keras.ops.convert_to_numpy(v) for v in
            (distiller.class_mask, distiller.identification_state, *distiller.student.weights)]


def test_backup_listed_first_still_saves_the_epochs_mask_update(tiny_data, held_out, tmp_path):
    x, y = tiny_data
    whole = _distiller()
    masks = []
    whole.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0, callbacks=[
        _callback(held_out), keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: masks.append(whole.undistillable_classes))])
    assert len({tuple(mask) for mask in masks}) > 1
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        _distiller().fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0, callbacks=[
            keras.callbacks.BackupAndRestore(backup), _callback(held_out),
            _StopAfterSecondEpoch()])
    resumed = _distiller()
    resumed.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0, callbacks=[
        keras.callbacks.BackupAndRestore(backup), _callback(held_out)])
    for got, expected in zip(_state(resumed), _state(whole)):
        np.testing.assert_array_equal(got, expected)


def test_mask_updaters_run_first_and_the_rest_keep_their_order(held_out):
    others = [keras.callbacks.BackupAndRestore("/tmp/unused"), keras.callbacks.History()]
    updater = _callback(held_out)
    assert fit_callbacks.arrange([others[0], updater, others[1]]) == [updater] + others
    assert fit_callbacks.arrange(None) == []
    added, = fit_callbacks.arrange(None, teacher_dtype="float16")
    assert isinstance(added, fit_callbacks.WarnOnTeacherOverflow)


@pytest.mark.parametrize("monitor, warned", [("val_loss", True), ("loss", True),
                                             ("val_accuracy", False),
                                             ("val_student_loss", False)])
def test_a_monitor_of_the_objective_is_warned_about(held_out, caplog, monitor, warned):
    stopping = keras.callbacks.EarlyStopping(monitor=monitor)
    with caplog.at_level(logging.WARNING):
        fit_callbacks.arrange([stopping, _callback(held_out)])
        fit_callbacks.arrange([stopping])  # without a mask updater: no warning
    messages = [r.getMessage() for r in caplog.records if "monitors" in r.getMessage()]
    assert len(messages) == int(warned)
    if warned:
        assert f"EarlyStopping monitors '{monitor}'" in messages[0]
        assert monitor.replace("loss", "student_loss") in messages[0]


def test_a_callback_list_is_arranged_in_place_as_keras_fit_takes_it(held_out):
    history, updater = keras.callbacks.History(), _callback(held_out)
    given = keras.callbacks.CallbackList([history, updater])
    assert fit_callbacks.arrange(given) is given
    assert given.callbacks == [updater, history]
    # Reused for more fits with a float16 teacher: one overflow warner, not one a fit.
    for _ in range(3):
        fit_callbacks.arrange(given, teacher_dtype="float16")
    assert [type(callback) for callback in given.callbacks] == [
        type(updater), keras.callbacks.History, fit_callbacks.WarnOnTeacherOverflow]


def test_fit_takes_a_callback_list(tiny_data):
    distiller = _distiller()
    history = distiller.fit(*tiny_data, epochs=1, verbose=0, callbacks=keras.callbacks.CallbackList(
        [keras.callbacks.History()], add_history=True, model=distiller))
    assert "loss" in history.history
