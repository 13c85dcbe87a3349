"""tools/bench_throughput.py and its measuring module, tllm_tf.benchmark.

The tool's run checks the figures' keys and their consistency, not speed:
speed depends on the machine.
"""

import json
import os
import subprocess
import sys

import pytest

from tllm_tf import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("student_train", "teacher_infer", "limit", "keras_distiller", "tllm_distiller",
        "tllm_over_limit", "tllm_over_keras", "callback_share")


def test_combined_limit_adds_the_costs_per_image():
    # 1/100 s + 1/300 s per image = 1/75 s per image.
    assert benchmark.combined_limit(100.0, 300.0) == pytest.approx(75.0)


def test_throughput_pools_rounds_and_takes_the_median():
    first = benchmark.Throughput(images=100, seconds=(1.0, 4.0), callback_seconds=(0.1, 0.2))
    second = benchmark.Throughput(images=100, seconds=(2.0,), callback_seconds=(0.1,))
    pooled = first + second
    assert pooled.seconds == (1.0, 4.0, 2.0)
    assert pooled.images_per_second == pytest.approx(50.0)
    assert pooled.best_images_per_second == pytest.approx(100.0)
    assert pooled.callback_share == pytest.approx(0.05)  # median of .1, .05, .05
    assert benchmark.Throughput(images=1, seconds=(1.0,)).callback_share == 0.0
    with pytest.raises(ValueError, match="same data"):
        first + benchmark.Throughput(images=50, seconds=(1.0,))


def test_interleave_runs_each_timer_in_turn_and_checks_passes():
    calls = []

    def timer(name):
        def run(warmup, repeats):
            calls.append(name)
            return benchmark.Throughput(images=10, seconds=(1.0,) * repeats)
        return run

    results = benchmark.interleave({"a": timer("a"), "b": timer("b")}, passes=2, repeats=3)
    assert calls == ["a", "b", "a", "b"]
    assert len(results["a"].seconds) == 6
    with pytest.raises(ValueError, match="passes"):
        benchmark.interleave({"a": timer("a")}, passes=0)


def test_distillation_figures_with_and_without_a_16_bit_teacher():
    rates = dict(student_train=100.0, teacher_infer=300.0, keras_distiller=60.0,
                 tllm_distiller=72.0)
    figures = benchmark.distillation_figures(rates, callback_share=0.01)
    assert set(figures) == set(KEYS)
    assert figures["tllm_over_limit"] == pytest.approx(72.0 / 75.0)
    assert figures["tllm_over_keras"] == pytest.approx(1.2)

    rates.update(teacher_infer_bfloat16=900.0, tllm_distiller_bfloat16=81.0,
                 keras_distiller_bfloat16=90.0)
    figures = benchmark.distillation_figures(rates, 0.01, teacher_dtype="bfloat16")
    assert figures["limit"] == pytest.approx(75.0)  # still the float32 teacher's
    assert figures["limit_bfloat16"] == pytest.approx(90.0)
    assert figures["tllm_bfloat16_over_limit_bfloat16"] == pytest.approx(0.9)
    assert figures["tllm_bfloat16_over_keras"] == pytest.approx(81.0 / 60.0)
    assert figures["tllm_bfloat16_over_keras_bfloat16"] == pytest.approx(0.9)


@pytest.mark.slow
def test_tool_writes_all_figures_consistently(tmp_path):
    path = tmp_path / "figures.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    completed = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "bench_throughput.py"),
         "--size=tiny", "--steps=3", "--passes=1", "--repeats=1", "--batch_size=16",
         "--steps_per_execution=2", "--teacher_dtype=bfloat16", f"--json={path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = json.loads(path.read_text())
    extra = ("teacher_infer_bfloat16", "tllm_distiller_bfloat16", "keras_distiller_bfloat16",
             "limit_bfloat16", "tllm_bfloat16_over_limit_bfloat16", "tllm_bfloat16_over_keras",
             "tllm_bfloat16_over_keras_bfloat16")
    assert set(figures) == set(KEYS + extra)
    assert all(figures[key] > 0 for key in KEYS + extra if key != "callback_share")
    assert 0 < figures["callback_share"] < 1
    assert figures["limit"] <= min(figures["student_train"], figures["teacher_infer"])
    assert figures["limit"] == pytest.approx(
        benchmark.combined_limit(figures["student_train"], figures["teacher_infer"]))
    assert figures["tllm_over_limit"] == pytest.approx(
        figures["tllm_distiller"] / figures["limit"])
    assert figures["tllm_over_keras"] == pytest.approx(
        figures["tllm_distiller"] / figures["keras_distiller"])
    assert figures["limit_bfloat16"] == pytest.approx(benchmark.combined_limit(
        figures["student_train"], figures["teacher_infer_bfloat16"]))
    assert "tllm_distiller:" in completed.stdout
    assert "tllm_distiller_bfloat16:" in completed.stdout
