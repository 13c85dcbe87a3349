"""The README's bad-input table, row by row, at the level a user meets it."""

import json
import logging
import os

import keras
import numpy as np
import pytest

import tllm_tf
from tllm_tf.pipeline import stage_inputs
from tllm_tf.pipeline.config import RunConfig
from tllm_tf.data import load_digits


@pytest.fixture
def train(zygote):
    """Runs `tools/train.py --flagfile=configs/demo.flags *flags` in a process of its own,
    forked from tests/zygote.py, which has imported TensorFlow: the cost of a refused run."""
    return lambda *flags: zygote.run(
        ["tools/train.py", "--flagfile=configs/demo.flags", *flags], timeout=120)


@pytest.mark.parametrize("flags, message", [
    (["--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
    (["--masked_class_policy=zero"], "value should be one of"),
    (["--holdout_fraction=1.5"], "holdout_fraction must be in (0, 1)"),
    (["--epochs=0"], "epochs must be > 0"),
    (["--patience=0"], "patience must be >= 1. Received: 0"),
    (["--students=tllm_refit"], "tllm_refit trains with the mask the tllm student ends with: "
                                "list tllm before it (--students=tllm,tllm_refit)"),
    (["--refit_policy=zero"], "value should be one of"),
    (["--dataset=no_such_dataset_name"], "no_such_dataset_name"),
    # tfds' suggestions never named the sets with a loader of their own.
    (["--dataset=digts", "--num_train=200"], "Unknown data set 'digts'. Did you mean 'digits'?"),
])
def test_bad_flags_are_refused_before_anything_is_written(train, tmp_path, flags, message):
    result = train(f"--workdir={tmp_path / 'run'}", *flags)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "run")  # Not even an empty workdir is left.


def test_data_set_not_on_this_machine_says_how_to_provide_it(train, tmp_path):
    result = train(f"--workdir={tmp_path / 'run'}", "--dataset=cifar100",
                    f"--data_dir={tmp_path / 'empty'}")
    assert result.returncode == 1
    assert "Error: " in result.stderr and "flags:" not in result.stderr  # Not the help.
    assert "--data_dir" in result.stderr and "tfds build" in result.stderr
    assert "Traceback" not in result.stderr


def _tiny_teacher(tmp_path, num_classes, image_shape):
    inputs = keras.Input(image_shape)
    outputs = keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs))
    path = str(tmp_path / "teacher.keras")
    keras.Model(inputs, outputs).save(path)
    return path


@pytest.mark.parametrize("num_classes, image_shape, message", [
    (7, (8, 8, 1), "outputs 7 classes but the data set 'digits' has 10"),
    (10, (32, 32, 3), r"takes images of shape \(32, 32, 3\) but the data set 'digits' has \(8, 8, 1\)"),
])
def test_teacher_for_another_data_set_is_refused(tmp_path, num_classes, image_shape, message):
    path = _tiny_teacher(tmp_path, num_classes, image_shape)
    with pytest.raises(ValueError, match=message):
        stage_inputs.load_teacher(path, load_digits())


def test_held_out_class_without_samples_is_reported(caplog):
    names = [f"class_{c}" for c in range(10)]
    with caplog.at_level(logging.WARNING):
        stage_inputs.warn_about_empty_held_out_classes(np.array([5] * 8 + [0, 0]), names)
    assert "class_8, class_9" in caplog.text and "--holdout_fraction" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        stage_inputs.warn_about_empty_held_out_classes(np.array([5] * 10), names)
    assert not caplog.text


def test_workdir_of_another_configuration_is_refused_naming_the_flags(train, tmp_path):
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as handle:
        handle.write(RunConfig(workdir=workdir, temperature=2.0).to_json())
    result = train(f"--workdir={workdir}", "--temperature=4")
    assert result.returncode != 0
    assert "--temperature: 2.0 in the workdir, 4.0 now" in result.stderr
    with open(os.path.join(workdir, "config.json")) as handle:
        assert json.load(handle)["temperature"] == 2.0


