"""What Keras 3's own distillation computes, next to tllm_tf's losses.

`keras.distillation.LogitsDistillation(temperature=T, loss=...)` divides both
models' logits by `T`, then:

- if `loss` is a `keras.losses.KLDivergence` *instance*: softmax of both, the
  batch mean of the KL, times `T^2`, which is Hinton KD (`tllm_tf.KDLoss`)
  wherever every softened probability is at least 1e-7 (`KLDivergence` clips
  probabilities to [1e-7, 1]);
- otherwise (the default `loss="kl_divergence"` resolves to the plain
  *function* `keras.losses.kl_divergence`, and any other loss): the loss of
  the raw scaled logits, `mean(loss(teacher_logits / T, student_logits / T))`,
  with no softmax and no `T^2`.

`keras.distillation.Distiller` adds `w * student_loss + (1 - w) * sum_i
weight_i * distillation_loss_i`, `w = student_loss_weight`; each term is a
batch mean, so there is no per-sample gating.
"""

import subprocess
import sys

import keras
import numpy as np
import pytest

import tllm_tf
from tllm_tf import losses
from conftest import ROOT
from conftest import make_mlp

TEMPERATURE = 4.0


def _logits(num_classes, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    teacher = (scale * rng.normal(size=(32, num_classes))).astype(np.float32)
    student = (scale * rng.normal(size=(32, num_classes))).astype(np.float32)
    return teacher, student


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _hinton_kd(teacher, student):
    return float(keras.ops.convert_to_numpy(
        tllm_tf.KDLoss(temperature=TEMPERATURE)(teacher, student)))


def _keras(teacher, student, **kwargs):
    loss = keras.distillation.LogitsDistillation(temperature=TEMPERATURE, **kwargs)
    return float(keras.ops.convert_to_numpy(loss.compute_loss(teacher, student)))


@pytest.mark.parametrize("num_classes,min_ratio", [(10, 6.0), (100, 70.0)])
def test_default_logits_distillation_is_not_hinton_kd(num_classes, min_ratio):
    teacher, student = _logits(num_classes)
    default = _keras(teacher, student)
    hinton = _hinton_kd(teacher, student)
    # Unit-normal logits at T=4: 6-11x KD on 10 classes, 73-82x on 100
    # (CIFAR-100), over seeds 0-9.
    assert default / hinton > min_ratio
    # What it computes: the KL *function* on the clipped, scaled logits.
    p = np.clip(teacher / TEMPERATURE, 1e-7, 1.0)
    q = np.clip(student / TEMPERATURE, 1e-7, 1.0)
    np.testing.assert_allclose(default, np.mean(np.sum(p * np.log(p / q), axis=-1)), rtol=1e-5)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_logits_distillation_with_the_kl_instance_is_hinton_kd(num_classes):
    teacher, student = _logits(num_classes)
    assert _softmax(np.concatenate([teacher, student]) / TEMPERATURE).min() > 1e-7
    np.testing.assert_allclose(
        _keras(teacher, student, loss=keras.losses.KLDivergence()),
        _hinton_kd(teacher, student), rtol=1e-5)


def test_kl_instance_departs_from_kd_once_probabilities_fall_below_its_clip():
    teacher, student = _logits(100, scale=12.0)
    p, q = _softmax(teacher / TEMPERATURE), _softmax(student / TEMPERATURE)
    assert q.min() < 1e-7
    clipped = np.clip(p, 1e-7, 1.0), np.clip(q, 1e-7, 1.0)
    expected = TEMPERATURE**2 * np.mean(np.sum(clipped[0] * np.log(clipped[0] / clipped[1]),
                                               axis=-1))
    keras_value = _keras(teacher, student, loss=keras.losses.KLDivergence())
    np.testing.assert_allclose(keras_value, expected, rtol=1e-4)
    assert abs(keras_value - _hinton_kd(teacher, student)) > 1e-3 * keras_value


def test_cross_entropy_from_logits_in_logits_distillation_weights_by_teacher_logits():
    # LogitsDistillation's docstring example: the teacher's scaled logits
    # become the cross-entropy's target weights (negative ones included).
    teacher, student = _logits(10)
    value = _keras(teacher, student,
                   loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    log_q = np.log(_softmax(student / TEMPERATURE))
    expected = np.mean(-np.sum(teacher / TEMPERATURE * log_q, axis=-1))
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)
    assert not np.isclose(value, _hinton_kd(teacher, student), rtol=0.1)


def test_keras_distiller_total_is_tllm_alpha_beta_with_alpha_w_and_beta_1_minus_w():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).normal(size=(16, 8)).astype(np.float32)
    y = np.arange(16, dtype=np.int32) % 4
    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    weight = 0.3
    distiller = keras.distillation.Distiller(
        teacher=teacher, student=student, student_loss_weight=weight,
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=TEMPERATURE, loss=keras.losses.KLDivergence()))
    distiller.compile(optimizer="sgd",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    total = float(keras.ops.convert_to_numpy(distiller.compute_loss(x=x, y=y)))
    teacher_logits, student_logits = teacher(x), student(x)
    cross_entropy = keras.losses.sparse_categorical_crossentropy(y, student_logits,
                                                                 from_logits=True)
    kd = losses.kd_loss(teacher_logits, student_logits, TEMPERATURE)
    # tllm_tf.Distiller with alpha=w, beta=1-w and an all-ones class mask.
    expected = np.mean(weight * np.asarray(cross_entropy) + (1 - weight) * np.asarray(kd))
    np.testing.assert_allclose(total, expected, rtol=1e-5)


# tllm_tf's names load on first use, so `import tllm_tf` alone has not yet run the
# Distiller's `register_keras_serializable`: these are the two ways that do.
@pytest.mark.parametrize("load", [
    "import tllm_tf; tllm_tf.Distiller; model = keras.saving.load_model(path)",
    "from tllm_tf.pipeline import model_io; "
    "model = model_io.load_keras_model(path, compile=True)",
])
def test_a_saved_distiller_loads_in_a_fresh_process(tmp_path, load):
    keras.utils.set_random_seed(0)
    distiller = tllm_tf.Distiller(make_mlp("student"), make_mlp("teacher", width=16))
    distiller.compile(optimizer="sgd", distillation_loss_fn=tllm_tf.KDLoss(temperature=2.0))
    distiller.set_class_mask([1, 0, 1, 1])
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    script = (f"import keras; path = {str(path)!r}; {load}; "
              "print(type(model).__name__, model.undistillable_classes, "
              "model.distillation_loss_fn.temperature)")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "Distiller [1] 2.0"
