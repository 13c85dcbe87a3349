"""The accuracy study's arms: the named `RunConfig` overrides of its distilled students.

Plain data, no TensorFlow: `tllm_tf.analysis.study` plans its runs from
`ARMS`, and `tllm_tf.analysis.study_report` (which tools/report.py loads
without TensorFlow) names the arms it compares with the same constants. Why
each arm exists, and what it showed: docs/study.md.
"""

# The arm names of the runs that are not distilled students.
LABELS_ARM = "labels"
TEACHER_ARM = "teacher"
# Plain KD on every class: the arm every other one is compared with.
KD_ARM = "kd"
# The students tools/train.py trains by default (TLLM and its refit), with no override: the
# library's defaults under the study's flags. Every other TLLM arm keeps the values it was run
# with (`_build_arms`).
DEFAULT_ARM = "default"
# `<loss>_tllm`: TLLM on top of the distillation loss `<loss>`, compared with `<loss>`.
TLLM_SUFFIX = "_tllm"
# An arm's key (not a `RunConfig` field): mask from the first step the classes that the named
# arm's run of the same seed, student and teacher masked at its end (a second pass).
MASKED_CLASSES_FROM = "masked_classes_from"
# An arm's key (not a `RunConfig` field): the arm it is also compared with in the report, seed by
# seed. A second pass (`MASKED_CLASSES_FROM`) is compared with its first pass without it.
PAIRED_WITH = "paired_with"

# The `RunConfig` fields the study sets run by run; the rest come from the base configuration.
PER_RUN_FIELDS = ("workdir", "stage", "seed", "student_model", "teacher_model", "students",
                  "teacher_path", "reference_path")

# The classes the earlier study found KD to hurt beyond noise in one setting each, by name
# (docs/study.md, "Why the hurt classes are not recovered").
_HURT_CLASSES = {"pullover": (2,), "coat_sneaker": (4, 7), "pullover_sneaker": (2, 7)}
# Other distillation losses with the hyper-parameters of their reference code, DKD's warm-up
# scaled from 20 of 240 epochs to 2 of 20 (docs/study.md, "Undistillable classes under other
# losses").
_LOSS_OVERRIDES = {
    "dkd": {"distillation_loss": "dkd", "temperature": 4.0, "alpha": 1.0, "beta": 1.0,
            "dkd_alpha": 1.0, "dkd_beta": 8.0, "distillation_warmup_epochs": 2},
    "kd_ls": {"distillation_loss": "kd_ls", "temperature": 2.0, "alpha": 1.0, "beta": 9.0},
}
_TLLM = ("tllm",)
_REFIT = ("tllm", "tllm_refit")
# The policies a masked class can be given from the first step, besides the default.
_FIXED_MASK_POLICIES = ("isolate", "exclude", "soft_label", "class_mean")
# The top-wear cluster: T-shirt/top, Pullover, Dress, Coat, Shirt.
_TOPWEAR = (0, 2, 3, 4, 6)
# The epochs of the study's setting (configs/study_fashion.flags).
_STUDY_EPOCHS = 20


