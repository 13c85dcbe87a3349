"""tools/bench_throughput.py and its measuring module, tllm_tf.analysis.benchmark.

The tool's run checks the figures' keys and their consistency, not speed:
speed depends on the machine.
"""

import json
import logging
import os
import time

import keras
import pytest

import tllm_tf
from tllm_tf.analysis import benchmark
from tllm_tf.analysis import benchmark_figures
from tllm_tf.analysis import benchmark_variants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("student_train", "teacher_infer", "limit", "keras_distiller", "tllm_distiller",
        "tllm_over_limit", "tllm_over_keras", "callback_share")


def test_combined_limit_adds_the_costs_per_image():
    # 1/100 s + 1/300 s per image = 1/75 s per image.
    assert benchmark_figures.combined_limit(100.0, 300.0) == pytest.approx(75.0)


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


def test_interleave_rotates_the_order_and_returns_one_group_per_pass():
    calls = []

    def timer(name):
        def run(warmup, repeats):
            calls.append(name)
            return benchmark.Throughput(images=10, seconds=(1.0,) * repeats)
        return run

    groups = benchmark.interleave(
        {name: timer(name) for name in "abc"}, passes=4, repeats=3)
    assert calls == list("abc" "bca" "cab" "abc")
    assert len(groups) == 4 and all(list(group) == list("abc") for group in groups)
    assert len(benchmark.pool(groups)["a"].seconds) == 12
    with pytest.raises(ValueError, match="passes"):
        benchmark.interleave({"a": timer("a")}, passes=0)


SECONDS_PER_ROUND = dict(student_train=1.0, teacher_infer=0.5, keras_distiller=2.0,
                         tllm_distiller=1.6)  # 300-image rounds: limit 200 images/s, tllm 187.5


def _groups(group_slowdowns, variant_slowdowns=None):
    """Round groups of 300-image rounds: each group's rounds slowed by its
    factor, and a variant's by `variant_slowdowns[name][group]` too."""
    groups = []
    for index, group_factor in enumerate(group_slowdowns):
        group = {}
        for name, seconds in SECONDS_PER_ROUND.items():
            factor = group_factor * (variant_slowdowns or {}).get(name, {}).get(index, 1.0)
            group[name] = benchmark.Throughput(
                300, (seconds * factor,) * 3, (0.01 * seconds * factor,) * 3
                if name == "tllm_distiller" else ())
        groups.append(group)
    return groups


def test_a_slowdown_of_a_whole_group_cancels_out_of_its_ratios():
    figures = benchmark_figures.paired_distillation_figures(_groups([1.0, 2.0, 1.0, 3.0, 1.5]))
    assert figures["pairs"] == 5
    assert figures["tllm_over_limit"] == pytest.approx(187.5 / 200.0)
    assert figures["tllm_over_keras"] == pytest.approx(1.25)
    assert figures["tllm_over_keras_iqr"] == pytest.approx([1.25, 1.25])
    assert figures["tllm_over_limit_iqr"] == pytest.approx([0.9375, 0.9375])
    assert figures["callback_share"] == pytest.approx(0.01)


def test_a_slowdown_of_one_variant_shows_in_its_ratios_and_spread():
    slow_tllm = {"tllm_distiller": {0: 2.0, 1: 2.0, 2: 2.0, 3: 2.0}}
    figures = benchmark_figures.paired_distillation_figures(
        _groups([1.0, 2.0, 1.0, 3.0, 1.0], slow_tllm))
    assert figures["tllm_over_keras"] == pytest.approx(0.625)  # four groups of five slowed
    assert figures["tllm_over_keras_iqr"] == pytest.approx([0.625, 0.625])
    slow_teacher = {"teacher_infer": {0: 3.0, 1: 3.0}}
    figures = benchmark_figures.paired_distillation_figures(_groups([1.0] * 4, slow_teacher))
    # Groups 0 and 1: limit 1 / (1/300 + 1/200) = 120, tllm / limit 1.5625.
    assert figures["limit"] == pytest.approx((120.0 + 200.0) / 2)
    assert figures["tllm_over_limit_iqr"][0] == pytest.approx(0.9375)
    assert figures["tllm_over_limit_iqr"][1] > 1.2
    assert figures["tllm_over_keras_iqr"] == pytest.approx([1.25, 1.25])


