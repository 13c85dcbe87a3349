"""`Distiller`: knowledge distillation with a per-class distillation mask.

(Over 300 lines: one Keras model whose train step, test step and saving share the mask, the
policy and the teacher's precision; what a batch carries is read in `batch_contents.py`.)

Implements the training side of Teach Less, Learn More (TLLM, Zhu et al.,
NeurIPS 2022): the distillation term of each sample is gated by
`class_mask[label]`, so classes found undistillable (see
`tllm_tf.UndistillableClassCallback`) are taught by their labels alone.
"""

import functools
import inspect
import math
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tllm_tf import batch_contents
from tllm_tf import fit_callbacks
from tllm_tf import identification
from tllm_tf import losses as losses_lib
from tllm_tf import metrics as metrics_lib
from tllm_tf import model_checks
from tllm_tf import policies
from tllm_tf import replica_batches
from tllm_tf import teacher_precision


@keras.saving.register_keras_serializable(package="tllm_tf")
class Distiller(keras.Model):
    """Trains a student to imitate a frozen teacher, class by class.

    Per sample, with label `y`, class mask `m` (1 = distil, 0 = undistillable),
    cross-entropy `CE` and distillation loss `KD`:

    - `"hard_label"`: `alpha * CE + beta * (m[y] * KD + (1 - m[y]) * CE)`;
    - `"drop"`: `alpha * CE + beta * m[y] * KD`;
    - the other names of `tllm_tf.policies.POLICIES`: see their docstrings
      there (some, such as `isolate`, also change what the other samples
      distil about a masked class);

    averaged over the global batch. Labels are class ids, or label vectors
    of shape `(batch, num_classes)`: one-hot (integer or float) or soft (from
    MixUp/CutMix), for which `m[y]` is the label-weighted mask.

    Create it inside `strategy.scope()` when training distributed. Each
    replica sums its samples' losses and divides by the global batch size,
    so the update on N replicas equals the single-device update, also for a
    later batch that splits unevenly (or leaves a replica empty), such as a
    smaller last batch. The first batch of each `fit` or `evaluate` must
    split evenly: Keras builds the model from it and needs its replicas'
    shares to have one shape. `fit` and `evaluate` refuse a first batch that
    does not where its size is known (arrays, or a dataset batched with
    `drop_remainder=True`), before any step; for a dataset batched without
    it, they raise the same `ValueError` when Keras fails on that batch
    (for `validation_data`, after the epoch it follows, whose steps stay
    in the weights).

    The teacher's logits come from the teacher, run on each batch, or, when
    the batch carries them, from the batch: `x` is then a dict
    `{"images": images, "teacher_logits": logits}` (float, `(batch,
    num_classes)`), as `tllm_tf.SoftLabelStore` gives, and the teacher is not
    run; the losses are the same code either way.

    Calling it runs the student, so `predict` and the compiled `metrics`
    are the student's. Logs, the same in `fit` and `evaluate` (as in Keras,
    `val_loss` is the training objective on the validation data):

    - `loss`: the objective above plus the student's regularisation losses;
      in `fit`, NaN from the step that leaves a student weight non-finite,
      even where the loss itself stayed finite;
    - `student_loss`: the label term `CE` alone, `distillation_loss`: `KD`
      alone (ungated), both averaged over the samples;
    - `num_undistillable_classes`: the classes the mask stops distilling at
      the end of the epoch, i.e. those the epoch trained with when only
      callbacks change the mask. `UndistillableClassCallback` updates the
      mask at epoch end and then logs the count the *next* epoch trains with;
    - with `teacher_dtype="float16"`, `teacher_logit_overflows`: teacher
      logits beyond float16's range (they are clipped to +-65504, and `fit`
      logs a warning).

    Args:
        student: `keras.Model` returning logits; trained.
        teacher: `keras.Model` returning logits; frozen (`trainable=False`,
            run with `training=False`, outside the gradient tape).
        num_classes: size of the class mask. Defaults to the student's
            output size.
        teacher_dtype: if set, the teacher runs as a copy that computes and
            stores its weights in this dtype (`"bfloat16"`, `"float16"` or
            `"float32"`, see `tllm_tf.teacher_precision`; a `"bfloat16"`
            copy created under a `MultiWorkerMirroredStrategy` stores them
            in float32, rounded to bfloat16, with the same logits); its
            logits are cast to float32 before the loss. `"bfloat16"` made the
            teacher's forward pass 2.4-2.9x faster on a CPU with AVX512-BF16
            (docs/benchmarks.md). Defaults to `None`: the teacher as given.
        **kwargs: passed to `keras.Model`.

    Raises:
        ValueError: if a model is not a Keras model (a file path, say),
            returns a dict or list, outputs probabilities (a softmax layer,
            activation or op, or rows in `[0, 1]` summing to 1 on a probe
            batch of zeros and ones, see `model_checks.probe_output_size`),
            the input shapes or output sizes disagree (`num_classes`
            included; a built subclassed model's size comes from the probe),
            the student trains weights of the teacher (`Distiller(model,
            model)`, or a student built on the teacher's trainable layers:
            freezing the teacher would freeze them), `num_classes` is not given and
            neither model has a symbolic output, or `teacher_dtype` is
            unknown or set for a subclassed teacher (see
            `teacher_precision`).

    Example:

    >>> distiller = Distiller(student, teacher)
    >>> distiller.compile(optimizer="adam", metrics=["accuracy"])
    >>> distiller.fit(train_ds, epochs=10, callbacks=[
    ...     UndistillableClassCallback(held_out_ds, reference=reference_model)])
    """

    def __init__(self, student, teacher, num_classes=None, teacher_dtype=None, **kwargs):
        super().__init__(**kwargs)
        model_checks.check_model(teacher, "teacher")
        model_checks.check_model(student, "student")
        model_checks.check_same_inputs(student, teacher)
        _check_shares_no_weights(student, teacher)
        # The probe also sizes a built subclassed model, which has no symbolic output.
        student_classes = (model_checks.probe_output_size(student, "student", like=teacher)
                           or model_checks.output_size(student))
        teacher_classes = (model_checks.probe_output_size(teacher, "teacher", like=student)
                           or model_checks.output_size(teacher))
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
                f"Could not infer num_classes: neither the student {student.name!r} nor "
                f"the teacher {teacher.name!r} has a symbolic output (subclassed models "
                "have none, built or not; an unbuilt Sequential neither). Pass "
                "`num_classes=` explicitly."
            )
        # Each size is the probe's or else the symbolic output's.
        for role, size in (("student", student_classes), ("teacher", teacher_classes)):
            if size and size != num_classes:
                raise ValueError(f"num_classes={num_classes} disagrees with the {role}, which "
                                 f"outputs {size} logits. Pass num_classes={size} or leave "
                                 "it unset.")

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
        self.masked_class_count = metrics_lib.MaskedClassCount(lambda: self.class_mask)
        self._own_trackers = (
            self.loss_tracker,
            self.student_loss_tracker,
            self.distillation_loss_tracker,
            self.masked_class_count,
        )
        if teacher_dtype == "float16":
            # Logits beyond float16's range come out infinite; they are
            # clipped, counted here, and warned about (see `fit`).
            self.teacher_overflow_tracker = keras.metrics.Sum(name="teacher_logit_overflows")
            self._own_trackers += (self.teacher_overflow_tracker,)
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
                per-sample loss` of shape `(batch,)`, not the batch mean
                (refused at the first step: the mask gates it per sample).
                A `.keras` file saves it only if it can load it back: a
                Keras built-in, or registered with
                `keras.saving.register_keras_serializable` (else `save`
                raises). Defaults to cross-entropy from logits (sparse for
                class ids, categorical for label vectors).
            distillation_loss_fn: `keras.losses.Loss` whose
                `call(teacher_logits, student_logits)` is per-sample, or a
                registry name of `tllm_tf.losses`. Defaults to
                `KDLoss(temperature=4.0)`.
            alpha: weight of the label term, finite and `>= 0`; 0 with
                `masked_class_policy="drop"` warns (a masked class's samples
                would train nothing). Defaults to `0.1`.
            beta: weight of the distillation term, finite and `>= 0`.
                Defaults to `0.9`.
            masked_class_policy: a name of `tllm_tf.policies.POLICIES`, see
                the class docstring. Defaults to `"hard_label"`.
            distillation_warmup_steps: the distillation weight rises
                linearly from `beta / steps` to `beta` over this many
                optimizer steps (DKD's warm-up; it follows the optimizer's
                iteration count, so a resumed run continues it exactly),
                `>= 0`. `beta` weighs the policy's whole term, so what
                replaces a masked class's distillation term ramps up too
                (under `hard_label`, its label weight). Defaults to `0`
                (no warm-up).
            **kwargs: passed to `keras.Model.compile` (`jit_compile`,
                `steps_per_execution`, ...). `loss` and `temperature` (the
                distillation loss's, e.g. `KDLoss(temperature=4.0)`) are
                not accepted.

        Raises:
            ValueError: on a negative or non-finite weight, `alpha = beta = 0`, an unknown
                policy, a `loss=` or a `temperature=`, a `student_loss_fn` given
                as a name or built with `from_logits=False`, a negative
                `distillation_warmup_steps`, an unknown distillation loss or a
                Keras loss on probabilities (`check_logit_loss`), or a policy
                that cannot work with the distillation loss
                (`policies.check_with_loss`).
        """
        if "loss" in kwargs:
            raise ValueError(
                "Distiller.compile() takes `student_loss_fn` and "
                "`distillation_loss_fn`, not `loss`."
            )
        if "temperature" in kwargs:
            # keras-io's "Knowledge Distillation" example passes it here.
            raise ValueError(
                "Distiller.compile() has no `temperature`: it belongs to the "
                "distillation loss. Pass distillation_loss_fn=tllm_tf.KDLoss("
                f"temperature={kwargs['temperature']!r}) for Hinton KD. Received: "
                f"temperature={kwargs['temperature']!r}")
        for weight_name, weight in (("alpha", alpha), ("beta", beta)):
            if not (weight >= 0 and math.isfinite(weight)):
                raise ValueError(
                    f"Expected {weight_name} >= 0 and finite. Received: {weight_name}={weight}"
                )
        if alpha + beta <= 0:
            raise ValueError(
                "Expected alpha + beta > 0: with both 0 the loss is 0 and the student "
                f"does not train. Received: alpha={alpha}, beta={beta}")
        policies.get_policy(masked_class_policy)
        if student_loss_fn is not None:
            model_checks.check_student_loss(student_loss_fn)
        if not distillation_warmup_steps >= 0:
            raise ValueError(
                "Expected distillation_warmup_steps >= 0. Received: "
                f"distillation_warmup_steps={distillation_warmup_steps}")
        distillation_loss_fn = losses_lib.get_distillation_loss(
            distillation_loss_fn if distillation_loss_fn is not None else "kd"
        )
        policies.check_with_loss(masked_class_policy, distillation_loss_fn)
        _warn_if_masked_samples_train_nothing(alpha, masked_class_policy)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.masked_class_policy = masked_class_policy
        self.distillation_warmup_steps = int(distillation_warmup_steps)
        self.student_loss_fn = student_loss_fn
        self.distillation_loss_fn = distillation_loss_fn
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def get_compile_config(self):
        """Keras's compile config plus the distillation's arguments to `compile`."""
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
        if self.student_loss_fn is not None:
            config["student_loss_fn"] = _student_loss_config(self.student_loss_fn)
        return config

    def save(self, filepath, *args, **kwargs):
        """Saves the Distiller as a `.keras` file (`keras.Model.save`).

        Args:
            filepath: the `.keras` file.
            *args: passed to `keras.Model.save`.
            **kwargs: passed to `keras.Model.save`.

        Returns:
            What `keras.Model.save` returns (`None` in Keras 3).

        A `distillation_loss_fn` of a class Keras's registry does not know is
        warned about: the file names its class, so it loads with
        `custom_objects`, or once the class is registered.

        Raises:
            ValueError: for a legacy `.h5`/`.hdf5` path, or a `student_loss_fn`
                the file could not load back (a lambda, or an unregistered
                function or class).
        """
        # Refused before Keras opens the file, rather than half-way through.
        if str(filepath).endswith((".h5", ".hdf5")):
            raise ValueError(
                "A Distiller cannot be saved in the legacy .h5 format (it holds two models, "
                "the class mask and the rule's state). Save it as .keras, or its weights "
                f"with save_weights('....weights.h5'). Received: filepath={filepath!r}")
        if self.student_loss_fn is not None:
            _student_loss_config(self.student_loss_fn)
        if not _loads_back(self.distillation_loss_fn):
            name = type(self.distillation_loss_fn).__name__
            warnings.warn(
                f"distillation_loss_fn={self.distillation_loss_fn!r:.80} is of a class "
                f"Keras's registry does not know: load the file with keras.saving.load_model("
                f"path, custom_objects={{{name!r}: {name}}}), or decorate the class with "
                "@keras.saving.register_keras_serializable().", stacklevel=2)
        return super().save(filepath, *args, **kwargs)

    def export(self, filepath, *args, **kwargs):
        """Exports the student for inference: `self.student.export(...)`.

        Serving needs the student alone (the teacher and the mask only
        train it); the student's normalisation layer is part of it, so the
        export takes raw images. This is Keras's export: its signature's
        input is named after the student's input layer (`images` for the
        pipeline's models) and its output is `output_0`, the logits.
        `tllm_tf.export_saved_model(distiller.student, path,
        class_names=...)`, which the tools use, exports the same network
        with named `logits`, `probabilities` and `class_name` outputs, a
        uint8 endpoint, and the checks of its destination.

        Args:
            filepath: the export folder.
            *args: passed to `keras.Model.export`.
            **kwargs: passed to `keras.Model.export`.

        Returns:
            What the student's `export` returns (`None` in Keras 3).
        """
        return self.student.export(filepath, *args, **kwargs)

    def compile_from_config(self, config):
        """Compiles as `get_compile_config()` says; builds the optimizer of a built model."""
        config = keras.saving.deserialize_keras_object(config)
        # Keras's own entries that Distiller.compile does not take.
        for key in ("loss", "loss_weights"):
            config.pop(key, None)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        """The two models (serialised), `num_classes` and `teacher_dtype`."""
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
        """Builds a Distiller from `get_config()`'s output, loading both models."""
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
                `[0, 1]`. A fractional value weights its class's samples'
                distillation term; `isolate`, `exclude` and
                `soft_label_symmetric` count it as distilled where they
                change the other samples' targets.

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
        """The Distiller's own trackers first, then Keras's compiled metrics."""
        own = list(self._own_trackers)
        keras_loss_tracker = getattr(self, "_loss_tracker", None)
        rest = [
            metric for metric in super().metrics
            if metric is not keras_loss_tracker
            and not any(metric is tracker for tracker in own)
        ]
        return own + rest

    def call(self, inputs, training=False):
        """The student's logits on the batch's images."""
        return self.student(batch_contents.images(inputs), training=training)

    def fit(self, *args, **kwargs):
        """Trains the student; `keras.Model.fit`'s arguments.

        Callbacks that update the class mask (`UndistillableClassCallback`)
        run first at each epoch end, before the callbacks that save or
        read the model (`tllm_tf.fit_callbacks`).

        Args:
            *args: passed to `keras.Model.fit`.
            **kwargs: passed to `keras.Model.fit`.

        Returns:
            The `keras.callbacks.History` of the fit.

        Raises:
            ValueError: on label arrays the Distiller would misread
                (`model_checks.check_label_array`), in `y` or in
                `validation_data` given as arrays `(x, y)` or `(x, y,
                sample_weight)`, or, with several replicas, on a first
                training or validation batch that does not split evenly
                over them (see the class docstring): before any step runs
                where its size is known, else when Keras reaches it.
        """
        arguments = inspect.signature(super().fit).bind(*args, **kwargs).arguments
        self._check_label_array(arguments.get("y"))
        validation_data = arguments.get("validation_data")
        if isinstance(validation_data, (tuple, list)):
            _, validation_y, _ = keras.utils.unpack_x_y_sample_weight(tuple(validation_data))
            self._check_label_array(validation_y, name="Validation labels")
        replica_batches.check_fit(arguments, self.distribute_strategy)
        arguments["callbacks"] = fit_callbacks.arrange(
            arguments.get("callbacks"), self.teacher_dtype)
        with replica_batches.explained_uneven_first_batch(
                self.distribute_strategy, getattr(self.optimizer, "iterations", None)):
            return super().fit(**arguments)

    def evaluate(self, *args, **kwargs):
        """Evaluates the student on the distillation objective; `keras.Model.evaluate`'s arguments.

        Args:
            *args: passed to `keras.Model.evaluate`.
            **kwargs: passed to `keras.Model.evaluate`.

        Returns:
            What `keras.Model.evaluate` returns.

        Raises:
            ValueError: on label arrays the Distiller would misread
                (`model_checks.check_label_array`), or, with several
                replicas, on a first batch that does not split evenly over
                them (see the class docstring), before any step runs.
        """
        arguments = inspect.signature(super().evaluate).bind(*args, **kwargs).arguments
        # fit's validation passes were checked once, up front, by fit (and are explained by it).
        if arguments.get("kwargs", {}).get("_use_cached_eval_dataset"):
            return super().evaluate(*args, **kwargs)
        self._check_label_array(arguments.get("y"))
        replica_batches.check_first_batch(
            arguments.get("x"), arguments.get("batch_size"), self.distribute_strategy)
        with replica_batches.explained_uneven_first_batch(self.distribute_strategy):
            return super().evaluate(*args, **kwargs)

    def _check_label_array(self, y, name="Labels"):
        # Arrays are checked whole before any step runs; datasets are checked
        # batch by batch inside the step (see `batch_contents.labels`).
        if y is not None and not isinstance(y, tf.data.Dataset):
            model_checks.check_label_array(y, self.num_classes, name=name)

    def _student_loss(self, labels, is_soft, student_logits):
        if self.student_loss_fn is None:
            if is_soft:
                return keras.losses.categorical_crossentropy(
                    labels, student_logits, from_logits=True)
            return keras.losses.sparse_categorical_crossentropy(
                labels, student_logits, from_logits=True)
        if isinstance(self.student_loss_fn, keras.losses.Loss):
            values = self.student_loss_fn.call(labels, student_logits)
        else:
            values = self.student_loss_fn(labels, student_logits)
        # Keras would take a batch mean too, but the mask gates the label term
        # sample by sample and the replicas sum per-sample values.
        name = getattr(self.student_loss_fn, "__name__", type(self.student_loss_fn).__name__)
        return _per_sample(values, f"student_loss_fn {name}")

    def _teacher_logits(self, x):
        teacher_logits = self.teacher(x, training=False)
        if self.teacher_dtype != "float16":
            return teacher_logits
        self.teacher_overflow_tracker.update_state(ops.sum(ops.cast(
            ops.logical_not(ops.isfinite(teacher_logits)), "float32")))
        # An overflowed logit was beyond float16's range: its sign survives.
        return ops.clip(ops.cast(teacher_logits, "float32"), -_FLOAT16_MAX, _FLOAT16_MAX)

    def _loss_terms(self, labels, is_soft, student_logits, teacher_logits):
        """Per-sample `(total, student_loss, distillation_loss)`."""
        student_logits = ops.cast(student_logits, "float32")
        teacher_logits = ops.cast(teacher_logits, "float32")
        student_loss = self._student_loss(labels, is_soft, student_logits)
        distillation_loss = losses_lib.per_sample_distillation_loss(
            self.distillation_loss_fn, teacher_logits, student_logits, labels)
        targets = labels if is_soft else ops.one_hot(labels, self.num_classes)
        distil_weight = _distil_weight(targets, self.class_mask)
        policy = policies.get_policy(self.masked_class_policy)
        gated = _per_sample(policy(policies.PolicyInputs(
            distil_weight=distil_weight,
            distillation_loss=distillation_loss,
            student_loss=student_loss,
            targets=targets,
            student_logits=student_logits,
            teacher_logits=teacher_logits,
            compared_logits=functools.partial(
                losses_lib.compared_logits, self.distillation_loss_fn),
            temperature=float(getattr(self.distillation_loss_fn, "temperature", 1.0)),
            class_mask=self.class_mask,
            distill=lambda changed_teacher, changed_student: (
                losses_lib.per_sample_distillation_loss(
                    self.distillation_loss_fn, changed_teacher, changed_student, labels)),
        )), f"masked_class_policy {self.masked_class_policy!r}")
        total = self.alpha * student_loss + self._beta_now() * gated
        return total, student_loss, distillation_loss

    def _beta_now(self):
        if not self.distillation_warmup_steps:
            return self.beta
        step = ops.cast(self.optimizer.iterations + 1, "float32")
        return self.beta * ops.minimum(1.0, step / float(self.distillation_warmup_steps))

    def _objective(self, x, y, sample_weight, training):
        """This replica's share of the objective, and the student's logits.

        Per-sample losses are summed on each replica and divided by the
        *global* batch size, and the regularisation by the number of
        replicas: the replicas' shares (and their gradients, which the
        optimizer sums) add up to the single-device mean, also when a batch
        splits unevenly or a replica gets no sample at all.
        """
        labels, is_soft = batch_contents.labels(y, self.num_classes)
        if batch_contents.carries_teacher_logits(x):
            teacher_logits = ops.cast(x["teacher_logits"], "float32")
        else:
            teacher_logits = self._teacher_logits(x)
        student_logits = self.student(batch_contents.images(x), training=training)
        total, student_loss, distillation_loss = self._loss_terms(
            labels, is_soft, student_logits, teacher_logits)
        local_size = ops.cast(ops.shape(student_logits)[0], "float32")
        global_size = _global_batch_size(local_size)
        sums = [_weighted_sum(values, sample_weight)
                for values in (total, student_loss, distillation_loss)]
        regularization = (ops.sum(ops.stack(self.student.losses))
                          if self.student.losses else 0.0)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        share = sums[0] / ops.maximum(global_size, 1.0) + regularization / replicas
        # Mean trackers weighted by this replica's samples sum, over replicas
        # and batches, to the means of the epoch.
        for tracker, value in zip(self._own_trackers[:3], sums):
            tracker.update_state(
                tf.math.divide_no_nan(value, local_size)
                + (regularization if tracker is self.loss_tracker else 0.0),
                sample_weight=local_size)
        self.compute_metrics(x, y, student_logits, sample_weight)
        return share, student_logits

    def train_step(self, data):
        """One optimizer step on the student; returns the metrics' results."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            share, _ = self._objective(x, y, sample_weight, training=True)
            scaled_loss = self.optimizer.scale_loss(share)
        variables = self.student.trainable_variables
        if variables:
            gradients = tape.gradient(scaled_loss, variables)
            self.optimizer.apply_gradients(zip(gradients, variables))
        else:
            # As keras.Model.fit does: it warns and trains nothing.
            warnings.warn(
                f"The student {self.student.name!r} does not have any trainable weights, "
                "so fit changes nothing. Set student.trainable = True (or unfreeze its "
                "layers) before building the Distiller.")
        # A NaN in an image can leave the logits and the loss finite (oneDNN's
        # fused matmul or convolution + ReLU maps NaN to 0) while its gradient
        # makes weights NaN: the logged loss turns NaN then (NaN * 0 is NaN;
        # 0 * 0 changes nothing), so that a stop on a non-finite loss fires.
        self.loss_tracker.update_state(_nan_unless_finite(variables), sample_weight=0.0)
        return self.get_metrics_result()

    def test_step(self, data):
        """Updates the losses and metrics on one batch; returns their results."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._objective(x, y, sample_weight, training=False)
        return self.get_metrics_result()


_FLOAT16_MAX = 65504.0


def _warn_if_masked_samples_train_nothing(alpha, masked_class_policy):
    """Warns of `alpha = 0` under `drop`, which leaves a masked class's samples no term."""
    if alpha == 0 and masked_class_policy == "drop":
        warnings.warn(
            "Distiller.compile(alpha=0, masked_class_policy='drop'): a masked class's samples "
            "then contribute nothing to the loss (drop removes their distillation term, and "
            "alpha = 0 their label term), so a class the mask stops distilling stops being "
            "trained. Pass alpha > 0, or another policy (hard_label, soft_label).")


def _check_shares_no_weights(student, teacher):
    """Refuses a student that trains any of the teacher's weights."""
    teacher_weights = {id(weight) for weight in teacher.weights}
    shared = [weight.path for weight in student.trainable_weights
              if id(weight) in teacher_weights]
    if shared:
        raise ValueError(
            f"The student {student.name!r} trains {len(shared)} weights of the teacher "
            f"{teacher.name!r} (e.g. {shared[:3]}): the Distiller freezes the teacher, "
            "which would freeze those layers in the student too, silently. Give the student "
            "its own layers (e.g. keras.models.clone_model(teacher) with the weights "
            "copied), or pass a separately loaded copy of the teacher.")


def _loads_back(loss_fn):
    """Whether a `.keras` file (safe mode, no `custom_objects`) gives `loss_fn` back."""
    if getattr(loss_fn, "__name__", None) == "<lambda>":
        return False
    try:
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(loss_fn))
    except Exception:  # Keras raises TypeError, ValueError, ...: all mean "lost".
        return False
    if isinstance(loss_fn, keras.losses.Loss):
        return type(restored) is type(loss_fn)
    return restored is loss_fn


def _student_loss_config(loss_fn):
    """`loss_fn`'s config, if a `.keras` file gives it back.

    Raises:
        ValueError: if not: a file that lost it would silently train with
            cross-entropy instead.
    """
    if not _loads_back(loss_fn):
        raise ValueError(
            f"Cannot save student_loss_fn={loss_fn!r:.80}: a .keras file could not load "
            "it back (a lambda, or an unregistered function or class), and the Distiller "
            "would silently fall back to cross-entropy. Decorate it with "
            "@keras.saving.register_keras_serializable(), pass a keras.losses.Loss, "
            "or save the weights only (save_weights).")
    return keras.saving.serialize_keras_object(loss_fn)


def _global_batch_size(local_size):
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return local_size
    return context.all_reduce(tf.distribute.ReduceOp.SUM, local_size)


def _nan_unless_finite(variables):
    """0.0 when every value of `variables` is finite, else NaN."""
    if not variables:
        return 0.0
    finite = ops.all(ops.stack([ops.all(ops.isfinite(variable)) for variable in variables]))
    return ops.where(finite, 0.0, float("nan"))


def _distil_weight(targets, class_mask):
    """Each sample's label-weighted class mask `sum_k y_k m_k`, in `[0, 1]`.

    Exactly 1 where the label puts no weight on a class the mask stops
    distilling, even in part: soft labels whose rows do not sum to 1 in
    float32 (label smoothing over 100 classes) gave 0.9999998 to 1.0000004
    with no class masked, so no policy was KD bit for bit, and `hard_label`
    added `(1 - w) * CE` of either sign. Class ids and one-hot labels get
    `m[y]`, as before.
    """
    weighted = ops.matmul(targets, ops.expand_dims(class_mask, -1))[:, 0]
    masked_share = ops.matmul(targets, ops.expand_dims(1.0 - class_mask, -1))[:, 0]
    return ops.where(masked_share > 0.0, ops.clip(weighted, 0.0, 1.0), 1.0)


def _weighted_sum(per_sample, sample_weight):
    if sample_weight is not None:
        per_sample = per_sample * ops.cast(ops.reshape(sample_weight, (-1,)), per_sample.dtype)
    return ops.sum(per_sample)


def _per_sample(values, what):
    """`values`, refused where its rank, known when the step is traced, is not 1."""
    rank = getattr(values.shape, "rank", None) if hasattr(values, "shape") else None
    if rank not in (1, None):  # Of unknown rank: not known until the step runs.
        raise ValueError(
            f"Expected {what} to return one loss per sample, of shape (batch,). Received "
            f"shape {tuple(values.shape)}. Return the per-sample values (no mean over the "
            "batch and no other axis; the Distiller averages them).")
    return values
