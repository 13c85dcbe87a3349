"""The flags of a run: one per field of `tllm_tf.pipeline.config.RunConfig`, same name.

Defined once, here and (the data flags, which the evaluation tools share) in
data_flags.py, for every tool that builds a `RunConfig` (tools/train.py,
tools/study.py); choices come from the library's registries.
"""

import dataclasses
import os

from absl import flags
from absl import logging

import data_flags  # noqa: F401  (the data flags: --dataset, --seed, --batch_size, ...)
from tllm_tf.pipeline import config as config_lib

_DEFAULTS = config_lib.RunConfig(workdir="")

flags.DEFINE_string("workdir", None, "Where every stage writes its results.")
flags.DEFINE_enum("stage", _DEFAULTS.stage, config_lib.STAGES,
                  "Stage(s) to run. store: only build --teacher_store (from the trained "
                  "teacher), for the students of later runs.")
flags.DEFINE_list("students", list(_DEFAULTS.students),
                  "Distilled students of the student stage: distilled (the distillation loss "
                  "on every class), tllm (gated by the undistillable-class mask), tllm_refit "
                  "(after tllm: a fresh student with tllm's final mask from its first step, "
                  "under --refit_policy; docs/study.md). Default: tllm,tllm_refit.")
flags.DEFINE_list("method", None, "Deprecated: the old name of --students (kd -> distilled, "
                  "tllm -> tllm). Still read, with a warning.")
# Data.
flags.DEFINE_bool("download", _DEFAULTS.download, "Let tfds download and prepare a missing data set.")
flags.DEFINE_integer("num_train", None, "Keep only this many training examples (digits and "
                     "fashion_mnist only).")
flags.DEFINE_float("mixup", _DEFAULTS.mixup, "MixUp alpha; 0 turns it off.")
flags.DEFINE_float("cutmix", _DEFAULTS.cutmix, "CutMix Beta parameter in [0, 1]; 0 turns it off.")
flags.DEFINE_bool("randaugment", _DEFAULTS.randaugment, "Apply RandAugment to training batches.")
flags.DEFINE_bool(
    "cache", _DEFAULTS.cache,
    "Cache the decoded training images in memory (not used for an image folder or tfds set "
    "larger than the shuffle buffer, which is read in a new order of its files each epoch).")
# Models.
flags.DEFINE_string("teacher_model", _DEFAULTS.teacher_model, "Teacher architecture (model zoo name).")
flags.DEFINE_string("student_model", _DEFAULTS.student_model, "Student architecture (model zoo name).")
flags.DEFINE_string("teacher_path", None, "A trained teacher .keras file; skips the teacher stage.")
flags.DEFINE_string("reference_path", None, "A reference JSON; skips the reference stage.")
# Optimisation.
flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Epochs of the student stages.")
flags.DEFINE_integer("teacher_epochs", None, "Epochs of the teacher stage (default: --epochs).")
flags.DEFINE_enum("optimizer", _DEFAULTS.optimizer, config_lib.OPTIMIZERS, "Optimizer.")
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Initial learning rate.")
flags.DEFINE_float("teacher_learning_rate", None,
                   "Initial learning rate of the teacher stage (default: --learning_rate).")
flags.DEFINE_float("momentum", _DEFAULTS.momentum, "SGD momentum.")
flags.DEFINE_float("weight_decay", _DEFAULTS.weight_decay, "L2 weight decay (PyTorch SGD sense).")
flags.DEFINE_list("lr_decay_epochs", [], "Epochs at which the learning rate is multiplied by --lr_decay_rate.")
flags.DEFINE_float("lr_decay_rate", _DEFAULTS.lr_decay_rate, "Step decay factor.")
flags.DEFINE_float("teacher_label_smoothing", _DEFAULTS.teacher_label_smoothing,
                   "Label smoothing of the teacher's training.")
# Distillation.
flags.DEFINE_enum("distillation_loss", _DEFAULTS.distillation_loss,
                  sorted(config_lib.DISTILLATION_LOSSES),
                  "Distillation loss (tllm_tf.losses, docs/losses.md): kd (Hinton), dkd "
                  "(decoupled), kd_ls / dkd_ls (logit standardisation), nkd (normalized).")
flags.DEFINE_float("temperature", _DEFAULTS.temperature, "Temperature of the distillation loss.")
flags.DEFINE_float("alpha", _DEFAULTS.alpha, "Weight of the label loss.")
flags.DEFINE_float("beta", _DEFAULTS.beta, "Weight of the distillation loss.")
flags.DEFINE_float("dkd_alpha", _DEFAULTS.dkd_alpha, "dkd/dkd_ls: weight of the target-class term.")
flags.DEFINE_float("dkd_beta", _DEFAULTS.dkd_beta, "dkd/dkd_ls: weight of the non-target term.")
flags.DEFINE_float("nkd_gamma", _DEFAULTS.nkd_gamma, "nkd: weight of the non-target term.")
flags.DEFINE_integer("distillation_warmup_epochs", _DEFAULTS.distillation_warmup_epochs,
                     "The distillation weight rises linearly over these first epochs (DKD: 20).")
