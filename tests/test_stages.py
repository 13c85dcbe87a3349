"""The stage runner: the reference's per-epoch history, stages killed and resumed, the
teacher's precision and store, TensorBoard, mixed labels. The masks the students train with
are in test_stage_masks.py, the held-out checks that judge them in test_stage_checks.py."""

import dataclasses
import glob
import importlib
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tllm_tf
from tllm_tf.pipeline import checkpointing
from tllm_tf.pipeline import epoch_tensorboard
from tllm_tf.pipeline import fitting
from tllm_tf.pipeline import stages
from tllm_tf.pipeline import workdir_files
from tllm_tf import teacher_precision
from conftest import IMAGE_SHAPE
from conftest import KillAtEpochEnd as _KillAtEpochEnd
from conftest import Killed as _Killed
from conftest import NUM_CLASSES
from conftest import make_mlp
from tllm_tf.pipeline.config import RunConfig


def _log_epochs(path):
    with open(path) as handle:
        return [json.loads(line)["epoch"] for line in handle]


def test_resumed_reference_stage_keeps_every_epochs_accuracy(tmp_path, monkeypatch):
    config = RunConfig(workdir=str(tmp_path / "run"), stage="reference", num_train=200,
                       epochs=3, verbose=0)
    stage_dir = tmp_path / "run" / "reference"
    log = str(stage_dir / workdir_files.REFERENCE_LOG_FILE)
    original = fitting.stage_callbacks

    def killed_before_the_checkpoint(stage_dir, chief, start_epoch):
        callbacks = original(stage_dir, chief, start_epoch)
        return callbacks[:-1] + [_KillAtEpochEnd(1), callbacks[-1]]

    monkeypatch.setattr(fitting, "stage_callbacks", killed_before_the_checkpoint)
    with pytest.raises(_Killed):
        stages.run(config)
    # Epoch 2 was logged but not checkpointed: the resumed run repeats it.
    assert checkpointing.saved_epoch(str(stage_dir / "checkpoint")) == 1
    assert _log_epochs(log) == [1, 2]
    with open(log) as handle:
        first_epoch = json.loads(handle.readline())["per_class_accuracy"]

    monkeypatch.undo()
    stages.run(config)
    assert _log_epochs(log) == [1, 2, 3]
    path = str(stage_dir / workdir_files.REFERENCE_FILE)
    history = tllm_tf.load_reference_history(path)
    assert history.shape == (3, 10) and not np.isnan(history).any()
    np.testing.assert_array_equal(history[0], np.array(first_epoch, dtype=float))
    np.testing.assert_array_equal(history[-1], tllm_tf.load_reference(path))


def test_a_reference_killed_before_its_last_file_resumes_without_training_again(
        tmp_path, monkeypatch, capsys):
    # The checkpoint was dropped before reference.json was written: a kill between
    # the two trained the reference again from its first epoch.
    config = RunConfig(workdir=str(tmp_path / "run"), stage="reference", num_train=200,
                       epochs=2, verbose=1)
    stage_dir = tmp_path / "run" / "reference"

    def killed(*args, **kwargs):
        raise _Killed()

    monkeypatch.setattr(stages.reference_lib, "save_reference", killed)
    with pytest.raises(_Killed):
        stages.run(config)
    assert (stage_dir / workdir_files.MODEL_FILE).exists()
    assert checkpointing.saved_epoch(str(stage_dir / workdir_files.CHECKPOINT_DIR)) == 2
    monkeypatch.undo()
    capsys.readouterr()
    stages.run(config)
    assert f"reference: mlp_8 on labels, all 2 epochs done, finishing in {stage_dir}" in (
        capsys.readouterr().out)
    assert sorted(os.listdir(stage_dir)) == sorted([
        workdir_files.MODEL_FILE, workdir_files.REFERENCE_FILE, workdir_files.PER_CLASS_FILE,
        workdir_files.HISTORY_FILE, workdir_files.REFERENCE_LOG_FILE,
        "held_out_predictions.npz", workdir_files.PRIOR_OFFSETS_FILE,
        workdir_files.TENSORBOARD_DIR])


