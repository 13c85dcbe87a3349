"""The stage runner: the reference's per-epoch history and the epoch-matched checks."""

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
from tllm_tf import held_out_check
from tllm_tf.pipeline import checkpointing
from tllm_tf.pipeline import epoch_tensorboard
from tllm_tf.pipeline import fitting
from tllm_tf.pipeline import stage_inputs
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

    def killed_in_the_export(model, path):
        export(model, path)
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


def test_masked_classes_reach_the_tllm_student_and_stay_masked(tmp_path):
    config = RunConfig(workdir=str(tmp_path / "run"), students=("tllm",), num_train=200,
                       teacher_model="cnn_tiny", epochs=2, verbose=0, masked_classes=(3, 7))
    stages.run(config)
    with open(tmp_path / "run" / "student_tllm" / workdir_files.MASK_LOG_FILE) as handle:
        (update,) = [json.loads(line) for line in handle]  # One update, after the warm-up.
    assert update["epoch"] == 2
    assert update["class_mask"][3] == update["class_mask"][7] == 0.0


def test_a_second_run_trains_with_the_first_runs_mask_and_makes_no_update(tmp_path, capsys):
    """The two-run recipe (docs/study.md): the first run's teacher, reference and final mask."""
    first = RunConfig(workdir=str(tmp_path / "first"), students=("tllm",), num_train=200,
                      teacher_model="cnn_tiny", epochs=2, verbose=0, warmup_epochs=0)
    stages.run(first)
    # What the first run masked at its end, as its mask log says (maybe none on this tiny run).
    with open(tmp_path / "first" / "student_tllm" / workdir_files.MASK_LOG_FILE) as handle:
        last_mask = [json.loads(line) for line in handle][-1]["class_mask"]
    first_masked = {c for c, m in enumerate(last_mask) if m == 0.0}
    second = dataclasses.replace(
        first, workdir=str(tmp_path / "second"), masked_classes=(3,),
        masked_classes_from=first.workdir, verbose=1,
        masked_class_policy="soft_label", warmup_epochs=first.epochs,
        teacher_path=str(tmp_path / "first" / "teacher" / workdir_files.MODEL_FILE),
        reference_path=str(tmp_path / "first" / "reference" / workdir_files.REFERENCE_FILE))
    stages.run(second)
    assert f"--masked_classes_from={first.workdir}: it masked" in capsys.readouterr().out
    with open(tmp_path / "second" / workdir_files.CONFIG_FILE) as handle:
        recorded = json.load(handle)
    assert recorded["masked_classes"] == sorted(first_masked | {3})
    stage_dir = tmp_path / "second" / "student_tllm"
    assert os.path.exists(stage_dir / workdir_files.MODEL_FILE)
    assert not os.path.exists(tmp_path / "second" / "teacher")  # Reused, not trained again.
    log = stage_dir / workdir_files.MASK_LOG_FILE
    assert not os.path.exists(log) or not log.read_text().strip()  # No update of its own.
    stages.run(second)  # Run again: resolved the same way, so the workdir takes it as its own.


def test_the_refit_student_is_the_two_run_recipes_second_run_in_one_run(tmp_path, capsys):
    """--students=tllm,tllm_refit trains, bit for bit, the student the second command of the
    two-run recipe trains (the study measured that recipe: docs/study.md)."""
    one = RunConfig(workdir=str(tmp_path / "one"), students=("tllm", "tllm_refit"),
                    num_train=200, teacher_model="cnn_tiny", epochs=2, warmup_epochs=0,
                    masked_classes=(3,), refit_fallback=False)
    stages.run(one)
    final = stage_inputs.read_final_mask(one.workdir, 10)
    assert 3 in final  # Masked from the first step, so in the final mask too.
    assert (f"student_tllm_refit: the tllm student ended with {len(final)} classes masked "
            f"({', '.join(str(c) for c in final)}); masked here from the first step under "
            "soft_label") in capsys.readouterr().out
    refit_dir = tmp_path / "one" / "student_tllm_refit"
    log = refit_dir / workdir_files.MASK_LOG_FILE
    assert not os.path.exists(log) or not log.read_text().strip()  # No update of its own.
    assert os.path.isdir(refit_dir / workdir_files.SAVED_MODEL_DIR)
    second = dataclasses.replace(
        one, workdir=str(tmp_path / "second"), stage="student", students=("tllm",),
        masked_classes=(), masked_classes_from=one.workdir, masked_class_policy="soft_label",
        warmup_epochs=one.epochs, verbose=0,
        teacher_path=str(tmp_path / "one" / "teacher" / workdir_files.MODEL_FILE),
        reference_path=str(tmp_path / "one" / "reference" / workdir_files.REFERENCE_FILE))
    stages.run(second)
    refit, recipe = (keras.models.load_model(os.path.join(stage_dir, workdir_files.MODEL_FILE))
                     for stage_dir in (refit_dir, tmp_path / "second" / "student_tllm"))
    for from_refit, from_recipe in zip(refit.get_weights(), recipe.get_weights(), strict=True):
        np.testing.assert_array_equal(from_refit, from_recipe)
    tllm = keras.models.load_model(tmp_path / "one" / "student_tllm" / workdir_files.MODEL_FILE)
    assert any(not np.array_equal(a, b) for a, b in zip(refit.get_weights(), tllm.get_weights()))


