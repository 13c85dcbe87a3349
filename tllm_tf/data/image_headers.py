"""Image sizes read from file headers: what decoding an image would allocate, before it is decoded.

PNG, BMP, WebP (VP8, VP8L, VP8X), JPEG (its frame header, found by walking
the segments) and GIF (the logical screen times the frames: TensorFlow decodes
every frame). A few bytes of each file, with `struct`; nothing is decoded.
"""

import os
import struct

# Enough for the sizes in a PNG, BMP or WebP header.
_HEADER_BYTES = 30
# Real JPEGs hold a handful of segments before their frame header.
_MAX_JPEG_SEGMENTS = 1000


def looks_like_image(header):
    """Whether a file's first 12 bytes start one of the accepted formats."""
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return True
    return header.startswith((b"\x89PNG", b"\xff\xd8", b"GIF8", b"BM"))


def pixel_count(path):
    """The pixels `tf.io.decode_image` would allocate for `path`, from its header.

    Returns:
        The count (0 where the header does not say it cheaply), or `None` if
        the file is unreadable or not an image of the accepted formats.
    """
    try:
        with open(path, "rb") as file:
            header = file.read(_HEADER_BYTES)
            if not looks_like_image(header[:12]):
                return None
            if header.startswith(b"\xff\xd8"):
                return _jpeg_pixels(file)
            if header.startswith(b"GIF8"):
                return _gif_pixels(header + file.read())
            return _pixels_from_header(header)
    except OSError:
        return None


def _pixels_from_header(header):
    """Width times height of a PNG, BMP or WebP, from its first 30 bytes (0 if cut short)."""
    if len(header) < _HEADER_BYTES:
        return 0
    if header.startswith(b"\x89PNG"):
        width, height = struct.unpack(">II", header[16:24])
    elif header.startswith(b"BM"):
        # A BITMAPCOREHEADER (12 bytes) has 16-bit sizes; the others 32-bit, the height signed.
        small = struct.unpack("<I", header[14:18])[0] == 12
        width, height = struct.unpack("<HH" if small else "<ii", header[18:22 if small else 26])
    elif header[12:16] == b"VP8 ":
        width, height = (size & 0x3FFF for size in struct.unpack("<HH", header[26:30]))
    elif header[12:16] == b"VP8L":
        bits = struct.unpack("<I", header[21:25])[0]
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif header[12:16] == b"VP8X":
        width = int.from_bytes(header[24:27], "little") + 1
        height = int.from_bytes(header[27:30], "little") + 1
    else:
        return 0
    return abs(width * height)


def _jpeg_pixels(file):
    """Width times height from a JPEG's SOF segment (0 if not among its first segments)."""
    file.seek(2)
    for _ in range(_MAX_JPEG_SEGMENTS):
        marker = file.read(4)
        if len(marker) < 4 or marker[0] != 0xFF or marker[1] in (0xD9, 0xDA):
            return 0  # The image data (or the end) before any frame header.
        if 0xC0 <= marker[1] <= 0xCF and marker[1] not in (0xC4, 0xC8, 0xCC):
            frame = file.read(5)
            if len(frame) < 5:
                return 0
            height, width = struct.unpack(">HH", frame[1:5])
            return width * height
        file.seek(struct.unpack(">H", marker[2:4])[0] - 2, os.SEEK_CUR)
    return 0


def _gif_pixels(data):
    """The logical screen's pixels times the frames: TensorFlow decodes every frame."""
    width, height = struct.unpack("<HH", data[6:10])
    position = 13 + _gif_colour_table_bytes(data[10])
    frames = 0
    while position < len(data) and data[position] != 0x3B:
        if data[position] == 0x2C:  # An image descriptor, then its local colour table.
            frames += 1
            flags = data[position + 9] if position + 9 < len(data) else 0
            position += 10 + _gif_colour_table_bytes(flags) + 1  # + LZW's code size.
        elif data[position] == 0x21:  # An extension: its label, then sub-blocks.
            position += 2
        else:
            break  # Damaged: TensorFlow will say so when it decodes it.
        while position < len(data) and data[position]:
            position += data[position] + 1
        position += 1
    return width * height * max(frames, 1)


def _gif_colour_table_bytes(flags):
    return 3 << ((flags & 0x07) + 1) if flags & 0x80 else 0
