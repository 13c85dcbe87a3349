"""Image sizes read from file headers: what decoding an image would allocate, before it is decoded.

PNG, BMP, WebP (VP8, VP8L, VP8X), JPEG (its frame header, found by walking
the segments) and GIF (the logical screen times the frames: TensorFlow decodes
every frame). A few bytes of each file, with `struct`; nothing is decoded.
Variants of these formats that `tf.io.decode_image` fails on, or reads wrongly,
count as not images: BMPs other than uncompressed 24- or 32-bit ones and 8-bit
gray ones, and animated WebPs.
"""

import os
import stat
import struct

# Enough for the sizes in a PNG, BMP or WebP header.
_HEADER_BYTES = 30
# Real JPEGs hold a handful of segments before their frame header.
_MAX_JPEG_SEGMENTS = 1000
# Encoders pad a marker with a few 0xFF bytes at most.
_MAX_JPEG_FILL_BYTES = 1000
# A BMP's BITMAPCOREHEADER, the oldest, is 12 bytes; the others 40 or more.
_BMP_CORE_HEADER_BYTES = 12
# A BMP's compression: none, or pixel bit masks (32-bit images); TensorFlow reads no other.
_BMP_DECODED_COMPRESSIONS = (0, 3)
_WEBP_ANIMATION_FLAG = 0x02


def looks_like_image(header):
    """Whether a file's first 12 bytes start one of the accepted formats."""
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return True
    return header.startswith((b"\x89PNG", b"\xff\xd8", b"GIF8", b"BM"))


def pixel_count(path):
    """The pixels `tf.io.decode_image` would allocate for `path`, from its header.

    Returns:
        The count, or `None` if the file is not a regular file, unreadable,
        not an image of the accepted formats, cut short before its size, or
        a variant of one that TensorFlow does not decode right.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None  # A FIFO or a device would block or never end.
        with open(path, "rb") as file:
            header = file.read(_HEADER_BYTES)
            if not looks_like_image(header[:12]):
                return None
            if header.startswith(b"\xff\xd8"):
                return _jpeg_pixels(file)
            if header.startswith(b"GIF8"):
                return _gif_pixels(header + file.read())
            if header.startswith(b"BM") and not _bmp_decoded_right(file):
                return None
            if header[12:16] == b"VP8X" and len(header) > 20 and (
                    header[20] & _WEBP_ANIMATION_FLAG):
                return None  # TensorFlow decodes no animated WebP.
            return _pixels_from_header(header)
    except OSError:
        return None


def _pixels_from_header(header):
    """Width times height of a PNG, BMP or WebP, from its first 30 bytes (None if cut short)."""
    if len(header) < _HEADER_BYTES:
        return None
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
        return None  # A WebP chunk TensorFlow does not decode.
    return abs(width * height)


def _bmp_decoded_right(file):
    """Whether `tf.io.decode_bmp` reads this BMP's pixels as they are (True if cut short).

    It reads uncompressed 24- and 32-bit pixels, and an 8-bit image's palette
    indices as gray levels: right only where the palette is the gray ramp. It
    fails on 1-, 4- and 16-bit images, and reads compressed ones as zeros.
    """
    file.seek(14)
    info = file.read(40)
    if len(info) < 12:
        return True  # Cut short: TensorFlow will say so when it decodes it.
    size = struct.unpack("<I", info[:4])[0]
    core = size == _BMP_CORE_HEADER_BYTES
    if core:
        bits, compression = struct.unpack("<H", info[10:12])[0], 0
    elif len(info) >= 36:
        bits, compression = struct.unpack("<HI", info[14:20])
    else:
        return True
    if compression not in _BMP_DECODED_COMPRESSIONS or bits not in (8, 24, 32):
        return False
    if bits != 8:
        return True
    entries = 256 if core else min(struct.unpack("<I", info[32:36])[0] or 256, 256)
    entry_bytes = 3 if core else 4
    file.seek(14 + size)
    palette = file.read(entries * entry_bytes)
    if len(palette) < entries * entry_bytes:
        return True
    # Blue, green, red of entry i all equal to i.
    return all(palette[i * entry_bytes:i * entry_bytes + 3] == bytes((i, i, i))
               for i in range(entries))


def _jpeg_pixels(file):
    """Width times height from a JPEG's SOF segment (None if not among its first segments).

    A decoder finds the frame header before the image data, so a JPEG whose
    size cannot be read here is one TensorFlow could not decode either.
    """
    file.seek(2)
    for _ in range(_MAX_JPEG_SEGMENTS):
        if file.read(1) != b"\xff":
            return None
        code = file.read(1)
        for _ in range(_MAX_JPEG_FILL_BYTES):  # Fill bytes may pad any marker.
            if code != b"\xff":
                break
            code = file.read(1)
        length = file.read(2)
        if not code or len(length) < 2 or code[0] in (0xD9, 0xDA):
            return None  # The end, or the image data, before any frame header.
        if 0xC0 <= code[0] <= 0xCF and code[0] not in (0xC4, 0xC8, 0xCC):
            frame = file.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return width * height
        file.seek(struct.unpack(">H", length)[0] - 2, os.SEEK_CUR)
    return None


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