def _refused_before_training(result, workdir):
    """Asserts that the run failed without a traceback and left no workdir; returns its stderr."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert not os.path.exists(workdir)  # Nor the config.json of a run that never trained.
    assert "Writing to" not in result.stdout  # Nor a word of writing there.
    return result.stderr


def test_epoch_matched_with_a_reference_without_history_says_how_to_get_one(train, tmp_path):
    reference_path = str(tmp_path / "old_reference.json")
    tllm_tf.save_reference(reference_path, np.full(10, 0.9))
    result = train(f"--workdir={tmp_path / 'run'}", f"--reference_path={reference_path}",
                    "--epoch_matched")
    message = _refused_before_training(result, tmp_path / "run")
    assert "--epoch_matched needs the reference's held-out accuracy after every" in message
    assert "drop --epoch_matched" in message


def test_a_reference_without_its_model_is_refused_before_training_by_default(train, tmp_path):
    reference_path = str(tmp_path / "accuracies_only" / "reference.json")
    os.makedirs(os.path.dirname(reference_path))
    tllm_tf.save_reference(reference_path, np.full(10, 0.9))
    # The reference's fallback (the default) needs the reference's weights.
    result = train(f"--workdir={tmp_path / 'run'}", f"--reference_path={reference_path}",
                   "--noepoch_matched")
    message = _refused_before_training(result, tmp_path / "run")
    assert "there is no model.keras beside" in message and "--noreference_fallback" in message


def test_masked_classes_from_a_run_that_has_not_finished_is_refused_before_training(
        train, tmp_path):
    first = tmp_path / "first"
    (first / "student_tllm").mkdir(parents=True)  # Started, but its tllm student never finished.
    result = train(f"--workdir={tmp_path / 'second'}", f"--masked_classes_from={first}")
    message = _refused_before_training(result, tmp_path / "second")
    assert f"--masked_classes_from='{first}' has no finished tllm student" in message
    assert "that has trained to the end" in message


# Each of these failed only once a stage had trained, and then the workdir's config.json held
# the bad flag, so the corrected command was refused as another configuration.
@pytest.mark.parametrize("flags, message", [
    (["--masked_classes=10"], "--masked_classes=10 names classes [10] that the data set "
                              "'digits' does not have: its classes are 0 to 9"),
    (["--image_size=16"], "--image_size=16 with --augmentation=none: Augmentation 'none' keeps "
                          "the input size"),
    (["--reference_path=/nonexistent/reference.json", "--noreference_fallback"],
     "--reference_path='/nonexistent/reference.json' does not exist"),
])
def test_flags_that_failed_after_training_are_refused_before_it(train, tmp_path, flags, message):
    result = train(f"--workdir={tmp_path / 'run'}", *flags)
    assert message in _refused_before_training(result, tmp_path / "run")


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"not a zip archive", "it is not a Keras model file"),
])
def test_a_teacher_path_that_cannot_be_loaded_is_refused_before_the_reference_trains(
        train, tmp_path, content, message):
    teacher = tmp_path / "teacher.keras"
    if content is not None:
        teacher.write_bytes(content)
    result = train(f"--workdir={tmp_path / 'run'}", f"--teacher_path={teacher}")
    stderr = _refused_before_training(result, tmp_path / "run")
    assert message in stderr and str(teacher) in stderr


def test_a_predictions_file_cut_short_says_to_delete_the_reference_stage(tmp_path):
    path = tmp_path / "held_out_predictions.npz"
    tllm_tf.save_predictions(str(path), np.array([0, 1, 1]), np.ones((2, 3), bool))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"is not a tllm_tf predictions file .*cut short. "
                                         r"Delete the reference stage's directory"):
        tllm_tf.load_predictions(str(path))


def test_predictions_that_are_not_a_regular_file_are_refused_unread(tmp_path):
    from conftest import within
    from tllm_tf import held_out_predictions

    os.mkfifo(tmp_path / "held_out_predictions.npz")
    os.mkfifo(tmp_path / "epoch-1.npy")
    with within(20):
        with pytest.raises(ValueError, match=r"are not a regular file.*Delete the reference"):
            tllm_tf.load_predictions(str(tmp_path / "held_out_predictions.npz"))
        with pytest.raises(ValueError, match=r"epoch-1.npy' is not a regular file"):
            held_out_predictions.read_rows(str(tmp_path), 1)


def test_a_damaged_reference_model_is_refused_before_the_students_train(train, tmp_path):
    workdir = tmp_path / "run"
    tiny = ("--epochs=2", "--lr_decay_epochs=1", "--warmup_epochs=0", "--teacher_epochs=1")
    assert train(f"--workdir={workdir}", "--stage=reference", *tiny).returncode == 0
    model = workdir / "reference" / "model.keras"
    model.write_bytes(model.read_bytes()[:300])  # Cut short, as by a full disk.
    result = train(f"--workdir={workdir}", *tiny)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"Could not load the reference '{model}'" in result.stderr
    assert not (workdir / "student_kd").exists()


def test_an_empty_held_out_split_is_refused_before_the_teacher_trains(train, tmp_path):
    result = train(f"--workdir={tmp_path / 'run'}", "--holdout_fraction=0.0001")
    message = _refused_before_training(result, tmp_path / "run")
    assert "--holdout_fraction=0.0001 holds out no image of 'digits'" in message