def _students_only(finished, workdir):
    """`finished`'s student stage in another workdir, from `finished`'s teacher and reference."""
    return dataclasses.replace(
        finished, workdir=str(workdir), stage="student",
        teacher_path=os.path.join(finished.workdir, "teacher", workdir_files.MODEL_FILE),
        reference_path=os.path.join(finished.workdir, "reference", workdir_files.REFERENCE_FILE))


def test_a_killed_refit_resumes_with_the_same_mask(tmp_path, monkeypatch):
    uninterrupted = RunConfig(workdir=str(tmp_path / "whole"), num_train=200,
                              teacher_model="cnn_tiny", epochs=2, warmup_epochs=0,
                              masked_classes=(3,), verbose=0)
    assert uninterrupted.students == ("tllm", "tllm_refit")  # The default.
    stages.run(uninterrupted)
    killed = _students_only(uninterrupted, tmp_path / "killed")
    original = fitting.stage_callbacks

    def killed_in_the_refit(stage_dir, chief, start_epoch):
        callbacks = original(stage_dir, chief, start_epoch)
        return callbacks + ([_KillAtEpochEnd(0)] if stage_dir.endswith("refit") else [])

    monkeypatch.setattr(fitting, "stage_callbacks", killed_in_the_refit)
    with pytest.raises(_Killed):
        stages.run(killed)
    monkeypatch.undo()
    stages.run(killed)
    resumed, whole = (keras.models.load_model(os.path.join(
        workdir, "student_tllm_refit", workdir_files.MODEL_FILE)).get_weights()
        for workdir in (killed.workdir, uninterrupted.workdir))
    for from_resumed, from_whole in zip(resumed, whole, strict=True):
        np.testing.assert_allclose(from_resumed, from_whole, atol=1e-6)


def _refit_run(tmp_path, **changes):
    return RunConfig(workdir=str(tmp_path / "run"), num_train=200, teacher_model="cnn_tiny",
                     epochs=2, warmup_epochs=0, masked_classes=(3,), **changes)


def _stage_weights(workdir, student):
    return keras.models.load_model(
        os.path.join(workdir, workdir_files.student_stage(student), workdir_files.MODEL_FILE),
        compile=False).get_weights()


def _read(path):
    """A JSON file of the workdir."""
    with open(path) as handle:
        return json.load(handle)


def _test_accuracy(model, config):
    """Overall and per-class accuracy of `model` on the test split, counted here image by image."""
    data = stages.build.load_data(config)
    correct, total = np.zeros(data.num_classes), np.zeros(data.num_classes)
    for images, labels in stages.build.eval_batches(data.test, config):
        right = np.argmax(model(images, training=False), axis=-1) == labels.numpy()
        np.add.at(correct, labels.numpy(), right)
        np.add.at(total, labels.numpy(), 1)
    with np.errstate(invalid="ignore"):
        return correct.sum() / total.sum(), correct / total


