r"""The accuracy study: label-only, KD and TLLM students over seeds, through tools/train.py's pipeline.

    # Fashion-MNIST, 10 seeds, 2 students, 3 teachers (docs/study.md; about an hour a setting).
    python tools/study.py --flagfile=configs/study_fashion.flags --root=runs/study \
        --seeds=0,1,2,3,4,5,6,7,8,9 --student_models=mlp_16,lenet_2 \
        --teacher_models=mlp_64,mlp_256,mlp_1024 --arms=kd,tllm,unpaired
    # The distilled arms of a seed, student and teacher reading one teacher store:
    python tools/study.py --flagfile=configs/study_fashion.flags --root=runs/study_store \
        --seeds=0,1 --arms=kd,tllm,unpaired --shared_teacher_store
    # The tables, plots and JSON again from what runs/study holds, without training:
    python tools/study.py --flagfile=configs/study_fashion.flags --root=runs/study \
        --seeds=0,1,2,3,4,5,6,7,8,9 --arms=kd,tllm,unpaired --report_only

Every model is a RunConfig (the flag file's flags, then the study's seed, models
and arm) run by the same stages as tools/train.py. The label-only student of
each seed and student is always trained; `default` is what tools/train.py
trains with the same flags. A re-run skips what is done. Writes study.md,
study.json and plots to --root (or --results_dir).
"""

import os
import sys

from absl import app
from absl import flags

from tllm_tf.pipeline import console

if __name__ == "__main__":  # Run, not imported: until main, Ctrl-C says one line.
    console.ctrl_c_ends_start_up()
# Before TensorFlow is imported: keep its C++ start-up chatter out of the output.
console.quiet_tensorflow_start_up()

import run_flags  # noqa: E402  (tools/run_flags.py: one flag per RunConfig field)
import data_flags  # noqa: E402  (imported by run_flags: the data flags)
from tllm_tf.analysis import study  # noqa: E402
from tllm_tf.analysis import study_arms  # noqa: E402
from tllm_tf.analysis import study_records  # noqa: E402
from tllm_tf.analysis import study_report  # noqa: E402
from tllm_tf.data.sources import NUM_TRAIN_LOADERS  # noqa: E402
from tllm_tf.pipeline import preflight  # noqa: E402

flags.DEFINE_string("root", "runs/study", "Where the study's runs and results go.")
flags.DEFINE_string("results_dir", None, "Where study.md, study.json and the plots go "
                    "(default: --root).")
flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds.")
flags.DEFINE_list("student_models", ["mlp_16"], "Student architectures (model zoo names).")
flags.DEFINE_list("teacher_models", ["mlp_256"], "Teacher architectures, small to large.")
flags.DEFINE_list("arms", [study_arms.KD_ARM, study_arms.DEFAULT_ARM],
                  "Distilled students (the label-only student is always trained, and every "
                  "table compares with kd): kd is plain KD; default is TLLM as tools/train.py "
                  "trains it with the same flags; the others, the variants docs/study.md "
                  "measured, each with the values it was run with: "
                  f"{', '.join(sorted(set(study_arms.ARMS) - {'kd', 'default'}))}.")
flags.DEFINE_integer("teacher_num_train", 20000,
                     "Training images of the teachers (0: the whole training split).")
flags.DEFINE_bool("shared_teacher_store", False,
                  "The distilled arms of one seed, student and teacher read one soft-label "
                  "store of the teacher's logits (float16; docs/soft_label_store.md), built by "
                  "the first of them, instead of each running the teacher.")
flags.DEFINE_bool("report_only", False, "Write the report from the finished runs; train nothing.")

FLAGS = flags.FLAGS
# --helpshort lists the flags defined in those modules too, not only this file's.
flags.adopt_module_key_flags(run_flags)
flags.adopt_module_key_flags(data_flags)
_LIST_FLAGS = ("seeds", "student_models", "teacher_models", "arms")


def _check_lists_are_not_empty():
    """Refuses an empty list flag: the study would train only some of its runs, or none."""
    for name in _LIST_FLAGS:
        if not FLAGS[name].value:
            raise app.UsageError(
                f"--{name} is empty: give at least one, e.g. "
                f"--{name}={','.join(FLAGS[name].default)} (the default).")


def _check_lists_have_no_repeats():
    for name in _LIST_FLAGS:
        values = FLAGS[name].value
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            raise app.UsageError(f"--{name} lists {', '.join(repeated)} more than once.")


