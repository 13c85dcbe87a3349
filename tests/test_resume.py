"""A training process killed with SIGKILL mid-epoch resumes with nothing lost."""

import json
import os
import signal
import time

import keras
import numpy as np
import pytest

from conftest import checkpointed_epoch


def _command(workdir, *flags):
    return ["tools/train.py", "--flagfile=configs/demo.flags",
            f"--workdir={workdir}", "--students=tllm", "--teacher_model=cnn_tiny",
            "--teacher_epochs=2", "--epochs=12", "--num_train=300", "--warmup_epochs=1",
            "--sticky", "--deterministic", "--verbose=0", *flags]


def _run(zygote, workdir, *flags):
    result = zygote.run(_command(workdir, *flags), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_equals_an_uninterrupted_run(zygote, tmp_path):
    killed_dir = str(tmp_path / "killed")
    stage_dir = os.path.join(killed_dir, "student_tllm")
    # A process of its own, forked from the zygote (tests/zygote.py), SIGKILLed by its pid.
    process = zygote.popen(_command(killed_dir))
    deadline = time.time() + 300
    while checkpointed_epoch(stage_dir) < 4 and time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = checkpointed_epoch(stage_dir)
    assert 4 <= killed_at < 12
    assert not os.path.exists(os.path.join(stage_dir, "model.keras"))

    _run(zygote, killed_dir)
    # The same student stage, never killed: from the same teacher and reference files,
    # as the resumed run reads them (not trained again).
    uninterrupted_dir = str(tmp_path / "uninterrupted")
    teacher_file = os.path.join(killed_dir, "teacher", "model.keras")
    reference_file = os.path.join(killed_dir, "reference", "reference.json")
    _run(zygote, uninterrupted_dir, f"--teacher_path={teacher_file}",
         f"--reference_path={reference_file}")

    with open(os.path.join(stage_dir, "mask_log.jsonl")) as handle:
        epochs = [json.loads(line)["epoch"] for line in handle]
    assert epochs == list(range(2, 13)), "mask history has a gap or a duplicate"
    with open(os.path.join(uninterrupted_dir, "student_tllm", "mask_log.jsonl")) as handle:
        expected_masks = [json.loads(line)["class_mask"] for line in handle]
    with open(os.path.join(stage_dir, "mask_log.jsonl")) as handle:
        assert [json.loads(line)["class_mask"] for line in handle] == expected_masks

    resumed = keras.models.load_model(os.path.join(stage_dir, "model.keras"))
    reference = keras.models.load_model(
        os.path.join(uninterrupted_dir, "student_tllm", "model.keras"))
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    with open(os.path.join(stage_dir, "history.csv")) as handle:
        rows = [line.split(",")[0] for line in handle.read().split()[1:]]
    assert rows == [str(e) for e in range(12)]
    assert not os.path.exists(os.path.join(stage_dir, "checkpoint"))
