"""Every flag file parses into a valid RunConfig; the CIFAR recipe runs on random tfds data."""

import dataclasses
import glob
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

import tllm_tf
from conftest import written_tfds
from tllm_tf import callbacks as callbacks_lib
from tllm_tf import models
from tllm_tf.analysis import workdir_results
from tllm_tf.pipeline import stages
from tllm_tf.pipeline.config import RunConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def train_tool():
    sys.path.insert(0, os.path.join(ROOT, "tools"))  # where train.py finds run_flags.py
    spec = importlib.util.spec_from_file_location("train_tool", os.path.join(ROOT, "tools", "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(train_tool, *args):
    flags = train_tool.FLAGS
    flags.unparse_flags()
    cwd = os.getcwd()
    os.chdir(ROOT)  # nested --flagfile paths are relative to the repo root
    try:
        flags(["train.py", *args])
    finally:
        os.chdir(cwd)
    return train_tool.run_flags.config_from_flags()


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.flags"))),
                         ids=os.path.basename)
def test_flag_file_parses_into_a_valid_config(train_tool, path):
    if os.path.basename(path) == "cifar100_base.flags":
        config = _config(train_tool, f"--flagfile={path}", "--workdir=w",
                         "--teacher_model=resnet8", "--student_model=resnet8")
    else:
        config = _config(train_tool, f"--flagfile={path}")
    assert config.workdir
    assert {config.teacher_model, config.student_model} <= set(models.available_models())


def test_masked_classes_are_class_ids(train_tool):
    assert _config(train_tool, "--workdir=w", "--masked_classes=2,4").masked_classes == (2, 4)
    with pytest.raises(ValueError, match=r"--masked_classes takes class ids .*Received: Pullover"):
        _config(train_tool, "--workdir=w", "--masked_classes=Pullover")


def test_pair_files_inherit_the_recipe_and_command_line_flags_win(train_tool):
    config = _config(train_tool, "--flagfile=configs/cifar_vgg13_mobilenetv2.flags", "--epochs=3")
    assert (config.optimizer, config.batch_size, config.weight_decay) == ("sgd", 64, 5e-4)
    assert config.lr_decay_epochs == (150, 180, 210)
    assert (config.learning_rate, config.teacher_learning_rate) == (0.01, 0.05)
    assert config.epochs == 3 and config.teacher_epochs == 240


def test_the_few_labels_study_differs_from_the_base_study_only_in_its_data_and_schedule(train_tool):
    base = dataclasses.asdict(_config(train_tool, "--flagfile=configs/study_fashion.flags"))
    few = dataclasses.asdict(_config(train_tool, "--flagfile=configs/study_fashion_few_labels.flags"))
    changed = {key: few[key] for key in base if few[key] != base[key]}
    assert changed == {"workdir": "runs/fashion_few_labels", "num_train": 1000, "epochs": 60,
                       "lr_decay_epochs": (36, 48)}
    assert few["teacher_epochs"] == 10  # the teachers are the base study's


def test_every_config_field_has_a_flag_of_the_same_name(train_tool):
    missing = {field.name for field in dataclasses.fields(RunConfig)} - set(train_tool.FLAGS)
    assert not missing


def test_identification_flags_reach_the_callback(train_tool, tmp_path, monkeypatch):
    created = []

    class RecordingCallback(tllm_tf.UndistillableClassCallback):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self)

    # The stages build the callback through its module.
    monkeypatch.setattr(callbacks_lib, "UndistillableClassCallback", RecordingCallback)
    workdir = tmp_path / "run"
    config = _config(
        train_tool, "--flagfile=configs/demo.flags", f"--workdir={workdir}", "--students=tllm",
        "--teacher_model=cnn_tiny", "--num_train=200", "--epochs=3", "--teacher_epochs=1",
        "--warmup_epochs=0", "--verbose=0", "--epoch_matched", "--smoothing=0.5",
        "--patience=2", "--margin_standard_errors=1.5", "--rule=unpaired")
    stages.run(config)

    (callback,) = created
    assert {key: callback.get_config()[key] for key in (
        "epoch_matched", "smoothing", "patience", "margin_standard_errors")} == {
        "epoch_matched": True, "smoothing": 0.5, "patience": 2, "margin_standard_errors": 1.5}
    history = tllm_tf.load_reference_history(str(workdir / "reference" / "reference.json"))
    assert history.shape == (3, 10)
    np.testing.assert_array_equal(callback.reference, history)
    with open(workdir / "student_tllm" / "mask_log.jsonl") as handle:
        records = [json.loads(line) for line in handle]
    # Epoch-matched: each update compares with the reference of its own epoch.
    assert not np.array_equal(history[0], history[-1])
    assert [record["epoch"] for record in records] == [1, 2, 3]
    for record in records:
        np.testing.assert_allclose(np.array(record["reference_accuracy"], dtype=float),
                                   history[record["epoch"] - 1], atol=1e-6)
        assert record["rule"] == "unpaired" and len(record["smoothed"]) == 2