def _own_model(config, stage_dir, check_file, own_model_file):
    """The weights of the student a check replaced, once its record is checked against them.

    The check's JSON names the saved model, whose test accuracy (evaluated here
    on its own) must be the one recorded.
    """
    check = _read(stage_dir / check_file)
    own = keras.models.load_model(stage_dir / own_model_file, compile=False)
    accuracy, per_class = _test_accuracy(own, config)
    assert check["own_model_file"] == own_model_file
    assert check["own_test_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    np.testing.assert_allclose(
        [np.nan if a is None else a for a in check["own_per_class_accuracy"]], per_class)
    return own.get_weights()


def _no_own_model(stage_dir, check_file, own_model_file):
    """A check that kept the student saved no model and recorded none."""
    assert not os.path.exists(stage_dir / own_model_file)
    assert not [key for key in _read(stage_dir / check_file) if key.startswith("own_")]


def test_the_refit_is_judged_against_the_tllm_student_on_held_out_images(tmp_path, capsys):
    config = _refit_run(tmp_path, reference_fallback=False)
    assert config.refit_fallback  # The default.
    stages.run(config)
    with open(tmp_path / "run" / "student_tllm_refit" / workdir_files.REFIT_CHECK_FILE) as handle:
        check = json.load(handle)
    assert check["behind"] + check["ahead"] <= 20  # 10% of 200 images are held out.
    assert check["significance"] == config.significance
    assert check["kept"] == ("tllm" if check["p_value"] < check["significance"] else "refit")
    assert (f"student_tllm_refit: held-out accuracy {check['refit_accuracy']:.2%} against the "
            f"tllm's {check['tllm_accuracy']:.2%}") in capsys.readouterr().out
    refit, tllm = _stage_weights(config.workdir, "tllm_refit"), _stage_weights(config.workdir, "tllm")
    same = all(np.array_equal(a, b) for a, b in zip(refit, tllm, strict=True))
    assert same == (check["kept"] == "tllm")
    files = (workdir_files.REFIT_CHECK_FILE, workdir_files.MODEL_BEFORE_REFIT_CHECK_FILE)
    stage_dir = tmp_path / "run" / "student_tllm_refit"
    if check["kept"] == "refit":
        _no_own_model(stage_dir, *files)
    else:
        _own_model(config, stage_dir, *files)


def test_a_refit_behind_the_tllm_student_keeps_the_tllm_students_weights(tmp_path, monkeypatch):
    behind = held_out_check.HeldOutCheck(
        candidate="refit", baseline="tllm", candidate_accuracy=0.5, baseline_accuracy=0.9,
        behind=8, ahead=0, p_value=0.5 ** 8, significance=0.05)
    monkeypatch.setattr(held_out_check, "check", lambda *args: behind)
    config = _refit_run(tmp_path, reference_fallback=False, verbose=0)
    stages.run(config)
    for from_refit, from_tllm in zip(_stage_weights(config.workdir, "tllm_refit"),
                                     _stage_weights(config.workdir, "tllm"), strict=True):
        np.testing.assert_array_equal(from_refit, from_tllm)
    stage_dir = tmp_path / "run" / "student_tllm_refit"
    with open(stage_dir / workdir_files.REFIT_CHECK_FILE) as handle:
        assert json.load(handle)["kept"] == "tllm"
    # What is reported and exported is the student kept.
    with open(stage_dir / workdir_files.PER_CLASS_FILE) as refit_file, open(
            tmp_path / "run" / "student_tllm" / workdir_files.PER_CLASS_FILE) as tllm_file:
        assert json.load(refit_file) == json.load(tllm_file)
    # The refit's own model is not lost: saved beside it, its test accuracy recorded.
    own = _own_model(config, stage_dir, workdir_files.REFIT_CHECK_FILE,
                     workdir_files.MODEL_BEFORE_REFIT_CHECK_FILE)
    assert any(not np.array_equal(a, b) for a, b in zip(
        own, _stage_weights(config.workdir, "tllm"), strict=True))


def test_without_the_fallback_the_refit_is_neither_judged_nor_replaced(tmp_path, monkeypatch):
    def judged(*args):
        raise AssertionError("the refit was judged with --norefit_fallback")

    monkeypatch.setattr(held_out_check, "check", judged)
    config = _refit_run(tmp_path, refit_fallback=False, reference_fallback=False, verbose=0)
    stages.run(config)
    assert not os.path.exists(
        tmp_path / "run" / "student_tllm_refit" / workdir_files.REFIT_CHECK_FILE)


