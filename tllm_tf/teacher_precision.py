"""Running a frozen teacher at a lower precision than the student.

The teacher of a distillation only runs forward, in inference mode, and its
logits are softened by a temperature before anything is learnt from them, so
it can compute in 16-bit floats while the student trains in float32. On
hardware with fast 16-bit arithmetic (GPUs; CPUs with AVX512-BF16 or AMX) that
makes the teacher's forward pass, about half of a distillation step, faster:
2.4-2.9x on a CPU with AVX512-BF16. `docs/benchmarks.md` has the measured
speed and the effect on the teacher's outputs.
"""

import keras
import numpy as np
import tensorflow as tf

TEACHER_DTYPES = ("float32", "bfloat16", "float16")


def _is_input_layer(layer):
    return isinstance(layer, keras.layers.InputLayer)


def _computes_in(model, dtype):
    return all(
        layer.dtype_policy.name == dtype
        for layer in model._flatten_layers(include_self=False)
        if not _is_input_layer(layer) and not isinstance(layer, keras.Model)
    )


def copy_policy(dtype, strategy=None):
    """The dtype policy of the teacher's `dtype` copy under `strategy`.

    The policy is `dtype` itself, so the copy stores its weights in `dtype`
    (half the memory of float32), except for `"bfloat16"` under a
    `tf.distribute.MultiWorkerMirroredStrategy`: that strategy broadcasts
    each new variable's initial value with collective ops, which refuse
    bfloat16, so the copy uses `"mixed_bfloat16"` there (float32 variables
    holding the weights already rounded to bfloat16, computation in
    bfloat16), which gives the same logits, bit for bit.

    Args:
        dtype: one of `TEACHER_DTYPES`.
        strategy: the `tf.distribute.Strategy` the copy is built under.
            Defaults to `None`: the current one, `tf.distribute.get_strategy()`.

    Returns:
        The name of a Keras dtype policy.
    """
    strategy = strategy if strategy is not None else tf.distribute.get_strategy()
    if dtype == "bfloat16" and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "mixed_bfloat16"
    return dtype


def inference_copy(teacher, dtype, strategy=None):
    """Returns `teacher` rebuilt so that every layer computes in `dtype`.

    The copy has the same architecture, layer names and weights (rounded to
    `dtype`), and stores them in `dtype`, except for a `"bfloat16"` copy
    built under a `tf.distribute.MultiWorkerMirroredStrategy`, which stores
    them in float32 (see `copy_policy`); the logits are the same either way.
    It is meant for inference only; the teacher itself is left unchanged.
    A teacher that already uses the copy's policy is returned as is.

    Args:
        teacher: a functional or `Sequential` `keras.Model`.
        dtype: one of `"float32"`, `"bfloat16"` (CPUs with AVX512-BF16 or
            AMX, recent GPUs and TPUs) or `"float16"` (GPUs).
        strategy: the `tf.distribute.Strategy` the copy is built under.
            Defaults to `None`: the current one.

    Returns:
        A `keras.Model` whose layers use the `copy_policy(dtype, strategy)`
        policy.

    Raises:
        ValueError: on an unknown `dtype`, or a subclassed teacher, which
            cannot be rebuilt from its configuration.
    """
    if dtype not in TEACHER_DTYPES:
        raise ValueError(
            f"Unknown teacher_dtype: {dtype!r}. Expected one of {TEACHER_DTYPES}."
        )
    policy = copy_policy(dtype, strategy)
    if _computes_in(teacher, policy):
        return teacher
    if not isinstance(teacher, keras.Sequential) and not _is_functional(teacher):
        raise ValueError(
            f"teacher_dtype={dtype!r} needs a functional or Sequential teacher, "
            f"to rebuild it layer by layer; {teacher.name!r} is a subclassed "
            f"{type(teacher).__name__}. Build the teacher under "
            f"`keras.config.set_dtype_policy({policy!r})` yourself and leave "
            "teacher_dtype unset."
        )

    config = teacher.get_config()
    _set_layer_dtypes(config, policy)
    copy = type(teacher).from_config(config)
    # A mixed policy rounds only the variables its layers autocast, not, for
    # example, batch normalisation's moving statistics: round them all here.
    copy.set_weights([_rounded(w, dtype) for w in teacher.get_weights()])
    copy.trainable = False
    return copy


def _rounded(weight, dtype):
    if not np.issubdtype(weight.dtype, np.floating):
        return weight
    return np.asarray(tf.cast(tf.cast(weight, dtype), weight.dtype))


def _set_layer_dtypes(model_config, dtype):
    """Sets `dtype` in every layer entry of a model's config, nested models too."""
    for entry in model_config["layers"]:
        inner = entry["config"]
        if "layers" in inner:
            _set_layer_dtypes(inner, dtype)
        elif entry["class_name"] != "InputLayer":
            inner["dtype"] = dtype


def _is_functional(model):
    # Keras builds a `Functional` model when `keras.Model` is called with
    # inputs and outputs; subclasses of `keras.Model` are not `Functional`.
    return type(model).__name__ == "Functional"
