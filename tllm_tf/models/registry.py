"""Name -> builder registry of the model zoo.

Each family module exposes `BUILDERS`, a dict from a lower_snake name (which
doubles as a flag value) to a function
`builder(num_classes, input_shape, weight_decay) -> keras.Model` returning
logits. Adding a family is one module and one line below.
"""

from tllm_tf.models import imagenet
from tllm_tf.models import mobilenetv2
from tllm_tf.models import resnet
from tllm_tf.models import resnet50
from tllm_tf.models import shufflenet
from tllm_tf.models import small
from tllm_tf.models import vgg
from tllm_tf.models import wrn

_FAMILIES = (small, resnet, wrn, vgg, mobilenetv2, shufflenet, resnet50, imagenet)


def _all_builders():
    builders = {}
    for family in _FAMILIES:
        for name, builder in family.BUILDERS.items():
            if name in builders:
                raise ValueError(f"Model name {name!r} is defined twice.")
            builders[name] = builder
    return builders


def available_models():
    """Returns the sorted names accepted by `build_model`."""
    return sorted(_all_builders())


def build_model(name, num_classes, input_shape, weight_decay=0.0):
    """Builds a model of the zoo by name.

    Args:
        name: registry key, e.g. `"resnet8x4"`; see `available_models()`.
        num_classes: size of the logits output.
        input_shape: shape of one image, e.g. `(32, 32, 3)`.
        weight_decay: L2 coefficient in the PyTorch/SGD sense (the gradient
            gets `weight_decay * w`), applied through layer regularizers so it
            reaches the loss of any training loop. Defaults to `0.0`.

    Returns:
        A `keras.Model` mapping images to logits (no softmax).

    Raises:
        ValueError: if `name` is not registered.
    """
    builders = _all_builders()
    if name not in builders:
        raise ValueError(
            f"Unknown model name: {name!r}. Expected one of "
            f"{sorted(builders)}."
        )
    if num_classes < 2:
        raise ValueError(f"Expected num_classes >= 2. Received: num_classes={num_classes}")
    return builders[name](
        num_classes=num_classes,
        input_shape=tuple(input_shape),
        weight_decay=weight_decay,
    )