def _rule_arms():
    """The rule and policy variants the defaults were chosen among.

    docs/study.md, from "Choosing the defaults on seeds 0-4" on.
    """
    return {
        KD_ARM: {"students": ("distilled",)},
        DEFAULT_ARM: {"students": _REFIT},
        "tllm": {"students": _TLLM},
        "unpaired": {"students": _TLLM, "rule": "unpaired", "epoch_matched": False,
                     "sticky": False, "warmup_epochs": 0, "margin": 0.0, "patience": 1,
                     "smoothing": 0.0, "margin_standard_errors": 0.0},
        "paired": {"students": _TLLM, "rule": "paired", "epoch_matched": False,
                   "sticky": False, "warmup_epochs": 0},
        # The prototype: no update in the first half of training, then a masked class stays so.
        "paired_sticky_half_warmup": {"students": _TLLM, "rule": "paired",
                                      "epoch_matched": False, "sticky": True,
                                      "warmup_epochs": 10},
        "paired_matched_sticky_half_warmup": {"students": _TLLM, "rule": "paired",
                                              "epoch_matched": True, "sticky": True,
                                              "warmup_epochs": 10},
        "paired_matched": {"students": _TLLM, "rule": "paired", "epoch_matched": True,
                           "sticky": False, "warmup_epochs": 0},
        "paired_matched_sticky": {"students": _TLLM, "rule": "paired", "epoch_matched": True,
                                  "sticky": True, "warmup_epochs": 0},
        "paired_matched_sticky_bh": {"students": _TLLM, "rule": "paired", "epoch_matched": True,
                                     "sticky": True, "warmup_epochs": 0,
                                     "correction": "benjamini_hochberg"},
        "paired_matched_sticky_soft_label": {"students": _TLLM, "rule": "paired",
                                             "epoch_matched": True, "sticky": True,
                                             "warmup_epochs": 0,
                                             "masked_class_policy": "soft_label"},
        # Judged against the finished reference: a mid-training difference gone by the end
        # masks nothing.
        "tllm_final_reference": {"students": _TLLM, "epoch_matched": False},
        # Patience: a difference of the half-trained student gone an epoch or two later masks
        # nothing ("Patience 2"; tllm_patience2 is the library's default rule and policy).
        "tllm_patience2": {"students": _TLLM, "patience": 2},
        "tllm_patience3": {"students": _TLLM, "patience": 3},
        # The first update after a quarter of training: does an earlier mask recover more?
        "tllm_warmup5": {"students": _TLLM, "warmup_epochs": 5},
        # The policies that also change what the other classes' samples teach about a masked
        # class, and `exclude` with a stricter rule (its false alarms).
        "tllm_isolate": {"students": _TLLM, "masked_class_policy": "isolate"},
        "tllm_exclude": {"students": _TLLM, "masked_class_policy": "exclude"},
        # Is a hard-labelled class among distilled neighbours out of step with them?
        "tllm_soft_label": {"students": _TLLM, "masked_class_policy": "soft_label"},
        "tllm_exclude_patience3": {"students": _TLLM, "masked_class_policy": "exclude",
                                   "patience": 3},
    }


def _fixed_mask_arms():
    """Masks fixed from the first step, chosen knowing the answer: diagnostics.

    What masking can recover at best, each arm meant for the setting whose
    hurt classes it names (docs/study.md, "Where the gain comes from").
    """
    arms = {}
    for classes_name, classes in _HURT_CLASSES.items():
        arms[f"tllm_masked_{classes_name}"] = {"students": _TLLM, "masked_classes": classes}
        for policy in _FIXED_MASK_POLICIES:
            arms[f"tllm_{policy}_masked_{classes_name}"] = {
                "students": _TLLM, "masked_class_policy": policy, "masked_classes": classes}
    # A whole cluster, or every class, masked with no update: how much of the recovery is soft
    # labels on a cluster rather than taken from its neighbours?
    for arm, policy, classes in (("soft_label_topwear", "soft_label", _TOPWEAR),
                                 ("soft_label_all", "soft_label", tuple(range(10))),
                                 ("hard_label_topwear", "hard_label", _TOPWEAR)):
        arms[arm] = {"students": _TLLM, "masked_class_policy": policy,
                     "masked_classes": classes, "warmup_epochs": _STUDY_EPOCHS}
    return arms


def _two_pass_arms():
    """A first pass's final mask, kept as it is from the first step of a second run.

    docs/study.md, "The policy held the hurt classes back", "One command for
    the two runs" and "Ten looks".
    """
    arms = {}
    for arm, policy in (("tllm_two_pass", "hard_label"),
                        ("tllm_two_pass_soft_label", "soft_label"),
                        ("tllm_two_pass_class_mean", "class_mean"),
                        ("tllm_two_pass_batch_soft_label", "batch_soft_label"),
                        ("tllm_two_pass_soft_label_exclude", "soft_label_exclude"),
                        ("tllm_two_pass_soft_label_symmetric", "soft_label_symmetric")):
        arms[arm] = {"students": _TLLM, "masked_class_policy": policy,
                     MASKED_CLASSES_FROM: "tllm_patience2"}
    # A first pass that only judges, once, at the end: its student is KD's.
    arms["tllm_judge_at_end"] = {"students": _TLLM, "warmup_epochs": _STUDY_EPOCHS - 1,
                                 "patience": 1}
    arms["tllm_two_pass_at_end_soft_label"] = {"students": _TLLM,
                                               "masked_class_policy": "soft_label",
                                               MASKED_CLASSES_FROM: "tllm_judge_at_end"}
    # The two passes in one run (the library's default); its first pass is tllm_patience2's.
    arms["tllm_refit"] = {"students": _REFIT, PAIRED_WITH: "tllm_patience2"}
    # The same with the test on calibrated probabilities judging each look ("A calibrated
    # rule in the library"); its first pass is the run's own tllm student.
    arms["calibrated_refit"] = {"students": _REFIT, "rule": "paired_calibrated"}
    # The same with each calibrated probability capped at 0.9 ("Capped scores").
    arms["capped_refit"] = {"students": _REFIT, "rule": "paired_capped"}
    # One look, at the end, at the level of one of the default's ten: the first pass is KD's
    # student, and the refit trains with the classes the test finds in it (as measured by
    # results/study_fashion/prior_offsets/calibrated_refit.py, here through the library).
    arms["calibrated_at_end_refit"] = {"students": _REFIT, "rule": "paired_calibrated",
                                       "warmup_epochs": _STUDY_EPOCHS - 1, "patience": 1,
                                       "significance": 0.005}
    # A look every third epoch: ten looks in the 60-epoch recipe, as in the 20-epoch one.
    arms["tllm_refit_every3"] = {"students": _REFIT, "update_every": 3,
                                 PAIRED_WITH: "tllm_refit"}
    arms["tllm_refit_class_mean"] = {"students": _REFIT, "refit_policy": "class_mean",
                                     PAIRED_WITH: "tllm_patience2"}
    # The mask decided by the first three updates, before the cascade of soft-labelled classes.
    for arm, policy in (("tllm_updates3", "hard_label"),
                        ("tllm_soft_label_updates3", "soft_label")):
        arms[arm] = {"students": _TLLM, "masked_class_policy": policy, "max_updates": 3}
    return arms


