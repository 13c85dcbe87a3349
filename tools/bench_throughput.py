"""Images per second of distillation, against what the two models alone allow.

    python tools/bench_throughput.py --size=tiny                          # ~70 s on 2 CPU cores
    python tools/bench_throughput.py --size=paper --json=/tmp/paper.json  # ~4 minutes

Variants, on the same synthetic data (fixed seed, in memory, cached and
prefetched) and the same freshly built models:
student_train (`student.fit` on labels), teacher_infer (the teacher's forward
pass, inference mode), limit = 1 / (1/student_train + 1/teacher_infer),
keras_distiller (`keras.distillation.Distiller` + `LogitsDistillation`) and
tllm_distiller (`tllm_tf.Distiller.fit`, half the classes masked,
`UndistillableClassCallback` every epoch on a held-out 10%). Both distillers
compute Hinton's KD loss: Keras's is given `keras.losses.KLDivergence()`, the
instance (its default string "kl_divergence" skips the softened softmax). Each
is measured after warm-up, the variants in turn for `--passes` passes, the
order rotated each pass. Every ratio (and `limit`) is computed inside one pass
(a round group, timed back to back), and the figure is the median of those
paired ratios, printed with its interquartile range and the number of pairs;
a target is met beyond the spread when the lower quartile reaches it.
`--clock=cpu` times with the process's CPU time instead of the wall clock: on
a machine shared with other jobs it measures the work per image, which their
load changes far less than the time (docs/benchmarks.md, Noise). With
`--teacher_dtype=bfloat16` (or float16), three more variants run the teacher
as a 16-bit copy: teacher_infer_<dtype>, tllm_distiller_<dtype>
(`Distiller(teacher_dtype=...)`) and keras_distiller_<dtype> (the copy wrapped
with a float32 cast, which Keras's Distiller needs), with limit_<dtype> and
their ratios; the other figures keep a float32 teacher. With `--store`, a
`tllm_tf.SoftLabelStore` of the training data's one epoch is built (default
top-k and dtype) and two more variants run: store_build (building that epoch
again, into a fresh directory) and store_distiller (tllm_distiller's set-up,
mask and callback, reading the teacher's logits from the store), with
store_over_student_train, store_over_keras, store_build_teacher_passes (the
build's time in teacher passes) and the store's bytes per 1,000 images and
epoch. Results: docs/benchmarks.md.
"""

import json
import os
import shutil
import tempfile

# Before TensorFlow is imported: keep its C++ start-up chatter out of the output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import tllm_tf  # noqa: E402
from tllm_tf.analysis import benchmark  # noqa: E402
from tllm_tf import teacher_precision  # noqa: E402
from tllm_tf.models import build_model  # noqa: E402

SIZES = {
    "tiny": dict(teacher="cnn_medium", student="cnn_tiny", image_shape=(32, 32, 3),
                 num_classes=10, steps=40, passes=5, repeats=3, steps_per_execution=10),
    "paper": dict(teacher="resnet32x4", student="resnet8x4", image_shape=(32, 32, 3),
                  num_classes=100, steps=4, passes=2, repeats=2, steps_per_execution=1),
}
TARGETS = {"tllm_over_limit": 0.95, "tllm_over_keras": 1.2}  # at least
STORE_TARGETS = {"store_over_student_train": 0.9, "store_over_keras": 1.8}  # the second: paper
MAX_CALLBACK_SHARE = 0.03
TEMPERATURE, ALPHA = 4.0, 0.1  # ALPHA: label weight; the distillation weight is 1 - ALPHA

flags.DEFINE_enum("size", "tiny", list(SIZES), "Model pair and data size.")
flags.DEFINE_string("json", None, "If set, the paired figures are written there as JSON.")
flags.DEFINE_integer("batch_size", 64, "Batch size of every variant.")
flags.DEFINE_integer("steps", None, "Training steps per round (default: by --size).")
flags.DEFINE_integer("passes", None, "Passes over the variants (default: by --size).")
flags.DEFINE_integer("repeats", None, "Timed rounds per variant and pass (default: by --size).")
flags.DEFINE_integer("warmup", 1, "Untimed rounds per variant and pass, before the timed ones.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile every variant's step (slower on CPU).")
flags.DEFINE_integer("steps_per_execution", None,
                     "Steps per call of the compiled step (default: by --size).")
