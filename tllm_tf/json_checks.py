"""Checks of JSON read from files: a size-capped reader, and the value checks it is read with.

The reader reads regular files only, and at most a given size: a workdir's
file that is a FIFO or a device never hangs a run or fills its memory.
A file read as data (a reference file, a workdir's results) is refused, with
a message naming what is wrong, rather than used half-checked. The checks
return a phrase for the caller's message, so each caller names its own file.

It imports no TensorFlow and no NumPy (tools/report.py reads a workdir with it).
"""

import json
import math
import os
import stat

# A log (JSON lines, a CSV history) has a line per epoch or mask update, tens of
# kilobytes at most for thousands of classes: a larger file is not one a run wrote.
MAX_LOG_BYTES = 1 << 28
# A stage's JSON result (test_per_class.json, a held-out check's record) holds a few
# figures per class: as a reference file, a million classes' fit in 64 MiB.
MAX_RESULT_BYTES = 64 * 2**20


def read_capped(path, max_bytes, *, kind, remedy, follow_links=True):
    """The bytes of `path`, a regular file of at most `max_bytes`, read without waiting.

    The file is opened without blocking and checked on the open handle, so a
    FIFO (which would wait for a writer) or a device (`/dev/zero` never ends)
    is refused unread, even one swapped in after a check of its name.

    Args:
        path: the file.
        max_bytes: the largest file read; a larger one is refused unread.
        kind: what the file is, in messages, e.g. `"reference file"`.
        remedy: what the refusal tells the user to do, e.g. `"Delete it ..."`.
        follow_links: whether a symbolic link at `path` is read through. A
            file that is rewritten in place (a log) is refused when it is a
            link, even a dangling one. Defaults to `True`.

    Returns:
        The file's content, as bytes.

    Raises:
        FileNotFoundError: if there is no file (or `path` is a dangling link
            and `follow_links` is `True`).
        ValueError: naming the file and ending with `remedy`, if it is not a
            regular file (a FIFO, a device, a folder), a symbolic link where
            `follow_links` is `False`, or over `max_bytes`.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW)
    try:
        handle = os.open(path, flags)
    except OSError:  # FileNotFoundError included: it is raised again below.
        if not follow_links and os.path.islink(path):
            raise ValueError(
                f"{path!r} is a symbolic link (to {os.readlink(path)!r}): a {kind} is read and "
                f"rewritten where it is, never through a link. {remedy}"
            ) from None
        if os.path.exists(path) and not os.path.isfile(path):  # A socket cannot be opened.
            raise ValueError(_not_regular(path, kind, remedy)) from None
        raise
    try:
        status = os.fstat(handle)
        if not stat.S_ISREG(status.st_mode):
            raise ValueError(_not_regular(path, kind, remedy))
        if status.st_size > max_bytes:
            raise ValueError(
                f"{path!r} is {status.st_size} bytes, more than {max_bytes}, the most a {kind} "
                f"may have: it is not one this package wrote. Nothing was read. {remedy}")
        with os.fdopen(handle, "rb", closefd=False) as stream:
            content = stream.read(max_bytes + 1)  # Bounded again: it may grow while read.
    finally:
        os.close(handle)
    if len(content) > max_bytes:
        raise ValueError(
            f"{path!r} holds more than {max_bytes} bytes, the most a {kind} may have: it is "
            f"not one this package wrote. {remedy}")
    return content


def read_log_text(path, *, kind, remedy, follow_links=True):
    """The text of a log (JSON lines, a CSV history), read by `read_capped` under `MAX_LOG_BYTES`.

    Bytes that are not text are replaced, so that they make a damaged line
    for the caller to skip or name, not an error. Arguments and errors as
    `read_capped`'s.
    """
    return read_capped(path, MAX_LOG_BYTES, kind=kind, remedy=remedy,
                       follow_links=follow_links).decode(errors="replace")


def _not_regular(path, kind, remedy):
    return (f"{path!r} is not a regular file (a FIFO, a device or a folder), so it is not a "
            f"{kind} this package wrote. Nothing was read. {remedy}")


def read_json(path, max_bytes, *, kind, missing_message, remedy):
    """Parses a JSON file of at most `max_bytes`, as plain data (read by `read_capped`).

    Args:
        path: the file.
        max_bytes: the largest file parsed; a larger one is refused unparsed.
        kind: what the file is, in messages, e.g. `"reference file"`.
        missing_message: the error's message when there is no file.
        remedy: what the error for a file that is not a regular file of JSON
            tells the user to do.

    Returns:
        The parsed value (of any JSON type: the caller checks it).

    Raises:
        ValueError: if the file is missing, not a regular file, over
            `max_bytes` or not valid JSON.
    """
    try:
        text = read_capped(path, max_bytes, kind=kind, remedy=remedy)
    except FileNotFoundError:
        raise ValueError(missing_message) from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, bad UTF-8, huge ints.
        raise ValueError(
            f"{kind[:1].upper()}{kind[1:]} {path!r} is not valid JSON ({error}); it may be "
            f"truncated. {remedy}"
        ) from None


def is_number(value):
    """Whether a JSON value is a number (a bool is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def accuracy_problem(field, values):
    """The first of `values` that is not an accuracy in [0, 1] or null (NaN), as a phrase.

    Args:
        field: the values' name in messages, e.g. `"per_class_accuracy"`.
        values: a list read from JSON.

    Returns:
        `"<field>[i] must be an accuracy in [0, 1] or null. Received: ..."`, or `None`.
    """
    for index, value in enumerate(values):
        if not (value is None or (is_number(value) and (math.isnan(value) or 0 <= value <= 1))):
            return (f"{field}[{index}] must be an accuracy in [0, 1] or null. "
                    f"Received: {value!r:.40}")
    return None


def count_problem(field, counts):
    """The first of `counts` that is not a non-negative integer, as a phrase, or `None`.

    NaN, null or 2.5 where a count belongs is damage, not "unknown".

    Args:
        field: the counts' name in messages, e.g. `"num_samples"`.
        counts: a list read from JSON.

    Returns:
        `"<field>[i] must be a non-negative integer count. Received: ..."`, or `None`.
    """
    for index, count in enumerate(counts):
        if not (isinstance(count, int) and not isinstance(count, bool) and count >= 0):
            return (f"{field}[{index}] must be a non-negative integer count. "
                    f"Received: {count!r:.40}")
    return None
