"""The study with one soft-label store per seed, student and teacher, and its timing."""

import os

import numpy as np

from tllm_tf.analysis import study
from tllm_tf.analysis import study_report
from tllm_tf.analysis import study_summary
from tllm_tf.pipeline.config import RunConfig


def _base(**overrides):
    values = study.base_kwargs(RunConfig(workdir="unused", num_train=120, epochs=2,
                                         teacher_epochs=1, batch_size=32, verbose=0,
                                         warmup_epochs=0))
    values.update(overrides)
    return values


def _group_dir(root, seed):
    return os.path.join(str(root), f"seed{seed}", "mlp_4", "cnn_tiny")


def test_shared_store_is_one_per_seed_student_and_teacher_and_only_for_distilled_arms(tmp_path):
    runs = study.plan(_base(), root=str(tmp_path), seeds=[0, 1], student_models=["mlp_4"],
                      teacher_models=["cnn_tiny"], arms=["kd", "tllm", "kd_store"],
                      shared_teacher_store=True)
    stores = {(run.seed, run.arm): run.config.teacher_store for run in runs}
    for seed in (0, 1):
        shared = os.path.join(_group_dir(tmp_path, seed), study.SHARED_STORE_DIR)
        assert stores[(seed, "kd")] == stores[(seed, "tllm")] == shared
        # The store arm keeps its own store, so it still measures a store against the live teacher.
        assert stores[(seed, "kd_store")] == os.path.join(
            _group_dir(tmp_path, seed), "kd_store", "teacher_store")
        assert stores[(seed, "teacher")] == stores[(seed, study.LABELS_ARM)] == ""
    unshared = study.plan(_base(), root=str(tmp_path), seeds=[0], student_models=["mlp_4"],
                          teacher_models=["cnn_tiny"], arms=["kd", "tllm"])
    assert all(run.config.teacher_store == "" for run in unshared)


def test_the_first_arm_builds_the_shared_store_and_the_next_only_reads_it(tmp_path):
    runs = study.plan(_base(), root=str(tmp_path), seeds=[0], student_models=["mlp_4"],
                      teacher_models=["cnn_tiny"], arms=["kd", "tllm"],
                      shared_teacher_store=True)
    quiet = lambda line: None  # noqa: E731
    study.run_study([run for run in runs if run.arm != "tllm"], str(tmp_path), report=quiet)
    store = os.path.join(_group_dir(tmp_path, 0), study.SHARED_STORE_DIR)
    built = {name: os.stat(os.path.join(store, name)).st_mtime_ns for name in os.listdir(store)}
    assert {"epoch_00000.json", "epoch_00001.json"} <= set(built)

    records = study.run_study(runs, str(tmp_path), report=quiet)
    assert {name: os.stat(os.path.join(store, name)).st_mtime_ns
            for name in os.listdir(store)} == built
    assert [record["arm"] for record in records] == ["teacher", "labels", "kd", "tllm"]
    assert all(record["seconds"] > 0 for record in records)
    assert not any(record["resumed"] for record in records)


def test_a_run_whose_stage_an_earlier_process_began_is_marked_resumed(tmp_path):
    runs = study.plan(_base(), root=str(tmp_path), seeds=[0], student_models=["mlp_4"],
                      teacher_models=["cnn_tiny"], arms=["kd"])
    assert not any(study._started(run) for run in runs)
    for run, stage in zip(runs, ("teacher", "reference", "student_kd")):
        os.makedirs(os.path.join(run.config.workdir, stage))
        assert study._started(run)


def _record(arm, seed, accuracy, seconds=None):
    record = {"seed": seed, "student": "s" if arm != "teacher" else "", "arm": arm,
              "teacher": "t" if arm != "labels" else "", "accuracy": accuracy,
              "per_class_accuracy": [accuracy, accuracy], "class_names": ["a", "b"],
              "masks": [[1.0, 0.0]] if arm == "tllm" else []}
    if seconds is not None:
        record["seconds"] = seconds
    return record


def test_the_report_gives_each_arms_wall_time_when_the_records_have_it():
    records = [_record("teacher", seed, 0.9) for seed in (0, 1)]
    records += [_record("labels", seed, 0.8) for seed in (0, 1)]
    records += [_record("kd", seed, 0.7, seconds=60.0 + 60 * seed) for seed in (0, 1)]
    records += [_record("tllm", seed, 0.75, seconds=30.0) for seed in (0, 1)]
    (setting,) = study_summary.summarise(records)
    assert setting["minutes_per_run"] == {"kd": 1.5, "tllm": 0.5}
    assert "Wall time per run, mean over the seeds (minutes): kd 1.50, tllm 0.50." in (
        study_report.markdown([setting]))
    # A resumed run's time counts its last process only: left out of the mean.
    records[-1]["resumed"], records[-1]["seconds"] = True, 3.0
    (setting,) = study_summary.summarise(records)
    assert setting["minutes_per_run"] == {"kd": 1.5, "tllm": 0.5}
    # Records of a study that did not time its runs: no line, not a made-up figure.
    for record in records:
        record.pop("seconds", None)
    (untimed,) = study_summary.summarise(records)
    assert untimed["minutes_per_run"] == {}
    assert "Wall time" not in study_report.markdown([untimed])
    assert np.isclose(untimed["arms"]["tllm"]["minus_kd"]["mean"], 0.05)