flags.DEFINE_bool("mixed_precision", False, "float16 compute, float32 variables (for GPUs).")
flags.DEFINE_enum("teacher_dtype", None, ["bfloat16", "float16"],
                  "Also measure the teacher's pass and tllm_distiller with the teacher "
                  "as a copy in this dtype (Distiller(teacher_dtype=...)).")
flags.DEFINE_enum("clock", "wall", list(benchmark.CLOCKS),
                  "Time rounds by the wall clock, or by this process's CPU time (shared machines).")
flags.DEFINE_bool("store", False, "Also measure distillation from a soft-label store, and "
                  "its build.")
flags.DEFINE_integer("seed", 0, "Seed of the data and of the models' initialisation.")
FLAGS = flags.FLAGS


def _models(size):
    keras.utils.set_random_seed(FLAGS.seed)
    shape, classes = size["image_shape"], size["num_classes"]
    return (build_model(size["teacher"], classes, shape),
            build_model(size["student"], classes, shape))


def _steps_per_execution():
    return FLAGS.steps_per_execution or SIZES[FLAGS.size]["steps_per_execution"]


def _label_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _compile_args():
    return dict(optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
                jit_compile=FLAGS.jit_compile, steps_per_execution=_steps_per_execution())


def measure(size):
    """Returns the paired figures of one model pair, and each variant's best round."""
    num_train = (FLAGS.steps or size["steps"]) * FLAGS.batch_size
    data = dict(image_shape=size["image_shape"], num_classes=size["num_classes"],
                batch_size=FLAGS.batch_size)
    train = benchmark.synthetic_dataset(num_train, seed=FLAGS.seed, **data)
    # 10% of train + held-out, as the pipeline's holdout_fraction=0.1 gives.
    held_out = benchmark.synthetic_dataset(max(1, round(num_train / 9)), seed=FLAGS.seed + 1, **data)
    teacher, student = _models(size)
    student.compile(loss=_label_loss(), **_compile_args())
    clock = FLAGS.clock
    timers = {"student_train": benchmark.FitTimer(student, train, clock=clock),
              "teacher_infer": benchmark.ForwardTimer(
                  teacher, train, FLAGS.jit_compile, _steps_per_execution(), clock)}

    timers["keras_distiller"] = benchmark.FitTimer(
        _keras_distiller(size, None), train, clock=clock)
    distillers = {"tllm_distiller": _masked_distiller(size, held_out, teacher_dtype=None)}
    if FLAGS.teacher_dtype:
        teacher, _ = _models(size)
        timers[f"teacher_infer_{FLAGS.teacher_dtype}"] = benchmark.ForwardTimer(
            teacher_precision.inference_copy(teacher, FLAGS.teacher_dtype), train,
            FLAGS.jit_compile, _steps_per_execution(), clock)
        timers[f"keras_distiller_{FLAGS.teacher_dtype}"] = benchmark.FitTimer(
            _keras_distiller(size, FLAGS.teacher_dtype), train, clock=clock)
        distillers[f"tllm_distiller_{FLAGS.teacher_dtype}"] = _masked_distiller(
            size, held_out, FLAGS.teacher_dtype)
    for name, (distiller, callback) in distillers.items():
        timers[name] = benchmark.FitTimer(
            distiller, train, timed_callback=callback, clock=clock)
    directory = tempfile.mkdtemp(prefix="bench_soft_label_store_") if FLAGS.store else None
    try:
        if FLAGS.store:
            store_bytes = _store_timers(timers, size, train, held_out, directory)
        groups = benchmark.interleave(
            timers, passes=FLAGS.passes or size["passes"], warmup=FLAGS.warmup,
            repeats=FLAGS.repeats or size["repeats"])
    finally:
        if directory:
            shutil.rmtree(directory, ignore_errors=True)
    if not all(distiller.undistillable_classes for distiller, _ in distillers.values()):
        raise RuntimeError("The class mask was meant to be active; no class is masked.")
    pooled = benchmark.pool(groups)
    for name, result in pooled.items():
        rates = sorted(result.images / seconds for seconds in result.seconds)
        logging.info("%s: images/s of each round: %s", name, ", ".join(f"{r:.0f}" for r in rates))
    best = {name: result.best_images_per_second for name, result in pooled.items()}
    figures = benchmark.paired_distillation_figures(groups, FLAGS.teacher_dtype)
    if FLAGS.store:
        figures["store_bytes_per_1000_images_epoch"] = store_bytes
    return figures, best


