import inspect
import json

import pytest

from tllm_tf import UndistillableClassCallback
from tllm_tf.pipeline.config import RunConfig


def test_json_round_trip():
    config = RunConfig(workdir="/tmp/x", students=("distilled", "tllm"), lr_decay_epochs=(150, 180),
                       masked_classes=(2, 4))
    assert RunConfig.from_json(config.to_json()) == config
    written_before_masked_classes = json.loads(RunConfig(workdir="w").to_json())
    written_before_masked_classes.pop("masked_classes")
    assert RunConfig.from_json(json.dumps(written_before_masked_classes)).masked_classes == ()
    assert RunConfig(workdir="w", stage="all").stages == ("teacher", "reference", "student")


@pytest.mark.parametrize("field", ["prior_offsets", "rule_prior_offsets", "reference_fallback"])
def test_a_workdir_written_before_a_field_that_is_now_on_reads_as_a_run_without_it(field):
    assert getattr(RunConfig(workdir="w"), field)  # On by default now...
    written_before = json.loads(RunConfig(workdir="w").to_json())
    written_before.pop(field)
    # ... but a run written before the field existed ran without it.
    assert not getattr(RunConfig.from_json(json.dumps(written_before)), field)


@pytest.mark.parametrize("field, value, message", [
    ("temperature", 0.0, "temperature must be > 0"),
    ("epochs", 0, "epochs must be > 0"),
    ("holdout_fraction", 1.0, "holdout_fraction must be in"),
    ("alpha", -1.0, "alpha and beta"),
    ("stage", "distil", "stage must be one of"),
    ("stage", "store", r"stage=store builds .*--teacher_store=DIR"),
    ("students", ("distilled", "dkd"), "students must be"),
    ("masked_class_policy", "zero", "masked_class_policy"),
    ("refit_policy", "zero", r"refit_policy must be one of \['batch_soft_label', 'class_mean', "),
    ("update_every", 0, "update_every"),
    ("max_updates", 0, r"max_updates must be >= 1 \(or unset: no limit\). Received: 0"),
    ("lr_decay_epochs", (180, 150), "increasing"),
    ("patience", 0, r"patience must be >= 1. Received: 0"),
    ("reference_fallback_significance", 1.0,
     r"reference_fallback_significance must be in \(0, 1\). Received: 1.0"),
    ("smoothing", 1.0, r"smoothing must be in \[0, 1\). Received: 1.0"),
    ("smoothing", -0.1, r"smoothing must be in \[0, 1\)"),
    ("margin_standard_errors", -1.0, r"margin_standard_errors must be >= 0. Received: -1.0"),
    ("margin_standard_errors", float("nan"), "margin_standard_errors must be >= 0"),
    ("teacher_dtype", "int8", r"teacher_dtype must be one of \('float32', 'bfloat16', 'float16'\)"),
    ("augmentation", "cifar10", r"augmentation must be one of \['cifar', 'imagenet', 'none'\]"),
    # Refused here, not after the teacher has trained.
    ("student_model", "resnet8x5", r"student_model must be a model of the zoo .*resnet8x4.*"
                                   r"Received: student_model='resnet8x5'"),
    ("teacher_model", "wrn_40_3", r"teacher_model must be a model of the zoo"),
    ("masked_classes", (2, 2), r"masked_classes must be distinct class ids >= 0"),
    ("masked_classes", (-1,), r"masked_classes must be distinct class ids >= 0"),
    # Each of these trained to the end before, with a learning rate that was not a number, or
    # that grew or turned negative at a decay epoch.
    ("learning_rate", float("inf"), r"learning_rate must be > 0 and finite. Received: inf"),
    ("teacher_learning_rate", float("inf"), r"teacher_learning_rate must be > 0 and finite"),
    ("momentum", float("nan"), r"momentum must be in \[0, 1\). Received: nan"),
    ("momentum", 1.0, r"momentum must be in \[0, 1\)"),
    ("momentum", -0.5, r"momentum must be in \[0, 1\)"),
    ("lr_decay_rate", -1.0, r"lr_decay_rate \(the factor .*\) must be in \(0, 1\]. Received: -1.0"),
    ("lr_decay_rate", 0.0, r"lr_decay_rate \(the factor"),
    ("lr_decay_epochs", (-5,), r"lr_decay_epochs must be epochs >= 1. Received: \(-5,\)"),
    ("temperature", float("inf"), r"temperature must be > 0 and finite"),
    ("beta", float("inf"), r"alpha and beta must be >= 0 and finite"),
    ("weight_decay", float("inf"), r"weight_decay must be >= 0 and finite"),
    ("margin", float("inf"), r"margin must be >= 0 and finite"),
    # Checked whatever the loss: --dkd_beta=inf passed with --distillation_loss=kd.
    ("dkd_beta", float("inf"), r"dkd_alpha, dkd_beta and nkd_gamma must be >= 0 and finite. "
                               r"Received: dkd_alpha=1.0, dkd_beta=inf, nkd_gamma=1.5"),
    ("dkd_alpha", float("nan"), r"dkd_alpha, dkd_beta and nkd_gamma must be >= 0 and finite"),
    ("nkd_gamma", -1.0, r"dkd_alpha, dkd_beta and nkd_gamma must be >= 0 and finite"),
])
def test_bad_values_are_refused_with_the_field_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(workdir="w", **{field: value})


def test_masked_classes_need_the_tllm_student():
    with pytest.raises(ValueError, match="masked_classes applies to the tllm student.*"
                                         "add tllm to --students"):
        RunConfig(workdir="w", students=("distilled",), masked_classes=(2,))
    with pytest.raises(ValueError, match="masked_classes_from applies to the tllm student"):
        RunConfig(workdir="w", students=("distilled",), masked_classes_from="runs/first")


