"""One way to write a file so that a kill at any moment leaves the old or the new one.

The content goes to a temporary file in the same directory, is flushed and
fsynced, then renamed over the destination (atomic on POSIX file systems). The
file gets the permissions `open()` would give it (0666 less the umask), not the
temporary file's owner-only 0600.
JSON is written strict: a NaN (a class with no examples) becomes `null`.
"""

import contextlib
import json
import math
import os
import re
import stat
import tempfile

import numpy as np


# What follows a temporary's prefix: `tempfile`'s eight random characters, a suffix.
_RANDOM_PART = re.compile(r"[a-z0-9_]{8}(\.[A-Za-z0-9_.]+)?")


def temporary_prefix(path):
    """How the names of the temporaries written beside `path` begin: `.<its name>.`.

    A temporary is renamed into place when its write ends; one that a kill
    left behind is known by its name (`is_temporary`).
    """
    return f".{os.path.basename(path)}."


def is_temporary(name, destination):
    """Whether a file or folder `name` is that of a temporary of `destination` (a file name).

    Example:
        >>> is_temporary(".model.keras.k2x9_q0a.keras", "model.keras")
        True
    """
    prefix = temporary_prefix(destination)
    return name.startswith(prefix) and _RANDOM_PART.fullmatch(name[len(prefix):]) is not None


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp", replace=True):
    """A new file's path beside `path`, renamed over `path` when the block exits cleanly.

    For writers that take a path rather than a stream (Keras's `save`,
    `save_weights`). A link at `path` is replaced, never written through.

    Args:
        path: the destination.
        suffix: the temporary name's ending, for writers that check it
            (`".keras"`, `".weights.h5"`). Defaults to `".tmp"`.
        replace: whether an existing `path` is replaced. `False` creates
            `path` only if it does not exist (a hard link of the temporary,
            which fails if it does), for a file that another process may be
            creating at the same time. Defaults to `True`.

    Yields:
        The temporary file's path (an empty file with the permissions
        `open()` would give `path`). On an exception inside the block it is
        removed and `path` is left untouched.

    Raises:
        FileExistsError: with `replace=False`, if `path` exists; it is left
            as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=directory, prefix=temporary_prefix(path), suffix=suffix)
    try:
        try:
            os.fchmod(handle, 0o666 & ~current_umask())
        finally:
            os.close(handle)
        yield temporary
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
            os.remove(temporary)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


@contextlib.contextmanager
def atomic_open(path, mode="w", replace=True):
    """Opens a temporary file that replaces `path` when the block exits cleanly.

    Args:
        path: the destination.
        mode: `"w"` (text) or `"wb"` (binary). Defaults to `"w"`.
        replace: as `atomic_path` takes it. Defaults to `True`.

    Yields:
        The open file object. On an exception inside the block the temporary
        file is removed and `path` is left untouched.
    """
    with atomic_path(path, replace=replace) as temporary, open(temporary, mode) as stream:
        yield stream
        stream.flush()
        os.fsync(stream.fileno())


def append_line(path, line):
    """Appends `line` and a newline to the log `path`, creating it (and its folder) if missing.

    A log is written in place, not replaced, so a kill can cut its last line
    (its readers skip a torn last line). It is opened by `open_in_place`: a
    symbolic link, a FIFO or a device at `path` is refused.

    Args:
        path: the log file.
        line: the text to append, without its line end.

    Raises:
        ValueError: if `path` is a symbolic link or not a regular file.
        OSError: if the file cannot be opened for another reason.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open_in_place(path) as stream:
        stream.write(line + "\n")


def open_in_place(path, kind="log"):
    """Opens `path`, a file written where it is (a log, a lock), to append; creates it if missing.

    A symbolic link at `path`, even a dangling one, is refused rather than
    followed: a planted link would otherwise make the run write outside its
    folder. So is a FIFO or a device (opening a FIFO would wait for a reader).

    Args:
        path: the file; its folder must exist.
        kind: what the file is, in messages. Defaults to `"log"`.

    Returns:
        The file, open for appending text.

    Raises:
        ValueError: if `path` is a symbolic link or not a regular file.
        OSError: if the file cannot be opened for another reason.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        handle = os.open(path, flags, 0o666)
    except OSError as error:
        if os.path.islink(path):
            raise ValueError(
                f"{path} is a symbolic link (to {os.readlink(path)!r}): a {kind} is written "
                "where it is, never through a link. Remove the link.") from error
        if os.path.exists(path) and not os.path.isfile(path):  # A FIFO without a reader, a folder.
            raise ValueError(_not_regular(path, kind)) from error
        raise
    if not stat.S_ISREG(os.fstat(handle).st_mode):  # A FIFO that a reader holds open, a device.
        os.close(handle)
        raise ValueError(_not_regular(path, kind))
    return os.fdopen(handle, "a")


def _not_regular(path, kind):
    return (f"{path} is not a regular file (a FIFO, a device or a folder), so it is not a {kind} "
            f"this package wrote. Nothing was written. Remove it.")


def check_writable(path):
    """Refuses, before a long computation, a `path` that `atomic_open` could not write.

    Args:
        path: the destination file.

    Raises:
        ValueError: if `path` is a directory or under a file, or no
            temporary file can be made in its nearest existing folder (a
            read-only or special folder), naming the reason. Nothing is
            created.
    """
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory: name a file to write.")
    directory = os.path.dirname(os.path.abspath(path))
    existing = directory
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"Cannot write {path!r}: {existing!r} is a file, not a folder.")
    try:
        # In the nearest folder that exists: nothing is created for a check (atomic_open
        # creates the missing folders when it writes).
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ValueError(f"Cannot write {path!r}: {error.strerror or error}.") from error


def current_umask():
    """The process's umask, read without changing it where the system allows."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    # Elsewhere the only way to read it is to set it and set it back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def to_json_value(value):
    """`value` with every NaN or infinite float turned into `None` (JSON `null`)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    return value


def json_floats(values, digits=None):
    """The numbers of `values` (any array-like) as a list of floats, NaN as `None`.

    Args:
        values: numbers, e.g. a per-class accuracy array.
        digits: if given, each float is rounded to this many decimals.
            Defaults to `None`.

    Returns:
        A flat list (`values` raveled) of Python floats, with `None` for
        each NaN or infinite value.
    """
    floats = [float(value) for value in np.asarray(values, dtype=float).ravel()]
    if digits is not None:
        floats = [round(value, digits) for value in floats]
    return [value if math.isfinite(value) else None for value in floats]


def floats_from_json(values):
    """A float64 array of a JSON list written by `json_floats` (`None` back to NaN)."""
    return np.array([np.nan if value is None else value for value in values], dtype=np.float64)


def write_json(path, value, indent=1, replace=True):
    """Writes `value` as strict JSON (NaN as `null`) to `path` atomically.

    Keys are sorted, and NaN or infinite floats in dicts, lists and tuples
    become `null` (see `to_json_value`).

    Args:
        path: the destination file.
        value: a JSON-serialisable value.
        indent: `json.dump`'s indent. Defaults to `1`.
        replace: as `atomic_path` takes it. Defaults to `True`.

    Raises:
        TypeError: if `value` holds something JSON cannot encode (a numpy
            array or scalar other than `np.float64`, say).
        FileExistsError: with `replace=False`, if `path` exists.
    """
    with atomic_open(path, replace=replace) as stream:
        json.dump(to_json_value(value), stream, indent=indent, sort_keys=True,
                  allow_nan=False)
