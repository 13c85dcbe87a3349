"""`Distiller`: knowledge distillation with a per-class distillation mask.

Implements the training side of Teach Less, Learn More (TLLM, Zhu et al.,
NeurIPS 2022): the distillation term of each sample is gated by
`class_mask[label]`, so classes found undistillable (see
`tllm_tf.UndistillableClassCallback`) are taught by their labels alone.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tllm_tf import identification
from tllm_tf import losses as losses_lib
from tllm_tf import policies
from tllm_tf import teacher_precision


def _output_size(model):
    """Returns the size of a model's single logits output, or None if unknown."""
    outputs = getattr(model, "outputs", None)
    if not outputs:
        return None
    if len(outputs) != 1:
        raise ValueError(
            f"Expected a model with one logits output; {model.name!r} has "
            f"{len(outputs)} outputs."
        )
    return outputs[0].shape[-1]


def _output_layer(model):
    layers = getattr(model, "layers", None)
    if not layers:
        return None
    last = layers[-1]
    return _output_layer(last) if isinstance(last, keras.Model) else last


def _ends_in_softmax(model):
    layer = _output_layer(model)
    if layer is None:
        return False
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) == "softmax"


def _check_outputs_logits(model, role):
    if _ends_in_softmax(model):
        raise ValueError(
            f"The {role} {model.name!r} ends in a softmax layer "
            f"({_output_layer(model).name!r}), so it outputs probabilities. "
            "Distiller expects logits: rebuild the last layer with "
            "`activation=None` (or drop the Softmax layer); the weights can "
            "be copied over unchanged."
        )