@pytest.mark.parametrize("students", [
    ("tllm_refit",), ("distilled", "tllm_refit"), ("tllm_refit", "tllm")])
def test_the_refit_needs_the_tllm_student_before_it(students):
    with pytest.raises(ValueError, match=r"tllm_refit trains with the mask the tllm student ends "
                                         r"with: list tllm before it \(--students=tllm,tllm_refit\)"):
        RunConfig(workdir="w", students=students)


def test_identification_defaults_are_the_callbacks():
    config = RunConfig(workdir="w")
    parameters = inspect.signature(UndistillableClassCallback).parameters
    for name in ("rule", "significance", "correction", "margin", "warmup_epochs",
                 "update_every", "max_updates", "sticky", "min_samples", "smoothing",
                 "patience", "margin_standard_errors"):
        assert getattr(config, name) == parameters[name].default, name
    assert config.masked_classes == tuple(parameters["masked_classes"].default) == ()
    # The callback's None means "when the reference has per-epoch results",
    # which the pipeline's reference stage always records.
    assert parameters["epoch_matched"].default is None and config.epoch_matched


def test_a_workdir_config_of_the_method_era_loads_as_students():
    old = json.loads(RunConfig(workdir="w").to_json())
    old.pop("students")
    old["method"] = ["kd", "tllm"]
    assert RunConfig.from_json(json.dumps(old)).students == ("distilled", "tllm")


def test_old_method_value_kd_is_explained():
    with pytest.raises(ValueError, match='"kd" is now "distilled"'):
        RunConfig(workdir="w", students=("kd",))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_learning_rate_decays_from_the_first_step_of_each_decay_epoch(optimizer):
    from tllm_tf.pipeline import build
    config = RunConfig(workdir="/tmp/x", optimizer=optimizer, learning_rate=0.1,
                       lr_decay_epochs=(2, 3), lr_decay_rate=0.5)
    schedule = build.make_optimizer(config, steps_per_epoch=4)._learning_rate
    # fit's epoch e (from 0) takes steps 4e .. 4e + 3; the optimizer reads the steps already taken.
    rates = [float(schedule(step)) for step in range(16)]
    assert rates == pytest.approx([0.1] * 8 + [0.05] * 4 + [0.025] * 4)


@pytest.mark.parametrize("flags, message", [
    (dict(masked_class_policy="exclude", students=("tllm",)), "--masked_class_policy=exclude"),
    (dict(refit_policy="soft_label_exclude"), "--refit_policy=soft_label_exclude"),
])
def test_a_policy_that_excludes_classes_is_refused_with_a_standardising_loss(flags, message):
    with pytest.raises(ValueError, match=f"{message} with --distillation_loss=kd_ls: .*standardises"):
        RunConfig(workdir="runs/a", distillation_loss="kd_ls", **flags)
    RunConfig(workdir="runs/a", distillation_loss="kd", **flags)


def test_the_policy_is_checked_for_a_distilled_student_too():
    # Every distilled student is compiled with the policy: refused before anything trains.
    with pytest.raises(ValueError, match="--masked_class_policy=exclude with --distillation"):
        RunConfig(workdir="runs/a", distillation_loss="kd_ls", students=("distilled",),
                  masked_class_policy="exclude")
    # The refit's policy only where a refit trains.
    RunConfig(workdir="runs/a", distillation_loss="kd_ls", students=("distilled", "tllm"),
              refit_policy="exclude")


@pytest.mark.parametrize("config_fields, message", [
    # A contributor's config_fields entry with no RunConfig field of that name.
    ({"temperature": "temperature", "scale": "squared_scale"}, "no attribute 'squared_scale'"),
    # A value the loss class refuses (here, of a field the RunConfig checks otherwise).
    ({"temperature": "temperature", "scale": "beta"}, "scale must be at most 0.5"),
])
def test_the_loss_is_built_once_so_what_it_refuses_is_refused_before_any_stage(
        monkeypatch, config_fields, message):
    from tllm_tf import losses

    def squared(teacher_logits, student_logits, labels=None, *, temperature, scale):
        return scale * ((teacher_logits - student_logits) ** 2).mean(axis=-1) / temperature

    class Squared(losses.LogitDistillationLoss):
        function = staticmethod(squared)

        def __init__(self, temperature=4.0, scale=0.5, **kwargs):
            if scale > 0.5:
                raise ValueError(f"scale must be at most 0.5. Received: scale={scale}")
            super().__init__(temperature, scale=scale, **kwargs)

    Squared.config_fields = config_fields
    monkeypatch.setitem(losses.DISTILLATION_LOSSES, "squared", Squared)
    with pytest.raises(ValueError, match=rf"Bad configuration: --distillation_loss=squared: "
                                         rf".*{message}"):
        RunConfig(workdir="w", distillation_loss="squared", beta=0.9)
    RunConfig(workdir="w")  # The default loss builds.


def test_a_teacher_stage_given_a_teacher_is_refused_as_training_nothing():
    # It trained nothing, left a config.json, and ended saying to free disk space.
    with pytest.raises(ValueError, match=r"stage=teacher trains the teacher, and teacher_path "
                                         r"gives one: nothing would train"):
        RunConfig(workdir="w", stage="teacher", teacher_path="t.keras")
    RunConfig(workdir="w", stage="store", teacher_path="t.keras", teacher_store="s")


@pytest.mark.parametrize("verbose", [-1, 3, 5])
def test_a_verbosity_the_tools_do_not_know_is_refused(verbose):
    with pytest.raises(ValueError, match=rf"verbose must be 0, 1 or 2. Received: verbose={verbose}"):
        RunConfig(workdir="w", verbose=verbose)