@pytest.mark.slow
def test_cifar_recipe_runs_end_to_end_on_random_tfds_files(train_tool, tmp_path):
    # The recipe's data, optimisation and TLLM flags; its models replaced by the zoo's
    # smallest CNN (what the recipe's own pairs build: tests/test_models.py).
    config = _config(
        train_tool, "--flagfile=configs/cifar.flags", f"--workdir={tmp_path / 'run'}",
        f"--data_dir={tmp_path / 'data'}", "--teacher_model=cnn_tiny", "--student_model=cnn_tiny",
        "--epochs=2", "--teacher_epochs=1", "--lr_decay_epochs=1", "--batch_size=50",
        "--warmup_epochs=0", "--update_every=1", "--min_samples=1", "--verbose=0")
    written_tfds(tmp_path / "data", "cifar100", num_examples=1000)
    stages.run(config)
    results = workdir_results.load_results(str(tmp_path / "run"))
    assert set(results["accuracy"]) >= {"teacher", "reference", "student_kd", "student_tllm"}
    with open(tmp_path / "run" / "student_tllm" / "mask_log.jsonl") as handle:
        records = [json.loads(line) for line in handle]
    assert [r["epoch"] for r in records] == [1, 2]
    assert len(records[0]["class_mask"]) == 100
    assert 90 <= sum(records[0]["num_samples"]) <= 110  # ~10% of 1000, stratified
    assert os.path.exists(tmp_path / "run" / "student_tllm" / "saved_model" / "saved_model.pb")
    assert os.listdir(tmp_path / "run" / "student_tllm" / "tensorboard")


def test_old_method_flag_still_reads_as_students(train_tool, tmp_path):
    old_file = tmp_path / "old.flags"
    old_file.write_text("--workdir=runs/old\n--method=kd,tllm\n")
    config = _config(train_tool, f"--flagfile={old_file}")
    assert config.students == ("distilled", "tllm")


def test_method_and_students_together_are_refused(train_tool):
    with pytest.raises(ValueError, match="Give --students only"):
        _config(train_tool, "--flagfile=configs/demo.flags", "--method=kd",
                "--students=distilled")


def test_a_model_name_given_to_students_names_the_model_flags(train_tool):
    with pytest.raises(ValueError, match="--student_models"):
        _config(train_tool, "--flagfile=configs/demo.flags", "--students=mlp_16")


def test_a_leading_tilde_of_a_path_is_the_home_directory(train_tool):
    # A shell expands it on its own command line, never after "=" nor in a flag file.
    config = _config(train_tool, "--workdir=~/w", "--teacher_store=~/store",
                     "--data_dir=data")
    assert config.workdir == os.path.expanduser("~/w") != "~/w"
    assert config.teacher_store == os.path.expanduser("~/store")
    assert config.data_dir == "data"