def test_the_best_round_of_a_group_ignores_rounds_slowed_by_the_machine():
    # In every group one variant has two of its three rounds in the slow mode (2x): its fastest
    # round still shows its speed, its median does not.
    groups = _groups([1.0, 2.0, 1.0, 3.0])
    for group, name in zip(groups, ["tllm_distiller", "keras_distiller", "student_train",
                                    "teacher_infer"]):
        result = group[name]
        seconds = result.seconds[0]
        group[name] = benchmark.Throughput(result.images, (seconds * 2, seconds, seconds * 2),
                                           result.callback_seconds)
    best = benchmark_figures.paired_distillation_figures(groups)
    assert best["tllm_over_keras"] == pytest.approx(1.25)
    assert best["tllm_over_keras_iqr"] == pytest.approx([1.25, 1.25])
    assert best["tllm_over_limit_iqr"] == pytest.approx([0.9375, 0.9375])
    median = benchmark_figures.paired_distillation_figures(groups, group_rate="median")
    # Per group 0.625 (tllm slowed), 2.5 (keras slowed), 1.25, 1.25.
    assert median["tllm_over_keras_iqr"] == pytest.approx([1.09375, 1.5625])
    with pytest.raises(ValueError, match="group_rate"):
        benchmark_figures.paired_distillation_figures(groups, group_rate="mean")


def test_rounds_survive_the_json_round_trip():
    groups = _groups([1.0, 2.0])
    assert benchmark.groups_from_json(json.loads(json.dumps(
        benchmark.groups_to_json(groups)))) == groups


def test_paired_summary_takes_medians_and_quartiles():
    summary = benchmark_figures.paired_summary(
        [{"rate": float(r), "a_over_b": r / 10} for r in (1, 2, 3, 4, 5)], ["a_over_b"])
    assert set(summary) == {"rate", "a_over_b", "a_over_b_iqr", "pairs"}
    assert summary["rate"] == 3.0 and summary["pairs"] == 5
    assert summary["a_over_b"] == pytest.approx(0.3)
    assert summary["a_over_b_iqr"] == pytest.approx([0.2, 0.4])


class _Sleep(keras.callbacks.Callback):
    """Waits at every epoch end, as a process does when its neighbours hold the cores."""

    def on_epoch_end(self, epoch, logs=None):
        time.sleep(0.5)


def test_the_cpu_clock_leaves_out_time_spent_waiting():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model.compile(optimizer="sgd", loss="mse")
    data = benchmark.synthetic_dataset(32, (8,), 4, batch_size=16).map(
        lambda x, y: (x, keras.ops.one_hot(y, 4)))
    wall = benchmark.FitTimer(model, data, timed_callback=_Sleep(), clock="wall")(repeats=2)
    cpu = benchmark.FitTimer(model, data, timed_callback=_Sleep(), clock="cpu")(repeats=2)
    assert min(wall.seconds) >= 0.5 and min(wall.callback_seconds) >= 0.5
    assert max(cpu.seconds) < 0.25 and max(cpu.callback_seconds) < 0.1
    with pytest.raises(ValueError, match="clock"):
        benchmark.FitTimer(model, data, clock="gpu")


class _SleepingMaskUpdater(keras.callbacks.Callback):
    """Waits 0.05 s at every epoch end; a mask updater, so `Distiller.fit` lists it first."""

    updates_class_mask = True

    def on_epoch_end(self, epoch, logs=None):
        time.sleep(0.05)


def _tiny_distiller():
    keras.utils.set_random_seed(0)

    def model():
        return keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3),
                                 keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)])

    distiller = tllm_tf.Distiller(model(), model())
    distiller.compile(optimizer="sgd", distillation_loss_fn=tllm_tf.KDLoss(temperature=4.0))
    return distiller


def test_the_callback_is_timed_wherever_fit_puts_it():
    data = benchmark.synthetic_dataset(32, (8, 8, 3), 4, batch_size=16)
    result = benchmark.FitTimer(_tiny_distiller(), data,
                                timed_callback=_SleepingMaskUpdater())(repeats=2)
    assert len(result.callback_seconds) == 2 and min(result.callback_seconds) >= 0.05
    assert all(c <= s for c, s in zip(result.callback_seconds, result.seconds))
    assert result.callback_share > 0.05


