r"""The per-class report of a run: markdown, JSON and PNG plots.

    python tools/report.py --workdir=runs/demo
    python tools/report.py --model_paths=ref=a.keras,kd=b.keras,tllm=c.keras \
        --dataset=digits --output_dir=/tmp/report

From a workdir it reads the stages' test_per_class.json and TLLM's
mask_log.jsonl; from saved models it evaluates them on --dataset (the first
is the baseline; the data flags are tools/train.py's, see
tools/data_flags.py). Writes report.md, report.json, per_class_change.png and
mask_history.png into --output_dir; docs/report.md explains each.

A report from a workdir reads JSON only and loads no TensorFlow.
"""

import os

from absl import app
from absl import flags

from tllm_tf import atomic
from tllm_tf.pipeline import console
from tllm_tf.analysis import reporting
from tllm_tf.analysis import workdir_results
from tllm_tf.pipeline import workdir_files

flags.DEFINE_string("workdir", None, "A tools/train.py workdir to report on.")
flags.DEFINE_list("model_paths", [], "Instead of --workdir: two or more .keras files or "
                  "SavedModel directories, optionally as name=path; the first is the baseline.")
flags.DEFINE_string("mask_log", None, "With --model_paths: a TLLM mask_log.jsonl to include.")
flags.DEFINE_string("output_dir", None, "Where to write the report (default: <workdir>/report).")
flags.DEFINE_string("title", "TLLM per-class report", "Title of report.md.")

FLAGS = flags.FLAGS
_HELP_FLAGS = {"?", "help", "helpshort", "helpfull", "helpxml"}


def _parse_flags(argv):
    """absl's parser, with tools/data_flags.py's flags for --model_paths (or --help).

    The data flags take their defaults from `RunConfig`, which loads
    TensorFlow; a report from a --workdir needs neither.
    """
    wants_help = any(arg.lstrip("-").split("=")[0] in _HELP_FLAGS for arg in argv[1:])
    if not wants_help:
        FLAGS(argv, known_only=True)
    if wants_help or FLAGS.model_paths:
        console.quiet_tensorflow_start_up()
        import data_flags

        data_flags.define_evaluation_flags()
    return app.parse_flags_with_usage(argv)


def _results_from_models():
    import data_flags
    from tllm_tf.analysis import evaluation

    if len(FLAGS.model_paths) < 2:
        raise app.UsageError(
            f"--model_paths needs two or more models. Received: {FLAGS.model_paths}")
    models = evaluation.model_names(FLAGS.model_paths)
    batches, class_names = data_flags.load_batches(models.values())
    results = evaluation.evaluate_models(models, batches, class_names=class_names)
    results["split"] = FLAGS.split
    if FLAGS.mask_log:
        history = workdir_results.read_mask_history(FLAGS.mask_log, len(class_names))
        results["mask_history"] = history
        results["final_mask"] = history[-1]["class_mask"] if history else None
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if bool(FLAGS.workdir) == bool(FLAGS.model_paths):
        raise app.UsageError("Give exactly one of --workdir and --model_paths.")
    if FLAGS.model_paths and not FLAGS.output_dir:
        raise app.UsageError("--model_paths needs --output_dir.")
    if FLAGS.mask_log and not FLAGS.model_paths:
        raise app.UsageError("--mask_log is for --model_paths: a --workdir's report reads the "
                             "mask log of its tllm student.")
    console.plain_log_lines()
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.workdir, workdir_files.REPORT_DIR)
    try:
        if FLAGS.model_paths:  # Before the models are evaluated.
            atomic.check_writable(os.path.join(output_dir, reporting.REPORT_FILES[0]))
            if FLAGS.mask_log and not os.path.isfile(FLAGS.mask_log):
                raise ValueError(f"--mask_log={FLAGS.mask_log!r} is not a file.")
        results = (workdir_results.load_results(FLAGS.workdir) if FLAGS.workdir
                   else _results_from_models())
        atomic.check_writable(os.path.join(output_dir, reporting.REPORT_FILES[0]))
        written = reporting.write_report(results, output_dir, title=FLAGS.title)
    except (ValueError, OSError) as error:  # OSError: a folder that failed while written.
        console.exit_with_error(error)
    except KeyboardInterrupt:
        console.exit_interrupted(f"The report in {output_dir} may be incomplete: run the same "
                                 "command again.")
    print(reporting.markdown_table(results))
    print("\n".join(reporting.summary_lines(results)))
    print(f"Report: {written['report.md']} (report.json and the plots beside it)")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
