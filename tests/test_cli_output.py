"""What the tools print: no TensorFlow chatter, a line and a bar per stage, a short ending."""

import ast
import io
import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import tllm_tf
from conftest import IMAGE_SHAPE, NUM_CLASSES, make_mlp
from tllm_tf.pipeline import config as config_lib
from tllm_tf.pipeline import console
from tllm_tf.pipeline import stage_progress
from tllm_tf.pipeline import build
from tllm_tf.pipeline import fitting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lines seen in a run before the tools were quietened (issue 16).
CHATTER = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796290333.945523   22879 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "E0000 00:00:1796290356.853810   22879 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "I0000 00:00:1733225812.119302   12345 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results due to floating-point round-off errors "
    "from different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.",
]
# Any of these in a tool's output is chatter that got through.
LEAKS = re.compile("|".join([
    r"absl::InitializeLog", r"cudart_stub", r"cuInit", r"oneDNN", r"port\.cc",
    r"shuffle=True", r"ran out of data", r"retracing", r"signature_serialization",
    r"Assets written to", r"fingerprint", r"Sharding callback",
    r"^[IWEF]\d{4} \d\d:\d\d:\d\d",  # absl's log prefix, Python or C++
    r"^(INFO|WARNING):tensorflow",
]), re.MULTILINE)


def test_start_up_chatter_is_recognised_and_real_errors_are_not():
    for line in CHATTER:
        assert console.START_UP_CHATTER.search(line), line
    for line in ("E0000 00:00:17.0 1 op_kernel.cc:1857] OP_REQUIRES failed: out of memory",
                 "ImportError: libcudnn.so.9: cannot open shared object file",
                 "UserWarning: a warning of the program's own"):
        assert not console.START_UP_CHATTER.search(line), line


