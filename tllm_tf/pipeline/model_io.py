"""Loading `.keras` files: the one way a model file enters a run.

A `.keras` file is a zip archive of a JSON config and the weights. The config
names the classes to build, and Keras builds only its own classes and those
registered as serializable (tllm_tf's `Distiller` and `KDLoss`, the model
zoo's layers): code that is already installed. A `Lambda` layer is the
exception: it stores its Python function in the file as bytecode, and
loading the file would run it. Keras refuses that in safe mode, but
`keras.config.enable_unsafe_deserialization()`, called anywhere in the
process, overrides `safe_mode=True` (and with it Keras's other refusals: a
`TFSMLayer` that runs an external SavedModel, vocabulary files read from
paths). So `load_keras_model` looks for stored code in the config itself and
refuses the file before Keras reads it, and loads in Keras's safe-mode scope,
which holds whatever the process has set (restored afterwards).
"""

import contextlib
import json
import os
import zipfile

import keras

try:  # Private, and the one way to keep safe mode on whatever the process has set.
    from keras.src.saving.serialization_lib import SafeModeScope as _SafeModeScope
except ImportError:  # A Keras without it: the scan above is then the only guard.
    _SafeModeScope = None

KERAS_SUFFIX = ".keras"
CONFIG_MEMBER = "config.json"
# A zoo model's config is well under 1 MiB; the cap bounds what a hostile
# archive can make this module decompress and parse.
MAX_CONFIG_BYTES = 64 * 2**20
# How Keras marks a Python function stored as bytecode (a `lambda`).
_CODE_MARKER = "__lambda__"
# Long enough for Keras's reason; its messages end with the whole config.
_MAX_REASON_CHARS = 500
# The first Keras whose safe mode closes the bypasses published so far: a config naming any
# module's function (fixed in 3.9), one turning safe mode off from inside the file (3.11), a
# TFSMLayer running an external SavedModel (3.14). pyproject.toml requires it too.
MIN_SAFE_KERAS = (3, 14)


class UnsafeModelError(ValueError):
    """A model file that holds Python code, which loading it would run."""


def _check_keras_version(role, path):
    """Refuses to load with a Keras whose safe mode a file is known to get past."""
    numbers = []
    for part in keras.__version__.split(".")[:2]:
        digits = "".join(char for char in part if char.isdigit()) or "0"
        numbers.append(int(digits))
    if tuple(numbers) < MIN_SAFE_KERAS:
        wanted = ".".join(map(str, MIN_SAFE_KERAS))
        raise UnsafeModelError(
            f"Refusing to load the {role} {path!r} with Keras {keras.__version__}: files can "
            f"get past the safe mode of Keras before {wanted} and run code when loaded. "
            f"Upgrade it: pip install 'keras>={wanted}'.")


