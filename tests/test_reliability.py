"""Issue 11 at the level a user meets it: exact resume of every rule, and runs
refused before they train nothing or the wrong thing (`tllm_tf.pipeline.preflight`)."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tllm_tf.pipeline import checkpointing
from tllm_tf.pipeline import model_origin
from tllm_tf.pipeline import preflight
from tllm_tf import reference as reference_lib
from tllm_tf.pipeline import build
from tllm_tf.pipeline import fitting
from tllm_tf.pipeline import stages
from conftest import KillAtEpochEnd as _KillAtEpochEnd
from conftest import Killed as _Killed
from tllm_tf.pipeline.config import RunConfig


def _not_loaded(config):
    raise AssertionError("the data set was loaded before the check")


# -- item 1: a resumed run judges as an uninterrupted one ----------------------

BASE = dict(num_train=200, epochs=4, teacher_epochs=1, teacher_model="cnn_tiny",
            student_model="mlp_8", verbose=0)


@pytest.fixture(scope="module")
def teacher_and_reference(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("base") / "run")
    for stage in ("teacher", "reference"):
        stages.run(RunConfig(workdir=workdir, stage=stage, **BASE))
    return (os.path.join(workdir, "teacher", "model.keras"),
            os.path.join(workdir, "reference", "reference.json"))


def _student_config(workdir, teacher_and_reference, **rule):
    teacher_path, reference_path = teacher_and_reference
    # The unpaired rule without a margin masks classes early in a short run,
    # so patience and smoothing have streaks and averages to carry over.
    return RunConfig(workdir=workdir, stage="student", students=("tllm",),
                     teacher_path=teacher_path, reference_path=reference_path,
                     rule="unpaired", margin=0.0, warmup_epochs=0, update_every=1,
                     sticky=False, epoch_matched=False, **BASE, **rule)


def _mask_log(workdir):
    with open(os.path.join(workdir, "student_tllm", "mask_log.jsonl")) as handle:
        return [(record["epoch"], record["class_mask"])
                for record in map(json.loads, handle)]


@pytest.mark.slow
@pytest.mark.parametrize("rule", [{"patience": 2}, {"smoothing": 0.5}])
def test_a_run_killed_after_its_first_checkpoint_resumes_exactly(
        tmp_path, monkeypatch, teacher_and_reference, rule):
    uninterrupted = _student_config(str(tmp_path / "uninterrupted"), teacher_and_reference,
                                    **rule)
    stages.run(uninterrupted)
    expected_log = _mask_log(uninterrupted.workdir)
    assert [epoch for epoch, _ in expected_log] == [1, 2, 3, 4]
    assert any(0.0 in mask for _, mask in expected_log), "the rule never masked a class"

    killed = dataclasses.replace(uninterrupted, workdir=str(tmp_path / "killed"))
    original = fitting.stage_callbacks
    monkeypatch.setattr(fitting, "stage_callbacks", lambda *args: original(*args) + [
        _KillAtEpochEnd(0)])
    with pytest.raises(_Killed):
        stages.run(killed)
    stage_dir = os.path.join(killed.workdir, "student_tllm")
    assert checkpointing.saved_epoch(os.path.join(stage_dir, "checkpoint")) == 1
    monkeypatch.undo()
    stages.run(killed)

    assert _mask_log(killed.workdir) == expected_log
    resumed = keras.models.load_model(os.path.join(stage_dir, "model.keras"))
    reference = keras.models.load_model(
        os.path.join(uninterrupted.workdir, "student_tllm", "model.keras"))
    for a, b in zip(resumed.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


# -- item 4: a batch larger than the training split ----------------------------

def test_a_batch_larger_than_the_training_split_is_refused_before_training(tmp_path):
    config = RunConfig(workdir=str(tmp_path / "run"), num_train=100, batch_size=4096,
                       verbose=0)
    with pytest.raises(ValueError, match=(
            r"--batch_size=4096 is larger than the training split of 'digits' \(100 "
            r"images.*nothing would train. Use --batch_size <= 100")):
        stages.run(config)
    assert not os.path.exists(tmp_path / "run")


class _TwoReplicas:
    """What the checks before training read of a strategy with two replicas."""

    num_replicas_in_sync = 2


def test_a_batch_the_replicas_cannot_split_is_refused_before_training(tmp_path):
    config = RunConfig(workdir=str(tmp_path / "run"), num_train=100, batch_size=33,
                       strategy="mirrored", verbose=0)
    with pytest.raises(ValueError, match=(
            r"--batch_size=33 \(the global batch\) does not split evenly over the 2 "
            r"replicas of --strategy=mirrored.*Use a multiple of 2")):
        stages.run(config, _TwoReplicas())
    assert not os.path.exists(tmp_path / "run")


# -- item 6: a workdir that cannot be written ----------------------------------

@pytest.mark.parametrize("where", ["under_a_file", "a_file", "proc", "read_only"])
def test_an_unwritable_workdir_is_refused_before_the_data_set_loads(
        tmp_path, monkeypatch, where):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    if where == "read_only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        workdir = str(locked / "run")
    else:
        workdir = {"under_a_file": str(blocker / "run"), "a_file": str(blocker),
                   "proc": "/proc/tllm_tf_run"}[where]
    monkeypatch.setattr(build, "load_data", _not_loaded)
    with pytest.raises(ValueError, match=(
            rf"(Cannot write to --workdir='{workdir}': .+\(\w+Error\). Choose a directory you "
            rf"can write to|--workdir='{workdir}' is a file)")):
        stages.run(RunConfig(workdir=workdir, verbose=0))


def test_an_unwritable_workdir_is_one_line_from_the_tool(zygote, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = zygote.run(["tools/train.py", "--flagfile=configs/demo.flags",
                         f"--workdir={blocker / 'run'}"], timeout=120)
    assert result.returncode != 0
    assert f"Cannot write to --workdir='{blocker / 'run'}': Not a directory" in result.stderr
    assert "Traceback" not in result.stderr


# -- item 7: runs that would train nothing, or nothing but KD ------------------

@pytest.mark.parametrize("overrides, message", [
    ({"epochs": 5, "warmup_epochs": 5},
     r"--warmup_epochs=5 and --update_every=1 put the first mask update after epoch 6, "
     r"but --epochs=5: the mask would never change and TLLM would train as plain KD"),
    ({"epochs": 5, "warmup_epochs": 2, "update_every": 4},
     r"first mask update after epoch 6, but --epochs=5"),
    ({"alpha": 0.0, "beta": 0.0},
     r"--alpha=0.0 and --beta=0.0: with both 0 the loss is 0 and the students do not train"),
])
def test_runs_that_would_train_nothing_or_plain_kd_are_refused_first(
        tmp_path, monkeypatch, overrides, message):
    monkeypatch.setattr(build, "load_data", _not_loaded)
    with pytest.raises(ValueError, match=message):
        stages.run(RunConfig(workdir=str(tmp_path / "run"), verbose=0, **overrides))
    assert not os.path.exists(tmp_path / "run")


def test_a_warmup_as_long_as_the_run_is_fine_for_kd_alone(tmp_path, monkeypatch):
    preflight.check_schedule(RunConfig(workdir=str(tmp_path), students=("distilled",), epochs=5,
                                       warmup_epochs=5))


def test_a_fixed_mask_with_no_update_is_not_plain_kd(tmp_path):
    preflight.check_schedule(RunConfig(workdir=str(tmp_path), epochs=5, warmup_epochs=5,
                                       masked_classes=(2,)))


# -- item 8: a reference or a teacher made from another split ------------------

def test_a_reference_of_another_seed_and_split_is_refused_naming_the_fields(tmp_path):
    made = RunConfig(workdir=str(tmp_path / "reference_run"), stage="reference",
                     num_train=100, epochs=1, verbose=0)
    stages.run(made)
    path = os.path.join(made.workdir, "reference", "reference.json")
    with open(path) as handle:
        assert json.load(handle)["provenance"] == preflight.reference_provenance(
            made, build.load_data(made))
    reused = RunConfig(workdir=str(tmp_path / "run"), stage="student", num_train=100,
                       epochs=1, verbose=0, seed=1, holdout_fraction=0.5,
                       reference_path=path)
    with pytest.raises(ValueError) as raised:
        stages.run(reused)
    message = str(raised.value)
    assert "was made from another split, data set or student than this run's" in message
    assert "seed: 0 in the reference, 1 now" in message
    assert "holdout_fraction: 0.2 in the reference, 0.5 now" in message
    assert "num_samples (held-out images per class)" in message
    assert not os.path.exists(tmp_path / "run" / "student_tllm")
    # The same settings pass.
    same = dataclasses.replace(made, workdir=str(tmp_path / "other"), stage="student",
                               reference_path=path)
    preflight.check_reference_origin(same, build.load_data(same))


def test_an_older_reference_file_is_accepted_with_a_warning(tmp_path, caplog):
    config = RunConfig(workdir=str(tmp_path / "run"), stage="student", num_train=100,
                       epochs=1, verbose=0, reference_path=str(tmp_path / "old.json"))
    data = build.load_data(config)
    counts = preflight.held_out_counts(data)
    reference_lib.save_reference(config.reference_path, np.full(10, 0.9), counts)
    with caplog.at_level("WARNING"):
        preflight.check_reference_origin(config, data)
    assert "does not record what it was made from" in caplog.text


def test_a_teacher_trained_with_another_seed_is_refused(tmp_path, monkeypatch):
    teacher_workdir = tmp_path / "teacher_run"
    os.makedirs(teacher_workdir / "teacher")
    (teacher_workdir / "config.json").write_text(
        RunConfig(workdir=str(teacher_workdir), seed=0).to_json())
    config = RunConfig(workdir=str(tmp_path / "run"), stage="student", seed=1,
                       teacher_path=str(teacher_workdir / "teacher" / "model.keras"))
    monkeypatch.setattr(build, "load_data", _not_loaded)
    with pytest.raises(ValueError, match=(
            r"teacher .*model.keras' was trained on another split of the data.*\n"
            r"  --seed: 0 for the teacher, 1 now\n.*held-out split")):
        stages.run(config)
    # A teacher of this split, or one whose workdir is unknown, passes.
    model_origin.check_teacher_origin(dataclasses.replace(config, seed=0))
    model_origin.check_teacher_origin(dataclasses.replace(
        config, teacher_path=str(tmp_path / "elsewhere" / "model.keras")))


# -- items 7 and 10: a held-out split that cannot judge any class --------------

@pytest.mark.parametrize("kind, message", [
    ("empty", r"held-out data set is empty, so no class can be judged and TLLM would "
              r"train as plain KD"),
    ("filtered_to_nothing", r"held-out data set is empty"),
    ("repeating", r"held-out data set repeats forever: pass one pass of it"),
    ("unbatched", r"held-out data set is not batched: its images have shape \(8, 8, 3\) "
                  r"and the model takes batches of \(None, 8, 8, 3\). Batch it"),
])
def test_a_held_out_split_that_cannot_judge_is_refused_at_train_begin(tiny_data, kind, message):
    import tensorflow as tf

    import tllm_tf
    from conftest import make_mlp

    x, y = tiny_data
    slices = tf.data.Dataset.from_tensor_slices((x, y))
    held_out = {"empty": tf.data.Dataset.from_tensor_slices((x[:0], y[:0])).batch(8),
                "filtered_to_nothing": slices.filter(lambda image, label: label > 9).batch(8),
                "repeating": slices.batch(8).repeat(),
                "unbatched": slices}[kind]
    student = make_mlp("student")
    distiller = tllm_tf.Distiller(student, make_mlp("teacher"))
    distiller.compile(optimizer="sgd")
    before = [w.copy() for w in student.get_weights()]
    callback = tllm_tf.UndistillableClassCallback(held_out, reference=np.full(4, 0.5),
                                                  rule="unpaired")
    with pytest.raises(ValueError, match=message):
        distiller.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    for old, new in zip(before, student.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_a_held_out_split_of_unknown_size_is_read_whole_by_the_check_never_in_part(tiny_data):
    # A first read that stops early (a peek at one batch) can close an in-memory cache
    # under a filter on what it read, and every later pass would see that part.
    import tensorflow as tf

    from conftest import make_mlp
    from tllm_tf import model_checks

    x, y = tiny_data
    reads = tf.Variable(0, dtype=tf.int64)

    def counted(image, label):
        reads.assign_add(1)
        return image, label

    held_out = tf.data.Dataset.from_tensor_slices((x, y)).filter(
        lambda image, label: label >= 0).map(counted).batch(8)
    model_checks.check_held_out_data(held_out, make_mlp("student"))
    assert int(reads.numpy()) == len(x)


# -- an image folder at --image_size with the default augmentation -------------

def test_an_image_folder_trains_at_image_size_with_the_default_augmentation(tmp_path):
    # The folder's loader resizes to --image_size; the augmentation 'none' must not be
    # given it again (it refused it, so README's image-folder command failed).
    rng = np.random.default_rng(0)
    for name in ("cat", "dog", "owl"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for index in range(12):
            image = rng.integers(0, 255, size=(9, 7, 3), dtype=np.uint8)
            (tmp_path / "images" / name / f"{index}.png").write_bytes(
                tf.io.encode_png(image).numpy())
    config = RunConfig(workdir=str(tmp_path / "run"), dataset="image_folder",
                       image_folder=str(tmp_path / "images"), image_size=8, stage="teacher",
                       teacher_model="cnn_tiny", teacher_epochs=1, batch_size=4,
                       holdout_fraction=0.25, verbose=0)
    stages.run(config)
    teacher = keras.models.load_model(str(tmp_path / "run" / "teacher" / "model.keras"))
    assert tuple(teacher.inputs[0].shape[1:]) == (8, 8, 3)


def test_a_decay_epoch_a_stage_ends_before_is_named():
    config = RunConfig(workdir="unused", epochs=12, teacher_epochs=10, lr_decay_epochs=(6, 12, 16))
    assert preflight.decays_never_reached(config) == (
        "--lr_decay_epochs=6,12,16: the teacher's learning rate never decays at epochs 12, 16 "
        "(--teacher_epochs=10); the students' learning rate never decays at epochs 12, 16 "
        "(--epochs=12).")
    assert preflight.decays_never_reached(dataclasses.replace(
        config, epochs=17, teacher_epochs=None, stage="student")) is None
    assert preflight.decays_never_reached(dataclasses.replace(config, stage="teacher")) == (
        "--lr_decay_epochs=6,12,16: the teacher's learning rate never decays at epochs 12, 16 "
        "(--teacher_epochs=10).")
    # A teacher given by --teacher_path is not trained here.
    assert preflight.decays_never_reached(dataclasses.replace(
        config, epochs=17, teacher_path="elsewhere/teacher/model.keras")) is None
