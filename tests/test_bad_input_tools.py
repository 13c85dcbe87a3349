"""Bad input to the tools, each met as a user meets it: one `Error:` line that names the
problem and the fix, never a traceback (tools/train.py, study.py, evaluate.py, report.py)."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from conftest import checkpointed_epoch
from tllm_tf.analysis import evaluation
from tllm_tf.analysis import reporting
from tllm_tf.analysis import workdir_results

CLASS_NAMES = ["cat", "dog", "bird", "fish"]
# A tiny run: the teacher 1 epoch, the students 3 (a warm-up epoch, then two mask updates).
TINY_RUN = ["--epochs=3", "--teacher_epochs=1", "--num_train=200", "--warmup_epochs=1",
            "--lr_decay_epochs=2"]
# tools/train.py as `python tools/train.py` runs it, with Python's own Ctrl-C handler even
# where the tests' process was started with SIGINT ignored (a background job of a shell).
TRAIN_WITH_CTRL_C = (
    "import os, runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv = ['tools/train.py', *sys.argv[1:]]; sys.path[0] = os.path.abspath('tools'); "
    "runpy.run_path('tools/train.py', run_name='__main__')")


@pytest.fixture
def tool(zygote):
    """Runs `python *args` in a process forked from tests/zygote.py."""
    return lambda *args: zygote.run(list(args), timeout=300)


def _one_error_line(result):
    """Asserts that the tool failed with one `Error:` line and no traceback; returns it."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: "), result.stderr[-3000:]
    assert len([line for line in lines if line.startswith("Error: ")]) == 1
    return lines[-1]


# tools/train.py: a loss that became NaN, and Ctrl-C.

def test_a_loss_that_becomes_nan_is_one_error_line(tool, tmp_path):
    result = tool("tools/train.py", "--flagfile=configs/demo.flags", *TINY_RUN,
                  f"--workdir={tmp_path / 'run'}", "--learning_rate=1e30")
    line = _one_error_line(result)
    assert line.startswith("Error: The training loss became nan at epoch 1")
    assert "Lower --learning_rate" in line
    # Not "the last checkpoint (end of epoch 0) is kept": there is none.
    assert "no epoch had finished, so there is no checkpoint to keep" in line


def test_a_path_that_cannot_be_written_after_training_is_one_error_line(tool, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "report").write_text("a file where the report's folder goes")
    line = _one_error_line(tool("tools/train.py", "--flagfile=configs/demo.flags", *TINY_RUN,
                                "--teacher_model=cnn_tiny", "--stage=teacher",
                                f"--workdir={workdir}"))
    assert str(workdir / "report") in line
    assert line.endswith(f"Anything that finished is kept in {workdir}: make the path "
                         "writable (or free space), then run the same command again to resume.")
    assert (workdir / "teacher" / "test_per_class.json").exists()  # Trained, and kept.