def test_a_student_killed_in_its_export_is_unfinished_for_the_report_and_resumes(
        tmp_path, monkeypatch):
    from tllm_tf.analysis import workdir_results
    config = RunConfig(workdir=str(tmp_path / "run"), num_train=200, teacher_model="cnn_tiny",
                       epochs=2, students=("distilled",), verbose=0)
    stage_dir = tmp_path / "run" / "student_kd"
    export = stages.export_lib.export_saved_model

    def killed_in_the_export(model, path, **kwargs):
        export(model, path, **kwargs)
        # What a SIGKILL leaves where the Python exception cleans up: its temporary.
        os.mkdir(os.path.join(os.path.dirname(path), ".saved_model.abcd1234.tmp"))
        raise _Killed()

    monkeypatch.setattr(stages.export_lib, "export_saved_model", killed_in_the_export)
    with pytest.raises(_Killed):
        stages.run(config)
    # The report and the runner agree: not finished (the first counted it finished).
    assert not (stage_dir / workdir_files.PER_CLASS_FILE).exists()
    assert workdir_results.load_results(config.workdir)["unfinished"] == ["student_kd"]
    monkeypatch.undo()
    stages.run(config)
    assert workdir_results.load_results(config.workdir)["unfinished"] == []
    assert sorted(os.listdir(stage_dir)) == sorted([
        workdir_files.MODEL_FILE, workdir_files.PER_CLASS_FILE, workdir_files.HISTORY_FILE,
        workdir_files.SAVED_MODEL_DIR, workdir_files.REFERENCE_CHECK_FILE,
        workdir_files.PRIOR_OFFSETS_FILE, workdir_files.TENSORBOARD_DIR])
    # The export names its classes, in the data set's order.
    served = stages.export_lib.ServingModel(str(stage_dir / workdir_files.SAVED_MODEL_DIR))
    assert served.class_names == tuple(str(digit) for digit in range(10))


def test_epoch_matched_refuses_a_reference_without_history_before_training(tmp_path):
    reference_path = str(tmp_path / "old_reference.json")
    tllm_tf.save_reference(reference_path, np.full(10, 0.9))
    config = RunConfig(workdir=str(tmp_path / "run"), students=("tllm",), num_train=200,
                       teacher_model="cnn_tiny", epochs=1, verbose=0,
                       reference_path=reference_path, epoch_matched=True)
    with pytest.raises(ValueError, match=(
            r"--epoch_matched needs .* has only the final one.*"
            r"Re-run the reference stage.*or drop --epoch_matched")):
        stages.run(config)
    assert not os.path.exists(tmp_path / "run" / "teacher")


def test_teacher_dtype_reaches_the_distiller_and_is_not_a_resumable_change(tmp_path, monkeypatch):
    copied_to = []
    real_copy = teacher_precision.inference_copy

    def recording_copy(teacher, dtype):
        copied_to.append(dtype)
        return real_copy(teacher, dtype)

    monkeypatch.setattr(teacher_precision, "inference_copy", recording_copy)
    config = RunConfig(workdir=str(tmp_path / "run"), students=("distilled",), num_train=200,
                       teacher_model="cnn_tiny", epochs=1, verbose=0, teacher_dtype="bfloat16")
    stages.run(config)
    assert copied_to == ["bfloat16"]
    assert os.path.exists(tmp_path / "run" / "student_kd" / workdir_files.MODEL_FILE)

    float32_teacher = dataclasses.replace(config, teacher_dtype=None)
    with pytest.raises(ValueError, match=r"--teacher_dtype: 'bfloat16' in the workdir, None now"):
        stages.run(float32_teacher)


def _student_weights(workdir):
    model = keras.models.load_model(os.path.join(workdir, "student_kd", workdir_files.MODEL_FILE))
    return model.get_weights()


