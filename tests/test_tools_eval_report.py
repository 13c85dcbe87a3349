"""tools/evaluate.py and tools/report.py on a tiny digits workdir, and tllm_tf.analysis.evaluation."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tllm_tf
from tllm_tf import data as data_lib
from tllm_tf.analysis import evaluation
from tllm_tf.pipeline import export as export_lib
STAGES = ("reference", "student_kd", "student_tllm")


def _tiny_classifier(data, seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input(data.image_shape),
        keras.layers.Normalization(mean=list(data.mean), variance=[s**2 for s in data.std]),
        keras.layers.Flatten(),
        keras.layers.Dense(data.num_classes),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.fixture(scope="module")
def digits():
    return data_lib.load_digits(seed=0, holdout_fraction=0.2)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, digits):
    """Three tiny digit classifiers, trained for 0, 1 and 2 epochs, and a mask log."""
    root = tmp_path_factory.mktemp("workdir")
    for epochs, stage in enumerate(STAGES):
        os.makedirs(root / stage)
        model = _tiny_classifier(digits, seed=epochs)
        if epochs:
            model.fit(digits.train.batch(64), epochs=epochs, verbose=0)
        model.save(root / stage / "model.keras")
    export_lib.export_saved_model(model, str(root / "student_tllm" / "saved_model"))
    with open(root / "student_tllm" / "mask_log.jsonl", "w") as handle:
        for epoch, masked in ((1, [3, 8]), (2, [8])):
            mask = [0.0 if c in masked else 1.0 for c in range(10)]
            handle.write(json.dumps({"epoch": epoch, "class_mask": mask}) + "\n")
    return root


def _run(zygote, *args):
    """`python *args` in a process forked from tests/zygote.py; returns its stdout."""
    result = zygote.run(args, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _write_per_class(workdir, digits, stages):
    for stage in stages:
        path = str(workdir / stage / "model.keras")
        results = evaluation.evaluate_models({stage: path}, digits.test.batch(128),
                                             class_names=digits.class_names)
        record = {"class_names": results["class_names"],
                  "per_class_accuracy": results["per_class"][stage].tolist(),
                  "num_samples": results["num_samples"], "accuracy": results["accuracy"][stage]}
        with open(workdir / stage / "test_per_class.json", "w") as handle:
            json.dump(record, handle)


@pytest.mark.slow
def test_evaluate_tool_prints_accuracy_and_writes_a_per_class_file(zygote, workdir, digits):
    stage_dir = workdir / "student_tllm"
    stdout = _run(zygote, "tools/evaluate.py", f"--model_path={stage_dir / 'saved_model'}",
                  "--dataset=digits", "--split=test", f"--json={stage_dir / 'test_per_class.json'}")
    keras_model = keras.models.load_model(stage_dir / "model.keras")
    expected = tllm_tf.per_class_accuracy(keras_model, digits.test.batch(128), 10)
    with open(stage_dir / "test_per_class.json") as handle:
        record = json.load(handle)
    np.testing.assert_allclose(record["per_class_accuracy"], expected, atol=1e-9)
    assert record["class_names"] == list(digits.class_names)
    assert sum(record["num_samples"]) == 359 and record["split"] == "test"
    assert f"accuracy: {100 * record['accuracy']:.2f}%" in stdout
    assert "| class | student_tllm |" in stdout and "| 9 | " in stdout


@pytest.mark.slow
def test_report_tool_from_a_workdir_writes_the_four_files(zygote, workdir, digits):
    _write_per_class(workdir, digits, STAGES)
    stdout = _run(zygote, "tools/report.py", f"--workdir={workdir}")
    report_dir = workdir / "report"
    assert sorted(os.listdir(report_dir)) == [
        "mask_history.png", "per_class_change.png", "report.json", "report.md"]
    with open(report_dir / "report.json") as handle:
        report = json.load(handle)
    assert report["models"] == list(STAGES)
    assert report["undistillable_classes"] == {"names": ["8"], "count": 1, "source": "tllm_mask"}
    assert [h["removed"] for h in report["mask_history"]] == [[], ["3"]]
    assert "TLLM undistillable classes at the end: 8\n" in stdout


def test_report_tool_on_a_missing_workdir_prints_the_error_alone(zygote, tmp_path):
    result = zygote.run(("tools/report.py", f"--workdir={tmp_path / 'no_such_run'}"),
                        timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 1
    assert "Error: Expected a workdir with" in result.stderr
    assert "flags:" not in result.stderr  # Not the tool's help before it.
    assert not os.path.exists(tmp_path / "no_such_run")


@pytest.mark.slow
def test_report_tool_compares_saved_models_on_a_data_set(zygote, workdir, tmp_path):
    reference = workdir / "reference" / "model.keras"
    tllm = workdir / "student_tllm" / "saved_model"
    _run(zygote, "tools/report.py", f"--model_paths=ref={reference},{tllm}", "--dataset=digits",
         f"--output_dir={tmp_path}")
    with open(tmp_path / "report.json") as handle:
        report = json.load(handle)
    assert report["models"] == ["ref", "student_tllm"] and report["baseline"] == "ref"
    assert report["undistillable_classes"]["source"] == "student_tllm below ref"
    assert sorted(os.listdir(tmp_path)) == ["per_class_change.png", "report.json", "report.md"]


def test_evaluate_models_matches_per_class_accuracy(digits, workdir):
    path = str(workdir / "student_kd" / "model.keras")
    keras_model = keras.models.load_model(path)
    results = evaluation.evaluate_models(
        {"on_disk": path, "in_memory": keras_model}, digits.held_out.batch(100),
        class_names=digits.class_names)
    expected = tllm_tf.per_class_accuracy(keras_model, digits.held_out.batch(64), 10)
    np.testing.assert_allclose(results["per_class"]["on_disk"], expected)
    np.testing.assert_allclose(results["per_class"]["in_memory"], expected)
    assert sum(results["num_samples"]) == 287
    assert results["models"] == ["on_disk", "in_memory"]


def test_evaluate_models_refuses_a_model_of_another_image_shape(digits, tmp_path):
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    model.save(tmp_path / "small.keras")
    with pytest.raises(ValueError, match=r"takes images of shape \(4, 4, 1\)"):
        evaluation.evaluate_models({"small": str(tmp_path / "small.keras")},
                                   digits.test.batch(128), class_names=digits.class_names)


def test_evaluate_models_reads_the_data_once_a_model_and_never_in_part(digits):
    # A first read that stops early (a peek at one image) can close an in-memory
    # cache under a filter on what it read.
    reads = tf.Variable(0, dtype=tf.int64)

    def counted(images, labels):
        reads.assign_add(1)
        return images, labels

    batches = digits.held_out.batch(100).map(counted)
    model = keras.Sequential([keras.Input(batches.element_spec[0].shape[1:]),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    evaluation.evaluate_models({"a": model, "b": model}, batches,
                               class_names=digits.class_names)
    assert int(reads.numpy()) == 2 * int(batches.cardinality())


def test_model_names_are_short_and_unique():
    names = evaluation.model_names([
        "runs/a/student_kd/model.keras", "runs/a/student_tllm/saved_model",
        "runs/b/student_kd/model.keras", "teacher=t.keras", "/x/best.keras"])
    assert list(names) == ["student_kd", "student_tllm", "student_kd_2", "teacher", "best"]
    assert names["teacher"] == "t.keras"