def test_quiet_start_up_hides_the_chatter_and_restores_standard_error():
    script = ("import os, sys\n"
              "from tllm_tf.pipeline import console\n"
              "console.quiet_tensorflow_start_up()\n"
              "assert 'tensorflow' in sys.modules\n"
              "os.write(2, b'a real error after the import\\n')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=300,
                            env={k: v for k, v in os.environ.items()
                                 if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == "a real error after the import\n"


def test_config_summary_lists_only_what_differs_from_the_defaults():
    config = config_lib.RunConfig(workdir="runs/a", students=("distilled", "tllm"), epochs=60,
                                  lr_decay_epochs=(30, 45), cache=True, mixup=0.4)
    assert console.config_summary(config) == (
        "--students=distilled,tllm --mixup=0.4 --cache --epochs=60 --lr_decay_epochs=30,45")
    assert console.config_summary(config_lib.RunConfig(workdir="runs/a")) == "the defaults"
    assert console.config_summary(
        config_lib.RunConfig(workdir="runs/a", randaugment=True, download=False,
                             teacher_epochs=5)) == "--randaugment --teacher_epochs=5"


def test_progress_line_shows_epochs_metrics_and_time():
    line = console.progress_line(
        18.5, 60, {"loss": 0.41234, "accuracy": 0.873, "num_undistillable_classes": 2.0}, 187)
    assert line == ("[######..............] epoch 19/60 - loss: 0.4123 - accuracy: 0.8730"
                    " - num_undistillable_classes: 2 - 3:07 left")
    assert console.progress_line(60, 60, {}, 3729, finished=True) == (
        "[####################] epoch 60/60 - 1:02:09")
    assert console.progress_line(0, 3, {}, None) == "[....................] epoch 1/3"
    assert [console.format_duration(s) for s in (0.4, 41, 60, 3599.6)] == [
        "0s", "41s", "1:00", "1:00:00"]


def test_stage_line_says_where_a_stage_resumes():
    assert fitting.stage_line("teacher: cnn_large on labels", 1, 0, "w/teacher") == (
        "teacher: cnn_large on labels, 1 epoch -> w/teacher")
    assert fitting.stage_line("student_tllm: x", 60, 36, "w/student_tllm") == (
        "student_tllm: x, resuming at epoch 37 of 60 in w/student_tllm")
    assert fitting.stage_line("reference: x", 60, 60, "w/reference") == (
        "reference: x, all 60 epochs done, finishing in w/reference")


def _tiny_fit(callback, epochs=3, initial_epoch=0, steps_per_execution=1, steps=4):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(8 * steps, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], steps_per_execution=steps_per_execution)
    model.fit(x, y, batch_size=8, epochs=epochs, initial_epoch=initial_epoch, verbose=0,
              shuffle=False, callbacks=[callback])
    return model


def test_stage_progress_writes_one_line_to_a_file_and_resets_between_fits():
    stream = io.StringIO()
    callback = stage_progress.StageProgress(stream=stream, prefix="")
    _tiny_fit(callback)
    _tiny_fit(callback, epochs=5, initial_epoch=2)  # A resumed stage.
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()
    assert re.fullmatch(r"\[#{20}\] epoch 3/3 - loss: \d\.\d{4} - accuracy: \d\.\d{4} - \d+s",
                        lines[0]), lines[0]
    assert lines[1].startswith("[####################] epoch 5/5 - loss: ")


def test_stage_progress_verbose_2_writes_a_line_per_epoch():
    stream = io.StringIO()
    _tiny_fit(stage_progress.StageProgress(verbose=2, stream=stream, prefix=""))
    lines = stream.getvalue().splitlines()
    assert [line.split(" - ")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("loss: " in line and "accuracy: " in line for line in lines)
    with pytest.raises(ValueError, match="Received: verbose=0"):
        stage_progress.StageProgress(verbose=0)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_stage_progress_redraws_one_line_on_a_terminal():
    stream = _Terminal()
    _tiny_fit(stage_progress.StageProgress(stream=stream, prefix="", interval=0.0))
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    frames = text.rstrip("\n").split("\r")[1:]
    assert len(frames) >= 4  # After batches and epochs, then the final one.
    assert "left" in frames[-2] and "epoch 3/3" in frames[-1] and "left" not in frames[-1]


def test_steps_per_execution_keeps_each_epoch_on_its_own_batches():
    assert [build.steps_per_execution(steps, 8) for steps in (6, 35, 37, 64, 3)] == [
        6, 7, 1, 8, 3]
    assert build.steps_per_execution(10, 1) == 1

    class Iterations(keras.callbacks.Callback):
        seen = []

        def on_epoch_end(self, epoch, logs=None):
            self.seen.append(int(self.model.optimizer.iterations))

    # 6 steps per epoch: 8 per execution would train epoch 1 on 8 batches.
    _tiny_fit(Iterations(), steps=6, steps_per_execution=build.steps_per_execution(6, 8))
    assert Iterations.seen == [6, 12, 18]


def _write_workdir(workdir):
    for stage, accuracy in (("reference", [0.8, 0.9, 0.5]), ("student_kd", [0.9, 0.6, 0.5]),
                            ("student_tllm", [0.9, 0.8, 0.6])):
        os.makedirs(workdir / stage)
        with open(workdir / stage / "test_per_class.json", "w") as handle:
            json.dump({"class_names": ["cat", "dog", "bird"], "per_class_accuracy": accuracy,
                       "num_samples": [10, 10, 10], "accuracy": float(np.mean(accuracy))},
                      handle)
    with open(workdir / "student_tllm" / "mask_log.jsonl", "w") as handle:
        handle.write(json.dumps({"epoch": 1, "class_mask": [1.0, 0.0, 1.0]}) + "\n")


def test_report_tool_on_a_workdir_imports_no_tensorflow(tmp_path):
    _write_workdir(tmp_path)
    script = ("import runpy, sys\n"
              "sys.path.insert(0, 'tools')\n"
              f"sys.argv = ['tools/report.py', '--workdir={tmp_path}']\n"
              "try:\n"
              "    runpy.run_path('tools/report.py', run_name='__main__')\n"
              "except SystemExit as exit:\n"
              "    assert not exit.code, exit.code\n"
              "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in "
              "('tensorflow', 'keras', 'tensorflow_datasets', 'jax', 'torch')))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED []" in result.stdout, result.stdout[-2000:]
    assert "TLLM undistillable classes at the end: dog\n" in result.stdout
    assert f"Report: {tmp_path / 'report' / 'report.md'}" in result.stdout
    assert sorted(os.listdir(tmp_path / "report")) == [
        "mask_history.png", "per_class_change.png", "report.json", "report.md"]


def test_the_package_loads_its_names_on_first_use_and_files_still_load(tmp_path):
    keras.utils.set_random_seed(0)
    distiller = tllm_tf.Distiller(make_mlp("student"), make_mlp("teacher"))
    distiller.compile(optimizer="sgd", distillation_loss_fn=tllm_tf.KDLoss(temperature=2.0))
    images = np.random.default_rng(0).normal(size=(16, *IMAGE_SHAPE)).astype(np.float32)
    distiller.fit(images, np.arange(16) % NUM_CLASSES, epochs=1, verbose=0)
    distiller.save(tmp_path / "distiller.keras")
    assert tllm_tf.losses.KDLoss is tllm_tf.KDLoss and "Distiller" in dir(tllm_tf)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        tllm_tf.no_such_name  # noqa: B018
    # A new process: `import tllm_tf` loads neither TensorFlow nor the classes a file names.
    script = ("import sys\n"
              "import tllm_tf\n"
              "assert 'tensorflow' not in sys.modules\n"
              "from tllm_tf.pipeline import model_io\n"
              f"loaded = model_io.load_keras_model({str(tmp_path / 'distiller.keras')!r}, "
              "compile=True)\n"
              "print(type(loaded).__name__, loaded.distillation_loss_fn.temperature)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "Distiller 2.0"


@pytest.mark.slow
def test_demo_prints_a_line_and_a_bar_per_stage_and_no_chatter(demo_runs):
    workdir, result, again = demo_runs
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert not LEAKS.search(output), LEAKS.search(output).group(0) + "\n" + output
    lines = result.stdout.splitlines()
    assert len(lines) <= 42, output
    # Both students of this 3-epoch run take the reference's weights: the summary says so.
    assert ("Holding the label-only reference's weights (the fallback), so that their test "
            "accuracies above are the reference's: student_kd, student_tllm") in lines
    # The demo's decays at epochs 30 and 45 fall after this run's 3 epochs: said once.
    assert lines[2] == ("--lr_decay_epochs=30,45: the teacher's learning rate never decays at "
                        "epochs 30, 45 (--teacher_epochs=1); the students' learning rate never "
                        "decays at epochs 30, 45 (--epochs=3).")
    assert lines[0].startswith("Flags that differ from the defaults: --students=distilled,tllm ")
    assert "--epochs=3 --teacher_epochs=1" in lines[0]
    assert "--steps_per_execution=8: using 6" in output  # 200 images, 6 batches of 32.
    stage_lines = [line for line in lines if re.match(r"(teacher|reference|student_\w+): ", line)]
    # After each student trains, the line of its prior offsets (the default).
    offset_lines = [line for line in stage_lines
                    if ": prior offsets on the held-out split: accuracy " in line]
    assert [line.split(":")[0] for line in offset_lines] == [
        "reference", "student_kd", "student_tllm"]
    # ... and of its check against the label-only reference (the default).
    check_lines = [line for line in stage_lines if "against the reference's" in line]
    assert [line.split(":")[0] for line in check_lines] == ["student_kd", "student_tllm"]
    stage_lines = [line for line in stage_lines
                   if line not in offset_lines and line not in check_lines]
    assert [line.split(":")[0] for line in stage_lines] == [
        "teacher", "reference", "student_kd", "student_tllm"]
    assert stage_lines[0].endswith(f"1 epoch -> {workdir / 'teacher'}")
    bars = [line for line in lines if line.startswith("  [")]
    assert len(bars) == 4 and all("loss: " in bar for bar in bars)
    assert "num_undistillable_classes: " in bars[3] and "num_undistillable" not in bars[2]
    assert "| class | reference | student_kd | student_tllm | KD<ref | masked |" in lines
    assert lines[-2] == ("SavedModels for serving: "
                         f"{workdir / 'student_kd' / 'saved_model'}, "
                         f"{workdir / 'student_tllm' / 'saved_model'}")
    assert lines[-1] == f"Report: {workdir / 'report' / 'report.md'}"

    assert again.returncode == 0, again.stderr[-3000:]
    assert not LEAKS.search(again.stdout + again.stderr)
    for stage in ("teacher", "reference", "student_kd", "student_tllm"):
        assert any(line.startswith(f"{stage}: done, skipped (")
                   for line in again.stdout.splitlines()), again.stdout
    assert "  [" not in again.stdout
    assert again.stdout.splitlines()[-4:] == lines[-4:]


@pytest.mark.parametrize("tool", sorted(
    path.name for path in (pathlib.Path(__file__).parent.parent / "tools").glob("*.py")))
def test_a_tools_help_shows_its_command_lines_as_written(tool):
    # `--help` prints the module docstring: a backslash ending a line of a command joined it
    # to the next line, with the indentation's spaces in between, unless the docstring is raw.
    path = pathlib.Path(__file__).parent.parent / "tools" / tool
    docstring = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""
    joined = [line for line in docstring.splitlines() if re.search(r"\S {5,}--", line)]
    assert not joined, joined


@pytest.mark.parametrize("tool, expected", [
    ("tools/train.py", ("--epochs", "--students", "--dataset", "--seed", "--workdir")),
    ("tools/study.py", ("--seeds", "--epochs", "--dataset")),
    ("tools/evaluate.py", ("--model_path", "--dataset", "--split", "--holdout_fraction")),
])
def test_helpshort_lists_the_flags_a_tool_takes(zygote, tool, expected):
    # The flags are defined in tools/run_flags.py and tools/data_flags.py: absl's short help
    # listed only the tool's own file's flags (none for train.py).
    result = zygote.run([tool, "--helpshort"], timeout=120)
    listed = {line.split(":")[0].strip() for line in result.stdout.splitlines()
              if line.startswith("  --")}
    assert set(expected) <= listed, result.stdout[-2000:]
