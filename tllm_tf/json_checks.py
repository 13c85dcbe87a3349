"""Checks of JSON read from files: a size-capped reader, and the value checks it is read with.

A file read as data (a reference file, a workdir's results) is refused, with
a message naming what is wrong, rather than used half-checked. The checks
return a phrase for the caller's message, so each caller names its own file.

It imports no TensorFlow and no NumPy (tools/report.py reads a workdir with it).
"""

import json
import math
import os


def read_json(path, max_bytes, *, kind, missing_message, remedy):
    """Parses a JSON file of at most `max_bytes`, as plain data.

    Args:
        path: the file.
        max_bytes: the largest file parsed; a larger one is refused unparsed.
        kind: what the file is, in messages, e.g. `"reference file"`.
        missing_message: the error's message when there is no file.
        remedy: what the error for a file that is not JSON tells the user to do.

    Returns:
        The parsed value (of any JSON type: the caller checks it).

    Raises:
        ValueError: if the file is missing, not a regular file, over
            `max_bytes` or not valid JSON.
    """
    try:
        size = os.path.getsize(path)
        if not os.path.isfile(path):  # Opening a FIFO would wait for a writer.
            raise ValueError(
                f"{path!r} is not a regular file (a FIFO, a device or a folder), so it is "
                f"not a {kind} this package wrote. Nothing was read.")
        if size > max_bytes:
            raise ValueError(
                f"{path!r} is {size} bytes, more than the {max_bytes} a {kind} "
                "may have; it is not one this package wrote. Nothing was parsed.")
        with open(path, "rb") as handle:
            # Bounded again: a FIFO or a device reports no size.
            text = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise ValueError(missing_message) from None
    if len(text) > max_bytes:
        raise ValueError(
            f"{path!r} holds more than the {max_bytes} bytes a {kind} may "
            "have; it is not one this package wrote.")
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
