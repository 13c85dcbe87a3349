"""The accuracy study: labels-only, KD and TLLM students, seed by seed.

Checks the claims of Teach Less, Learn More (Zhu et al., NeurIPS 2022) on the
embedded digits: for one `Setting` and one seed, `run_seed` trains the
teachers, a student on labels alone (the reference, whose held-out per-class
accuracy is recorded every epoch), a KD student per teacher and a TLLM
student per identification variant, and returns their test accuracies. A
class is *undistillable* when the KD student is less accurate on it than the
label-only student, on the test split. `summarise` turns the seeds into means
and standard deviations; `markdown` writes them as tables.

Every student of a seed sees the same batches: the same shuffle, the same
random shifts and the same MixUp pairs, and the teacher sees the student's
augmented image, since augmentation happens in the `tf.data` pipeline.
"""

import dataclasses
from typing import Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

import tllm_tf
from tllm_tf import data as data_lib
from tllm_tf import metrics as metrics_lib
from tllm_tf import reference as reference_lib
from tllm_tf import stages


@dataclasses.dataclass(frozen=True)
class Setting:
    """One experimental setting; the seed is passed separately."""

    student_model: str = "mlp_32"
    teacher_model: str = "cnn_large"
    num_train: Optional[int] = 300
    # Training images of the teachers; None: the whole training split (never
    # the held-out or test images).
    teacher_num_train: Optional[int] = None
    holdout_fraction: float = 0.2
    epochs: int = 200
    teacher_epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 3e-3
    # The learning rate is multiplied by 0.1 at these fractions of training.
    lr_decay_at: Tuple[float, ...] = (0.5, 0.75)
    shift: int = 0
    mixup: float = 0.4
    teacher_shift: int = 1
    teacher_mixup: float = 0.4
    temperature: float = 4.0
    alpha: float = 0.1
    beta: float = 0.9
    steps_per_execution: int = 4
    # Precision of the distilling teacher (`Distiller(teacher_dtype=...)`);
    # None: float32, as trained.
    teacher_dtype: Optional[str] = None


# TLLM identification variants: the masked-class policy and the keyword
# arguments of `UndistillableClassCallback`; the study picks some by name.
VARIANTS = {
    "plain": {},
    "drop": {"masked_class_policy": "drop"},
    "soft_label": {"masked_class_policy": "soft_label"},
    "margin_0.05": {"margin": 0.05},
    "margin_0.1": {"margin": 0.1},
    "warmup_25%": {"warmup_fraction": 0.25},
    "warmup_50%": {"warmup_fraction": 0.5},
    "update_every_10": {"update_every": 10},
    "epoch_matched": {"epoch_matched": True},
    "smoothing_0.8": {"smoothing": 0.8},
    "patience_5": {"patience": 5},
    "se_margin_1": {"margin_standard_errors": 1.0},
    "matched_patience_5": {"epoch_matched": True, "patience": 5},
    "matched_se_1": {"epoch_matched": True, "margin_standard_errors": 1.0},
    "matched_smoothing_0.8": {"epoch_matched": True, "smoothing": 0.8},
    "matched_drop": {"epoch_matched": True, "masked_class_policy": "drop"},
    "se_1_soft_label": {"margin_standard_errors": 1.0, "masked_class_policy": "soft_label"},
}
# The variants of the main study; the last one above was added for the
# confirmation run only.
DEFAULT_VARIANTS = tuple(name for name in VARIANTS if name != "se_1_soft_label")


class SoftLabelDistiller(tllm_tf.Distiller):
    """Experimental masked-class policy `"soft_label"`, measured by the study.

    `hard_label` teaches a masked class by cross-entropy on the raw logits,
    which pushes its logits without bound, while distilled classes only
    match the teacher's finite logits at temperature `T`: the two groups'
    logit scales drift apart. Here a masked sample is still distilled at
    temperature `T`, towards its label softened to the teacher's confidence
    on that sample: `c * y + (1 - c) * (1 - y) / (K - 1)`, with `c` the
    teacher's largest probability at `T`. The target keeps the teacher's
    scale and drops its distribution over the wrong classes.

    Needs a distillation loss with a `temperature` (`KDLoss`).
    """

    def _loss_terms(self, labels, is_soft, student_logits, teacher_logits):
        student_logits = keras.ops.cast(student_logits, "float32")
        teacher_logits = keras.ops.cast(teacher_logits, "float32")
        temperature = self.distillation_loss_fn.temperature
        student_loss = self._student_loss(labels, is_soft, student_logits)
        distillation_loss = self.distillation_loss_fn.call(teacher_logits, student_logits)
        targets = labels if is_soft else keras.ops.one_hot(labels, self.num_classes)
        confidence = keras.ops.max(
            keras.ops.softmax(teacher_logits / temperature, axis=-1), axis=-1, keepdims=True)
        softened = (confidence * targets
                    + (1.0 - confidence) * (1.0 - targets) / (self.num_classes - 1))
        label_loss = tllm_tf.kd_loss(
            temperature * keras.ops.log(softened), student_logits, temperature)
        distil_weight = keras.ops.matmul(
            targets, keras.ops.expand_dims(self.class_mask, -1))[:, 0]
        gated = distil_weight * distillation_loss + (1.0 - distil_weight) * label_loss
        return self.alpha * student_loss + self.beta * gated, student_loss, distillation_loss