def _read_config(path, role):
    """The parsed `config.json` of a `.keras` archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(CONFIG_MEMBER)
            if info.file_size > MAX_CONFIG_BYTES:
                raise ValueError(
                    f"its {CONFIG_MEMBER} declares {info.file_size} bytes, more than "
                    f"the {MAX_CONFIG_BYTES} this loader reads")
            return json.loads(archive.read(info))
    except (zipfile.BadZipFile, KeyError, ValueError, RecursionError) as error:
        raise ValueError(
            f"Could not load the {role} {path!r}: it is not a Keras model file "
            f"({error}). Expected a .keras file written by `keras.Model.save`; a file "
            "cut short (a full disk, a copy that stopped) reads so too: save or copy it "
            "again, or, in a workdir, delete its stage directory and re-run that stage."
        ) from None


def _code_holders(config):
    """The objects whose config holds Python code, e.g. "a Lambda layer 'double'"."""
    holders = []
    stack = [(config, "an object")]
    while stack:  # Iterative: a hostile config may be nested deeper than Python recurses.
        node, owner = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") == _CODE_MARKER:
                holders.append(owner)
                continue
            inner = node.get("config")
            if isinstance(node.get("class_name"), str) and isinstance(inner, dict):
                module = node.get("module")
                kind = ("layer" if isinstance(module, str) and module.startswith("keras.layers")
                        else "object")
                owner = f"a {node['class_name']:.40} {kind} {inner.get('name')!r:.60}"
            stack.extend((value, owner) for value in node.values())
        elif isinstance(node, list):
            stack.extend((value, owner) for value in node)
    return sorted(set(holders))


def _unsafe(role, path, holders):
    named = ", ".join(holders[:3]) + (f" and {len(holders) - 3} more" if len(holders) > 3 else "")
    return UnsafeModelError(
        f"Refusing to load the {role} {path!r}: it contains "
        f"{named} whose function is Python code "
        "stored in the file; loading it would run that code. Rebuild the model "
        "without Lambda layers (a layer class in your own code, registered with "
        "`keras.saving.register_keras_serializable`, does the same job), or, only "
        "if you trust the file's source, load it yourself with "
        "`keras.models.load_model(path, safe_mode=False)`.")


def _refused_by_keras(role, path, reason):
    """Keras's own safe-mode refusal (code or files the scan does not look for), with its reason."""
    return UnsafeModelError(
        f"Refusing to load the {role} {path!r}: Keras's safe mode refuses it ({reason}). "
        "It would run code or read files the model file names. Only if you trust the "
        "file's source, load it yourself with `keras.models.load_model(path, "
        "safe_mode=False)`.")


def load_keras_model(path, *, role="model", compile=False):
    """Loads a `.keras` file in safe mode, refusing one that holds Python code.

    Args:
        path: the `.keras` file.
        role: what the file is, for messages ("teacher", "model", ...).
            Defaults to `"model"`.
        compile: whether to restore the training configuration (optimizer,
            losses) saved with the model. Defaults to `False`: a loaded
            teacher or evaluated model needs none.

    Returns:
        The `keras.Model`.

    Raises:
        UnsafeModelError: if the file stores Python code (a `Lambda` layer's
            `lambda`), naming the file and the layer, or if the installed
            Keras is older than `MIN_SAFE_KERAS`, whose safe mode files are
            known to get past.
        ValueError: if `path` does not exist, is not a `.keras` file, or
            Keras cannot build the model it describes (e.g. it names a class
            that is not registered).

    Example:

    ```python
    teacher = load_keras_model("runs/demo/teacher/model.keras", role="teacher")
    ```
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"The {role} file {path!r} does not exist.")
    if not path.endswith(KERAS_SUFFIX) or not os.path.isfile(path):
        raise ValueError(
            f"Expected a {KERAS_SUFFIX} file for the {role}, as `keras.Model.save` "
            f"writes. Received: path={path!r}")
    _check_keras_version(role, path)
    holders = _code_holders(_read_config(path, role))
    if holders:
        raise _unsafe(role, path, holders)
    # Registers what a saved file may name: the Distiller and the distillation
    # losses (`import tllm_tf` no longer imports them), the zoo's custom layers
    # (ShuffleNet's); imported here so that core modules do not import the zoo.
    import tllm_tf.distiller  # noqa: F401
    import tllm_tf.losses  # noqa: F401
    import tllm_tf.models  # noqa: F401
    safe_scope = _SafeModeScope(True) if _SafeModeScope else contextlib.nullcontext()
    try:
        with safe_scope:
            return keras.models.load_model(path, compile=compile, safe_mode=True)
    except (ValueError, TypeError, KeyError, OSError) as error:
        reason = str(error)
        if len(reason) > _MAX_REASON_CHARS:
            reason = reason[:_MAX_REASON_CHARS] + " ..."
        if "safe_mode" in reason:  # Keras's own refusal, should the scan miss a form.
            raise _refused_by_keras(role, path, reason) from error
        raise ValueError(f"Could not load the {role} {path!r}: {reason}") from error
