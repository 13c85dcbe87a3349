"""A planted undistillable pair: the teacher learnt two classes with their labels mostly swapped.

Its knowledge of exactly those classes is wrong, so KD drags the student down on them. TLLM with the
library's default rule must find the two classes (and at most one other) and bring them back, and
so must the refit (`--students=tllm,tllm_refit`): a fresh student with that final mask from its
first step, under `soft_label`.

`rule="paired_calibrated"` must find and bring back the two classes too, but it is not held to "at
most one other": a teacher this wrong leaves the distilled student less sure of most classes half
way through training (calibrated, it trails the reference beyond the look's level on eight of the
ten at the first look, t = 3.7 to 13.8, where it trails in accuracy on six), and the calibrated
test masks them. Its first
pass still wins back half of the planted loss; its refit, with eight classes on labels, wins back
48% of it, so the refit is held only to beating KD there (docs/study.md, "The calibrated rule in the
library").

`rule="paired_capped"` (the calibrated test with each probability capped at 0.9) masks four of the
other eight: an image both models get right with probability 0.9 or more no longer counts, so a
student less sure of a class it gets right is behind on it less often. Its first pass wins back
95% of the planted loss and its refit 67% (docs/study.md, "Capped scores"). Of the four, KD's
student is behind the reference on the test split on 9 (3 images); on 1, 2 and 5 it is level, but
at the first look it trails on 5 in accuracy (10 held-out images to 1) and on 1 and 2 in confidence
alone (2 to 0, 0 to 0). Patience 3 or 4, a later warm-up or a mask that is not sticky do not bring
the others down to one; a cap of 0.5 does, by losing what the cap gained on class 8
(`results/planted_pair/variants.py`).
"""

import typing

import keras
import numpy as np
import pytest

import tllm_tf
from tllm_tf.data import load_digits

PLANTED = (3, 8)
EPOCHS = 20


def _arrays(split):
    images, labels = zip(*split.as_numpy_iterator())
    return np.stack(images) / 16.0, np.array(labels)


def _mlp(width, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Dense(width, activation="relu")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(10)(hidden))


def _label_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class Planted(typing.NamedTuple):
    """The planted setting: the digits' splits, the reference's predictions, and the students."""

    held_out: tuple
    test: tuple
    predictions: tllm_tf.ReferencePredictions
    distil: typing.Callable  # distil(callbacks, policy="hard_label") -> a trained Distiller
    reference: keras.Model
    kd_student: tllm_tf.Distiller

    def per_class_accuracy(self, model):
        return tllm_tf.per_class_accuracy(model, self.test, 10)

    def planted_accuracy(self, model):
        return np.mean(self.per_class_accuracy(model)[list(PLANTED)])


def planted_setting():
    """Trains the planted teacher, the label-only reference and KD's student (about 15 s).

    Also read by `results/planted_pair/variants.py`, which runs the rules' variants on it.

    Returns:
        A `Planted`: its `distil` trains a fresh student under the callbacks given.
    """
    data = load_digits(holdout_fraction=0.3, seed=0)
    (x_train, y_train), held_out, test = (
        _arrays(data.train), _arrays(data.held_out), _arrays(data.test))
    swapped = y_train.copy()
    rng = np.random.default_rng(0)
    for source, target in (PLANTED, PLANTED[::-1]):
        members = np.flatnonzero(y_train == source)
        swapped[members[rng.random(members.size) < 0.8]] = target

    teacher = _mlp(64, seed=1)
    teacher.compile(keras.optimizers.Adam(3e-3), _label_loss())
    teacher.fit(x_train, swapped, batch_size=32, epochs=30, verbose=0)

    reference = _mlp(16, seed=2)
    reference.compile(keras.optimizers.Adam(3e-3), _label_loss())
    recorder = tllm_tf.PredictionRecorder(held_out, num_classes=10)
    reference.fit(x_train, y_train, batch_size=64, epochs=EPOCHS, shuffle=False, verbose=0,
                  callbacks=[recorder])
    predictions = tllm_tf.ReferencePredictions(
        labels=recorder.labels, correct=np.stack([recorder.rows[e] for e in range(EPOCHS)]),
        scores=np.stack([recorder.score_rows[e] for e in range(EPOCHS)]))

    def distil(callbacks, policy="hard_label"):
        distiller = tllm_tf.Distiller(_mlp(16, seed=2), teacher)
        distiller.compile(keras.optimizers.Adam(3e-3), masked_class_policy=policy)
        distiller.fit(x_train, y_train, batch_size=64, epochs=EPOCHS, shuffle=False, verbose=0,
                      callbacks=callbacks)
        return distiller

    return Planted(held_out, test, predictions, distil, reference, distil([]))


@pytest.fixture(scope="module")
def planted():
    """The planted setting, shared by the rules' cases (each trains its own TLLM students)."""
    setting = planted_setting()
    labels_accuracy = setting.planted_accuracy(setting.reference)
    kd_accuracy = setting.planted_accuracy(setting.kd_student)
    assert kd_accuracy < labels_accuracy - 0.3  # the planted harm is real
    return setting, labels_accuracy, kd_accuracy


@pytest.mark.slow
@pytest.mark.parametrize("rule, most_others, refit_share", [
    ("paired", 1, 0.5), ("paired_calibrated", 8, 0.25), ("paired_capped", 4, 0.5)])
def test_tllm_finds_and_recovers_two_planted_classes(planted, rule, most_others, refit_share):
    setting, labels_accuracy, kd_accuracy = planted
    held_out, predictions, planted_accuracy = (
        setting.held_out, setting.predictions, setting.planted_accuracy)
    tllm = setting.distil([tllm_tf.UndistillableClassCallback(
        held_out, reference=predictions, rule=rule)])

    masked = set(tllm.undistillable_classes)
    assert set(PLANTED) <= masked and len(masked - set(PLANTED)) <= most_others, masked
    # TLLM wins back at least half of what KD lost on the planted classes.
    assert planted_accuracy(tllm) > kd_accuracy + 0.5 * (labels_accuracy - kd_accuracy)
    refit = setting.distil([tllm_tf.UndistillableClassCallback(
        held_out, reference=predictions, masked_classes=tllm.undistillable_classes,
        warmup_epochs=EPOCHS, rule=rule)], policy="soft_label")
    assert set(refit.undistillable_classes) == masked  # Kept as it was: no update of its own.
    assert planted_accuracy(refit) > kd_accuracy + refit_share * (labels_accuracy - kd_accuracy)