def test_teacher_store_trains_like_the_live_teacher_resumes_and_refuses_other_views(
        tmp_path, monkeypatch):
    # No reference's fallback: it could hand both students the reference's weights.
    live = RunConfig(workdir=str(tmp_path / "live"), students=("distilled",), num_train=200,
                     teacher_model="cnn_tiny", student_model="mlp_4", epochs=2,
                     teacher_epochs=1, reference_fallback=False, verbose=0)
    stages.run(live)
    store = tmp_path / "store"
    stored = dataclasses.replace(
        live, workdir=str(tmp_path / "stored"), stage="student", teacher_store=str(store),
        teacher_path=str(tmp_path / "live" / "teacher" / workdir_files.MODEL_FILE))
    # --stage=store builds every epoch's logits and trains nothing; the student stage reads them.
    stages.run(dataclasses.replace(stored, stage="store"))
    assert sorted(path.name for path in store.glob("epoch_*.json")) == [
        "epoch_00000.json", "epoch_00001.json"]
    assert os.listdir(stored.workdir) == [workdir_files.CONFIG_FILE]
    prebuilt = {path: path.stat().st_mtime_ns for path in store.iterdir()}
    stages.run(stored)
    assert {path: path.stat().st_mtime_ns for path in store.iterdir()} == prebuilt
    # float16 logits (the store's default) move the updates by their rounding only (measured:
    # at most 5e-7 on weights up to 0.65), and by that much: the stored logits were used.
    pairs = list(zip(_student_weights(stored.workdir), _student_weights(live.workdir)))
    for from_store, from_teacher in pairs:
        np.testing.assert_allclose(from_store, from_teacher, rtol=0, atol=1e-5)
    assert any(not np.array_equal(from_store, from_teacher) for from_store, from_teacher in pairs)

    # Killed after its first epoch, a run resumes on the same store, which it does not rebuild.
    built = {path: path.stat().st_mtime_ns for path in store.iterdir()}
    killed = dataclasses.replace(stored, workdir=str(tmp_path / "killed"))
    original = fitting.stage_callbacks
    monkeypatch.setattr(fitting, "stage_callbacks",
                        lambda *args: original(*args) + [_KillAtEpochEnd(0)])
    with pytest.raises(_Killed):
        stages.run(killed)
    monkeypatch.undo()
    stages.run(killed)
    assert {path: path.stat().st_mtime_ns for path in store.iterdir()} == built
    for resumed, uninterrupted in zip(_student_weights(killed.workdir),
                                      _student_weights(stored.workdir)):
        np.testing.assert_allclose(resumed, uninterrupted, atol=1e-6)

    # Other views (another batch size) are refused, naming the field.
    with pytest.raises(ValueError, match=r"batch_size"):
        stages.run(dataclasses.replace(stored, workdir=str(tmp_path / "other"), batch_size=32))


def _fit_with_the_stage_callbacks(stage_dir, epochs=2, steps=4):
    keras.utils.set_random_seed(0)
    model = make_mlp("tensorboard_mlp")
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    images = np.random.default_rng(0).normal(size=(8 * steps, *IMAGE_SHAPE)).astype("float32")
    labels = np.arange(8 * steps) % NUM_CLASSES
    return model.fit(images, labels, batch_size=8, epochs=epochs, verbose=0,
                     callbacks=fitting.stage_callbacks(str(stage_dir), True, 0)).history


def test_the_stage_tensorboard_writes_no_summary_at_each_batch(tmp_path, monkeypatch):
    # Keras's own callback calls tf.summary.scalar for every log at every batch,
    # which writes nothing without a default writer but cost 1.5x a tiny KD step.
    # The module the callback imports (importing it can replace `tf.summary`).
    summary = importlib.import_module("tensorflow.summary")
    tags = []
    scalar = summary.scalar

    def recording_scalar(name, *args, **kwargs):
        tags.append(name)
        return scalar(name, *args, **kwargs)

    monkeypatch.setattr(summary, "scalar", recording_scalar)
    _fit_with_the_stage_callbacks(tmp_path / "stage", epochs=2, steps=4)
    assert sorted(tags) == sorted(
        2 * ["epoch_loss", "epoch_accuracy", "epoch_learning_rate"])