def _reference_weights(workdir):
    return keras.models.load_model(
        os.path.join(workdir, workdir_files.REFERENCE_STAGE, workdir_files.MODEL_FILE),
        compile=False).get_weights()


def test_by_default_every_student_is_judged_against_the_reference(tmp_path):
    config = _refit_run(tmp_path, students=("distilled", "tllm"), verbose=0)
    assert config.reference_fallback  # The default.
    stages.run(config)
    reference = _reference_weights(config.workdir)
    for student in config.students:
        with open(tmp_path / "run" / workdir_files.student_stage(student)
                  / workdir_files.REFERENCE_CHECK_FILE) as handle:
            check = json.load(handle)
        assert check["behind"] + check["ahead"] <= 20  # 10% of 200 images are held out.
        assert check["significance"] == 0.2  # The fallback's own level, by default.
        assert check["kept"] == (
            "reference" if check["p_value"] < check["significance"] else "student")
        same = all(np.array_equal(a, b) for a, b in zip(
            _stage_weights(config.workdir, student), reference, strict=True))
        assert same == (check["kept"] == "reference")
        stage_dir = tmp_path / "run" / workdir_files.student_stage(student)
        files = (workdir_files.REFERENCE_CHECK_FILE,
                 workdir_files.MODEL_BEFORE_REFERENCE_CHECK_FILE)
        if check["kept"] == "student":
            _no_own_model(stage_dir, *files)
        else:
            _own_model(config, stage_dir, *files)


def test_the_reference_fallback_judges_at_its_own_level(tmp_path):
    config = _refit_run(tmp_path, students=("distilled", "tllm", "tllm_refit"),
                        reference_fallback_significance=0.3, verbose=0)
    stages.run(config)
    run = tmp_path / "run"
    for student in config.students:
        with open(run / workdir_files.student_stage(student)
                  / workdir_files.REFERENCE_CHECK_FILE) as handle:
            assert json.load(handle)["significance"] == 0.3
    # The refit's safeguard keeps the rule's level.
    with open(run / "student_tllm_refit" / workdir_files.REFIT_CHECK_FILE) as handle:
        assert json.load(handle)["significance"] == config.significance == 0.05


def _judged_with(p_value):
    """A `held_out_check.check` that finds the candidate at `p_value`, whatever the models."""
    def judged(candidate, baseline, held_out, num_classes, significance, names):
        return held_out_check.HeldOutCheck(
            candidate=names[0], baseline=names[1], candidate_accuracy=0.5,
            baseline_accuracy=0.9, behind=8, ahead=0, p_value=p_value, significance=significance)

    return judged


def test_a_student_behind_the_reference_takes_its_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(held_out_check, "check", _judged_with(0.5 ** 8))
    config = _refit_run(tmp_path, students=("distilled", "tllm", "tllm_refit"), verbose=0)
    stages.run(config)
    reference = _reference_weights(config.workdir)
    with open(tmp_path / "run" / workdir_files.REFERENCE_STAGE
              / workdir_files.PER_CLASS_FILE) as handle:
        reference_per_class = json.load(handle)
    for student in config.students:
        stage_dir = tmp_path / "run" / workdir_files.student_stage(student)
        for from_student, from_reference in zip(
                _stage_weights(config.workdir, student), reference, strict=True):
            np.testing.assert_array_equal(from_student, from_reference)
        with open(stage_dir / workdir_files.REFERENCE_CHECK_FILE) as handle:
            assert json.load(handle)["kept"] == "reference"
        # What is reported and exported is the model kept.
        with open(stage_dir / workdir_files.PER_CLASS_FILE) as handle:
            assert json.load(handle) == reference_per_class
        # And the model judged is kept beside it, with its own test accuracy.
        judged = _own_model(config, stage_dir, workdir_files.REFERENCE_CHECK_FILE,
                            workdir_files.MODEL_BEFORE_REFERENCE_CHECK_FILE)
        if student == "tllm_refit":
            # Each check keeps what it judged: the refit's own weights, then the tllm
            # student's it had taken (here the reference's, the tllm student's fallback).
            own = _own_model(config, stage_dir, workdir_files.REFIT_CHECK_FILE,
                             workdir_files.MODEL_BEFORE_REFIT_CHECK_FILE)
            assert any(not np.array_equal(a, b) for a, b in zip(own, judged, strict=True))
        else:  # A distilled student's own weights, not the reference's.
            assert any(not np.array_equal(a, b) for a, b in zip(judged, reference, strict=True))