def test_the_masked_variant_keeps_its_mask_and_its_fits_warn_of_nothing(caplog):
    setting = benchmark_variants.Setting(teacher="cnn_tiny", student="cnn_tiny",
                                         image_shape=(8, 8, 3), num_classes=4, batch_size=16)
    train = benchmark.synthetic_dataset(32, (8, 8, 3), 4, batch_size=16)
    held_out = benchmark.synthetic_dataset(32, (8, 8, 3), 4, batch_size=16, seed=1)
    distiller, callback = benchmark_variants.masked_distiller(setting, held_out)
    with benchmark_variants.quiet_benchmark_warnings():
        # Three looks: a mask set on the model alone was cleared at the first.
        distiller.fit(train, epochs=3, verbose=0, callbacks=[callback])
        distiller.fit(train, epochs=3, verbose=0, callbacks=[callback])  # From epoch 0 again.
        logging.warning("UndistillableClassCallback: another warning")
    assert list(distiller.undistillable_classes) == [0, 2]
    assert caplog.text.count("WARNING") == 1 and "another warning" in caplog.text
    caplog.clear()
    distiller.fit(train, epochs=3, verbose=0, callbacks=[callback])
    # Outside it, the warnings are back.
    assert "right on no more than chance" in caplog.text and "starts at epoch" in caplog.text


def test_distillation_figures_with_and_without_a_16_bit_teacher():
    rates = dict(student_train=100.0, teacher_infer=300.0, keras_distiller=60.0,
                 tllm_distiller=72.0)
    figures = benchmark_figures.distillation_figures(rates, callback_share=0.01)
    assert set(figures) == set(KEYS)
    assert figures["tllm_over_limit"] == pytest.approx(72.0 / 75.0)
    assert figures["tllm_over_keras"] == pytest.approx(1.2)

    rates.update(teacher_infer_bfloat16=900.0, tllm_distiller_bfloat16=81.0,
                 keras_distiller_bfloat16=90.0)
    figures = benchmark_figures.distillation_figures(rates, 0.01, teacher_dtype="bfloat16")
    assert figures["limit"] == pytest.approx(75.0)  # still the float32 teacher's
    assert figures["limit_bfloat16"] == pytest.approx(90.0)
    assert figures["tllm_bfloat16_over_limit_bfloat16"] == pytest.approx(0.9)
    assert figures["tllm_bfloat16_over_keras"] == pytest.approx(81.0 / 60.0)
    assert figures["tllm_bfloat16_over_keras_bfloat16"] == pytest.approx(0.9)