def _per_image_seeds(seed):
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)


def _shift(image, seed, pixels):
    padded = tf.pad(image, [[pixels, pixels], [pixels, pixels], [0, 0]])
    return tf.image.stateless_random_crop(padded, tf.shape(image), seed=seed)


def _mixup(images, labels, seed, alpha, num_classes):
    # Each example is mixed with the one at the mirrored batch position;
    # lambda ~ Beta(alpha, alpha) drawn as a ratio of two Gamma variables.
    first_seed, second_seed = tf.unstack(tf.random.split(seed, 2))
    size = tf.shape(images)[:1]
    first = tf.random.stateless_gamma(size, first_seed, alpha)
    second = tf.random.stateless_gamma(size, second_seed, alpha)
    weight = first / (first + second)
    one_hot = tf.one_hot(labels, num_classes)
    image_weight = tf.reshape(weight, (-1, 1, 1, 1))
    label_weight = tf.reshape(weight, (-1, 1))
    mixed_images = image_weight * images + (1 - image_weight) * tf.reverse(images, [0])
    mixed_labels = label_weight * one_hot + (1 - label_weight) * tf.reverse(one_hot, [0])
    return mixed_images, mixed_labels


def train_batches(split, *, batch_size, seed, num_classes, shift=0, mixup=0.0):
    """Shuffled, shifted, batched and mixed training batches of raw images.

    Args:
        split: unbatched `(image, label)` dataset.
        batch_size: examples per batch.
        seed: seed of the shuffle, shifts and MixUp draws (new each epoch,
            the same on every run).
        num_classes: number of classes (MixUp's soft labels).
        shift: random translation of up to this many pixels each way, zero
            padded. Defaults to `0`.
        mixup: MixUp's Beta parameter; `0` turns it off (integer labels).
            Defaults to `0.0`.

    Returns:
        A `tf.data.Dataset` of `(images, labels)`.
    """
    dataset = split.cache().shuffle(4096, seed=seed, reshuffle_each_iteration=True)
    if shift:
        dataset = tf.data.Dataset.zip(dataset, _per_image_seeds(seed)).map(
            lambda example, image_seed: (_shift(example[0], image_seed, shift), example[1]))
    dataset = dataset.batch(batch_size)
    if mixup:
        dataset = tf.data.Dataset.zip(dataset, _per_image_seeds(seed + 1)).map(
            lambda batch, batch_seed: _mixup(*batch, batch_seed, mixup, num_classes))
    return dataset.prefetch(tf.data.AUTOTUNE)