def test_a_run_killed_after_the_fallback_resumes_to_the_same_files(tmp_path, monkeypatch):
    monkeypatch.setattr(held_out_check, "check", _judged_with(0.5 ** 8))  # Always behind.
    whole = RunConfig(workdir=str(tmp_path / "run"), num_train=200, teacher_model="cnn_tiny",
                      epochs=2, students=("distilled",), verbose=0)
    stages.run(whole)
    killed = _students_only(whole, tmp_path / "killed")
    save_per_class = fitting.save_per_class

    def killed_after_the_checks(*args):
        raise _Killed()

    monkeypatch.setattr(fitting, "save_per_class", killed_after_the_checks)
    with pytest.raises(_Killed):
        stages.run(killed)
    stage_dir, whole_dir = (tmp_path / workdir / "student_kd" for workdir in ("killed", "run"))
    check_file = workdir_files.REFERENCE_CHECK_FILE
    own_model_file = workdir_files.MODEL_BEFORE_REFERENCE_CHECK_FILE
    assert (stage_dir / own_model_file).exists() and (stage_dir / check_file).exists()
    # Resumed where the student is kept (another --reference_fallback_significance):
    # the killed run's model of the student judged goes, as its record does.
    monkeypatch.setattr(held_out_check, "check", _judged_with(1.0))
    with pytest.raises(_Killed):
        stages.run(killed)
    _no_own_model(stage_dir, check_file, own_model_file)
    # Resumed with --noreference_fallback: no check, so no file of one.
    with pytest.raises(_Killed):
        stages.run(dataclasses.replace(killed, reference_fallback=False))
    assert not (stage_dir / check_file).exists()
    # Resumed as the uninterrupted run was run: the same files, the same figures.
    monkeypatch.setattr(held_out_check, "check", _judged_with(0.5 ** 8))
    monkeypatch.setattr(fitting, "save_per_class", save_per_class)
    stages.run(killed)
    assert sorted(os.listdir(stage_dir)) == sorted(os.listdir(whole_dir))
    for name in (check_file, workdir_files.PER_CLASS_FILE):
        assert _read(stage_dir / name) == _read(whole_dir / name)
    for name in (own_model_file, workdir_files.MODEL_FILE):
        resumed, uninterrupted = (keras.models.load_model(folder / name).get_weights()
                                  for folder in (stage_dir, whole_dir))
        for from_resumed, from_whole in zip(resumed, uninterrupted, strict=True):
            np.testing.assert_array_equal(from_resumed, from_whole)


def test_with_noreference_fallback_no_student_is_judged_against_the_reference(
        tmp_path, monkeypatch):
    judged = held_out_check.check

    def only_the_refit(candidate, baseline, held_out, num_classes, significance, names):
        assert names != ("student", "reference"), "judged against the reference"
        return judged(candidate, baseline, held_out, num_classes, significance, names)

    monkeypatch.setattr(held_out_check, "check", only_the_refit)
    config = _refit_run(tmp_path, students=("distilled", "tllm", "tllm_refit"),
                        reference_fallback=False, verbose=0)
    stages.run(config)
    for student in config.students:
        assert not os.path.exists(tmp_path / "run" / workdir_files.student_stage(student)
                                  / workdir_files.REFERENCE_CHECK_FILE)


def test_the_reference_fallback_without_the_references_model_is_refused_before_training(
        tmp_path):
    reference_file = tmp_path / "elsewhere" / workdir_files.REFERENCE_FILE
    reference_file.parent.mkdir()
    reference_file.write_text("{}")  # A reference.json alone: no model.keras beside it.
    config = RunConfig(workdir=str(tmp_path / "run"), num_train=200, teacher_model="cnn_tiny",
                       epochs=2, students=("distilled",), reference_path=str(reference_file),
                       verbose=0)  # The reference's fallback is on by default.
    with pytest.raises(ValueError, match="--noreference_fallback"):
        stages.run(config)
    assert not os.path.exists(tmp_path / "run")  # Refused after the claim: config.json too.


