"""One end-to-end run of the demo flag file at reduced size."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf


@pytest.mark.slow
def test_demo_flagfile_runs_all_stages_and_exports_the_student(demo_runs):
    workdir, result, again = demo_runs
    workdir = str(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| class | reference | student_kd | student_tllm | KD<ref | masked |" in result.stdout
    assert "student_tllm: test accuracy" in result.stdout
    for path in ("config.json", "teacher/model.keras", "reference/reference.json",
                 "student_kd/model.keras", "student_tllm/mask_log.jsonl",
                 "student_tllm/history.csv", "student_tllm/saved_model/saved_model.pb"):
        assert os.path.exists(os.path.join(workdir, path)), path
    with open(os.path.join(workdir, "student_tllm", "mask_log.jsonl")) as handle:
        assert len(handle.readlines()) == 2  # epochs 2 and 3, after 1 warm-up epoch

    images = np.random.default_rng(0).uniform(0, 16, (5, 8, 8, 1)).astype(np.float32)
    exported = tf.saved_model.load(os.path.join(workdir, "student_tllm", "saved_model"))
    keras_model = keras.models.load_model(os.path.join(workdir, "student_tllm", "model.keras"))
    np.testing.assert_allclose(exported.serve(images)["logits"].numpy(),
                               keras_model.predict(images, verbose=0), atol=1e-5)

    # A second run of the same command finds every stage done and only reports.
    assert again.returncode == 0 and "Epoch" not in again.stdout
    assert result.stdout.splitlines()[-4:] == again.stdout.splitlines()[-4:]


def test_bad_flag_value_is_refused_before_training(zygote, tmp_path):
    result = zygote.run(["tools/train.py", "--flagfile=configs/demo.flags",
                         f"--workdir={tmp_path}", "--temperature=0"], timeout=120)
    assert result.returncode != 0
    assert "temperature must be > 0" in result.stderr
    assert not os.path.exists(os.path.join(tmp_path, "teacher"))


@pytest.mark.slow
def test_the_demo_run_records_its_mixup_and_finishes(demo_runs):
    workdir, result, _ = demo_runs
    # The demo flag file's MixUp, as the run recorded it. What the stages trained on is not
    # seen from here (another process); tests/test_stages.py checks that every stage
    # trains on mixed labels under MixUp.
    with open(workdir / "config.json") as handle:
        assert json.load(handle)["mixup"] == 0.4
    assert result.returncode == 0, result.stderr[-3000:]
    assert "student_tllm: test accuracy" in result.stdout
