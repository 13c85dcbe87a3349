"""The accuracy study: its plan, one tiny run through the stages, and its statistics."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import within
from tllm_tf.analysis import study
from tllm_tf.analysis import study_arms
from tllm_tf.analysis import study_records
from tllm_tf.analysis import study_report
from tllm_tf.analysis import study_stats
from tllm_tf.analysis import study_summary
from tllm_tf.pipeline import workdir as workdir_lib
from tllm_tf.pipeline import workdir_files
from tllm_tf.pipeline.config import RunConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _base(**overrides):
    values = study.base_kwargs(RunConfig(workdir="unused", num_train=120, epochs=2,
                                         teacher_epochs=1, batch_size=32, verbose=0))
    values.update(overrides)
    return values


def test_plan_orders_teachers_and_references_before_their_students(tmp_path):
    runs = study.plan(_base(), root=str(tmp_path), seeds=[0, 1], student_models=["mlp_4"],
                      teacher_models=["cnn_tiny", "cnn_small"], arms=["kd", "tllm"])
    assert len(runs) == 2 * (2 + 1 + 2 * 2)
    seen = set()
    for run in runs:
        config = run.config
        if run.arm == "teacher":
            assert config.stage == "teacher" and config.teacher_model == run.teacher
            seen.add(config.workdir)
        elif run.arm == study.LABELS_ARM:
            assert config.stage == "reference" and config.student_model == "mlp_4"
            seen.add(config.workdir)
        else:
            assert config.stage == "student" and config.seed == run.seed
            # What it reads was planned before it.
            assert os.path.dirname(os.path.dirname(config.teacher_path)) in seen
            assert os.path.dirname(os.path.dirname(config.reference_path)) in seen
    kd = [r for r in runs if r.arm == "kd"][0]
    assert kd.config.students == ("distilled",)


def test_a_store_arm_keeps_its_soft_label_store_in_its_own_run(tmp_path):
    runs = study.plan(_base(), root=str(tmp_path), seeds=[0, 1], student_models=["mlp_4"],
                      teacher_models=["cnn_tiny"], arms=["kd", "kd_store"])
    stores = {(run.seed, run.arm): run.config.teacher_store for run in runs
              if run.arm.startswith("kd")}
    assert stores[(0, "kd")] == ""
    assert stores[(1, "kd_store")] == os.path.join(
        str(tmp_path), "seed1", "mlp_4", "cnn_tiny", "kd_store", "teacher_store")


def test_every_arm_plans_a_valid_run_with_its_overrides(tmp_path):
    runs = study.plan(_base(), root=str(tmp_path), seeds=[0], student_models=["mlp_4"],
                      teacher_models=["cnn_tiny"], arms=sorted(study.ARMS))
    planned = {run.arm: run.config for run in runs}
    for arm, overrides in study.ARMS.items():
        for name, value in overrides.items():
            # Set at run time, or the report's (PAIRED_WITH), not the run's.
            if name not in ("teacher_store", study.MASKED_CLASSES_FROM, study.PAIRED_WITH):
                assert getattr(planned[arm], name) == value, (arm, name)
    assert planned["tllm_patience2"].patience == 2 == RunConfig(workdir="x").patience
    assert planned["tllm"].patience == planned["dkd_tllm"].patience == 1  # Run before patience 2.
    # Run before ten looks: a look an epoch; the default spreads ten looks over any schedule.
    assert planned["tllm_refit"].update_every == planned["unpaired"].update_every == 1
    assert planned["tllm_refit_every3"].update_every == 3
    assert planned["kd"].update_every is None is RunConfig(workdir="x").update_every


def test_a_second_pass_masks_the_first_pass_final_classes_and_makes_no_update(tmp_path):
    runs = study.plan(_base(), root=str(tmp_path), seeds=[0, 1], student_models=["mlp_4"],
                      teacher_models=["cnn_tiny"], arms=["tllm_patience2", "tllm_two_pass_soft_label"])
    second = [run for run in runs if run.arm == "tllm_two_pass_soft_label"]
    assert [run.masked_classes_from for run in second] == ["tllm_patience2"] * 2
    assert all(run.config.warmup_epochs == run.config.epochs for run in second)  # No update.
    assert all(run.config.masked_class_policy == "soft_label" for run in second)
    first_pass = {"masks": [[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]}
    assert study_records.final_masked_classes(first_pass) == (2,)  # The last update's, not any earlier.
    assert study_records.final_masked_classes({"masks": []}) == ()
    done = {(1, "mlp_4", "cnn_tiny", "tllm_patience2"): first_pass}
    config = study._with_first_pass_mask(second[1], done)
    assert config.masked_classes == (2,) and second[1].config.masked_classes == ()
    assert study._with_first_pass_mask(runs[0], done) is runs[0].config
    nothing_masked = {(1, "mlp_4", "cnn_tiny", "tllm_patience2"): {"masks": [[1.0, 1.0, 1.0]]}}
    assert study._with_first_pass_mask(second[1], nothing_masked).students == ("distilled",)


def test_a_run_with_a_fixed_mask_and_no_update_is_recorded_with_that_mask(tmp_path):
    runs = study.plan(_base(), root=str(tmp_path), seeds=[0], student_models=["mlp_4"],
                      teacher_models=["cnn_tiny"], arms=["tllm_patience2", "tllm_two_pass"])
    second = [run for run in runs if run.arm == "tllm_two_pass"][0]
    second = dataclasses.replace(
        second, config=dataclasses.replace(second.config, masked_classes=(0, 2)))
    stage_dir = os.path.join(second.config.workdir, workdir_files.student_stage("tllm"))
    os.makedirs(stage_dir)
    with open(os.path.join(stage_dir, workdir_files.PER_CLASS_FILE), "w") as handle:
        json.dump({"accuracy": 0.5, "per_class_accuracy": [0.4, 0.5, 0.6],
                   "class_names": ["a", "b", "c"]}, handle)
    assert study_records.collect(second)["masks"] == [[0.0, 1.0, 0.0]] * second.config.epochs


def _write_student(workdir, student, accuracy, masks=(), check=None):
    stage_dir = os.path.join(workdir, workdir_files.student_stage(student))
    os.makedirs(stage_dir)
    with open(os.path.join(stage_dir, workdir_files.PER_CLASS_FILE), "w") as handle:
        json.dump({"accuracy": accuracy, "per_class_accuracy": [accuracy] * 3,
                   "class_names": ["a", "b", "c"]}, handle)
    with open(os.path.join(stage_dir, workdir_files.MASK_LOG_FILE), "w") as handle:
        handle.writelines(json.dumps({"epoch": epoch, "class_mask": mask}) + "\n"
                          for epoch, mask in enumerate(masks, start=1))
    if check is not None:
        with open(os.path.join(stage_dir, workdir_files.REFIT_CHECK_FILE), "w") as handle:
            json.dump({"kept": check, "p_value": 0.01 if check == "tllm" else 0.5,
                       "refit_accuracy": 0.7, "tllm_accuracy": 0.6}, handle)


@pytest.mark.parametrize("kept", ["refit", "tllm"])
def test_the_refit_arm_records_the_refit_with_the_mask_it_trained_with(tmp_path, kept):
    run = study.plan(_base(), root=str(tmp_path), seeds=[0], student_models=["mlp_4"],
                     teacher_models=["cnn_tiny"], arms=["tllm_refit"])[-1]
    assert run.config.students == ("tllm", "tllm_refit")
    tllm_masks = [[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]]
    _write_student(run.config.workdir, "tllm", 0.6, masks=tllm_masks)
    _write_student(run.config.workdir, "tllm_refit", 0.7 if kept == "refit" else 0.6, check=kept)
    record = study_records.collect(run)
    if kept == "refit":  # The tllm student's final mask, fixed from the first step.
        assert record["accuracy"] == 0.7
        assert record["masks"] == [[1.0, 0.0, 1.0]] * run.config.epochs
    else:  # The tllm student's weights, so its masks.
        assert record["masks"] == tllm_masks


def test_teachers_and_references_are_recorded_whatever_students_the_base_names(tmp_path):
    runs = study.plan(_base(), root=str(tmp_path), seeds=[0], student_models=["mlp_4"],
                      teacher_models=["cnn_tiny"], arms=["kd"])
    for run in runs[:2]:  # The teacher and the reference, with the default students.
        assert run.config.students[-1] == "tllm_refit"
        stage_dir = os.path.join(run.config.workdir, "teacher" if run.arm == "teacher"
                                 else "reference")
        os.makedirs(stage_dir)
        with open(os.path.join(stage_dir, workdir_files.PER_CLASS_FILE), "w") as handle:
            json.dump({"accuracy": 0.5, "per_class_accuracy": [0.5] * 3,
                       "class_names": ["a", "b", "c"]}, handle)
        assert study_records.collect(run)["masks"] == []


def test_a_second_pass_needs_its_first_pass_planned_before_it(tmp_path):
    with pytest.raises(ValueError, match="tllm_patience2 must run first"):
        study.plan(_base(), root=str(tmp_path), seeds=[0], student_models=["mlp_4"],
                   teacher_models=["cnn_tiny"], arms=["tllm_two_pass", "tllm_patience2"])


def _minimal_record(seed, run):
    return {"seed": seed, "student": run.student, "teacher": run.teacher, "arm": run.arm,
            "accuracy": 0.5, "per_class_accuracy": [0.5], "class_names": ["a"], "masks": []}


def test_new_runs_of_another_recipe_are_checked_against_the_roots_other_runs(tmp_path):
    def plan_kwargs(seeds, **overrides):
        return dict(base=_base(**overrides), root=str(tmp_path), seeds=seeds,
                    student_models=["mlp_4"], teacher_models=["cnn_tiny"], arms=["kd"])

    for run in study.plan(**plan_kwargs([0])):  # seed 0 finished with num_train=120
        workdir_lib.claim(run.config.workdir, run.config)
        with open(tmp_path / study_records.RESULTS_FILE, "a") as handle:
            handle.write(json.dumps(_minimal_record(0, run)) + "\n")
    # Seed 1 alone with another recipe: its plan has no finished run, the widened one has.
    study.check_finished_runs(study.plan(**plan_kwargs([1], num_train=60)), str(tmp_path))
    widened = study.widened_plan(plan_kwargs([1], num_train=60), str(tmp_path))
    assert {run.seed for run in widened} == {0, 1}
    with pytest.raises(ValueError, match="--num_train: 120 in the workdir, 60 now"):
        study.check_finished_runs(widened, str(tmp_path))
    with pytest.raises(ValueError, match="--num_train: 120 in the workdir, 60 now"):
        study.run_study(study.plan(**plan_kwargs([1], num_train=60)), str(tmp_path),
                        checked_runs=widened)  # before training anything
    study.check_finished_runs(study.widened_plan(plan_kwargs([1]), str(tmp_path)), str(tmp_path))


@pytest.mark.parametrize("content, message", [
    ('{"seed": 0, "student": "mlp_4"', "is damaged at line 1 .*delete that line"),
    ('{"seed": 0, "arm": "kd"}', r"Record 1 of .* lacks \['student', 'teacher'"),
])
def test_a_damaged_results_file_is_named_with_the_fix(tmp_path, content, message):
    (tmp_path / study_records.RESULTS_FILE).write_text(content + "\n")
    runs = study.plan(_base(), root=str(tmp_path), seeds=[0], student_models=["mlp_4"],
                      teacher_models=["cnn_tiny"], arms=["kd"])
    with pytest.raises(ValueError, match=message):
        study_records.finished_records(runs, str(tmp_path))


@pytest.mark.parametrize("planted", ["fifo", "dev_zero"])
def test_a_results_file_that_is_not_a_regular_file_is_refused_unread(tmp_path, planted):
    path = tmp_path / study_records.RESULTS_FILE
    if planted == "fifo":  # It would hang the study.
        os.mkfifo(path)
    else:  # Read to its end, it would fill the memory.
        path.symlink_to("/dev/zero")
    runs = study.plan(_base(), root=str(tmp_path), seeds=[0], student_models=["mlp_4"],
                      teacher_models=["cnn_tiny"], arms=["kd"])
    with within(), pytest.raises(ValueError, match=(
            f"{path}' is not a regular file .*Nothing was read. Delete it. A study's "
            "results.jsonl is rebuilt")):
        study_records.finished_records(runs, str(tmp_path))


def test_a_root_whose_finished_runs_had_another_recipe_is_refused(tmp_path):
    def planned(**overrides):
        return study.plan(_base(**overrides), root=str(tmp_path), seeds=[0],
                          student_models=["mlp_4"], teacher_models=["cnn_tiny"], arms=["kd"])

    teacher, labels, _ = planned()
    for run in (teacher, labels):  # finished: recorded, and its workdir claimed
        workdir_lib.claim(run.config.workdir, run.config)
        with open(tmp_path / study_records.RESULTS_FILE, "a") as handle:
            handle.write(json.dumps(_minimal_record(0, run)) + "\n")
    study.check_finished_runs(planned(), str(tmp_path))
    study.check_finished_runs(planned(verbose=2), str(tmp_path))  # changes nothing computed
    with pytest.raises(ValueError) as error:
        study.check_finished_runs(planned(num_train=60, temperature=2.0), str(tmp_path))
    message = str(error.value)
    assert message.startswith(f"2 finished run(s) under --root={tmp_path} were trained with")
    assert "--num_train: 120 in the workdir, 60 now" in message
    assert "--temperature: 4.0 in the workdir, 2.0 now" in message
    assert "Use a new --root" in message
    with pytest.raises(ValueError, match="were trained with another configuration"):
        study.run_study(planned(num_train=60), str(tmp_path))  # before training anything


def test_plan_refuses_unknown_arms(tmp_path):
    with pytest.raises(ValueError, match="Unknown arms.*'tllm'"):
        study.plan(_base(), root=str(tmp_path), seeds=[0], student_models=["mlp_4"],
                   teacher_models=["cnn_tiny"], arms=["kd", "tlm"])


def test_paired_difference_matches_a_hand_computation():
    a = np.array([0.80, 0.82, 0.81, 0.85])
    b = np.array([0.79, 0.80, 0.82, 0.83])
    stats = study_stats.paired_difference(a, b)
    difference = a - b
    half = 3.182 * difference.std(ddof=1) / 2
    assert stats["mean"] == pytest.approx(difference.mean())
    assert stats["ci_low"] == pytest.approx(difference.mean() - half)
    assert (stats["better"], stats["worse"], stats["seeds"]) == (3, 1, 4)


@pytest.mark.parametrize("degrees_of_freedom, expected", [
    (1, 12.706), (30, 2.042), (31, 2.0395), (39, 2.0227), (49, 2.0096), (120, 1.9799)])
def test_t_quantile_is_students_beyond_the_table_too(degrees_of_freedom, expected):
    # Exact values from tables of Student's t (beyond 30: 1.96 made intervals 2-3% too narrow).
    assert study_stats.t_quantile_975(degrees_of_freedom) == pytest.approx(expected, abs=2e-4)


def test_paired_p_values_need_only_the_summary():
    # Differences 1, 2, 3: t = 2 / (1 / sqrt 3) on 2 degrees of freedom.
    summary = study_stats.paired_difference(np.array([[1.0, 5.0, 0.0], [2.0, 5.0, 0.0],
                                                      [3.0, 5.0, 0.0]]), np.zeros((3, 3)))
    t = 2 * np.sqrt(3)
    # 5 in every seed: no spread, so the sign test's 2 / 2^3.
    np.testing.assert_allclose(study_stats.paired_p_values(summary),
                               [1 - t / np.sqrt(2 + t ** 2), 0.25, 1.0], atol=1e-12)
    stored = json.loads(json.dumps({k: np.asarray(v).tolist() for k, v in summary.items()}))
    np.testing.assert_allclose(study_stats.paired_p_values(stored),
                               study_stats.paired_p_values(summary))
    single = study_stats.paired_difference(np.ones((1, 2)), np.zeros((1, 2)))
    assert np.isnan(study_stats.paired_p_values(single)).all()
    with_nan = study_stats.paired_difference(np.array([[1.0, np.nan], [2.0, 0.5]]), np.zeros((2, 2)))
    assert np.isnan(study_stats.paired_p_values(with_nan)[1])


def test_pooled_difference_equals_the_difference_over_every_seed():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(23, 4)), rng.normal(size=(23, 4))
    parts = [study_stats.paired_difference(a[i:j], b[i:j]) for i, j in ((0, 7), (7, 20), (20, 23))]
    pooled = study_stats.pooled_difference(parts)
    whole = study_stats.paired_difference(a, b)
    for key in whole:
        np.testing.assert_allclose(pooled[key], whole[key], rtol=1e-12)


def test_holm_names_fewer_hurt_classes_than_each_class_on_its_own():
    rng = np.random.default_rng(3)
    labels = np.full((10, 10), 0.8)
    kd = labels + rng.normal(0.0, 0.01, size=labels.shape)
    kd[:, 2] = labels[:, 2] - 0.05 + rng.normal(0.0, 0.01, size=10)  # Far beyond noise.
    # Below 0 on every seed but one, by a little: p about 0.02, each class on its own.
    kd[:, 6] = labels[:, 6] + np.array([-0.02, -0.01, -0.015, 0.01, -0.005,
                                        -0.012, -0.008, -0.02, -0.003, -0.01])
    hurt, not_hurt = study_stats.significantly_hurt(kd, labels)
    holm, _ = study_stats.significantly_hurt(kd, labels, correction="holm")
    assert list(np.flatnonzero(hurt)) == [2, 6] and not (hurt & not_hurt).any()
    assert list(np.flatnonzero(holm)) == [2] and not (holm & ~hurt).any()
    with pytest.raises(ValueError, match="Unknown correction"):
        study_stats.significantly_hurt(kd, labels, correction="bonferroni")


def test_paired_difference_refuses_values_of_other_shapes():
    with pytest.raises(ValueError, match="one shape"):
        study_stats.paired_difference([0.8, 0.7], [0.8])


def test_flips_count_every_change_of_a_class_mask():
    masks = np.array([[1, 0], [0, 0], [1, 0], [1, 1]], bool)
    np.testing.assert_allclose(study_stats.flips_per_100_updates(masks), [75.0, 25.0])


def test_flips_count_from_the_mask_a_run_started_with():
    masks = np.array([[1, 0], [1, 0], [1, 1]], bool)
    np.testing.assert_allclose(study_stats.flips_per_100_updates(masks, [0]),
                               [0.0, 100 / 3])


def test_a_fixed_mask_is_no_flip_in_the_summary():
    records = []
    for seed in range(3):
        fixed = _record(seed, "tllm_masked_b", 0.81, [0.9, 0.75], masks=[[1.0, 0.0]] * 4)
        records += _labels_and_kd(seed) + [dict(fixed, masked_from_start=[1])]
    (setting,) = study_summary.summarise(records)
    assert setting["arms"]["tllm_masked_b"]["flips_per_100_updates"] == 0.0


def _record(seed, arm, accuracy, per_class, teacher="t", masks=()):
    return {"seed": seed, "student": "s", "teacher": "" if arm == "labels" else teacher,
            "arm": arm, "accuracy": accuracy, "per_class_accuracy": per_class,
            "class_names": ["a", "b"], "masks": list(masks)}


def _labels_and_kd(seed, helped_spread=1):
    """A seed's label-only and KD records: KD hurts class "b" in every seed.

    KD helps class "a" by 10 points, plus `(helped_spread - 1)` tenths of a
    point a seed: with the default, by the same in every seed, which no
    interval can call beyond noise.
    """
    wobble = 0.001 * seed
    return [_record(seed, "labels", 0.80, [0.80 + wobble, 0.80]),
            _record(seed, "kd", 0.82, [0.90 + helped_spread * wobble, 0.70 - wobble])]


def test_summary_finds_the_hurt_class_and_the_arm_that_recovers_it():
    records = []
    for seed in range(5):
        wobble = 0.001 * seed
        records += _labels_and_kd(seed, helped_spread=2) + [
            _record(seed, "tllm", 0.84, [0.90 + wobble, 0.78], masks=[[1.0, 0.0]] * 4)]
    (setting,) = study_summary.summarise(records)
    assert setting["hurt_classes"] == setting["hurt_classes_holm"] == ["b"]
    by_seed = setting["per_class_by_seed"]
    assert sorted(by_seed) == ["kd", "labels", "tllm"]
    np.testing.assert_allclose(by_seed["kd"][3], [0.906, 0.697])
    np.testing.assert_allclose(by_seed["tllm"][4], [0.904, 0.78])
    json.dumps(setting)  # Stays JSON.
    tllm = setting["arms"]["tllm"]
    assert tllm["minus_kd"]["mean"] == pytest.approx(0.02)
    assert tllm["masked_at_end_per_class"] == [0.0, 1.0]
    assert tllm["flips_per_100_updates"] == pytest.approx(12.5)
    assert tllm["not_hurt_masked_update_rate"] == 0.0
    assert tllm["helped_masked_update_rate"] == 0.0  # "a", which KD helps, is never masked.
    assert tllm["hurt_classes_minus_kd"]["mean"] > 0.07
    assert setting["hurt_class_accuracy"]["b"]["kd"] == pytest.approx(0.698)
    recovery = tllm["hurt_class_recovery"]["b"]
    assert recovery["accuracy"] == pytest.approx(0.78)
    assert recovery["minus_kd"]["mean"] == pytest.approx(0.082)
    assert recovery["minus_kd"]["ci_low"] > 0 and recovery["minus_kd"]["better"] == 5
    assert recovery["minus_labels"]["mean"] == pytest.approx(-0.02)
    assert "hurt_class_recovery" not in setting["arms"].get("kd", {})  # KD masks nothing.
    text = study_report.markdown([setting])
    assert "| tllm |" in text
    assert "| b | 80.0 | 69.8 | tllm | 78.0 | +8.20 ± 0.16" in text
    assert "Teacher not in these records; labels only 80.00 ± 0.00;" in text  # Not "nan".
    teachers = [{"seed": seed, "student": "", "teacher": "t", "arm": "teacher",
                 "accuracy": 0.9 + 0.01 * seed} for seed in range(5)]
    (with_teachers,) = study_summary.summarise(records + teachers)
    assert "Teacher 92.00 ± 1.58; labels only" in study_report.markdown([with_teachers])
    assert "after Holm's correction across the classes (paired t-test, 5% for the whole " \
        "table): b." in text


def test_false_alarms_are_reported_per_seed_with_an_interval_and_the_seeds_above_the_bound():
    records = []
    for seed in range(4):
        wobble = 0.001 * seed
        # KD is ahead on "a" in every seed; seeds 0 and 1 mask it at 1 and 3 of their 10 updates.
        masks = [[1.0, 0.0]] * 10
        for update in range({0: 1, 1: 3}.get(seed, 0)):
            masks[update] = [0.0, 0.0]
        records += _labels_and_kd(seed) + [
            _record(seed, "tllm", 0.84, [0.90 + wobble, 0.78], masks=masks)]
    (setting,) = study_summary.summarise(records)
    tllm = setting["arms"]["tllm"]
    per_seed = np.array([0.1, 0.3, 0.0, 0.0])
    assert tllm["not_hurt_masked_update_rate"] == pytest.approx(per_seed.mean())
    half_width = study_stats.t_quantile_975(3) * per_seed.std(ddof=1) / 2
    low, high = tllm["not_hurt_masked_update_rate_ci"]
    assert low == 0.0  # The interval's lower end, below 0, is clipped.
    assert high == pytest.approx(per_seed.mean() + half_width)
    assert tllm["seeds_above_false_alarm_bound"] == 2
    text = study_report.markdown([setting])
    assert f"| 10.0% [0.0, {100 * high:.1f}]; 2/4 seeds > 5% |" in text
    # One seed has no interval: the cell gives the rate alone.
    (one_seed,) = study_summary.summarise([r for r in records if r["seed"] == 1])
    assert "| 30.0% |" in study_report.markdown([one_seed])


def test_the_gain_over_kd_is_split_between_the_masked_classes_and_the_others():
    records = []
    for seed in range(5):
        wobble = 0.001 * seed
        masked_b = [[1.0, 0.0]] * 3
        # Seeds 0-2 mask "b" and take 2 points from "a" to give "b" 10; seeds 3-4 mask nothing.
        per_class, masks = (([0.88 + wobble, 0.80 - wobble], masked_b) if seed < 3 else
                            ([0.90 + wobble, 0.70 - wobble], [[1.0, 1.0]] * 3))
        records += _labels_and_kd(seed) + [_record(seed, "tllm", 0.84, per_class, masks=masks)]
    (setting,) = study_summary.summarise(records)
    gain = setting["arms"]["tllm"]["gain_by_mask"]
    # Per seed, the mean over the two classes of the part: +0.05 and -0.01 where "b" is masked.
    assert gain["masked"]["mean"] == pytest.approx(3 * 0.05 / 5)
    assert gain["not_masked"]["mean"] == pytest.approx(3 * -0.01 / 5)
    assert gain["masked"]["better"] == 3 and gain["not_masked"]["worse"] == 3
    # Labels minus KD on "b" where it is masked: 0.80 - (0.70 - wobble), halved.
    assert gain["labels_on_masked"]["mean"] == pytest.approx(
        np.mean([(0.10 + 0.001 * seed) / 2 if seed < 3 else 0.0 for seed in range(5)]))
    # KD is 10 points and more below labels on "b" in every seed, and "b" is masked in 3 of
    # them; KD is ahead on "a", never masked.
    worst, *_, best = setting["arms"]["tllm"]["masked_by_harm"]
    assert (worst["low"], worst["high"], worst["pairs"]) == (-1.0, -0.10, 5)
    assert worst["masked"] == pytest.approx(0.6)
    assert best == {"low": 0.02, "high": 1.0, "pairs": 5, "masked": 0.0}
    text = study_report.markdown([setting])
    assert "- tllm: masked +3.00 ± " in text and "; others -0.60 ± " in text
    assert "| tllm | 60.0% | - | - | - | 0.0% |" in text
    # "b": +10 points in the 3 seeds that mask it, 0 in the 2 others; "a" never masked.
    assert gain["per_class_when_masked"][0] is None
    assert gain["per_class_when_masked"][1] == pytest.approx(0.10)
    assert gain["per_class_when_not_masked"][1] == pytest.approx(0.0)
    assert gain["seeds_masked_per_class"] == [0, 3]
    assert "| tllm | - / -1.2 (0/5) | +10.0 / +0.0 (3/5) |" in text



def test_a_tllm_arm_of_another_loss_is_compared_with_that_loss_and_its_hurt_classes_named(
        tmp_path):
    records = []
    for seed in range(5):
        wobble = 0.001 * seed
        records += [
            _record(seed, "labels", 0.80, [0.80 + wobble, 0.80]),
            _record(seed, "kd", 0.82, [0.90 + wobble, 0.74 - wobble]),
            _record(seed, "dkd", 0.83, [0.70 + 2 * wobble, 0.90 - wobble]),
            _record(seed, "dkd_tllm", 0.86 + wobble, [0.80, 0.90], masks=[[0.0, 1.0]] * 4),
        ]
    (setting,) = study_summary.summarise(records)
    dkd, dkd_tllm = setting["arms"]["dkd"], setting["arms"]["dkd_tllm"]
    assert dkd["hurt_classes"] == ["a"] and dkd["baseline"] == "kd"
    assert dkd_tllm["baseline"] == "dkd"
    assert dkd_tllm["minus_baseline"]["mean"] == pytest.approx(0.032)
    assert dkd_tllm["minus_kd"]["mean"] == pytest.approx(0.042)
    text = study_report.markdown([setting])
    assert "- dkd_tllm minus dkd: +3.20" in text
    assert "- dkd minus labels: +3.00" in text
    assert "hurts beyond noise (each class on its own): a" in text
    study_report.write(records, str(tmp_path), command="test")
    assert (tmp_path / "study_kd_minus_labels.png").stat().st_size > 0

def test_a_second_pass_is_also_compared_with_its_first_pass_seed_by_seed():
    assert study_arms.paired_baselines()["tllm_two_pass_soft_label"] == "tllm_patience2"
    assert study_arms.paired_baselines()["tllm_refit"] == "tllm_patience2"  # Its own first student.
    records = []
    for seed in range(5):
        wobble = 0.001 * seed
        records += _labels_and_kd(seed) + [
            _record(seed, "tllm_patience2", 0.83, [0.90, 0.74], masks=[[1.0, 0.0]] * 2),
            _record(seed, "tllm_two_pass_soft_label", 0.83 - wobble, [0.86, 0.80 + wobble],
                    masks=[[1.0, 0.0]])]
    (setting,) = study_summary.summarise(records, baselines=study_arms.paired_baselines())
    second = setting["arms"]["tllm_two_pass_soft_label"]
    assert second["baseline"] == "tllm_patience2"
    assert second["minus_baseline"]["mean"] == pytest.approx(-0.002)
    assert second["minus_kd"]["mean"] == pytest.approx(0.008)
    # "b" is the class KD hurt in every seed: 0.80 + wobble against the first pass's 0.74.
    assert second["hurt_classes_minus_baseline"]["mean"] == pytest.approx(0.062)
    assert second["hurt_classes_minus_baseline"]["better"] == 5
    assert setting["arms"]["tllm_patience2"]["baseline"] == "kd"
    text = study_report.markdown([setting])
    assert ("- tllm_two_pass_soft_label minus tllm_patience2: -0.20 ± 0.16 [-0.40, -0.00] 0/4; "
            "on the classes KD hurt (that seed): +6.20") in text
    # Without the pairing, only KD: the report of a study that did not ask for it.
    (unpaired,) = study_summary.summarise(records)
    assert unpaired["arms"]["tllm_two_pass_soft_label"]["baseline"] == "kd"


@pytest.mark.slow
def test_the_tool_runs_a_tiny_study_through_the_stages_and_resumes(zygote, tmp_path):
    root = tmp_path / "study"
    command = ["tools/study.py", "--flagfile=configs/demo.flags",
               f"--root={root}", "--seeds=0", "--student_models=mlp_4", "--teacher_models=cnn_tiny",
               "--arms=kd,tllm", "--num_train=120", "--epochs=2", "--teacher_epochs=1",
               "--teacher_num_train=0", "--verbose=0", "--warmup_epochs=0"]
    # A process of its own from start-up, TensorFlow's import included (its output checked).
    first = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    # One line per run, and none of absl's info lines (saver, fingerprint) in between.
    assert not re.search(r"^I\d{4} ", first.stdout + first.stderr, re.MULTILINE)
    assert first.stdout.rstrip().endswith(f"Wrote {root / 'study.md'}, {root / 'study.json'}, "
                                          f"{root / 'study_kd_minus_labels.png'}.")
    with open(root / "results.jsonl") as handle:
        records = [json.loads(line) for line in handle]
    assert sorted(r["arm"] for r in records) == ["kd", "labels", "teacher", "tllm"]
    # The reference's fallback (on by default) says what it kept for each distilled student.
    assert {r["arm"]: r.get("kept") in ("student", "reference") for r in records} == {
        "kd": True, "labels": False, "teacher": False, "tllm": True}
    tllm = [r for r in records if r["arm"] == "tllm"][0]
    assert len(tllm["masks"]) == 2  # one update per epoch, from the pipeline's mask log
    assert os.path.exists(root / "seed0" / "mlp_4" / "reference" / "reference"
                          / "held_out_predictions.npz")
    summary = json.loads((root / "study.json").read_text())
    assert summary["settings"][0]["arms"]["tllm"]["accuracy"]["mean"] == pytest.approx(
        tllm["accuracy"])
    # A second run trains nothing and reports the same.
    again = zygote.run(command, timeout=600)  # forked: tests/zygote.py
    assert again.returncode == 0 and "[1/" not in again.stdout
    assert json.loads((root / "study.json").read_text()) == summary
    # Without kd: no table, so the report of the root is left as it is.
    no_kd = zygote.run([arg if not arg.startswith("--arms=") else "--arms=tllm"
                        for arg in command], timeout=600)
    assert no_kd.returncode == 0, no_kd.stderr[-3000:]
    assert no_kd.stdout.startswith("Note: --arms=tllm has no kd")
    assert no_kd.stdout.rstrip().endswith(f"No report written (--arms=tllm has no kd: every "
                                          f"table of the report compares the arms with plain "
                                          f"KD); the runs are in {root}.")
    assert f"{root} also holds 1 finished run this command did not name" in no_kd.stdout
    assert json.loads((root / "study.json").read_text()) == summary
    # The same root with another recipe is refused before anything trains.
    other = zygote.run([*command, "--num_train=100"], timeout=600)
    assert other.returncode == 1 and "[1/" not in other.stdout
    assert other.stderr.startswith("Error: ") and "--arms:" not in other.stderr
    assert "--num_train: 120 in the workdir, 100 now" in other.stderr
    assert json.loads((root / "study.json").read_text()) == summary


def test_a_report_of_no_finished_run_is_refused_and_overwrites_nothing(zygote, tmp_path):
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    (results_dir / "study.md").write_text("an earlier study's tables")
    done = zygote.run(["tools/study.py", "--flagfile=configs/demo.flags",
                       f"--root={tmp_path / 'empty_root'}", "--seeds=0", "--arms=kd",
                       "--student_models=mlp_4", "--teacher_models=cnn_tiny", "--report_only",
                       f"--results_dir={results_dir}"], timeout=300)
    assert done.returncode == 1
    # The message alone, not the tool's help before it.
    assert done.stderr.startswith("Error: No run of this plan has finished under --root=")
    assert "--arms:" not in done.stderr
    assert (results_dir / "study.md").read_text() == "an earlier study's tables"
    assert sorted(os.listdir(results_dir)) == ["study.md"]
    assert not os.path.exists(tmp_path / "empty_root")  # A mistyped root is not made.


def test_one_seed_has_no_spread_and_a_rate_interval_stays_below_one():
    single = study_stats.paired_difference([0.8], [0.7])
    assert np.isnan(single["std"]) and np.isnan(single["ci_high"])
    rates = [np.array([1.0, 0.0]), np.array([0.7, 0.0])]  # class 0 not hurt in either seed
    hurt = [np.array([False, True])] * 2
    low, high = study_summary._false_alarms(rates, hurt)["not_hurt_masked_update_rate_ci"]
    assert 0.0 <= low and high == 1.0  # t's interval would reach 2.76


def test_arms_no_table_shows_are_named_with_the_reason():
    records = []
    for seed in range(3):
        records += _labels_and_kd(seed) + [_record(seed, "tllm", 0.84, [0.9, 0.78])]
    records.append(_record(0, "tllm_refit", 0.85, [0.9, 0.8]))  # one seed of three
    records.append(_record(0, "tllm", 0.84, [0.9, 0.78], teacher="other"))  # no kd there
    summaries = study_summary.summarise(records)
    assert study_report.left_out(records, summaries) == [
        "- s student, other teacher: no table (tllm finished): it needs the kd arm and the "
        "label-only runs of a seed.",
        "- s student, t teacher: tllm_refit left out: not finished on every seed the table "
        "compares."]
    assert study_report.left_out(records[:9], study_summary.summarise(records[:9])) == []


def test_a_class_behind_by_the_same_images_in_every_seed_is_not_hurt_on_two_seeds():
    # Per-class accuracies move in whole images: two seeds often differ by exactly the same
    # amount, and Student's t then gave a CI of no width and p = 0 ("hurt", even after Holm).
    labels = np.array([[0.80, 0.70], [0.81, 0.72]])
    kd = labels - [[0.0278, 0.01], [0.0278, 0.03]]
    two = study_stats.paired_difference(kd, labels)
    assert study_stats.paired_p_values(two)[0] == pytest.approx(0.5)
    for correction in study_stats.HURT_CORRECTIONS:
        assert not study_stats.hurt_from_difference(two, correction).any()
    six = study_stats.paired_difference(np.zeros((6, 1)), np.full((6, 1), 0.01))
    assert study_stats.paired_p_values(six)[0] == pytest.approx(2 / 2 ** 6)
    assert study_stats.hurt_from_difference(six).tolist() == [True]
    five = study_stats.paired_difference(np.zeros((5, 1)), np.full((5, 1), 0.01))
    assert study_stats.hurt_from_difference(five).tolist() == [False]
    # One image behind on other counts: equal differences but for float rounding (a review
    # found 3/100 - 4/100 and 2/100 - 3/100 an ulp apart, and t about 1e16).
    ulps = study_stats.paired_difference(np.array([[0.03], [0.02]]), np.array([[0.04], [0.03]]))
    assert 0 < ulps["std"][0] < 1e-15
    assert study_stats.paired_p_values(ulps)[0] == pytest.approx(0.5)
    assert not study_stats.hurt_from_difference(ulps, "holm").any()


def test_the_report_gives_no_interval_without_a_spread_and_names_the_seeds_it_has():
    records = []
    for seed in (0, 2):
        records += [_record(seed, "labels", 0.80, [0.80, 0.80]),
                    _record(seed, "kd", 0.79, [0.78, 0.80])]
    (setting,) = study_summary.summarise(records)
    assert setting["hurt_classes"] == []
    text = study_report.markdown([setting])
    assert "(seeds 0, 2 (2))" in text
    assert "-1.00 ± 0.00 (every seed alike: no interval) 0/2" in text
    assert "| arm |" not in text  # kd alone: no arm, no empty table.
    (single,) = study_summary.summarise(records[:2])
    text = study_report.markdown([single])
    assert "(seed 0)" in text and "-1.00 (one seed: no interval) 0/1" in text


def _tiny_plan(root, seeds, arms=("kd",), **base):
    return study.plan(study.base_kwargs(RunConfig(workdir="unused", **base)), root=str(root),
                      seeds=seeds, student_models=["mlp_4"], teacher_models=["cnn_tiny"],
                      arms=list(arms), teacher_overrides={"num_train": None})


def test_the_default_arm_is_what_tools_train_trains_with_the_same_flags(tmp_path):
    base = dict(epochs=7, patience=3, update_every=2)
    (default,) = [run for run in _tiny_plan(tmp_path, [0], ["kd", "default"], **base)
                  if run.arm == "default"]
    assert default.config.students == RunConfig(workdir="unused").students
    for name, value in base.items():
        assert getattr(default.config, name) == value
    (tllm,) = [run for run in _tiny_plan(tmp_path, [0], ["kd", "tllm"], **base)
               if run.arm == "tllm"]
    assert (tllm.config.patience, tllm.config.update_every) == (1, 1)  # As it was run.
    runs = _tiny_plan(tmp_path, [0], ["kd", "default", "tllm", "tllm_patience2",
                                      "tllm_two_pass"], num_train=1000, **base)
    assert study_arms.overridden_flags(runs, RunConfig(workdir="unused", num_train=1000, **base),
                                  ["patience", "update_every", "warmup_epochs", "num_train"]) == [
        "Note: --patience=3 is not what every run uses: the arms tllm (1), tllm_patience2 (2) "
        "use their own values.",
        "Note: --update_every=2 is not what every run uses: the arms tllm (1), tllm_patience2 "
        "(1), tllm_two_pass (1) use their own values.",
        # A second pass keeps its first pass's mask: no update, whatever --warmup_epochs says.
        "Note: --warmup_epochs=None is not what every run uses: the arm tllm_two_pass (7) uses "
        "its own value."]  # The teachers' num_train is --teacher_num_train's: no note.


def test_a_report_names_the_runs_it_leaves_out_of_its_root(tmp_path):
    # Two processes given other seeds share a root, and each reported only its own.
    records = [dict(_record(seed, arm, 0.8, [0.8, 0.8]), student="mlp_4",
                    teacher="" if arm in ("labels", "teacher") else "cnn_tiny")
               for seed in (0, 1) for arm in ("labels", "kd")]
    records.append(dict(_record(3, "kd", 0.8, [0.8, 0.8]), student="mlp_4", teacher="cnn_tiny"))
    (tmp_path / study_records.RESULTS_FILE).write_text(
        "".join(json.dumps(record) + "\n" for record in records))
    lines = study_records.coverage(_tiny_plan(tmp_path, [0, 1, 2]), str(tmp_path))
    assert lines[0].startswith("5 of this command's 9 runs have not finished (seed 0 "
                               "cnn_tiny teacher, seed 1 cnn_tiny teacher, seed 2 cnn_tiny "
                               "teacher and 2 more)")
    assert lines[1].startswith(f"{tmp_path} also holds 1 finished run this command did not "
                               "name (seed 3 mlp_4 cnn_tiny kd; seed 3, arm kd)")
    assert study_records.coverage(_tiny_plan(tmp_path, [3])[-1:], str(tmp_path))[-1].startswith(
        f"{tmp_path} also holds 4 finished runs")


def test_a_teachers_other_num_train_is_named_as_the_studys_flag(tmp_path):
    (teacher, *_) = _tiny_plan(tmp_path, [0])
    os.makedirs(teacher.config.workdir)
    with open(os.path.join(teacher.config.workdir, workdir_files.CONFIG_FILE), "w") as handle:
        handle.write(dataclasses.replace(teacher.config, num_train=2000).to_json())
    done = {study_records.run_key(teacher): {}}
    with pytest.raises(study.MixedStudyError,
                       match="--teacher_num_train: 2000 in the workdir, 0 now"):
        study.check_finished_runs([teacher], str(tmp_path), done)


def test_the_report_counts_the_seeds_the_reference_fallback_handed_over():
    records = []
    for seed in range(3):
        labels, kd = _labels_and_kd(seed)
        records += [labels, dict(kd, kept="reference" if seed else "student"),
                    dict(_record(seed, "default", 0.81, [0.8, 0.8]), kept="student")]
    (setting,) = study_summary.summarise(records)
    assert setting["handed_over_to_labels"] == {"default": 0, "kd": 2}
    assert ("Seeds (of 3) whose student is the label-only one, handed over by the reference's "
            "fallback (--reference_fallback): default 0, kd 2.") in study_report.markdown([setting])
    (without,) = study_summary.summarise([{k: v for k, v in r.items() if k != "kept"}
                                          for r in records])
    assert without["handed_over_to_labels"] == {}
    assert "handed over" not in study_report.markdown([without])


def test_a_damaged_check_of_a_study_run_is_named_with_the_studys_fix(tmp_path):
    run = study.plan(_base(), root=str(tmp_path), seeds=[0], student_models=["mlp_4"],
                     teacher_models=["cnn_tiny"], arms=["tllm_refit"])[-1]
    _write_student(run.config.workdir, "tllm", 0.6)
    _write_student(run.config.workdir, "tllm_refit", 0.7, check="refit")
    path = os.path.join(run.config.workdir, "student_tllm_refit", workdir_files.REFIT_CHECK_FILE)
    with open(path, "w") as handle:
        handle.write('{"kept": "tl')
    with pytest.raises(ValueError, match=f"{re.escape(path)} .*Delete the workdir of that run"):
        study_records.collect(run)
