"""One way to write a file so that a kill at any moment leaves the old or the new one.

The content goes to a temporary file in the same directory, is flushed and
fsynced, then renamed over the destination (atomic on POSIX file systems).
"""

import contextlib
import json
import math
import os
import tempfile


@contextlib.contextmanager
def atomic_open(path, mode="w"):
    """Opens a temporary file that replaces `path` when the block exits cleanly.

    Args:
        path: the destination.
        mode: `"w"` (text) or `"wb"` (binary). Defaults to `"w"`.

    Yields:
        The open file object. On an exception inside the block the temporary
        file is removed and `path` is left untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def to_json_value(value):
    """`value` with every NaN or infinite float turned into `None` (JSON `null`)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    return value


def write_json(path, value, indent=1):
    """Writes `value` as strict JSON (NaN as `null`) to `path` atomically."""
    with atomic_open(path) as stream:
        json.dump(to_json_value(value), stream, indent=indent, sort_keys=True,
                  allow_nan=False)
