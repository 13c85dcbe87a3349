"""Images per second of distillation, against what the two models alone allow.

    python tools/bench_throughput.py --size=tiny                          # ~3 minutes on 2 CPU cores
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
(a round group, timed back to back; a variant's rate there over its fastest
round, or with `--group_rate=median` its median round), and the figure is the
median of those paired ratios, printed with its interquartile range and the
number of pairs; a target is met beyond the spread when the lower quartile
reaches it. `--json` keeps every round, and `--rounds_from` computes the
figures again from them.
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
epoch. Results: docs/benchmarks.md. The variants: `tllm_tf.analysis.benchmark_variants`.
"""

import json

from absl import app
from absl import flags
from absl import logging

from tllm_tf import atomic
from tllm_tf.pipeline import console

if __name__ == "__main__":  # Run, not imported: until main, Ctrl-C says one line.
    console.ctrl_c_ends_start_up()
# Before TensorFlow's first import: no start-up chatter.
console.quiet_tensorflow_start_up()

import keras  # noqa: E402
from tllm_tf.analysis import benchmark  # noqa: E402
from tllm_tf.analysis import benchmark_figures  # noqa: E402
from tllm_tf.analysis import benchmark_variants  # noqa: E402

SIZES = {
    "tiny": dict(teacher="cnn_medium", student="cnn_tiny", image_shape=(32, 32, 3),
                 num_classes=10, steps=40, passes=5, repeats=3, steps_per_execution=10),
    "paper": dict(teacher="resnet32x4", student="resnet8x4", image_shape=(32, 32, 3),
                  num_classes=100, steps=4, passes=2, repeats=2, steps_per_execution=1),
}
TARGETS = {"tllm_over_limit": 0.95, "tllm_over_keras": 1.2}  # at least
STORE_TARGETS = {"store_over_student_train": 0.9, "store_over_keras": 1.8}  # the second: paper
MAX_CALLBACK_SHARE = 0.03

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
flags.DEFINE_enum("group_rate", "best", list(benchmark_figures.GROUP_RATES),
                  "A variant's images/s in a round group: over its fastest round of the group "
                  "(load only slows rounds down) or over its median round.")
flags.DEFINE_string("rounds_from", None, "Measure nothing: compute the figures again from the "
                    "rounds of a --json file this tool wrote (e.g. with another --group_rate).")
FLAGS = flags.FLAGS


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


def _report(figures, groups, header, store, teacher_dtype, clock):
    """Prints the figures; with --json, writes them with the rounds they came from."""
    pooled = benchmark.pool(groups)
    for name, result in pooled.items():
        rates = sorted(result.images / seconds for seconds in result.seconds)
        logging.info("%s: images/s of each round: %s", name, ", ".join(f"{r:.0f}" for r in rates))
    lines = [header, f"medians over {figures['pairs']} round groups (passes) of figures computed "
             f"inside each group, a variant's rate in a group over its {FLAGS.group_rate} "
             "round; [interquartile range]"]
    lines += benchmark_figures.report_lines(
        figures, {name: result.best_images_per_second for name, result in pooled.items()},
        targets=TARGETS, store_targets=STORE_TARGETS, max_callback_share=MAX_CALLBACK_SHARE,
        teacher_dtype=teacher_dtype, store=store, clock=clock)
    print("\n".join(lines), flush=True)
    if FLAGS.json:
        atomic.write_json(FLAGS.json, dict(
            figures, group_rate=FLAGS.group_rate, header=header, clock=clock,
            rounds=benchmark.groups_to_json(groups)), indent=2)


def _recompute(path):
    """--rounds_from: the figures of a finished run again, from its rounds."""
    try:
        with open(path) as handle:
            written = json.load(handle)
    except OSError as error:
        console.exit_with_error(f"Cannot read --rounds_from={path}: {error.strerror or error}.")
    except ValueError as error:
        console.exit_with_error(f"--rounds_from={path} is not JSON ({error}): name a --json "
                                "file this tool wrote.")
    if not isinstance(written, dict) or "rounds" not in written:
        console.exit_with_error(f"{path} holds no rounds: only --json files written since "
                                "2026-12-03 by this tool keep them.")
    groups = benchmark.groups_from_json(written["rounds"])
    teacher_dtype = next((name[len("teacher_infer_"):] for name in groups[0]
                          if name.startswith("teacher_infer_")), None)
    figures = benchmark_figures.paired_distillation_figures(groups, teacher_dtype, FLAGS.group_rate)
    for name in ("store_bytes_per_1000_images_epoch",):
        if name in written:
            figures[name] = written[name]
    _report(figures, groups, written["header"] + f" (recomputed from {path})",
            store="store_distiller" in groups[0], teacher_dtype=teacher_dtype,
            clock=written["clock"])


def _counts(size):
    """The batch size and round counts: each flag's value, or the size's default if unset.

    Raises:
        ValueError: if a value is below 1, naming the flag.
    """
    counts = {}
    for name in ("batch_size", "steps", "passes", "repeats", "warmup", "steps_per_execution"):
        value = FLAGS[name].value
        counts[name] = size[name] if value is None else value
        if counts[name] < 1:
            default = "" if name not in size else f" (leave it out for --size's {size[name]})"
            raise ValueError(f"Expected --{name} >= 1{default}. Received: --{name}={value}")
    return counts


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    console.plain_log_lines()
    size = SIZES[FLAGS.size]
    try:
        if FLAGS.json:
            atomic.check_writable(FLAGS.json)  # Before the measurement, not after it.
        counts = _counts(size)
    except ValueError as error:
        console.exit_with_error(error)
    if FLAGS.rounds_from:
        _recompute(FLAGS.rounds_from)
        return
    if FLAGS.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    setting = benchmark_variants.Setting(
        teacher=size["teacher"], student=size["student"], image_shape=size["image_shape"],
        num_classes=size["num_classes"], batch_size=counts["batch_size"], seed=FLAGS.seed,
        jit_compile=FLAGS.jit_compile, clock=FLAGS.clock,
        steps_per_execution=counts["steps_per_execution"])
    figures, groups = benchmark_variants.measure(
        setting, steps=counts["steps"], passes=counts["passes"], repeats=counts["repeats"],
        warmup=counts["warmup"], teacher_dtype=FLAGS.teacher_dtype, store=FLAGS.store,
        group_rate=FLAGS.group_rate)
    # Without 16-bit units (e.g. AMD Zen 3), a bfloat16 teacher is emulated and slower.
    header = (f"size={FLAGS.size} batch_size={setting.batch_size} "
              f"jit_compile={FLAGS.jit_compile} "
              f"steps_per_execution={setting.steps_per_execution} "
              f"mixed_precision={FLAGS.mixed_precision} teacher_dtype={FLAGS.teacher_dtype} "
              f"clock={FLAGS.clock} cpu_16_bit_units={_cpu_16_bit_units()}")
    _report(figures, groups, header, FLAGS.store, FLAGS.teacher_dtype, FLAGS.clock)


if __name__ == "__main__":
    console.ctrl_c_interrupts()
    app.run(main)