def _store_timers(timers, size, train, held_out, directory):
    """Adds store_build and store_distiller; returns the store's bytes per 1,000 images."""
    teacher, _ = _models(size)

    def store(name):
        return tllm_tf.SoftLabelStore(
            os.path.join(directory, name), teacher, lambda epoch: train,
            num_classes=size["num_classes"],
            views_fingerprint={"synthetic_seed": FLAGS.seed, "batch_size": FLAGS.batch_size})

    built, rebuilt = store("store"), store("rebuilt")
    built.build(epochs=1)

    def rebuild():
        # The same store object, so its compiled teacher pass is reused.
        shutil.rmtree(rebuilt.directory, ignore_errors=True)
        rebuilt.build(epochs=1)

    images = timers["student_train"].images
    timers["store_build"] = benchmark.CallTimer(rebuild, images, clock=FLAGS.clock)
    distiller, callback = _masked_distiller(size, held_out, teacher_dtype=None)
    timers["store_distiller"] = benchmark.FitTimer(
        distiller, built.attach(train, 0, 1), timed_callback=callback, clock=FLAGS.clock)
    return built.size_on_disk() / images * 1000


def _keras_distiller(size, teacher_dtype):
    """A compiled `keras.distillation.Distiller`, its teacher in `teacher_dtype` if set."""
    teacher, student = _models(size)
    if teacher_dtype:
        # Keras's Distiller refuses a teacher whose outputs' dtype differs
        # from the student's: wrap the 16-bit copy with a float32 cast.
        copy = teacher_precision.inference_copy(teacher, teacher_dtype)
        inputs = keras.Input(size["image_shape"])
        teacher = keras.Model(
            inputs, keras.layers.Activation("linear", dtype="float32")(copy(inputs)))
    distiller = keras.distillation.Distiller(
        teacher=teacher, student=student, student_loss_weight=ALPHA,
        # The instance, not the default "kl_divergence": only with it does Keras
        # soften both sides with the temperature (and scale by T^2), as KDLoss does.
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=TEMPERATURE, loss=keras.losses.KLDivergence()))
    distiller.compile(loss=_label_loss(), **_compile_args())
    return distiller


def _masked_distiller(size, held_out, teacher_dtype):
    """A compiled `tllm_tf.Distiller` with half the classes masked, and its callback."""
    teacher, student = _models(size)
    distiller = tllm_tf.Distiller(student, teacher, teacher_dtype=teacher_dtype)
    distiller.compile(distillation_loss_fn=tllm_tf.KDLoss(temperature=TEMPERATURE),
                      alpha=ALPHA, beta=1.0 - ALPHA, **_compile_args())
    # Even classes are judged against a perfect reference, so they stay masked.
    reference = np.where(np.arange(size["num_classes"]) % 2 == 0, 1.0, 0.0)
    distiller.set_class_mask(1.0 - reference)
    return distiller, tllm_tf.UndistillableClassCallback(held_out, reference=reference)


