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

TEACHER_DTYPES = ("float32", "bfloat16", "float16")


def _is_input_layer(layer):
    return isinstance(layer, keras.layers.InputLayer)


def _computes_in(model, dtype):
    return all(
        layer.dtype_policy.name == dtype
        for layer in model._flatten_layers(include_self=False)
        if not _is_input_layer(layer) and not isinstance(layer, keras.Model)
    )


def inference_copy(teacher, dtype):
    """Returns `teacher` rebuilt so that every layer computes and stores in `dtype`.

    The copy has the same architecture, layer names and weights (rounded to
    `dtype`). It is meant for inference only; the teacher itself is left
    unchanged. A teacher that already computes in `dtype` is returned as is.

    Args:
        teacher: a functional or `Sequential` `keras.Model`.
        dtype: one of `"float32"`, `"bfloat16"` (CPUs with AVX512-BF16 or
            AMX, recent GPUs and TPUs) or `"float16"` (GPUs).

    Returns:
        A `keras.Model` whose layers use the `dtype` policy.

    Raises:
        ValueError: on an unknown `dtype`, or a subclassed teacher, which
            cannot be rebuilt from its configuration.
    """
    if dtype not in TEACHER_DTYPES:
        raise ValueError(
            f"Unknown teacher_dtype: {dtype!r}. Expected one of {TEACHER_DTYPES}."
        )
    if _computes_in(teacher, dtype):
        return teacher
    if not isinstance(teacher, keras.Sequential) and not _is_functional(teacher):
        raise ValueError(
            f"teacher_dtype={dtype!r} needs a functional or Sequential teacher, "
            f"to rebuild it layer by layer; {teacher.name!r} is a subclassed "
            f"{type(teacher).__name__}. Build the teacher under "
            f"`keras.config.set_dtype_policy({dtype!r})` yourself and leave "
            "teacher_dtype unset."
        )

    config = teacher.get_config()
    _set_layer_dtypes(config, dtype)
    copy = type(teacher).from_config(config)
    copy.set_weights(teacher.get_weights())
    copy.trainable = False
    return copy


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