def test_a_reference_of_per_class_accuracies_only_trains_with_noreference_fallback(tmp_path):
    reference_file = tmp_path / "accuracies_only" / workdir_files.REFERENCE_FILE
    reference_file.parent.mkdir()
    tllm_tf.save_reference(str(reference_file), np.full(10, 0.9))
    config = RunConfig(workdir=str(tmp_path / "run"), num_train=200, teacher_model="cnn_tiny",
                       epochs=1, students=("tllm",), rule="unpaired", epoch_matched=False,
                       reference_path=str(reference_file), reference_fallback=False, verbose=0)
    stages.run(config)
    stage_dir = tmp_path / "run" / workdir_files.student_stage("tllm")
    assert (stage_dir / workdir_files.MODEL_FILE).exists()
    assert not (stage_dir / workdir_files.REFERENCE_CHECK_FILE).exists()


def _finished_tllm_run(workdir, mask_log_lines, masked_classes=(), updates=True):
    """The files `read_final_mask` reads, as a finished tllm run leaves them (`updates`:
    whether its schedule made mask updates; without, a warm-up as long as the run)."""
    stage_dir = workdir / "student_tllm"
    stage_dir.mkdir(parents=True)
    (stage_dir / workdir_files.PER_CLASS_FILE).write_text("{}")
    (stage_dir / workdir_files.MASK_LOG_FILE).write_text(
        "".join(json.dumps({"epoch": epoch, "class_mask": mask}) + "\n"
                for epoch, mask in enumerate(mask_log_lines, start=1)))
    (workdir / workdir_files.CONFIG_FILE).write_text(RunConfig(
        workdir=str(workdir), students=("tllm",), masked_classes=masked_classes,
        epochs=30, warmup_epochs=None if updates else 30).to_json())
    return str(workdir)


def _lost_mask_log(workdir):
    """A finished tllm run whose mask log was deleted."""
    path = _finished_tllm_run(workdir, [[1, 0, 1, 1]])
    os.remove(os.path.join(path, "student_tllm", workdir_files.MASK_LOG_FILE))
    return path


def test_read_final_mask_reads_the_last_update_or_the_fixed_mask(tmp_path):
    updated = _finished_tllm_run(tmp_path / "updated", [[0, 1, 1, 1], [1, 0, 1, 0]])
    assert stage_inputs.read_final_mask(updated, 4) == (1, 3)  # The last update's, not any.
    none = _finished_tllm_run(tmp_path / "none", [[1, 1, 1, 1]])
    assert stage_inputs.read_final_mask(none, 4) == ()
    fixed = _finished_tllm_run(tmp_path / "fixed", [], masked_classes=(2, 0), updates=False)
    assert stage_inputs.read_final_mask(fixed, 4) == (0, 2)  # No update: its --masked_classes.


@pytest.mark.parametrize("make, message", [
    (lambda root: str(root / "empty"), r"--masked_classes_from='.*empty' has no finished tllm "
                                       r"student \(.*test_per_class.json is missing\)"),
    (lambda root: _finished_tllm_run(root / "other", [[1, 0, 1]]),
     r"was trained on another data set: its mask does not fit this one's 4 classes"),
    (lambda root: _finished_tllm_run(root / "other_fixed", [], masked_classes=(7,),
                                     updates=False),
     r"was trained on another data set"),
    # Its schedule made 15 updates: an empty or missing log is damage, not "no class masked".
    (lambda root: _finished_tllm_run(root / "emptied", []),
     r"mask_log.jsonl is missing or empty, but the tllm student of '.*emptied' updated its "
     r"mask \(15 updates were due in its 30 epochs\).*Restore the file, or delete"),
    (_lost_mask_log, r"mask_log.jsonl is missing or empty"),
])
def test_read_final_mask_refuses_what_is_not_a_finished_run_of_this_data(tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        stage_inputs.read_final_mask(make(tmp_path), 4)


def test_masked_classes_from_an_unfinished_run_is_refused_before_anything_trains(tmp_path):
    config = RunConfig(workdir=str(tmp_path / "second"), students=("tllm",), num_train=200,
                       teacher_model="cnn_tiny", epochs=2, verbose=0,
                       masked_classes_from=str(tmp_path / "first"))
    with pytest.raises(ValueError, match="has no finished tllm student"):
        stages.run(config)
    assert not os.path.exists(tmp_path / "second" / "teacher")


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