def _cpu_16_bit_units():
    """The CPU's bfloat16/float16 instruction sets that /proc/cpuinfo lists, e.g. "avx512_bf16"."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags_line = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return "unknown"
    units = sorted(set(flags_line.split()) & {"avx512_bf16", "avx512_fp16", "amx_bf16",
                                              "amx_fp16"})
    return ",".join(units) or "none"


def _report(figures, best):
    # Without 16-bit units (e.g. AMD Zen 3), a bfloat16 teacher is emulated and slower.
    lines = [f"size={FLAGS.size} batch_size={FLAGS.batch_size} jit_compile={FLAGS.jit_compile} "
             f"steps_per_execution={_steps_per_execution()} "
             f"mixed_precision={FLAGS.mixed_precision} teacher_dtype={FLAGS.teacher_dtype} "
             f"clock={FLAGS.clock} cpu_16_bit_units={_cpu_16_bit_units()}",
             f"medians over {figures['pairs']} round groups (passes) of figures computed "
             "inside each group; [interquartile range]"]
    rates = ["student_train", "teacher_infer", "limit", "keras_distiller", "tllm_distiller"]
    targets = dict(TARGETS)
    dtype = FLAGS.teacher_dtype
    if dtype:
        rates += [f"teacher_infer_{dtype}", f"limit_{dtype}", f"keras_distiller_{dtype}",
                  f"tllm_distiller_{dtype}"]
        targets.update({f"tllm_{dtype}_over_limit_{dtype}": TARGETS["tllm_over_limit"],
                        f"tllm_{dtype}_over_keras": TARGETS["tllm_over_keras"]})
    width = max(map(len, rates + list(targets) + [f"tllm_{dtype}_over_keras_{dtype}"]
                    + (["store_build_teacher_passes"] if FLAGS.store else [])))
    unit = "images/s" if FLAGS.clock == "wall" else "images per CPU-second"
    for name in rates:
        best_round = f"  (best round {best[name]:.1f})" if name in best else ""
        lines.append(f"{name:>{width}}: {figures[name]:9.1f}  {unit}{best_round}")
    for name, target in targets.items():
        lower, upper = figures[f"{name}_iqr"]
        verdict = ("met beyond the spread" if lower >= target else
                   "missed beyond the spread" if upper < target else "within the spread")
        lines.append(f"{name:>{width}}: {figures[name]:9.3f}  [{lower:.3f}, {upper:.3f}]  "
                     f"(target >= {target}: {verdict})")
    if dtype:
        name = f"tllm_{dtype}_over_keras_{dtype}"
        lower, upper = figures[f"{name}_iqr"]
        lines.append(f"{name:>{width}}: {figures[name]:9.3f}  [{lower:.3f}, {upper:.3f}]  "
                     "(both with the 16-bit teacher)")
    if FLAGS.store:
        lines += _store_report(figures, best, width, unit)
    share = figures["callback_share"]
    verdict = "met" if share <= MAX_CALLBACK_SHARE else "missed"
    lines.append(f"{'callback_share':>{width}}: {share:9.2%}  "
                 f"(target <= {MAX_CALLBACK_SHARE:.0%}: {verdict})")
    return "\n".join(lines)


def _store_report(figures, best, width, unit):
    lines = [f"{name:>{width}}: {figures[name]:9.1f}  {unit}  (best round {best[name]:.1f})"
             for name in ("store_build", "store_distiller")]
    for name, target in STORE_TARGETS.items():
        lower, upper = figures[f"{name}_iqr"]
        verdict = ("met beyond the spread" if lower >= target else
                   "missed beyond the spread" if upper < target else "within the spread")
        lines.append(f"{name:>{width}}: {figures[name]:9.3f}  [{lower:.3f}, {upper:.3f}]  "
                     f"(target >= {target}: {verdict})")
    lower, upper = figures["store_build_teacher_passes_iqr"]
    lines.append(f"{'store_build_teacher_passes':>{width}}: "
                 f"{figures['store_build_teacher_passes']:9.3f}  [{lower:.3f}, {upper:.3f}]  "
                 "(an epoch's build, in teacher passes over it)")
    lines.append(f"{'store_bytes_per_1000':>{width}}: "
                 f"{figures['store_bytes_per_1000_images_epoch']:9.0f}  bytes per 1,000 images "
                 "and epoch")
    return lines


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    figures, best = measure(SIZES[FLAGS.size])
    print(_report(figures, best), flush=True)
    if FLAGS.json:
        with open(FLAGS.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    app.run(main)