flags.DEFINE_enum("masked_class_policy", _DEFAULTS.masked_class_policy,
                  sorted(config_lib.POLICIES),
                  "What an undistillable class's samples learn from (tllm_tf.policies).")
flags.DEFINE_enum("refit_policy", _DEFAULTS.refit_policy, sorted(config_lib.POLICIES),
                  "The policy of the tllm_refit student's masked classes. Default: soft_label "
                  "(docs/study.md).")
flags.DEFINE_bool("refit_fallback", _DEFAULTS.refit_fallback, "The tllm_refit student keeps "
                  "the tllm student's weights when it is behind them on the held-out split "
                  "(a one-sided exact paired test at --significance). Default: on "
                  "(docs/study.md).")
flags.DEFINE_bool("reference_fallback", _DEFAULTS.reference_fallback, "Every distilled "
                  "student (--students: distilled, tllm, tllm_refit) takes the label-only "
                  "reference's weights when it is behind them on the held-out split (a one-sided "
                  "exact paired test at --reference_fallback_significance); reference_check.json "
                  "records the test. It needs the reference's model.keras. Default: on "
                  "(docs/study.md, \"The label-only reference as a fallback\").")
flags.DEFINE_float("reference_fallback_significance", _DEFAULTS.reference_fallback_significance,
                   "The level of --reference_fallback's test, in (0, 1): the larger, the more "
                   "often a student behind the reference takes its weights. Default: 0.2 "
                   "(docs/study.md, \"The label-only reference as a fallback\").")
flags.DEFINE_bool("prior_offsets", _DEFAULTS.prior_offsets, "After each student (and the "
                  "label-only reference) trains, add per-class offsets to its logits, fitted so "
                  "that its mean predicted probabilities on the held-out split match the class "
                  "frequencies there (tllm_tf.prior_offsets; docs/study.md). Default: on.")
# Identification.
flags.DEFINE_bool("rule_prior_offsets", _DEFAULTS.rule_prior_offsets, "The paired rule compares "
                  "the student and the reference after the prior offsets fitted on the held-out "
                  "split at each look (the reference stage records its predictions so; the "
                  "paired rule only). Default: on (docs/study.md).")
flags.DEFINE_enum("rule", _DEFAULTS.rule, list(config_lib.RULES),
                  "paired: McNemar's exact test per class on the held-out images, "
                  "corrected across classes; paired_calibrated: a paired t-test per class on "
                  "each image's calibrated probability of its true class, corrected the same "
                  "way (docs/method.md); paired_capped: the same with each probability "
                  "capped at 0.9, so that an image both get confidently right is a tie; "
                  "unpaired: per-class accuracy difference.")
flags.DEFINE_float("significance", _DEFAULTS.significance, "Level of the paired test. "
                   "With --sticky each look tests at this level divided by the fit's "
                   "number of looks (by the default schedule 15 looks for --epochs=30, so "
                   "0.0033 each; ten for 20, 40 or 60 epochs, 0.005 each). Also the level of "
                   "--refit_fallback's test, at its full value.")
flags.DEFINE_enum("correction", _DEFAULTS.correction, list(config_lib.CORRECTIONS),
                  "Multiple-testing correction of the paired test across classes.")
flags.DEFINE_float("margin", _DEFAULTS.margin, "Accuracy margin, a fraction of a class's "
                   "held-out images: a class is behind only when it trails the reference by "
                   "more, under either rule (with --rule=paired: (b - w) / n > margin, on top "
                   "of the test).")
flags.DEFINE_integer("warmup_epochs", _DEFAULTS.warmup_epochs, "Epochs before the first mask "
                     "update. Default: half of --epochs.")
flags.DEFINE_integer("update_every", _DEFAULTS.update_every, "Epochs between mask updates. "
                     "Default: every epoch while fewer than twenty follow the warm-up, else "
                     "ten to nineteen updates spread over them.")
flags.DEFINE_integer("max_updates", _DEFAULTS.max_updates, "Mask updates to make; then the "
                     "mask stays as it is to the end. Default: update to the end.")
flags.DEFINE_bool("sticky", _DEFAULTS.sticky, "A masked class stays masked (--nosticky: "
                  "it is judged again at every update). Default: on.")
flags.DEFINE_integer("min_samples", _DEFAULTS.min_samples, "Fewest held-out samples to judge a class.")
flags.DEFINE_bool("epoch_matched", _DEFAULTS.epoch_matched, "Compare epoch e with the "
                  "reference's epoch e (the reference stage records every epoch), not with "
                  "the finished reference. Default: on.")
flags.DEFINE_float("smoothing", _DEFAULTS.smoothing, "Weight of the past in a moving average "
                   "of the accuracies over updates, in [0, 1). Default: 0 (none).")
flags.DEFINE_integer("patience", _DEFAULTS.patience, "Consecutive updates a class must be "
                     "behind to be masked. Default: 2 (docs/study.md).")
flags.DEFINE_float("margin_standard_errors", _DEFAULTS.margin_standard_errors, "Extra margin "
                   "in standard errors of the accuracy difference. Default: 0.")