def _optimizer(setting, num_train, epochs):
    steps = -(-num_train // setting.batch_size)
    boundaries = [int(fraction * epochs) * steps for fraction in setting.lr_decay_at]
    values = [setting.learning_rate * 0.1**i for i in range(len(boundaries) + 1)]
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    return keras.optimizers.Adam(schedule if boundaries else setting.learning_rate)


def _evaluate(model, split, num_classes):
    correct, total = metrics_lib.PerClassCounter(model, num_classes)(split.batch(512))
    per_class = metrics_lib.accuracy_from_counts(correct, total)
    return {"accuracy": float(correct.sum() / total.sum()),
            "per_class": [round(float(a), 6) for a in per_class]}


class SeedRun:
    """The models of one seed of one setting, trained on first use.

    Args:
        setting: a `Setting`.
        seed: seed of the splits, initialisations and batches.
    """

    def __init__(self, setting, seed):
        self.setting = setting
        self.seed = seed
        self.data = data_lib.load_digits(
            holdout_fraction=setting.holdout_fraction, num_train=setting.num_train, seed=seed)
        # Same seed and hold-out: the same test and held-out splits, and a
        # training split that contains the student's.
        self.teacher_data = self.data
        if setting.teacher_num_train != setting.num_train:
            self.teacher_data = data_lib.load_digits(
                holdout_fraction=setting.holdout_fraction,
                num_train=setting.teacher_num_train, seed=seed)
        self._teachers = {}
        self._labels = None

    def _batches(self, data, shift, mixup):
        return train_batches(
            data.train, batch_size=self.setting.batch_size, seed=self.seed,
            num_classes=data.num_classes, shift=shift, mixup=mixup)

    def _student_batches(self):
        return self._batches(self.data, self.setting.shift, self.setting.mixup)

    def _fit_on_labels(self, model_name, data, epochs, batches, callbacks=()):
        keras.utils.set_random_seed(self.seed)
        model = stages.build_classifier(model_name, data)
        model.compile(
            optimizer=_optimizer(self.setting, data.num_train, epochs),
            loss=(keras.losses.CategoricalCrossentropy(from_logits=True)
                  if batches.element_spec[1].shape.rank == 2
                  else keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
            steps_per_execution=self.setting.steps_per_execution)
        model.fit(batches, epochs=epochs, verbose=0, callbacks=list(callbacks))
        return model

    def teacher(self, model_name):
        """The teacher `model_name`, trained on labels (cached)."""
        if model_name not in self._teachers:
            self._teachers[model_name] = self._fit_on_labels(
                model_name, self.teacher_data, self.setting.teacher_epochs,
                self._batches(self.teacher_data, self.setting.teacher_shift,
                              self.setting.teacher_mixup))
        return self._teachers[model_name]

    def labels(self):
        """`(model, per-epoch held-out accuracy)` of the label-only student."""
        if self._labels is None:
            history = reference_lib.ReferenceHistory(
                self.data.held_out.batch(512), self.data.num_classes)
            model = self._fit_on_labels(
                self.setting.student_model, self.data, self.setting.epochs,
                self._student_batches(), [history])
            self._labels = (model, history.per_epoch_accuracy)
        return self._labels

    def distil(self, teacher_name, variant=None):
        """Trains a KD student (`variant=None`) or a TLLM one; returns its
        `(model, callback or None)`."""
        options = dict(variant or {})
        policy = options.pop("masked_class_policy", "hard_label")
        warmup_fraction = options.pop("warmup_fraction", None)
        if warmup_fraction is not None:
            options["warmup_epochs"] = int(warmup_fraction * self.setting.epochs)
        teacher = self.teacher(teacher_name)
        keras.utils.set_random_seed(self.seed)
        student = stages.build_classifier(self.setting.student_model, self.data)
        if policy == "soft_label":
            distiller, policy = SoftLabelDistiller(
                student, teacher, teacher_dtype=self.setting.teacher_dtype), "hard_label"
        else:
            distiller = tllm_tf.Distiller(
                student, teacher, teacher_dtype=self.setting.teacher_dtype)
        distiller.compile(
            optimizer=_optimizer(self.setting, self.data.num_train, self.setting.epochs),
            distillation_loss_fn=tllm_tf.KDLoss(temperature=self.setting.temperature),
            alpha=self.setting.alpha, beta=self.setting.beta,
            masked_class_policy=policy,
            steps_per_execution=self.setting.steps_per_execution)
        callback = None
        if variant is not None:
            _, reference_history = self.labels()
            reference = (reference_history if options.get("epoch_matched")
                         else reference_history[-1])
            callback = tllm_tf.UndistillableClassCallback(
                self.data.held_out.batch(512), reference, **options)
        history = distiller.fit(self._student_batches(), epochs=self.setting.epochs,
                                verbose=0, callbacks=[callback] if callback else [])
        if callback is not None:
            callback.masked_per_epoch = history.history["num_undistillable_classes"]
        return student, callback

    def test(self, model):
        return _evaluate(model, self.data.test, self.data.num_classes)


def count_undistillable(per_class_kd, per_class_labels):
    """Classes whose KD test accuracy is below the label-only student's."""
    kd, labels = np.asarray(per_class_kd, float), np.asarray(per_class_labels, float)
    return int(np.sum(kd < labels))


def run_seed(setting, seed, teachers, variants):
    """Trains and tests every model of one seed.

    Args:
        setting: a `Setting`; `setting.teacher_model` teaches the TLLM
            students.
        seed: the seed.
        teachers: names of the teachers of the capacity sweep.
        variants: dict name -> TLLM variant (see `VARIANTS`).

    Returns:
        A JSON-ready dict: `seed`, `teachers` (name -> accuracy, per_class,
        num_params), `labels`, `kd` (teacher -> result), `undistillable`
        (teacher -> count), `tllm` (variant -> result with the final mask and
        the number of masked classes after each epoch).
    """
    run = SeedRun(setting, seed)
    record = {"seed": seed, "teachers": {}, "kd": {}, "undistillable": {}, "tllm": {}}
    labels_model, _ = run.labels()
    record["labels"] = run.test(labels_model)
    for name in dict.fromkeys(list(teachers) + [setting.teacher_model]):
        teacher = run.teacher(name)
        record["teachers"][name] = dict(run.test(teacher), num_params=teacher.count_params())
        student, _ = run.distil(name)
        record["kd"][name] = run.test(student)
        record["undistillable"][name] = count_undistillable(
            record["kd"][name]["per_class"], record["labels"]["per_class"])
    for name, variant in variants.items():
        student, callback = run.distil(setting.teacher_model, variant)
        result = run.test(student)
        result["final_mask"] = [float(m) for m in keras.ops.convert_to_numpy(
            callback.model.class_mask)]
        result["masked_per_epoch"] = [int(n) for n in callback.masked_per_epoch]
        result["undistillable"] = count_undistillable(
            result["per_class"], record["labels"]["per_class"])
        record["tllm"][name] = result
    return record