def test_the_stage_tensorboard_still_writes_the_epoch_scalars_and_the_model(tmp_path):
    history = _fit_with_the_stage_callbacks(tmp_path / "stage", epochs=2, steps=4)
    scalars, models = {}, []
    for path in glob.glob(str(tmp_path / "stage" / workdir_files.TENSORBOARD_DIR / "train" / "*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "keras":  # The model's summary, a text.
                    models.append(event.step)
                else:
                    scalars.setdefault(value.tag, {})[event.step] = float(
                        tf.make_ndarray(value.tensor))
    assert models == [0]
    for name in ("loss", "accuracy"):
        assert scalars[f"epoch_{name}"] == pytest.approx(dict(enumerate(history[name])))
    assert sorted(scalars["epoch_learning_rate"]) == [0, 1]
    assert not [tag for tag in scalars if tag.startswith("batch_")]


def test_the_stage_tensorboard_keeps_keras_hooks_where_their_private_names_are_missing(
        tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(keras.callbacks.TensorBoard, "on_train_batch_begin",
                        lambda self, batch, logs=None: calls.append(("begin", batch)))
    monkeypatch.setattr(keras.callbacks.TensorBoard, "on_train_batch_end",
                        lambda self, batch, logs=None: calls.append(("end", batch)))
    callback = epoch_tensorboard.EpochTensorBoard(str(tmp_path))
    assert callback._epoch_only  # This Keras has them: the epoch-only hooks.
    callback._epoch_only = False  # As a Keras without them would leave it.
    callback.on_train_batch_begin(3)
    callback.on_train_batch_end(3, {"loss": 1.0})
    assert calls == [("begin", 3), ("end", 3)]


def test_every_stage_trains_on_mixed_soft_labels_under_mixup(tmp_path, monkeypatch):
    seen = []
    original = fitting.train_batches

    def recorded(data, config, start_epoch, epochs, one_hot=False):
        batches = original(data, config, start_epoch, epochs, one_hot)
        seen.append(next(iter(batches))[1].numpy())
        return batches

    monkeypatch.setattr(fitting, "train_batches", recorded)
    stages.run(RunConfig(workdir=str(tmp_path / "run"), students=("distilled",), num_train=200,
                         epochs=1, teacher_epochs=1, mixup=0.4, verbose=0))
    assert len(seen) == 3  # The teacher, the label-only reference, the distilled student.
    for labels in seen:
        # Mixed: a probability vector a row, some rows not one class alone.
        assert labels.ndim == 2 and np.allclose(labels.sum(axis=1), 1.0, atol=1e-5)
        assert (labels.max(axis=1) < 0.99).any()


def test_students_without_the_workdirs_teacher_are_refused_before_anything_is_written(tmp_path):
    # The student stage found the teacher missing after it had made its folder, which then
    # made the workdir's run look begun with a teacher since gone: its teacher's resume refused.
    config = RunConfig(workdir=str(tmp_path / "run"), stage="student", num_train=200,
                       teacher_model="cnn_tiny", epochs=1, students=("distilled",),
                       reference_fallback=False, verbose=0)
    with pytest.raises(ValueError, match=r"--stage=student needs the teacher this workdir "
                                         r"trains, and .*teacher/model.keras does not exist"):
        stages.run(config)
    assert not (tmp_path / "run").exists()
    (tmp_path / "run" / "teacher").mkdir(parents=True)  # A teacher still training.
    with pytest.raises(ValueError, match="needs the teacher this workdir trains"):
        stages.run(config)
    assert sorted(os.listdir(tmp_path / "run")) == ["teacher"]
    # Killed while its test split was evaluated: the model file, no test results yet. The
    # students trained on it, and the workdir then refused to finish the teacher.
    (tmp_path / "run" / "teacher" / "model.keras").write_bytes(b"")
    with pytest.raises(ValueError, match=r"teacher/test_per_class.json does not exist \(the "
                                         r"teacher stage has not finished\)"):
        stages.run(config)
    assert sorted(os.listdir(tmp_path / "run")) == ["teacher"]
