"""The masks the student stages train with: fixed classes, a first run's final mask, the
refit (the two-run recipe in one run), and reading a finished run's final mask."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest

from tllm_tf.pipeline import fitting
from tllm_tf.pipeline import stage_inputs
from tllm_tf.pipeline import stages
from tllm_tf.pipeline import workdir_files
from conftest import KillAtEpochEnd as _KillAtEpochEnd
from conftest import Killed as _Killed
from conftest import students_only
from tllm_tf.pipeline.config import RunConfig


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


def test_a_killed_refit_resumes_with_the_same_mask(tmp_path, monkeypatch):
    uninterrupted = RunConfig(workdir=str(tmp_path / "whole"), num_train=200,
                              teacher_model="cnn_tiny", epochs=2, warmup_epochs=0,
                              masked_classes=(3,), verbose=0)
    assert uninterrupted.students == ("tllm", "tllm_refit")  # The default.
    stages.run(uninterrupted)
    killed = students_only(uninterrupted, tmp_path / "killed")
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
