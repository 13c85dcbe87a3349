"""The accuracy study: its data pipeline, and one `--quick` run of the tool."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tllm_tf import study
from tllm_tf import study_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images(count=8):
    images = np.zeros((count, 8, 8, 1), np.float32)
    images[:, 3:5, 3:5, 0] = 16.0
    return tf.data.Dataset.from_tensor_slices((images, np.arange(count, dtype=np.int32) % 4))


def test_shift_moves_the_image_by_at_most_the_shift_and_keeps_its_ink():
    batches = study.train_batches(_images(), batch_size=8, seed=0, num_classes=4, shift=1)
    images, labels = next(iter(batches))
    assert images.shape == (8, 8, 8, 1) and labels.dtype == tf.int32
    ink = images.numpy()[..., 0] > 0
    rows, columns = np.nonzero(ink.any(axis=2)), np.nonzero(ink.any(axis=1))
    assert set(rows[1]) <= {2, 3, 4, 5} and set(columns[1]) <= {2, 3, 4, 5}
    np.testing.assert_allclose(images.numpy().sum(axis=(1, 2, 3)), 64.0)


def test_mixup_mixes_images_and_labels_with_the_same_weight_and_repeats():
    def first_batch():
        return next(iter(study.train_batches(
            _images(), batch_size=8, seed=3, num_classes=4, mixup=0.4)))

    images, labels = first_batch()
    np.testing.assert_allclose(labels.numpy().sum(axis=1), 1.0, rtol=1e-6)
    # Every image has the same ink, so mixing keeps the total.
    np.testing.assert_allclose(images.numpy().sum(axis=(1, 2, 3)), 64.0, rtol=1e-5)
    assert np.any((labels.numpy() > 0.01) & (labels.numpy() < 0.99))
    again_images, again_labels = first_batch()
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(labels, again_labels)


def test_count_undistillable_counts_classes_strictly_below():
    assert study.count_undistillable([0.5, 0.9, 1.0], [0.6, 0.9, 0.9]) == 1


@pytest.mark.slow
def test_quick_study_writes_consistent_figures(tmp_path):
    json_path = str(tmp_path / "out" / "study.json")
    result = subprocess.run(
        [sys.executable, "tools/study.py", "--quick", f"--json={json_path}",
         f"--results_dir={tmp_path / 'results'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("study.md", "study.json", "study_kd_minus_labels.png", "study_capacity_gap.png"):
        assert os.path.getsize(tmp_path / "results" / name) > 0, name
    with open(json_path) as handle:
        output = json.load(handle)
    assert set(output) >= {"setting", "seeds", "per_seed", "summary", "teachers", "variants"}
    assert len(output["per_seed"]) == len(output["seeds"]) == 2
    teachers, variants = list(output["per_seed"][0]["kd"]), list(output["variants"])
    assert len(teachers) == 2 and len(variants) == 2

    def accuracies(record):
        yield record["labels"]
        yield from record["kd"].values()
        yield from record["tllm"].values()
        yield from record["teachers"].values()

    for record in output["per_seed"]:
        for result in accuracies(record):
            assert 0.0 <= result["accuracy"] <= 1.0
            assert len(result["per_class"]) == 10
            assert all(0.0 <= value <= 1.0 for value in result["per_class"])
        assert set(record["undistillable"]) == set(teachers)

    summary = output["summary"]
    def check(stats, values):
        assert stats["mean"] == pytest.approx(np.mean(values))
        assert stats["std"] == pytest.approx(np.std(values, ddof=1))

    records = output["per_seed"]
    check(summary["labels"], [r["labels"]["accuracy"] for r in records])
    for teacher in teachers:
        check(summary["kd"][teacher], [r["kd"][teacher]["accuracy"] for r in records])
        check(summary["undistillable"][teacher], [r["undistillable"][teacher] for r in records])
    main = output["setting"]["teacher_model"]
    for variant in variants:
        check(summary["tllm"][variant], [r["tllm"][variant]["accuracy"] for r in records])
        check(summary["tllm_minus_kd"][variant],
              [r["tllm"][variant]["accuracy"] - r["kd"][main]["accuracy"] for r in records])
    assert "| labels only |" in open(tmp_path / "results" / "study.md").read()
    # The summary of the file is the one its records give.
    rebuilt = study_report.summarise(records, study.Setting(**{
        **output["setting"], "lr_decay_at": tuple(output["setting"]["lr_decay_at"])}))
    assert rebuilt["undistillable"] == summary["undistillable"]


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def test_soft_label_policy_distils_masked_classes_towards_the_softened_label():
    import keras

    from conftest import make_mlp

    keras.utils.set_random_seed(0)
    distiller = study.SoftLabelDistiller(make_mlp("student"), make_mlp("teacher"))
    distiller.compile(distillation_loss_fn="kd", alpha=0.1, beta=0.9)
    rng = np.random.default_rng(0)
    student_logits = rng.normal(size=(3, 4)).astype(np.float32)
    teacher_logits = 3 * rng.normal(size=(3, 4)).astype(np.float32)
    labels = np.array([0, 1, 2], np.int32)
    temperature = 4.0

    plain = tllm_tf_distiller(distiller, labels, student_logits, teacher_logits)
    total = distiller._loss_terms(labels, False, student_logits, teacher_logits)[0]
    np.testing.assert_allclose(total, plain, rtol=1e-5)  # mask all ones: plain KD

    distiller.set_class_mask([1, 0, 1, 1])
    total = np.asarray(distiller._loss_terms(labels, False, student_logits, teacher_logits)[0])
    teacher_probs = np.exp(_log_softmax(teacher_logits[1] / temperature))
    confidence = teacher_probs.max()
    softened = np.full(4, (1 - confidence) / 3)
    softened[1] = confidence
    student_log_probs = _log_softmax(student_logits[1] / temperature)
    label_kd = temperature**2 * np.sum(softened * (np.log(softened) - student_log_probs))
    cross_entropy = -_log_softmax(student_logits[1])[1]
    np.testing.assert_allclose(total[1], 0.1 * cross_entropy + 0.9 * label_kd, rtol=1e-5)
    np.testing.assert_allclose(total[[0, 2]], np.asarray(plain)[[0, 2]], rtol=1e-5)


def tllm_tf_distiller(distiller, labels, student_logits, teacher_logits):
    """The per-sample loss of the library's own Distiller with the same weights."""
    import tllm_tf

    plain = tllm_tf.Distiller(distiller.student, distiller.teacher)
    plain.compile(distillation_loss_fn="kd", alpha=0.1, beta=0.9)
    return np.asarray(plain._loss_terms(labels, False, student_logits, teacher_logits)[0])