@pytest.mark.slow
def test_tool_writes_all_figures_consistently(zygote, tmp_path):
    path = tmp_path / "figures.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    completed = zygote.run(  # a process forked from tests/zygote.py
        [os.path.join(ROOT, "tools", "bench_throughput.py"),
         "--size=tiny", "--steps=3", "--repeats=1", "--batch_size=16",
         "--steps_per_execution=2", "--passes=2", "--clock=cpu", "--teacher_dtype=bfloat16",
         "--store", f"--json={path}"],
        env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = json.loads(path.read_text())
    extra = ("teacher_infer_bfloat16", "tllm_distiller_bfloat16", "keras_distiller_bfloat16",
             "limit_bfloat16", "tllm_bfloat16_over_limit_bfloat16", "tllm_bfloat16_over_keras",
             "tllm_bfloat16_over_keras_bfloat16", "store_build", "store_distiller",
             "store_over_student_train", "store_over_keras", "store_build_teacher_passes",
             "store_bytes_per_1000_images_epoch")
    ratios = [key for key in KEYS + extra
              if "_over_" in key or key == "store_build_teacher_passes"]
    assert set(figures) == (set(KEYS + extra) | {f"{key}_iqr" for key in ratios}
                            | {"pairs", "group_rate", "header", "clock", "rounds"})
    assert figures["pairs"] == 2 and figures["group_rate"] == "best"
    # The rounds kept in the file give the same figures again, or those of the other group rate.
    groups = benchmark.groups_from_json(figures["rounds"])
    assert benchmark_figures.paired_distillation_figures(groups, "bfloat16")["tllm_over_keras"] == (
        pytest.approx(figures["tllm_over_keras"]))
    again = tmp_path / "median.json"
    recomputed = zygote.run(
        [os.path.join(ROOT, "tools", "bench_throughput.py"),
         f"--rounds_from={path}", "--group_rate=median", f"--json={again}"],
        env=env, timeout=300)
    assert recomputed.returncode == 0, recomputed.stderr[-3000:]
    median = json.loads(again.read_text())
    expected = benchmark_figures.paired_distillation_figures(groups, "bfloat16", "median")
    assert median["group_rate"] == "median" and median["clock"] == "cpu"
    for key in ratios:
        assert median[key] == pytest.approx(expected[key]), key
    assert median["store_bytes_per_1000_images_epoch"] == figures["store_bytes_per_1000_images_epoch"]
    assert "recomputed from" in recomputed.stdout
    # A file without rounds is refused with the reason alone.
    (tmp_path / "old.json").write_text(json.dumps({"tllm_over_keras": 1.0}))
    refused = zygote.run(
        [os.path.join(ROOT, "tools", "bench_throughput.py"),
         f"--rounds_from={tmp_path / 'old.json'}"], env=env, timeout=300)
    assert refused.returncode == 1 and "flags:" not in refused.stderr
    assert "holds no rounds" in refused.stderr
    for key in ratios:
        lower, upper = figures[f"{key}_iqr"]
        assert lower <= figures[key] <= upper
    assert all(figures[key] > 0 for key in KEYS + extra if key != "callback_share")
    assert 0 < figures["callback_share"] < 1
    assert "tllm_distiller:" in completed.stdout
    assert "tllm_distiller_bfloat16:" in completed.stdout
    assert "store_over_student_train:" in completed.stdout


def test_store_figures_are_added_when_the_store_variants_ran():
    rates = dict(student_train=100.0, teacher_infer=300.0, keras_distiller=60.0,
                 tllm_distiller=72.0, store_distiller=95.0, store_build=250.0)
    figures = benchmark_figures.distillation_figures(rates, callback_share=0.01)
    assert figures["store_over_student_train"] == pytest.approx(0.95)
    assert figures["store_over_keras"] == pytest.approx(95.0 / 60.0)
    assert figures["store_build_teacher_passes"] == pytest.approx(1.2)  # 1/250 s over 1/300 s
    assert set(figures) - set(rates) - set(KEYS) == {
        "store_over_student_train", "store_over_keras", "store_build_teacher_passes"}


def test_call_timer_times_each_call_after_the_warmup():
    calls = []
    timer = benchmark.CallTimer(lambda: calls.append(time.sleep(0.01)), images=10)
    result = timer(warmup=1, repeats=2)
    assert len(calls) == 3 and len(result.seconds) == 2 and result.images == 10
    assert min(result.seconds) >= 0.01


@pytest.mark.slow
def test_the_tool_refuses_bad_values_before_measuring_with_one_line(zygote, tmp_path):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "bad.json").write_text("{bad")
    cases = {"--warmup=0": "--warmup >= 1", "--batch_size=0": "--batch_size >= 1",
             "--steps=0": "--steps >= 1", "--passes=0": "--passes >= 1",
             "--repeats=-1": "--repeats >= 1",
             f"--rounds_from={tmp_path / 'missing.json'}": "Cannot read --rounds_from",
             f"--rounds_from={tmp_path / 'bad.json'}": "is not JSON",
             f"--json={tmp_path / 'a_file' / 'figures.json'}": "Cannot write",
             f"--json={tmp_path}": "is a directory"}
    for flag, reason in cases.items():
        completed = zygote.run([os.path.join(ROOT, "tools", "bench_throughput.py"), flag],
                               env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), timeout=120)
        lines = completed.stderr.strip().splitlines()
        assert completed.returncode == 1 and len(lines) == 1, (flag, completed.stderr[-2000:])
        assert lines[0].startswith("Error: ") and reason in lines[0], flag