@pytest.mark.slow
def test_ctrl_c_ends_a_run_with_one_line_and_exit_status_130(zygote, tmp_path):
    workdir = tmp_path / "run"
    stderr = tmp_path / "stderr"
    process = zygote.popen(
        ["-c", TRAIN_WITH_CTRL_C, "--flagfile=configs/demo.flags", *TINY_RUN,
         "--teacher_model=cnn_tiny", "--teacher_epochs=100", f"--workdir={workdir}"],
        stderr=stderr)
    deadline = time.time() + 120
    while checkpointed_epoch(workdir / "teacher") < 1 and time.time() < deadline:
        assert process.poll() is None, stderr.read_text()[-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    text = stderr.read_text()
    assert "Traceback" not in text
    assert text.strip().splitlines()[-1] == (
        f"Interrupted. What finished is kept in {workdir}: run the same command again to "
        "resume from the last checkpoint.")
    assert checkpointed_epoch(workdir / "teacher") >= 1  # What it resumes from.


def test_ctrl_c_while_a_tool_starts_is_one_line_and_exit_status_130(tmp_path):
    # A tool imports TensorFlow for seconds before its main; Ctrl-C then printed a traceback.
    script = ("import signal, time; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "from tllm_tf.pipeline import console\n"
              "console.ctrl_c_ends_start_up()\n"
              "print('starting', flush=True)\n"
              "time.sleep(120)\n")
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline() == "starting\n"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.strip() == "Interrupted while starting: nothing was written."


def test_ctrl_c_raises_again_for_main_and_stays_ignored_where_it_was():
    from tllm_tf.pipeline import console
    before = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        console.ctrl_c_ends_start_up()
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        console.ctrl_c_interrupts()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # A job started in the background.
        console.ctrl_c_ends_start_up()
        console.ctrl_c_interrupts()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("tool", ["train", "evaluate", "study", "bench_throughput"])
def test_the_tools_that_import_tensorflow_first_end_ctrl_c_quietly_until_main(tool):
    source = (pathlib.Path(ROOT) / "tools" / f"{tool}.py").read_text()
    assert (source.index('if __name__ == "__main__":  # Run, not imported: until main, '
                         'Ctrl-C says one line.\n    console.ctrl_c_ends_start_up()')
            < source.index("console.quiet_tensorflow_start_up()"))
    assert "    console.ctrl_c_interrupts()\n    app.run(" in source


def test_a_tool_imported_leaves_ctrl_c_as_it_was(tmp_path):
    # Imported (tests/test_configs.py imports train.py), no main runs to hand Ctrl-C back:
    # it would end training in the importing process with "nothing was written".
    script = ("import importlib.util, signal, sys\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "sys.path.insert(0, 'tools')\n"
              "spec = importlib.util.spec_from_file_location('train_tool', 'tools/train.py')\n"
              "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
              "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


# Integer lists that are not integers.

@pytest.mark.parametrize("script, output_flag, bad_flag, message", [
    ("tools/train.py", "--workdir", "--lr_decay_epochs=30,a",
     "--lr_decay_epochs: 'a' is not an integer (give epochs as 30,45)"),
    ("tools/study.py", "--root", "--seeds=0,a",
     "--seeds: 'a' is not an integer (give seeds as 0,1,2)"),
])
def test_a_list_value_that_is_not_an_integer_is_named(
        tool, tmp_path, script, output_flag, bad_flag, message):
    result = tool(script, "--flagfile=configs/demo.flags", f"{output_flag}={tmp_path / 'out'}",
                  bad_flag)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr
    assert not os.path.exists(tmp_path / "out")


def test_a_study_list_that_repeats_a_value_is_refused(tool, tmp_path):
    result = tool("tools/study.py", "--flagfile=configs/demo.flags", f"--root={tmp_path / 'root'}",
                  "--seeds=0,1,0", "--arms=kd")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--seeds lists 0 more than once." in result.stderr
    assert not os.path.exists(tmp_path / "root")


# A model of another data set's classes.

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two digits-shaped `.keras` files: one with the data set's 10 outputs, one with 7."""
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for outputs in (10, 7):
        inputs = keras.Input((8, 8, 1))
        model = keras.Model(inputs, keras.layers.Dense(outputs)(keras.layers.Flatten()(inputs)))
        paths[outputs] = str(root / f"outputs{outputs}.keras")
        model.save(paths[outputs])
    return paths


def test_evaluate_refuses_a_model_with_another_number_of_classes(tool, models):
    line = _one_error_line(tool("tools/evaluate.py", f"--model_path={models[7]}",
                                "--dataset=digits"))
    assert line == (f"Error: Model 'outputs7' ({models[7]}) outputs 7 classes but the data set "
                    "has 10. Evaluate a model trained on this data set, or pass the data flags "
                    "(--dataset, ...) of the run that trained it.")


def test_evaluate_refuses_other_splits_than_the_runs(tool, models, tmp_path):
    from tllm_tf.pipeline.config import RunConfig
    stage_dir = tmp_path / "run" / "student_kd"
    stage_dir.mkdir(parents=True)
    shutil.copy(models[10], stage_dir / "model.keras")
    (tmp_path / "run" / "config.json").write_text(
        RunConfig(workdir=str(tmp_path / "run"), dataset="digits", seed=0).to_json())
    line = _one_error_line(tool("tools/evaluate.py", f"--model_path={stage_dir / 'model.keras'}",
                                "--dataset=digits", "--seed=1"))
    assert "on other splits than these flags give" in line
    assert line.endswith("Pass that run's data flags: --seed=0.")


def test_evaluate_refuses_a_json_path_it_cannot_write_before_evaluating(tool, models, tmp_path):
    (tmp_path / "a_folder.json").mkdir()
    line = _one_error_line(tool("tools/evaluate.py", f"--model_path={models[10]}",
                                "--dataset=digits", f"--json={tmp_path / 'a_folder.json'}"))
    assert line == f"Error: {str(tmp_path / 'a_folder.json')!r} is a directory: name a file to write."


def test_export_under_a_file_is_one_error_line(tool, models, tmp_path):
    (tmp_path / "a_file").write_text("")
    line = _one_error_line(tool("tools/export.py", f"--model_path={models[10]}",
                                f"--export_dir={tmp_path / 'a_file' / 'saved_model'}"))
    assert "a_file" in line


def test_export_of_a_saved_distiller_exports_its_student(tool, models, tmp_path):
    import tllm_tf
    from tllm_tf.pipeline import model_io

    student = model_io.load_keras_model(models[10])
    distiller = tllm_tf.Distiller(student, keras.models.clone_model(student))
    distiller.compile(optimizer="adam")
    distiller.save(str(tmp_path / "distiller.keras"))
    result = tool("tools/export.py", f"--model_path={tmp_path / 'distiller.keras'}",
                  f"--export_dir={tmp_path / 'saved_model'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "is a saved Distiller: exporting its student" in result.stdout
    images = np.random.default_rng(0).uniform(0, 16, (3, 8, 8, 1)).astype(np.float32)
    loaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    np.testing.assert_allclose(loaded.serve(images)["logits"].numpy(),
                               student.predict(images, verbose=0), atol=1e-5)


def test_report_refuses_a_model_with_another_number_of_classes(tool, models, tmp_path):
    result = tool("tools/report.py", f"--model_paths={models[10]},{models[7]}",
                  "--dataset=digits", f"--output_dir={tmp_path / 'report'}")
    assert f"({models[7]}) outputs 7 classes but the data set has 10" in _one_error_line(result)
    assert not os.path.exists(tmp_path / "report")


@pytest.mark.parametrize("output_dir", ["a_file", "a_file/report"])
def test_report_to_a_folder_it_cannot_write_is_one_error_line_before_evaluating(
        tool, models, tmp_path, output_dir):
    # A traceback, after every model had been evaluated.
    (tmp_path / "a_file").write_text("")
    line = _one_error_line(tool("tools/report.py", f"--model_paths={models[10]},{models[10]}",
                                "--dataset=digits", f"--output_dir={tmp_path / output_dir}"))
    assert f"{str(tmp_path / 'a_file')!r} is a file, not a folder" in line


def test_evaluate_models_refuses_a_keras_model_with_another_number_of_classes():
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(7)(keras.layers.Flatten()(inputs)))
    batches = _digits_like_batches()
    with pytest.raises(ValueError, match="Model 'seven' outputs 7 classes but the data set has 10"):
        evaluation.evaluate_models({"seven": model}, batches,
                                   class_names=[str(c) for c in range(10)])


def test_evaluate_models_refuses_a_saved_model_of_other_classes(models, tmp_path):
    from tllm_tf.pipeline import export as export_lib
    from tllm_tf.pipeline import model_io

    path = export_lib.export_saved_model(
        model_io.load_keras_model(models[10]), str(tmp_path / "saved_model"),
        class_names=[f"class {c}" for c in range(10)])
    with pytest.raises(ValueError, match=r"was exported for the classes \['class 0', .*but "
                                         r"the data set's are \['0', '1', "):
        evaluation.evaluate_models({"other": path}, _digits_like_batches(),
                                   class_names=[str(c) for c in range(10)])
    results = evaluation.evaluate_models({"same": path}, _digits_like_batches(),
                                         class_names=[f"class {c}" for c in range(10)])
    assert results["models"] == ["same"]


def test_export_stores_the_class_names_of_the_stage_or_of_the_flag(tool, models, tmp_path):
    stage_dir = tmp_path / "run" / "student_kd"
    stage_dir.mkdir(parents=True)
    shutil.copy(models[10], stage_dir / "model.keras")
    names = [f"n{c}" for c in range(10)]
    (stage_dir / "test_per_class.json").write_text(json.dumps(
        {"class_names": names, "per_class_accuracy": [0.5] * 10, "accuracy": 0.5,
         "num_samples": [3] * 10}))
    result = tool("tools/export.py", f"--model_path={stage_dir / 'model.keras'}",
                  f"--export_dir={tmp_path / 'a'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"class names from {stage_dir / 'test_per_class.json'}" in result.stdout
    loaded = tf.saved_model.load(str(tmp_path / "a"))
    assert [n.decode() for n in loaded.class_names()["class_names"].numpy()] == names

    given = [chr(ord("a") + c) for c in range(10)]
    result = tool("tools/export.py", f"--model_path={stage_dir / 'model.keras'}",
                  f"--export_dir={tmp_path / 'b'}", f"--class_names={','.join(given)}")
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = tf.saved_model.load(str(tmp_path / "b"))
    assert [n.decode() for n in loaded.class_names()["class_names"].numpy()] == given

    result = tool("tools/export.py", f"--model_path={models[10]}",
                  f"--export_dir={tmp_path / 'c'}")
    assert "no class names (pass --class_names to store them)" in result.stdout
    line = _one_error_line(tool("tools/export.py", f"--model_path={models[10]}",
                                f"--export_dir={tmp_path / 'd'}", "--class_names=a,b"))
    assert "one class name per output of the model (10). Received 2" in line
    assert not os.path.exists(tmp_path / "d")


def _digits_like_batches():
    images = np.zeros((4, 8, 8, 1), np.float32)
    return tf.data.Dataset.from_tensor_slices((images, np.arange(4))).batch(2)


# tools/study.py with an empty list.

@pytest.mark.parametrize("flag", ["--teacher_models=", "--student_models=", "--arms=",
                                  "--seeds="])
def test_a_study_with_an_empty_list_is_refused_before_anything_trains(tool, tmp_path, flag):
    result = tool("tools/study.py", "--flagfile=configs/demo.flags", "--seeds=0", "--epochs=1",
                  "--lr_decay_epochs=", "--num_train=100", "--teacher_num_train=100",
                  f"--root={tmp_path / 'study'}", flag)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    name = flag.rstrip("=")
    assert f"{name} is empty: give at least one, e.g. {name}=" in result.stderr
    assert not os.path.exists(tmp_path / "study")


def test_a_study_of_a_set_without_subsets_names_its_teacher_num_train(tool, tmp_path):
    # It named num_train, which the user never passed: the default --teacher_num_train is.
    result = tool("tools/study.py", "--dataset=cifar100", "--seeds=0",
                  f"--root={tmp_path / 'study'}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "pass --teacher_num_train=0 (the whole split) for --dataset=cifar100" in result.stderr
    assert not os.path.exists(tmp_path / "study")


# tools/report.py on a damaged or half-finished workdir.

def _write_json(path, record):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(record, handle)


def _mask_line(epoch, masked):
    mask = [0.0 if name in masked else 1.0 for name in CLASS_NAMES]
    return json.dumps({"epoch": epoch, "class_mask": mask}) + "\n"


def _workdir(root, tllm_finished=True):
    """A hand-written workdir: the reference, KD and TLLM students of 4 classes, and the
    TLLM student's mask log (two updates; "dog" masked at the end)."""
    stages = {"reference": [0.8, 0.9, 0.5, 0.7], "student_kd": [0.9, 0.6, 0.5, 0.8],
              "student_tllm": [0.9, 0.8, 0.6, 0.7]}
    if not tllm_finished:
        del stages["student_tllm"]  # Still training: no test_per_class.json yet.
    for stage, per_class in stages.items():
        _write_json(os.path.join(root, stage, "test_per_class.json"),
                    {"class_names": CLASS_NAMES, "per_class_accuracy": per_class,
                     "num_samples": [10] * 4, "accuracy": float(np.mean(per_class))})
    os.makedirs(root / "student_tllm", exist_ok=True)
    with open(root / "student_tllm" / "mask_log.jsonl", "w") as handle:
        handle.write(_mask_line(2, ["bird"]) + _mask_line(3, ["dog"]))
    return root


def _truncate(path, size=50):
    with open(path) as handle:
        text = handle.read()
    with open(path, "w") as handle:
        handle.write(text[:size])


def _edit_json(path, edit):
    with open(path) as handle:
        record = json.load(handle)
    edit(record)
    _write_json(path, record)


def _tear_last_line(path):
    with open(path, "a") as handle:
        handle.write(_mask_line(4, ["dog", "fish"])[:25])  # As a kill mid-write leaves it.


@pytest.mark.parametrize("damage, file, problem, remedy", [
    (lambda w: _truncate(w / "student_kd" / "test_per_class.json"),
     "student_kd/test_per_class.json", "is damaged: it is not valid JSON (",
     "Delete it to report without student_kd, or delete"),
    (lambda w: _edit_json(w / "student_kd" / "test_per_class.json",
                          lambda r: r.pop("accuracy")),
     "student_kd/test_per_class.json", "is damaged: it has no accuracy.",
     "re-run tools/train.py with the run's flags to train and evaluate student_kd again"),
    (lambda w: _edit_json(w / "student_kd" / "test_per_class.json",
                          lambda r: r.update(per_class_accuracy=[0.5] * 3)),
     "student_kd/test_per_class.json",
     "is damaged: it has 3 per-class accuracies and 4 num_samples for 4 classes.",
     "Delete it to report without student_kd"),
    (lambda w: _edit_json(w / "reference" / "test_per_class.json",
                          lambda r: r.update(class_names=["a", "b", "c"],
                                             per_class_accuracy=[0.5] * 3, num_samples=[1] * 3)),
     "student_kd/test_per_class.json", "names other classes (4) than ",
     "one of them is of another run, or damaged. Delete that one to report without its stage"),
    # A finished student's log has no torn line: there it is damage, not a kill.
    (lambda w: _tear_last_line(w / "student_tllm" / "mask_log.jsonl"),
     "student_tllm/mask_log.jsonl", ", line 3, is not a mask update (",
     "Delete that line to read the other updates, or train the tllm student again"),
    (lambda w: _write_json(w / "student_tllm" / "reference_check.json", {"kept": "student"}),
     "student_tllm/reference_check.json",
     "is damaged: it has no p_value, student_accuracy, reference_accuracy.",
     "Delete it to report without that check."),
])
def test_a_damaged_workdir_file_is_named_with_what_to_do(tool, tmp_path, damage, file,
                                                         problem, remedy):
    workdir = _workdir(tmp_path / "run")
    damage(workdir)
    line = _one_error_line(tool("tools/report.py", f"--workdir={workdir}"))
    assert line.startswith(f"Error: {workdir / file}")
    assert problem in line and remedy in line
    assert not os.path.exists(workdir / "report")


def test_a_tllm_student_that_has_not_finished_is_not_reported_as_final(tool, tmp_path):
    workdir = _workdir(tmp_path / "run", tllm_finished=False)
    result = tool("tools/report.py", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "at the end" not in result.stdout
    assert ("TLLM student not finished (no test_per_class.json yet): undistillable classes "
            "so far, after epoch 3: ['dog']") in result.stdout
    with open(workdir / "report" / "report.json") as handle:
        report = json.load(handle)
    assert report["mask_in_progress"] is True
    assert report["undistillable_classes"]["source"] == "student_kd below reference"
    assert [update["epoch"] for update in report["mask_history"]] == [2, 3]


def test_a_torn_last_mask_update_of_a_student_still_training_is_left_out(tmp_path):
    workdir = _workdir(tmp_path / "run", tllm_finished=False)
    _tear_last_line(workdir / "student_tllm" / "mask_log.jsonl")  # Killed while writing it.
    results = workdir_results.load_results(str(workdir))
    assert [update["epoch"] for update in results["mask_history"]] == [2, 3]
    assert results["mask_in_progress"] and results["final_mask"] is None


def test_the_mask_of_a_finished_tllm_student_is_its_last_update(tmp_path):
    results = workdir_results.load_results(str(_workdir(tmp_path / "run")))
    assert not results["mask_in_progress"]
    assert reporting.undistillable_classes(results) == (["dog"], "tllm_mask")


def test_evaluation_splits_of_the_run_or_of_no_run_are_taken(tmp_path):
    from tllm_tf.pipeline import model_origin
    from tllm_tf.pipeline.config import RunConfig
    (tmp_path / "run" / "student_kd").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text(
        RunConfig(workdir=str(tmp_path / "run"), dataset="digits", seed=3).to_json())
    model_origin.check_evaluation_splits(str(tmp_path / "run" / "student_kd" / "model.keras"),
                                         dataset="digits", seed=3, holdout_fraction=0.2)
    model_origin.check_evaluation_splits(str(tmp_path / "exported"), dataset="digits", seed=1,
                                         holdout_fraction=0.5)  # no run's config beside it
    with pytest.raises(ValueError, match="--holdout_fraction=0.2"):
        model_origin.check_evaluation_splits(str(tmp_path / "run" / "student_kd" / "model.keras"),
                                             dataset="digits", seed=3, holdout_fraction=0.3)


def test_a_stage_that_began_and_did_not_finish_is_named_as_unfinished(tool, tmp_path):
    workdir = _workdir(tmp_path / "run")
    (workdir / "student_tllm_refit").mkdir()  # Killed before its test_per_class.json.
    result = tool("tools/report.py", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("Not finished (no test_per_class.json yet), so not in the table: "
            "student_tllm_refit; the same tools/train.py command resumes them") in result.stdout
    with open(workdir / "report" / "report.json") as handle:
        report = json.load(handle)
    assert report["unfinished"] == ["student_tllm_refit"]
    assert "student_tllm_refit" not in report["models"]


def test_a_tllm_student_still_training_is_named_once(tmp_path):
    results = workdir_results.load_results(str(_workdir(tmp_path / "run", tllm_finished=False)))
    assert results["mask_in_progress"] and results["unfinished"] == []
    assert not workdir_results.load_results(str(_workdir(tmp_path / "done")))["unfinished"]


def test_a_store_built_alone_ends_without_a_report_and_other_views_are_refused_first(
        tool, tmp_path):
    teacher = tmp_path / "teacher_run"
    result = tool("tools/train.py", "--flagfile=configs/demo.flags", *TINY_RUN,
                  "--teacher_model=cnn_tiny", "--stage=teacher", f"--workdir={teacher}")
    assert result.returncode == 0, result.stderr[-3000:]
    store = tmp_path / "store"
    common = ["--flagfile=configs/demo.flags", *TINY_RUN, "--teacher_model=cnn_tiny",
              f"--teacher_path={teacher / 'teacher' / 'model.keras'}", f"--teacher_store={store}"]
    # --stage=store with --teacher_path: no stage here tested a model, and there was a
    # traceback after the store was built.
    result = tool("tools/train.py", *common, "--stage=store", f"--workdir={tmp_path / 'store_run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Soft-label store complete: {store}" in result.stdout
    # Other views (MixUp 0.2 for the store's 0.4): refused before the reference trains.
    line = _one_error_line(tool("tools/train.py", *common, "--mixup=0.2",
                                f"--workdir={tmp_path / 'other_views'}"))
    assert "mixup" in line and "was built for" in line
    assert not os.path.exists(tmp_path / "other_views")
    # A file where the store's directory should be: one line, before anything trains.
    (tmp_path / "a_file").write_text("")
    line = _one_error_line(tool("tools/train.py", *common[:-1],
                                f"--teacher_store={tmp_path / 'a_file'}",
                                f"--workdir={tmp_path / 'file_store'}"))
    assert line == (f"Error: --teacher_store={str(tmp_path / 'a_file')!r} is a file, not a "
                    "directory. Choose another --teacher_store.")
    # A part damaged after it was written (a bit flip): met only when the student reads it,
    # inside tf.data, and printed as three graph tracebacks.
    part = sorted(store.glob("epoch_*.npz"))[0]
    content = bytearray(part.read_bytes())
    content[len(content) // 2] ^= 0xFF
    part.write_bytes(bytes(content))
    line = _one_error_line(tool("tools/train.py", *common, "--students=distilled",
                                f"--workdir={tmp_path / 'damaged_store'}"))
    assert line.startswith(f"Error: The soft-label store's file {part} is damaged")
    assert "Delete it and run the same command again" in line
    assert f"What finished is kept in {tmp_path / 'damaged_store'}." in line


# Hostile values in a workdir's JSON: one `Error:` line naming the file, never a traceback.

DEEP_JSON = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("content, problem", [
    (DEEP_JSON, "is damaged: it is not valid JSON ("),
    ("[0.5, 0.5]", "is damaged: it holds a JSON list, not an object."),
    ({"accuracy": -5}, "accuracy must be an accuracy in [0, 1]. Received: -5"),
    ({"accuracy": "0.5"}, "accuracy must be an accuracy in [0, 1]. Received: '0.5'"),
    ({"per_class_accuracy": [0.5, 1e308, 0.5, 0.5]},
     "per_class_accuracy[1] must be an accuracy in [0, 1] or null. Received: 1e+308"),
    ({"per_class_accuracy": [0.5, True, 0.5, 0.5]}, "per_class_accuracy[1] must be an accuracy"),
    ({"num_samples": [10, -1, 10, 10]},
     "num_samples[1] must be a non-negative integer count. Received: -1"),
    ({"num_samples": [10, 2.5, 10, 10]}, "num_samples[1] must be a non-negative integer"),
])
def test_a_test_per_class_file_out_of_range_is_one_error_line(tool, tmp_path, content, problem):
    workdir = _workdir(tmp_path / "run")
    path = workdir / "student_kd" / "test_per_class.json"
    if isinstance(content, dict):
        _edit_json(path, lambda record: record.update(content))
    else:
        path.write_text(content)
    line = _one_error_line(tool("tools/report.py", f"--workdir={workdir}"))
    assert line.startswith(f"Error: {path} is damaged: ")
    assert problem in line and "Delete it to report without student_kd" in line
    assert not os.path.exists(workdir / "report")


def test_a_class_without_test_images_still_reports(tmp_path):
    workdir = _workdir(tmp_path / "run")
    _edit_json(workdir / "student_kd" / "test_per_class.json",
               lambda record: record.update(per_class_accuracy=[0.5, None, 0.0, 1.0],
                                            num_samples=[10, 0, 10, 10]))
    results = workdir_results.load_results(str(workdir))
    np.testing.assert_array_equal(results["per_class"]["student_kd"], [0.5, np.nan, 0.0, 1.0])


@pytest.mark.parametrize("content", ["[]", '"x"', "7", DEEP_JSON, "{]"])
def test_a_workdir_config_that_is_not_a_configuration_is_one_error_line(tool, tmp_path, content):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(content)
    line = _one_error_line(tool("tools/train.py", "--flagfile=configs/demo.flags", *TINY_RUN,
                                f"--workdir={workdir}"))
    assert line.startswith(f"Error: {str(workdir / 'config.json')!r} is not a readable "
                           "configuration (")
    assert line.endswith("Use a new --workdir, or delete that file if the workdir is yours to "
                         "reuse.")
    assert (workdir / "config.json").read_text() == content  # Nothing overwritten.


def test_an_evaluation_through_another_preprocessing_than_the_runs_is_refused(tmp_path):
    # An imagenet-augmented model evaluated without --augmentation=imagenet read other pixels.
    from tllm_tf.pipeline import model_origin
    from tllm_tf.pipeline.config import RunConfig
    (tmp_path / "run" / "student_kd").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text(RunConfig(
        workdir=str(tmp_path / "run"), dataset="cifar100", augmentation="imagenet",
        image_size=32).to_json())
    model = str(tmp_path / "run" / "student_kd" / "model.keras")
    model_origin.check_evaluation_preprocessing(model, dataset="cifar100", augmentation="imagenet",
                                                image_size=32)
    with pytest.raises(ValueError) as raised:
        model_origin.check_evaluation_preprocessing(model, dataset="cifar100",
                                                    augmentation="none", image_size=None)
    assert "resized and centre-cropped to 32x32" in str(raised.value)
    assert "--augmentation=imagenet --image_size=32" in str(raised.value)
    with pytest.raises(ValueError, match="to 64x64"):
        model_origin.check_evaluation_preprocessing(model, dataset="cifar100",
                                                    augmentation="imagenet", image_size=64)
    # Recipes that evaluate alike are taken for each other.
    (tmp_path / "run" / "config.json").write_text(RunConfig(
        workdir=str(tmp_path / "run"), dataset="cifar100", augmentation="cifar").to_json())
    model_origin.check_evaluation_preprocessing(model, dataset="cifar100", augmentation="none",
                                                image_size=None)


@pytest.mark.parametrize("flags, message", [
    (["--root={tmp}/a_file"], "--root='{tmp}/a_file' is a file, not a directory"),
    (["--root={tmp}/a_file", "--report_only"], "--root='{tmp}/a_file' is a file, not a directory"),
    (["--root={tmp}/a_file/study"], "Cannot write to --root='{tmp}/a_file/study'"),
    (["--root={tmp}/study", "--arms=tllm_refit", "--report_only"],
     "--arms=tllm_refit has no kd: every table of the report compares"),
    (["--root={tmp}/study", "--seeds=0,-1"], "seed must be in [0, 2**32)"),
])
def test_a_study_that_could_write_no_report_is_refused_before_anything_trains(
        tool, tmp_path, flags, message):
    (tmp_path / "a_file").write_text("keep me")
    result = tool("tools/study.py", "--flagfile=configs/demo.flags",
                  *(flag.format(tmp=tmp_path) for flag in flags))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message.format(tmp=tmp_path) in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["a_file"]
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_a_study_without_kd_says_that_its_report_has_no_table_before_it_trains(tool, tmp_path):
    # docs/study.md's commands add arms to a root that has kd; regenerate.sh reports them all.
    (tmp_path / "a_file").write_text("")
    result = tool("tools/study.py", "--flagfile=configs/demo.flags", "--seeds=0",
                  f"--root={tmp_path / 'a_file'}", "--arms=tllm_refit")
    assert result.stdout.startswith("Note: --arms=tllm_refit has no kd: every table of the "
                                    "report compares the arms with plain KD, so this command "
                                    "trains and writes no report.")
    assert "is a file, not a directory" in _one_error_line(result)


def test_a_study_says_which_of_its_flags_an_arm_sets_otherwise(tool, tmp_path):
    result = tool("tools/study.py", "--flagfile=configs/demo.flags", "--seeds=0",
                  f"--root={tmp_path / 'study'}", "--arms=kd,default,tllm", "--patience=3",
                  "--report_only")
    assert result.returncode == 1  # Nothing has run there: nothing to report.
    notes = [line for line in result.stdout.splitlines() if line.startswith("Note: ")]
    # demo.flags' own --update_every=1 equals the tllm arm's, and --students is per run.
    assert notes == ["Note: --patience=3 is not what every run uses: the arm tllm (1) uses its "
                     "own value."]