flags.DEFINE_list("masked_classes", list(_DEFAULTS.masked_classes), "Class ids the tllm "
                  "student never distils, masked from the first step whatever the rule finds "
                  "(e.g. an earlier run's final mask). Default: none.")
flags.DEFINE_string("masked_classes_from", _DEFAULTS.masked_classes_from, "The --workdir of an "
                    "earlier run of the same setting: the classes its tllm student had masked "
                    "when it finished are masked from the first step, as with --masked_classes "
                    "(the second run of the two-run recipe, docs/study.md). Default: none.")
# Speed and scale.
flags.DEFINE_bool("jit_compile", _DEFAULTS.jit_compile, "XLA-compile the train step.")
flags.DEFINE_integer("steps_per_execution", _DEFAULTS.steps_per_execution, "Steps per compiled call.")
flags.DEFINE_bool("mixed_precision", _DEFAULTS.mixed_precision, "mixed_float16 compute (GPUs).")
flags.DEFINE_enum("teacher_dtype", _DEFAULTS.teacher_dtype, list(config_lib.TEACHER_DTYPES),
                  "Precision of the distilling teacher's forward pass: bfloat16 (CPUs with "
                  "AVX512-BF16/AMX, recent GPUs) or float16 (GPUs) speed it up. No effect "
                  "with --teacher_store (it holds the float32 teacher's logits). "
                  "Default: the teacher as trained.")
flags.DEFINE_string("teacher_store", _DEFAULTS.teacher_store,
                    "A directory for the teacher's logits on every training view "
                    "(tllm_tf.SoftLabelStore, docs/soft_label_store.md): built once by the "
                    "first distilled student (or by --stage=store), resumable, read by every later one, which then "
                    "runs no teacher. Refused if it was built for another teacher or other "
                    "views. Default: off.")
flags.DEFINE_integer("teacher_store_top_k", _DEFAULTS.teacher_store_top_k,
                     "The --teacher_store keeps each view's k largest logits and the rest's "
                     "total (docs/soft_label_store.md): about 100 for ImageNet's 1,000 classes "
                     "saves most of the disk. 0: every class, exact.", lower_bound=0)
flags.DEFINE_enum("teacher_store_dtype", _DEFAULTS.teacher_store_dtype,
                  list(config_lib.STORE_DTYPES),
                  "The dtype of the --teacher_store's logits: float16 (half the disk; moves a "
                  "run's weights by its rounding) or float32 (the teacher's logits exactly).")
flags.DEFINE_bool("deterministic", _DEFAULTS.deterministic,
                  "Deterministic TensorFlow ops: a resumed run then equals an uninterrupted one.")
flags.DEFINE_enum("strategy", _DEFAULTS.strategy, config_lib.STRATEGIES,
                  "tf.distribute strategy; multi_worker reads TF_CONFIG (docs/multi_worker.md).")
flags.DEFINE_integer("verbose", _DEFAULTS.verbose, "0: only the results at the end; 1: also a "
                     "line and a progress bar per stage; 2: a line per epoch instead of the bar.")

FLAGS = flags.FLAGS


def _class_ids(values):
    try:
        return tuple(int(value) for value in values)
    except ValueError:
        raise ValueError(f"--masked_classes takes class ids (0, 1, ...), not names. "
                         f"Received: {','.join(values)}") from None


def integers(flag, values, example):
    """The integers of a list flag, or an error that names the flag and the bad value.

    Args:
        flag: the flag's name, e.g. `"lr_decay_epochs"`.
        values: its strings, as `flags.DEFINE_list` parses them.
        example: a valid value for the message, e.g. `"epochs as 30,45"`.

    Returns:
        A tuple of ints.

    Raises:
        ValueError: e.g. `--lr_decay_epochs: 'a' is not an integer (give epochs as 30,45)`.
    """
    numbers = []
    for value in values:
        try:
            numbers.append(int(value))
        except ValueError:
            raise ValueError(f"--{flag}: {value!r} is not an integer (give {example}). "
                             f"Received: --{flag}={','.join(values)}") from None
    return tuple(numbers)


def config_from_flags(**overrides):
    """Builds the RunConfig from the parsed flags (one flag per field), then `overrides`."""
    values = {field.name: FLAGS[field.name].value
              for field in dataclasses.fields(config_lib.RunConfig)}
    values["students"] = tuple(values["students"])
    if FLAGS.method is not None:
        if FLAGS["students"].present:
            raise ValueError("Give --students only: --method is its old name.")
        values["students"] = config_lib.students_from_methods(FLAGS.method)
        logging.warning("--method is deprecated: write --students=%s instead.",
                        ",".join(values["students"]))
    values["lr_decay_epochs"] = integers("lr_decay_epochs", values["lr_decay_epochs"],
                                         "epochs as 30,45")
    values["masked_classes"] = _class_ids(values["masked_classes"])
    # A shell expands `~` on its command line, never in a flag file nor after `=`.
    for name in config_lib.PATH_FIELDS:
        if values[name]:
            values[name] = os.path.expanduser(values[name])
    values.update(overrides)
    return config_lib.RunConfig(**values)