def _loss_arms():
    """KD from the float16 teacher store, and each other loss with and without TLLM."""
    # What the store's default precision costs against `kd` (docs/soft_label_store.md).
    arms = {"kd_store": {"students": ("distilled",), "teacher_store": "teacher_store"}}
    for loss, overrides in _LOSS_OVERRIDES.items():
        arms[loss] = dict(overrides, students=("distilled",))
        arms[f"{loss}{TLLM_SUFFIX}"] = dict(overrides, students=_TLLM)
    return arms


def _build_arms():
    """Every arm by name, in the order a widened plan trains them.

    The TLLM arms run before a default changed keep the value they were run
    with, so that a study root plans the runs it made: patience 1 (before
    "Patience 2") and a look every epoch (before "Ten looks"; in the base
    setting that is the default too).
    """
    arms = {**_rule_arms(), **_fixed_mask_arms(), **_two_pass_arms(), **_loss_arms()}
    for arm in ("tllm", "paired", "paired_sticky_half_warmup", "paired_matched_sticky_half_warmup",
                "paired_matched", "paired_matched_sticky", "paired_matched_sticky_bh",
                "paired_matched_sticky_soft_label", "tllm_final_reference",
                *(f"{loss}{TLLM_SUFFIX}" for loss in _LOSS_OVERRIDES)):
        arms[arm].setdefault("patience", 1)
    for name, spec in arms.items():
        if "tllm" in spec["students"] and name != DEFAULT_ARM:
            spec.setdefault("update_every", 1)
    return arms


ARMS = _build_arms()


def overridden_flags(runs, base, given):
    """Notes on the flags given to a study that some of its runs train with otherwise.

    An arm's overrides, a second pass's warm-up and a shared store's path
    win over the flags; a user who gave one of those flags is told which
    runs do not use it.

    Args:
        runs: the `StudyRun`s of `plan`.
        base: the `RunConfig` made from the flags.
        given: the names of the fields the user set, to other values than
            their defaults.

    Returns:
        A line for each such flag, naming the runs' arms and their values.
    """
    lines = []
    for name in given:
        if name in PER_RUN_FIELDS:
            continue
        value, by_arm = getattr(base, name), {}
        for run in runs:
            # The teachers' num_train is the study's own flag, --teacher_num_train.
            if run.arm == TEACHER_ARM and name == "num_train":
                continue
            if getattr(run.config, name) != value:
                by_arm.setdefault(run.arm, getattr(run.config, name))
        if by_arm:
            arms = ", ".join(f"{arm} ({other!r})" for arm, other in by_arm.items())
            lines.append(f"Note: --{name}={value!r} is not what every run uses: " + (
                f"the arm {arms} uses its own value." if len(by_arm) == 1
                else f"the arms {arms} use their own values."))
    return lines


def paired_baselines():
    """Each arm's `PAIRED_WITH` (a second pass: its first), for the report's paired comparison."""
    return {arm: spec.get(PAIRED_WITH) or spec[MASKED_CLASSES_FROM] for arm, spec in ARMS.items()
            if PAIRED_WITH in spec or MASKED_CLASSES_FROM in spec}
