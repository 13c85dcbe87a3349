"""The accuracy study: labels-only vs KD vs TLLM on the embedded digits, over seeds.

    # The full study (5 seeds, 4 teachers, 16 TLLM variants): 34 min on 2 CPU cores.
    python tools/study.py --json=results/study.json
    # Its confirmation on fresh seeds and a larger teacher: 21 min.
    python tools/study.py --seeds=5,6,7,8,9 --teachers=cnn_large,cnn_xlarge \
        --variants=plain,soft_label,se_margin_1,margin_0.05,se_1_soft_label \
        --results_dir=results/confirm
    # A smoke test, about 40 s.
    python tools/study.py --quick --json=/tmp/quick.json

Expected (docs/study.md): labels 94.7%, KD 95.4%, TLLM within ~0.4 points of KD.

Writes study.md, study.json and two PNG plots to --results_dir (`results/`;
`results/quick/` with --quick) and, with --json, the per-seed and summary
figures to that path too. See tllm_tf/study.py for what each run trains.
"""

import dataclasses
import json
import os
import time

# Before TensorFlow is imported: keep its C++ start-up chatter out of the output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from tllm_tf import study  # noqa: E402
from tllm_tf import study_report  # noqa: E402
from tllm_tf.teacher_precision import TEACHER_DTYPES  # noqa: E402

_DEFAULTS = study.Setting()
DEFAULT_TEACHERS = ["cnn_tiny", "cnn_small", "cnn_medium", "cnn_large"]

flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds (splits, initialisation, batches).")
flags.DEFINE_list("teachers", DEFAULT_TEACHERS, "Teachers of the capacity sweep, small to large.")
flags.DEFINE_list("variants", list(study.DEFAULT_VARIANTS),
                  "TLLM variants (keys of study.VARIANTS).")
flags.DEFINE_bool("quick", False, "Shrink everything (2 seeds, 3 epochs, small teachers, "
                  "the first 2 variants) for a smoke test.")
flags.DEFINE_string("json", None, "Also write the per-seed and summary figures here.")
flags.DEFINE_string("results_dir", None, "Output folder (default results/, or results/quick/).")
# The setting; one flag per field of study.Setting, same name.
flags.DEFINE_string("student_model", _DEFAULTS.student_model, "Student architecture.")
flags.DEFINE_string("teacher_model", _DEFAULTS.teacher_model, "Teacher of the TLLM students.")
flags.DEFINE_integer("num_train", _DEFAULTS.num_train, "Labelled training images.")
flags.DEFINE_integer("teacher_num_train", _DEFAULTS.teacher_num_train,
                     "Training images of the teachers (default: the whole training split, "
                     "never held-out or test images).")
flags.DEFINE_float("holdout_fraction", _DEFAULTS.holdout_fraction,
                   "Share of the training split held out to find undistillable classes.")
flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Epochs of every student.")
flags.DEFINE_integer("teacher_epochs", _DEFAULTS.teacher_epochs, "Epochs of every teacher.")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Batch size.")
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Adam's initial learning rate.")
flags.DEFINE_integer("shift", _DEFAULTS.shift, "Random shift (pixels) of the students' images.")
flags.DEFINE_float("mixup", _DEFAULTS.mixup, "MixUp Beta parameter of the students' batches.")
flags.DEFINE_integer("teacher_shift", _DEFAULTS.teacher_shift, "Random shift of the teachers' images.")
flags.DEFINE_float("teacher_mixup", _DEFAULTS.teacher_mixup, "MixUp of the teachers' batches.")
flags.DEFINE_float("temperature", _DEFAULTS.temperature, "KD temperature.")
flags.DEFINE_float("alpha", _DEFAULTS.alpha, "Weight of the label loss.")
flags.DEFINE_float("beta", _DEFAULTS.beta, "Weight of the distillation loss.")
flags.DEFINE_enum("teacher_dtype", None, list(TEACHER_DTYPES),
                  "Precision of the distilling teacher (default: float32, as trained).")

FLAGS = flags.FLAGS
QUICK = {"num_train": 100, "epochs": 3, "teacher_epochs": 3, "teacher_model": "cnn_small"}


def setting_from_flags():
    values = {field.name: FLAGS[field.name].value for field in dataclasses.fields(study.Setting)
              if field.name in FLAGS}
    if FLAGS.quick:
        values.update(QUICK)
    return study.Setting(**values)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Each evaluation traces a new counting function; TensorFlow's retracing
    # warnings about it say nothing useful here.
    logging.set_verbosity(logging.ERROR)
    unknown = [name for name in FLAGS.variants if name not in study.VARIANTS]
    if unknown:
        raise app.UsageError(f"Unknown variants {unknown}. Expected some of {list(study.VARIANTS)}.")
    setting = setting_from_flags()
    seeds = [int(seed) for seed in FLAGS.seeds][:2 if FLAGS.quick else None]
    teachers = ["cnn_tiny"] if FLAGS.quick else FLAGS.teachers
    variants = {name: study.VARIANTS[name] for name in FLAGS.variants[:2 if FLAGS.quick else None]}
    results_dir = FLAGS.results_dir or os.path.join("results", "quick" if FLAGS.quick else "")
    os.makedirs(results_dir, exist_ok=True)

    start = time.time()
    records = []
    for seed in seeds:
        records.append(study.run_seed(setting, seed, teachers, variants))
        print(f"seed {seed} done after {time.time() - start:.0f} s: labels "
              f"{records[-1]['labels']['accuracy']:.4f}, KD "
              f"{records[-1]['kd'][setting.teacher_model]['accuracy']:.4f}", flush=True)
    summary = study_report.summarise(records, setting)
    minutes = (time.time() - start) / 60
    output = {"setting": dataclasses.asdict(setting), "seeds": seeds, "teachers": teachers,
              "variants": variants, "runtime_minutes": round(minutes, 2),
              "per_seed": records, "summary": summary}
    paths = [os.path.join(results_dir, "study.json")] + ([FLAGS.json] if FLAGS.json else [])
    for path in paths:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as handle:
            json.dump(output, handle, indent=1)

    title = (f"{setting.student_model} student, {setting.num_train} labels, "
             f"{len(seeds)} seeds")
    command = "python tools/study.py " + " ".join(
        arg for arg in __import__("sys").argv[1:])
    text = (f"# Accuracy study (generated by `{command.strip()}`, {minutes:.1f} min)\n\n"
            + study_report.markdown(summary, setting, seeds)
            + "\n![KD minus labels per class](study_kd_minus_labels.png)\n"
            + "\n![Undistillable classes vs teacher size](study_capacity_gap.png)\n")
    with open(os.path.join(results_dir, "study.md"), "w") as handle:
        handle.write(text)
    study_report.plot_per_class_difference(
        summary, [str(c) for c in range(10)],
        os.path.join(results_dir, "study_kd_minus_labels.png"),
        f"KD ({setting.teacher_model}) minus labels per class; {title}")
    study_report.plot_capacity_gap(
        summary, os.path.join(results_dir, "study_capacity_gap.png"), title)
    print(text)


if __name__ == "__main__":
    app.run(main)
