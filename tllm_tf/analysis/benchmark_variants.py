"""The variants that tools/bench_throughput.py times, built from one `Setting`.

student_train (`student.fit` on labels), teacher_infer (the teacher's forward
pass), keras_distiller (`keras.distillation.Distiller` with
`LogitsDistillation`), tllm_distiller (`tllm_tf.Distiller`, half the classes
masked, `UndistillableClassCallback` every epoch), and optionally their
16-bit-teacher copies and the soft-label store's build and distillation.
Every variant gets the same synthetic data and freshly built models of the
same seed; `measure` times them in round groups (`benchmark.interleave`) and
returns the paired figures (`benchmark_figures`).
"""

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile

import keras
import numpy as np

from tllm_tf import callbacks as callbacks_lib
from tllm_tf import distiller as distiller_lib
from tllm_tf import losses as losses_lib
from tllm_tf import teacher_precision
from tllm_tf.analysis import benchmark
from tllm_tf.analysis import benchmark_figures
from tllm_tf.data.soft_label_store import SoftLabelStore
from tllm_tf.models import build_model

TEMPERATURE, ALPHA = 4.0, 0.1  # ALPHA: label weight; the distillation weight is 1 - ALPHA


@dataclasses.dataclass(frozen=True)
class Setting:
    """What every variant shares: the model pair, the data's shape, the compiled step, the clock."""

    teacher: str
    student: str
    image_shape: tuple
    num_classes: int
    batch_size: int = 64
    seed: int = 0
    jit_compile: bool = False
    steps_per_execution: int = 1
    clock: str = "wall"


def _models(setting):
    keras.utils.set_random_seed(setting.seed)
    return (build_model(setting.teacher, setting.num_classes, setting.image_shape),
            build_model(setting.student, setting.num_classes, setting.image_shape))


def _label_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _compile_args(setting):
    return dict(optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
                jit_compile=setting.jit_compile,
                steps_per_execution=setting.steps_per_execution)


def keras_distiller(setting, teacher_dtype=None):
    """A compiled `keras.distillation.Distiller`, its teacher in `teacher_dtype` if set."""
    teacher, student = _models(setting)
    if teacher_dtype:
        # Keras's Distiller refuses a teacher whose outputs' dtype differs
        # from the student's: wrap the 16-bit copy with a float32 cast.
        copy = teacher_precision.inference_copy(teacher, teacher_dtype)
        inputs = keras.Input(setting.image_shape)
        teacher = keras.Model(
            inputs, keras.layers.Activation("linear", dtype="float32")(copy(inputs)))
    distiller = keras.distillation.Distiller(
        teacher=teacher, student=student, student_loss_weight=ALPHA,
        # The instance, not the default "kl_divergence": only with it does Keras
        # soften both sides with the temperature (and scale by T^2), as KDLoss does.
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=TEMPERATURE, loss=keras.losses.KLDivergence()))
    distiller.compile(loss=_label_loss(), **_compile_args(setting))
    return distiller


def masked_distiller(setting, held_out, teacher_dtype=None):
    """A compiled `tllm_tf.Distiller` with the even classes masked, and its callback.

    The callback looks at every epoch end as in training, but its
    `masked_classes` keep the even classes masked whatever a look finds: a
    mask set on the model alone would be cleared at the first look (the rule
    masks a class only after `patience` looks), and the variant would then
    time plain KD.

    Args:
        setting: the `Setting` of the variants.
        held_out: the callback's held-out `tf.data.Dataset`.
        teacher_dtype: the `Distiller`'s `teacher_dtype`. Defaults to `None`.

    Returns:
        `(distiller, callback)`: the `tllm_tf.Distiller` and its
        `UndistillableClassCallback`.
    """
    teacher, student = _models(setting)
    distiller = distiller_lib.Distiller(student, teacher, teacher_dtype=teacher_dtype)
    distiller.compile(distillation_loss_fn=losses_lib.KDLoss(temperature=TEMPERATURE),
                      alpha=ALPHA, beta=1.0 - ALPHA, **_compile_args(setting))
    # Odd classes are judged against a reference at 0, so no look masks them. The
    # reference is per class (a few held-out images a class cannot make the paired test
    # significant), so the rule is the unpaired one, named to keep its fallback warning quiet.
    even = np.arange(setting.num_classes) % 2 == 0
    reference = np.where(even, 1.0, 0.0)
    distiller.set_class_mask(1.0 - reference)
    return distiller, callbacks_lib.UndistillableClassCallback(
        held_out, reference=reference, rule="unpaired",
        masked_classes=np.flatnonzero(even).tolist())


# The callback's warnings that the benchmark causes by design, and its user cannot act on.
_BENCHMARK_WARNINGS = ("UndistillableClassCallback: the reference gets classes",
                       "UndistillableClassCallback: this fit starts at epoch")


class _DropsBenchmarkWarnings(logging.Filter):
    """Drops the callback's warnings in `_BENCHMARK_WARNINGS`."""

    def filter(self, record):
        return not record.getMessage().startswith(_BENCHMARK_WARNINGS)