@keras.saving.register_keras_serializable(package="tllm_tf")
class Distiller(keras.Model):
    """Trains a student to imitate a frozen teacher, class by class.

    Per sample, with label `y`, class mask `m` (1 = distil, 0 = undistillable),
    cross-entropy `CE` and distillation loss `KD`:

    - `"hard_label"`: `alpha * CE + beta * (m[y] * KD + (1 - m[y]) * CE)`;
    - `"drop"`: `alpha * CE + beta * m[y] * KD`;

    averaged over the global batch (also under a `tf.distribute` strategy).
    Labels are class ids, or soft label vectors (from MixUp/CutMix), for
    which `m[y]` is the label-weighted mask.

    Create it inside `strategy.scope()` when training distributed. Calling it
    runs the student, so `evaluate` and `predict` report the student.

    Args:
        student: `keras.Model` returning logits; trained.
        teacher: `keras.Model` returning logits; frozen (`trainable=False`,
            run with `training=False`, outside the gradient tape).
        num_classes: size of the class mask. Defaults to the student's
            output size.
        teacher_dtype: if set, the teacher runs as a copy that computes and
            stores its weights in this dtype (`"bfloat16"`, `"float16"` or
            `"float32"`, see `tllm_tf.teacher_precision`); its logits are
            cast to float32 before the loss. `"bfloat16"` made the
            teacher's forward pass 2.4-2.9x faster on a CPU with AVX512-BF16
            (docs/benchmarks.md). Defaults to `None`: the teacher as given.
        **kwargs: passed to `keras.Model`.

    Raises:
        ValueError: if the output sizes disagree, a model outputs
            probabilities, or `teacher_dtype` is unknown.

    Example:

    >>> distiller = Distiller(student, teacher)
    >>> distiller.compile(optimizer="adam", metrics=["accuracy"])
    >>> distiller.fit(train_ds, epochs=10, callbacks=[
    ...     UndistillableClassCallback(held_out_ds, reference=reference_model)])
    """

    def __init__(self, student, teacher, num_classes=None, teacher_dtype=None, **kwargs):
        super().__init__(**kwargs)
        student_classes = _output_size(student)
        teacher_classes = _output_size(teacher)
        if (student_classes and teacher_classes
                and student_classes != teacher_classes):
            raise ValueError(
                "Teacher and student must output logits over the same classes. "
                f"Received: teacher {teacher.name!r} outputs {teacher_classes}, "
                f"student {student.name!r} outputs {student_classes}."
            )
        if num_classes is None:
            num_classes = student_classes or teacher_classes
        if num_classes is None:
            raise ValueError(
                "Could not infer num_classes from the models (they are not "
                "built). Pass `num_classes=` explicitly."
            )
        for size, role in ((student_classes, "student"), (teacher_classes, "teacher")):
            if size is not None and size != num_classes:
                raise ValueError(
                    f"num_classes={num_classes} disagrees with the {role}, "
                    f"which outputs {size} logits. Pass num_classes={size} "
                    "or leave it unset."
                )
        _check_outputs_logits(teacher, "teacher")
        _check_outputs_logits(student, "student")

        self.student = student
        self.teacher_dtype = teacher_dtype
        if teacher_dtype is not None:
            teacher = teacher_precision.inference_copy(teacher, teacher_dtype)
        self.teacher = teacher
        self.teacher.trainable = False
        self.num_classes = int(num_classes)
        self.class_mask = self.add_weight(
            shape=(self.num_classes,),
            initializer="ones",
            dtype="float32",
            trainable=False,
            name="class_mask",
        )
        # What the identification rule keeps between updates, saved with the
        # mask so that a resumed run judges as an uninterrupted one would.
        self.identification_state = self.add_weight(
            shape=(4, self.num_classes),
            initializer="zeros",
            dtype="float32",
            trainable=False,
            name="identification_state",
        )
        self.identification_state.assign(
            identification.IdentificationState.initial(self.num_classes).to_array())
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self._own_trackers = (
            self.loss_tracker,
            self.student_loss_tracker,
            self.distillation_loss_tracker,
        )
        self.alpha = 0.1
        self.beta = 0.9
        self.masked_class_policy = "hard_label"
        self.distillation_warmup_steps = 0
        self.student_loss_fn = None
        self.distillation_loss_fn = losses_lib.KDLoss()
        if student.built and teacher.built:
            self.built = True

    # -- configuration ------------------------------------------------------

    def compile(
        self,
        optimizer="rmsprop",
        metrics=None,
        student_loss_fn=None,
        distillation_loss_fn=None,
        alpha=0.1,
        beta=0.9,
        masked_class_policy="hard_label",
        distillation_warmup_steps=0,
        **kwargs,
    ):
        """Configures the distillation.

        Args:
            optimizer: Keras optimizer or its name. Defaults to `"rmsprop"`.
            metrics: compiled metrics of the student's logits, e.g.
                `["accuracy"]`. Defaults to `None`.
            student_loss_fn: `keras.losses.Loss` (its `call` gives the
                per-sample value) or a callable `(labels, logits) ->
                per-sample loss`. Defaults to cross-entropy from logits
                (sparse for class ids, categorical for soft labels).
            distillation_loss_fn: `keras.losses.Loss` whose
                `call(teacher_logits, student_logits)` is per-sample, or a
                registry name of `tllm_tf.losses`. Defaults to
                `KDLoss(temperature=4.0)`.
            alpha: weight of the label term, `>= 0`. Defaults to `0.1`.
            beta: weight of the distillation term, `>= 0`. Defaults to `0.9`.
            masked_class_policy: a name of `tllm_tf.policies.POLICIES`
                (`"hard_label"`, `"drop"`, `"soft_label"`), see the class
                docstring. Defaults to `"hard_label"`.
            distillation_warmup_steps: the distillation weight rises
                linearly from `beta / steps` to `beta` over this many
                optimizer steps (DKD's warm-up; it follows the optimizer's
                iteration count, so a resumed run continues it exactly),
                `>= 0`. Defaults to `0` (no warm-up).
            **kwargs: passed to `keras.Model.compile` (`jit_compile`,
                `steps_per_execution`, ...). `loss` is not accepted.

        Raises:
            ValueError: on a negative weight, an unknown policy or a `loss=`.
        """
        if "loss" in kwargs:
            raise ValueError(
                "Distiller.compile() takes `student_loss_fn` and "
                "`distillation_loss_fn`, not `loss`."
            )
        for weight_name, weight in (("alpha", alpha), ("beta", beta)):
            if not weight >= 0:
                raise ValueError(
                    f"Expected {weight_name} >= 0. Received: {weight_name}={weight}"
                )
        policies.get_policy(masked_class_policy)
        if not distillation_warmup_steps >= 0:
            raise ValueError(
                "Expected distillation_warmup_steps >= 0. Received: "
                f"distillation_warmup_steps={distillation_warmup_steps}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.masked_class_policy = masked_class_policy
        self.distillation_warmup_steps = int(distillation_warmup_steps)
        self.student_loss_fn = student_loss_fn
        self.distillation_loss_fn = losses_lib.get_distillation_loss(
            distillation_loss_fn if distillation_loss_fn is not None else "kd"
        )
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config() or {}
        config.update(
            alpha=self.alpha,
            beta=self.beta,
            masked_class_policy=self.masked_class_policy,
            distillation_warmup_steps=self.distillation_warmup_steps,
            distillation_loss_fn=keras.saving.serialize_keras_object(
                self.distillation_loss_fn
            ),
        )
        if isinstance(self.student_loss_fn, keras.losses.Loss):
            config["student_loss_fn"] = keras.saving.serialize_keras_object(
                self.student_loss_fn
            )
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        # Keras's own entries that Distiller.compile does not take.
        for key in ("loss", "loss_weights"):
            config.pop(key, None)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        config = super().get_config()
        config.update(
            student=keras.saving.serialize_keras_object(self.student),
            teacher=keras.saving.serialize_keras_object(self.teacher),
            num_classes=self.num_classes,
            teacher_dtype=self.teacher_dtype,
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("student", "teacher"):
            config[key] = keras.saving.deserialize_keras_object(
                config[key], custom_objects=custom_objects
            )
        return cls(**config)

    # -- the class mask -------------------------------------------------------

    @property
    def undistillable_classes(self):
        """Sorted list of the class ids whose mask is 0."""
        mask = keras.ops.convert_to_numpy(self.class_mask)
        return [int(c) for c in np.flatnonzero(mask <= 0.0)]

    def set_class_mask(self, values):
        """Assigns the class mask (1 = distil, 0 = undistillable).

        Takes effect in the next compiled step, without retracing.

        Args:
            values: array-like of shape `(num_classes,)` with values in
                `[0, 1]`.

        Raises:
            ValueError: on a wrong shape or a value outside `[0, 1]`.
        """
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (self.num_classes,):
            raise ValueError(
                f"Expected a class mask of shape ({self.num_classes},). "
                f"Received shape {values.shape}."
            )
        if not np.all((values >= 0.0) & (values <= 1.0)):
            raise ValueError(
                f"Class mask values must lie in [0, 1]. Received: {values.tolist()}"
            )
        self.class_mask.assign(values)

    # -- training -------------------------------------------------------------

    @property
    def metrics(self):
        own = list(self._own_trackers)
        keras_loss_tracker = getattr(self, "_loss_tracker", None)
        rest = [
            metric for metric in super().metrics
            if metric is not keras_loss_tracker
            and not any(metric is tracker for tracker in own)
        ]
        return own + rest

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def fit(self, x=None, y=None, *args, **kwargs):
        # Arrays are checked whole before any step runs; datasets are checked
        # batch by batch inside the step (see `_labels`).
        if y is not None and not isinstance(y, tf.data.Dataset):
            _check_label_array(y, self.num_classes)
        return super().fit(x, y, *args, **kwargs)

    def _labels(self, y):
        """Returns `(labels, is_soft)`: int32 class ids, or float soft labels."""
        y = tf.convert_to_tensor(y)
        if y.dtype.is_floating and y.shape.rank == 2 and y.shape[-1] == self.num_classes:
            return tf.cast(y, "float32"), True
        if y.shape.rank == 2 and y.shape[-1] == 1:
            y = tf.squeeze(y, axis=-1)
        labels = tf.cast(y, "int32")
        message = (
            f"Labels must be class ids in [0, num_classes={self.num_classes}). "
            "Fix the data set's labels (or num_classes). Offending labels:"
        )
        with tf.control_dependencies([
            tf.debugging.assert_non_negative(labels, message=message),
            tf.debugging.assert_less(labels, self.num_classes, message=message),
        ]):
            return tf.identity(labels), False

    def _student_loss(self, labels, is_soft, student_logits):
        if self.student_loss_fn is None:
            if is_soft:
                return keras.losses.categorical_crossentropy(
                    labels, student_logits, from_logits=True)
            return keras.losses.sparse_categorical_crossentropy(
                labels, student_logits, from_logits=True)
        if isinstance(self.student_loss_fn, keras.losses.Loss):
            return self.student_loss_fn.call(labels, student_logits)
        return self.student_loss_fn(labels, student_logits)

    def _loss_terms(self, labels, is_soft, student_logits, teacher_logits):
        """Per-sample `(total, student_loss, distillation_loss)`."""
        student_logits = ops.cast(student_logits, "float32")
        teacher_logits = ops.cast(teacher_logits, "float32")
        student_loss = self._student_loss(labels, is_soft, student_logits)
        distillation_loss = losses_lib.per_sample_distillation_loss(
            self.distillation_loss_fn, teacher_logits, student_logits, labels)
        targets = labels if is_soft else ops.one_hot(labels, self.num_classes)
        distil_weight = ops.matmul(targets, ops.expand_dims(self.class_mask, -1))[:, 0]
        gated = policies.get_policy(self.masked_class_policy)(policies.PolicyInputs(
            distil_weight=distil_weight,
            distillation_loss=distillation_loss,
            student_loss=student_loss,
            targets=targets,
            student_logits=student_logits,
            teacher_logits=teacher_logits,
            temperature=float(getattr(self.distillation_loss_fn, "temperature", 1.0)),
        ))
        total = self.alpha * student_loss + self._beta_now() * gated
        return total, student_loss, distillation_loss

    def _beta_now(self):
        if not self.distillation_warmup_steps:
            return self.beta
        step = ops.cast(self.optimizer.iterations + 1, "float32")
        return self.beta * ops.minimum(1.0, step / float(self.distillation_warmup_steps))

    def _num_undistillable_classes(self):
        return ops.sum(ops.cast(self.class_mask <= 0.0, "int32"))

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        labels, is_soft = self._labels(y)
        teacher_logits = self.teacher(x, training=False)
        with tf.GradientTape() as tape:
            student_logits = self.student(x, training=True)
            total, student_loss, distillation_loss = self._loss_terms(
                labels, is_soft, student_logits, teacher_logits
            )
            loss = _mean(total, sample_weight)
            if self.student.losses:
                loss = loss + ops.sum(ops.stack(self.student.losses))
            # Gradients are summed over replicas: scale for the global batch.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled_loss = self.optimizer.scale_loss(loss / replicas)
        variables = self.student.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))

        batch_size = ops.shape(student_logits)[0]
        self.loss_tracker.update_state(loss, sample_weight=batch_size)
        self.student_loss_tracker.update_state(
            _mean(student_loss, sample_weight), sample_weight=batch_size)
        self.distillation_loss_tracker.update_state(
            _mean(distillation_loss, sample_weight), sample_weight=batch_size)
        self.compute_metrics(x, y, student_logits, sample_weight)
        logs = self.get_metrics_result()
        logs["num_undistillable_classes"] = self._num_undistillable_classes()
        return logs

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        labels, is_soft = self._labels(y)
        student_logits = self.student(x, training=False)
        student_loss = self._student_loss(
            labels, is_soft, ops.cast(student_logits, "float32"))
        self.loss_tracker.update_state(
            _mean(student_loss, sample_weight),
            sample_weight=ops.shape(student_logits)[0],
        )
        self.compute_metrics(x, y, student_logits, sample_weight)
        logs = self.get_metrics_result()
        logs.pop("student_loss", None)
        logs.pop("distillation_loss", None)
        return logs


def _mean(per_sample, sample_weight):
    if sample_weight is not None:
        per_sample = per_sample * ops.cast(ops.reshape(sample_weight, (-1,)), per_sample.dtype)
    return ops.mean(per_sample)


def _check_label_array(y, num_classes):
    labels = np.asarray(y)
    if labels.dtype.kind == "f" and labels.ndim == 2 and labels.shape[-1] == num_classes:
        return
    if labels.size == 0:
        return
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(
            f"Labels must be class ids in [0, num_classes={num_classes}). "
            f"Found {bad.size} outside, e.g. {np.unique(bad)[:5].tolist()}. "
            "Fix the data set's labels (or num_classes)."
        )