def _check_teacher_num_train(dataset):
    """Refuses the default --teacher_num_train for a set that cannot keep a subset."""
    if FLAGS.teacher_num_train and dataset not in NUM_TRAIN_LOADERS:
        raise app.UsageError(
            f"--teacher_num_train={FLAGS.teacher_num_train} keeps a subset of the training "
            f"split for the teachers, which only {', '.join(NUM_TRAIN_LOADERS)} can: pass "
            f"--teacher_num_train=0 (the whole split) for --dataset={dataset}.")


def _no_kd():
    """Why a command without kd writes no report (every table compares with it), or None."""
    if study_arms.KD_ARM in FLAGS.arms:
        return None
    return (f"--arms={','.join(FLAGS.arms)} has no {study_arms.KD_ARM}: every table of the "
            "report compares the arms with plain KD")


def _folders_written():
    """The flags naming the folders this command writes: the runs' and the report's."""
    report = "results_dir" if FLAGS.results_dir else "root"
    if not FLAGS.report_only:
        return list(dict.fromkeys(["root", report]))
    # A --root that does not exist holds no run (reported as such), and is not made.
    return [report] if report == "results_dir" or os.path.exists(FLAGS.root) else []


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    _check_lists_are_not_empty()
    _check_lists_have_no_repeats()
    no_kd = _no_kd()
    if FLAGS.report_only and no_kd:
        raise app.UsageError(f"{no_kd}. Add {study_arms.KD_ARM} to --arms.")
    _check_teacher_num_train(FLAGS.dataset)
    console.plain_log_lines()
    try:
        base = run_flags.config_from_flags(workdir=FLAGS.root)
        seeds = run_flags.integers("seeds", FLAGS.seeds, "seeds as 0,1,2")
        plan_kwargs = dict(
            base=study.base_kwargs(base), root=FLAGS.root, seeds=seeds,
            student_models=FLAGS.student_models, teacher_models=FLAGS.teacher_models, arms=FLAGS.arms,
            teacher_overrides={"num_train": FLAGS.teacher_num_train or None},
            shared_teacher_store=FLAGS.shared_teacher_store)
        runs = study.plan(**plan_kwargs)
    except ValueError as error:
        raise app.UsageError(str(error))
    given = [name for name in study.base_kwargs(base)
             if FLAGS[name].present and FLAGS[name].value != FLAGS[name].default]
    notes = study_arms.overridden_flags(runs, base, given)
    if no_kd:
        notes.append(f"Note: {no_kd}, so this command trains and writes no report. A "
                     f"--report_only naming {study_arms.KD_ARM} and these arms reports them.")
    for line in notes:
        print(line, flush=True)
    try:
        for flag in _folders_written():
            preflight.check_writable_directory(flag, FLAGS[flag].value)
        _run_and_report(runs, plan_kwargs, no_kd)
    except ValueError as error:  # A mixed or damaged root, a workdir in use: nothing trained.
        console.exit_with_error(error)
    except KeyboardInterrupt:
        console.exit_interrupted(f"Every finished run is kept in {FLAGS.root}: run the same "
                                 "command again to go on.")


def _run_and_report(runs, plan_kwargs, no_kd):
    results_dir = FLAGS.results_dir or FLAGS.root
    if FLAGS.report_only:
        # The runs reported must be those this command describes (its flags head the report).
        study.check_finished_runs(runs, FLAGS.root)
        records = study_records.finished_records(runs, FLAGS.root)
        if not records:  # An empty report would overwrite the tables of a study run elsewhere.
            console.exit_with_error(
                f"No run of this plan has finished under --root={FLAGS.root} (its "
                f"{study_records.RESULTS_FILE}), so there is nothing to report and {results_dir} is left "
                "as it is. Pass the --root the study ran in, or the --seeds, --student_models, "
                "--teacher_models and --arms it ran.")
    else:
        # Refused before anything trains: new runs of another recipe would join the root's tables.
        records = study.run_study(runs, FLAGS.root, report=lambda line: print(line, flush=True),
                                  checked_runs=study.widened_plan(plan_kwargs, FLAGS.root))
    if no_kd:  # No table: an earlier report stays.
        print("\n".join([*study_records.coverage(runs, FLAGS.root),
                         f"No report written ({no_kd}); the runs are in {FLAGS.root}."]))
        return
    command = "python tools/study.py " + " ".join(sys.argv[1:])
    text, paths = study_report.write(records, results_dir, command=command,
                                     baselines=study_arms.paired_baselines())
    print("\n".join([text, *study_records.coverage(runs, FLAGS.root),
                     f"Wrote {', '.join(paths)}."]))


if __name__ == "__main__":
    console.ctrl_c_interrupts()
    app.run(main)