@contextlib.contextmanager
def quiet_benchmark_warnings():
    """Within it, the callback's warnings that the benchmark causes are not logged.

    The benchmark's reference is synthetic, at 0 on the odd classes by
    design, and each round group runs a new `fit` from epoch 0 on the same
    model: the warnings ("Train the reference again", "pass
    fit(initial_epoch=e)") would ask the user for what they cannot do.
    Other warnings pass.
    """
    # The callback logs through the root logger (`logging.warning`).
    root = logging.getLogger()
    dropper = _DropsBenchmarkWarnings()
    root.addFilter(dropper)
    try:
        yield
    finally:
        root.removeFilter(dropper)


def _store_timers(setting, timers, train, held_out, directory):
    """Adds store_build and store_distiller; returns the store's bytes per 1,000 images."""
    teacher, _ = _models(setting)

    def store(name):
        return SoftLabelStore(
            os.path.join(directory, name), teacher, lambda epoch: train,
            num_classes=setting.num_classes,
            views_fingerprint={"synthetic_seed": setting.seed, "batch_size": setting.batch_size})

    built, rebuilt = store("store"), store("rebuilt")
    built.build(epochs=1)

    def rebuild():
        # The same store object, so its compiled teacher pass is reused.
        shutil.rmtree(rebuilt.directory, ignore_errors=True)
        rebuilt.build(epochs=1)

    images = timers["student_train"].images
    timers["store_build"] = benchmark.CallTimer(rebuild, images, clock=setting.clock)
    distiller, callback = masked_distiller(setting, held_out)
    timers["store_distiller"] = benchmark.FitTimer(
        distiller, built.attach(train, 0, 1), timed_callback=callback, clock=setting.clock)
    return built.size_on_disk() / images * 1000


def _timers(setting, train, held_out, teacher_dtype):
    """Every variant's timer but the store's, and the TLLM distillers (to check their mask)."""
    clock, steps = setting.clock, setting.steps_per_execution
    teacher, student = _models(setting)
    student.compile(loss=_label_loss(), **_compile_args(setting))
    timers = {"student_train": benchmark.FitTimer(student, train, clock=clock),
              "teacher_infer": benchmark.ForwardTimer(
                  teacher, train, setting.jit_compile, steps, clock),
              "keras_distiller": benchmark.FitTimer(keras_distiller(setting), train, clock=clock)}
    distillers = {"tllm_distiller": masked_distiller(setting, held_out)}
    if teacher_dtype:
        teacher, _ = _models(setting)
        timers[f"teacher_infer_{teacher_dtype}"] = benchmark.ForwardTimer(
            teacher_precision.inference_copy(teacher, teacher_dtype), train,
            setting.jit_compile, steps, clock)
        timers[f"keras_distiller_{teacher_dtype}"] = benchmark.FitTimer(
            keras_distiller(setting, teacher_dtype), train, clock=clock)
        distillers[f"tllm_distiller_{teacher_dtype}"] = masked_distiller(
            setting, held_out, teacher_dtype)
    for name, (distiller, callback) in distillers.items():
        timers[name] = benchmark.FitTimer(distiller, train, timed_callback=callback, clock=clock)
    return timers, [distiller for distiller, _ in distillers.values()]


def measure(setting, *, steps, passes, repeats, warmup=1, teacher_dtype=None, store=False,
            group_rate="best"):
    """Times every variant in round groups.

    Args:
        setting: the `Setting` every variant shares.
        steps: training steps per round.
        passes: round groups (passes over the variants, order rotated).
        repeats: timed rounds per variant and pass.
        warmup: untimed rounds per variant and pass. Defaults to `1`.
        teacher_dtype: also time the variants with a 16-bit teacher copy
            (`"bfloat16"`, `"float16"`). Defaults to `None`.
        store: also time a `SoftLabelStore`'s build and distillation from
            it. Defaults to `False`.
        group_rate: a group's images/s per variant,
            `benchmark_figures.GROUP_RATES`. Defaults to `"best"`.

    Returns:
        `(figures, groups)`: `benchmark_figures.paired_distillation_figures`
        (plus `store_bytes_per_1000_images_epoch` with `store`), and the
        round groups (`benchmark.interleave`).
    """
    num_train = steps * setting.batch_size
    data = dict(image_shape=setting.image_shape, num_classes=setting.num_classes,
                batch_size=setting.batch_size)
    train = benchmark.synthetic_dataset(num_train, seed=setting.seed, **data)
    # 10% of train + held-out, as the pipeline's holdout_fraction=0.1 gives.
    held_out = benchmark.synthetic_dataset(
        max(1, round(num_train / 9)), seed=setting.seed + 1, **data)
    timers, distillers = _timers(setting, train, held_out, teacher_dtype)
    directory = tempfile.mkdtemp(prefix="bench_soft_label_store_") if store else None
    try:
        with quiet_benchmark_warnings():
            if store:
                store_bytes = _store_timers(setting, timers, train, held_out, directory)
            groups = benchmark.interleave(timers, passes=passes, warmup=warmup, repeats=repeats)
    finally:
        if directory:
            shutil.rmtree(directory, ignore_errors=True)
    if not all(distiller.undistillable_classes for distiller in distillers):
        raise RuntimeError("The class mask was meant to be active; no class is masked.")
    figures = benchmark_figures.paired_distillation_figures(groups, teacher_dtype, group_rate)
    if store:
        figures["store_bytes_per_1000_images_epoch"] = store_bytes
    return figures, groups
