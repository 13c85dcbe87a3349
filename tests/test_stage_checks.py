"""The held-out checks that judge a trained student: the refit's safeguard (against the
tllm student) and the reference's fallback (against the label-only reference)."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest

import tllm_tf
from tllm_tf import held_out_check
from tllm_tf.pipeline import fitting
from tllm_tf.pipeline import stages
from tllm_tf.pipeline import workdir_files
from conftest import Killed as _Killed
from conftest import within
from conftest import students_only
from tllm_tf.pipeline.config import RunConfig


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
    refit, tllm = (_stage_weights(config.workdir, student) for student in ("tllm_refit", "tllm"))
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
            # student's it had taken: the tllm student as it trained, not the reference's
            # weights its own fallback gave it (the refit was judged against those, and a
            # report called the reference's accuracy the tllm student's).
            own = _own_model(config, stage_dir, workdir_files.REFIT_CHECK_FILE,
                             workdir_files.MODEL_BEFORE_REFIT_CHECK_FILE)
            assert any(not np.array_equal(a, b) for a, b in zip(own, judged, strict=True))
            tllm_as_trained = keras.models.load_model(
                tmp_path / "run" / "student_tllm" / workdir_files.MODEL_BEFORE_REFERENCE_CHECK_FILE,
                compile=False).get_weights()
            for from_judged, from_tllm in zip(judged, tllm_as_trained, strict=True):
                np.testing.assert_array_equal(from_judged, from_tllm)
        else:  # A distilled student's own weights, not the reference's.
            assert any(not np.array_equal(a, b) for a, b in zip(judged, reference, strict=True))


def test_a_run_killed_after_the_fallback_resumes_to_the_same_files(tmp_path, monkeypatch):
    monkeypatch.setattr(held_out_check, "check", _judged_with(0.5 ** 8))  # Always behind.
    whole = RunConfig(workdir=str(tmp_path / "run"), num_train=200, teacher_model="cnn_tiny",
                      epochs=2, students=("distilled",), verbose=0)
    stages.run(whole)
    killed = students_only(whole, tmp_path / "killed")
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


def test_a_refit_whose_tllm_student_lost_its_own_model_is_refused_naming_it(tmp_path):
    from tllm_tf.pipeline import after_training

    stage_dir = tmp_path / "student_tllm"
    stage_dir.mkdir()
    (stage_dir / workdir_files.MODEL_FILE).write_text("the reference's weights")
    assert after_training._trained_model_path(str(stage_dir)) == str(
        stage_dir / workdir_files.MODEL_FILE)  # No fallback ran: the student as it trained.
    check = stage_dir / workdir_files.REFERENCE_CHECK_FILE
    check.write_text(json.dumps({"kept": "student"}))
    assert after_training._trained_model_path(str(stage_dir)).endswith(workdir_files.MODEL_FILE)
    # Replaced, and its own model deleted (or a workdir of before it was kept): the refit would
    # be judged against the reference's weights, called the tllm student's.
    check.write_text(json.dumps({"kept": "reference"}))
    with pytest.raises(ValueError, match="its own model .* is not there"):
        after_training._trained_model_path(str(stage_dir))
    (stage_dir / workdir_files.MODEL_BEFORE_REFERENCE_CHECK_FILE).write_text("its own")
    assert after_training._trained_model_path(str(stage_dir)).endswith(
        workdir_files.MODEL_BEFORE_REFERENCE_CHECK_FILE)
    check.write_text('{"kept": "refe')
    with pytest.raises(ValueError, match="is damaged"):
        after_training._trained_model_path(str(stage_dir))
    check.write_text('{"kept": ["reference"]}')
    with pytest.raises(ValueError, match="is damaged: kept must be 'student' or 'reference'. "
                                         r"Received: \['reference'\]"):
        after_training._trained_model_path(str(stage_dir))


@pytest.mark.parametrize("planted", ["fifo", "dev_zero"])
def test_a_refit_refuses_a_reference_check_that_is_not_a_regular_file_unread(tmp_path, planted):
    from tllm_tf.pipeline import after_training

    stage_dir = tmp_path / "student_tllm"
    stage_dir.mkdir()
    check = stage_dir / workdir_files.REFERENCE_CHECK_FILE
    if planted == "fifo":  # It would hang the refit.
        os.mkfifo(check)
    else:  # Read to its end, it would fill the memory.
        check.symlink_to("/dev/zero")
    with within(), pytest.raises(ValueError, match=(
            f"{check}' is not a regular file .*Delete {stage_dir} to train the tllm student "
            "again.")):
        after_training._trained_model_path(str(stage_dir))
