"""Reading the IDX files of the MNIST family (Fashion-MNIST's file format).

Apart from the data set, so that the format's checks can be read and tested
by themselves: a file that is damaged, or made to look huge, fails with a
message naming it, before it can fill the memory.
"""

import gzip
import math
import os
import zlib

import numpy as np

_GZIP_MAGIC = b"\x1f\x8b"
_UNSIGNED_BYTE = 0x08
# Five times Fashion-MNIST's largest file (47 MB): a header claiming more is refused
# before anything is decompressed, so a small gzip file cannot fill the memory.
MAX_DATA_BYTES = 1 << 28
_CHUNK_BYTES = 1 << 20


class IDXFormatError(ValueError):
    """A file that is not a well-formed IDX file of unsigned bytes."""


def read_idx(path):
    """Reads an IDX file of unsigned bytes (gzip-compressed or plain).

    The format (LeCun's MNIST page): two zero bytes, a type code (`0x08`,
    unsigned byte, the only one these data sets use), the number of
    dimensions, each dimension as a big-endian uint32, then the data. A gzip
    file is decompressed as a stream, never past the length its header gives.

    Args:
        path: the file.

    Returns:
        A uint8 array of the file's shape.

    Raises:
        IDXFormatError: on a bad magic number, another type code, a header
            giving more than `MAX_DATA_BYTES` of data, or a file (decompressed)
            shorter or longer than its header says; the message names the file.
    """
    with open(path, "rb") as file:
        compressed = file.read(2) == _GZIP_MAGIC
        file.seek(0)
        if not compressed:
            return _read_idx_stream(path, file, os.fstat(file.fileno()).st_size)
        try:
            with gzip.GzipFile(fileobj=file) as stream:
                return _read_idx_stream(path, stream, None)
        except (EOFError, OSError, zlib.error) as err:
            raise IDXFormatError(f"{path}: not a readable gzip file ({err}).") from None


def _read_idx_stream(path, stream, file_size):
    """`read_idx` of an open stream; `file_size` is the plain file's size, or `None`."""
    shape, header_size = _read_header(path, stream)
    # Python ints: a huge header must not overflow into a negative count.
    num_bytes = math.prod(shape)
    expected = header_size + num_bytes
    if file_size is not None and file_size != expected:
        raise _length_error(path, shape, expected, file_size)
    if num_bytes > MAX_DATA_BYTES:
        raise IDXFormatError(
            f"{path}: its header gives shape {shape}, {num_bytes} bytes of data, more than "
            f"the {MAX_DATA_BYTES}-byte limit of a Fashion-MNIST file. Replace it with the "
            "Fashion-MNIST file.")
    data = np.empty(num_bytes, np.uint8)
    filled = _read_into(stream, memoryview(data))
    if filled < num_bytes:
        raise _length_error(path, shape, expected, header_size + filled)
    if stream.read(1):
        raise _length_error(path, shape, expected, expected + 1, at_least=True)
    return data.reshape(shape)


def _read_header(path, stream):
    """The shape and the header's size in bytes, read from the start of `stream`."""
    head = stream.read(4)
    if len(head) < 4 or head[:2] != b"\x00\x00":
        raise IDXFormatError(
            f"{path}: not an IDX file. Expected a magic number 0x0000TTNN. "
            f"Received: 0x{head.hex()}")
    type_code, num_dims = head[2], head[3]
    if type_code != _UNSIGNED_BYTE:
        raise IDXFormatError(
            f"{path}: expected IDX type code 0x08 (unsigned byte). Received: 0x{type_code:02x}")
    dims = stream.read(4 * num_dims)
    if num_dims == 0 or len(dims) < 4 * num_dims:
        raise IDXFormatError(f"{path}: truncated IDX header ({4 + len(dims)} bytes).")
    return tuple(int(d) for d in np.frombuffer(dims, ">u4")), 4 + 4 * num_dims


def _read_into(stream, view):
    """Fills `view` from `stream` in chunks; returns the bytes read (fewer at its end)."""
    filled = 0
    while filled < len(view):
        count = stream.readinto(view[filled:filled + _CHUNK_BYTES])
        if not count:
            break
        filled += count
    return filled


def _length_error(path, shape, expected, received, at_least=False):
    state = "truncated" if received < expected else "longer than its header says"
    return IDXFormatError(
        f"{path}: {state}: its header gives shape {shape}, {expected} bytes. "
        f"Received: {'at least ' if at_least else ''}{received} bytes.")
