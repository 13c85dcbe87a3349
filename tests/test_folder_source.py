"""Tests of tllm_tf.data.folder_source on tiny PNG files."""

import collections
import io
import logging
import os
import re
import struct

import numpy as np
import pytest
import tensorflow as tf

from tllm_tf.data import image_files
from tllm_tf.data import image_headers
from tllm_tf.data.errors import DataNotFoundError
from tllm_tf.data import folder_source
from tllm_tf.data.folder_source import load_image_folder

CLASSES = ("cat", "dog", "emu")
PER_CLASS = 10


def _write_folder(root, classes=CLASSES, per_class=PER_CLASS, shape=(6, 5, 3)):
    """Writes `per_class` PNGs per class; pixel values encode class and index."""
    for label, class_name in enumerate(classes):
        class_dir = root / class_name
        class_dir.mkdir(parents=True)
        for index in range(per_class):
            image = np.full(shape, 20 * label + index, np.uint8)
            image[0, 0] = 255  # not constant, so resizing shows
            (class_dir / f"{index:02d}.png").write_bytes(tf.io.encode_png(image).numpy())
        (class_dir / "notes.txt").write_text("not an image")
    return root


def _labels_by_image(dataset):
    """Maps each image's identifying pixel value to its label."""
    return {int(image[1, 1, 0]): int(label) for image, label in dataset.as_numpy_iterator()}


def test_shapes_dtypes_class_names_and_pixels(tmp_path):
    splits = load_image_folder(_write_folder(tmp_path / "pets"), image_size=(6, 5))
    image, label = next(iter(splits.train))
    assert splits.name == "pets"
    assert splits.class_names == CLASSES and splits.num_classes == 3
    assert splits.image_shape == (6, 5, 3)
    assert image.shape == (6, 5, 3) and image.dtype == tf.float32
    assert label.dtype == tf.int32
    # At its own size an image comes back with its raw 0-255 pixels.
    for image, label in splits.train.as_numpy_iterator():
        value = image[1, 1, 0]
        assert label == value // 20
        assert image[0, 0, 0] == 255.0 and image[2, 2, 1] == value


def test_resizes_to_image_size(tmp_path):
    splits = load_image_folder(_write_folder(tmp_path / "pets"), image_size=4)
    assert splits.image_shape == (4, 4, 3)
    assert all(image.shape == (4, 4, 3) for image, _ in splits.test.as_numpy_iterator())


def test_splits_are_disjoint_stratified_and_seeded(tmp_path):
    root = _write_folder(tmp_path / "pets")
    kwargs = dict(image_size=(6, 5), holdout_fraction=0.3, test_fraction=0.3)
    splits = load_image_folder(root, seed=1, **kwargs)
    train, held_out, test = (
        _labels_by_image(s) for s in (splits.train, splits.held_out, splits.test)
    )
    assert not set(train) & set(held_out) and not set(train) & set(test)
    assert not set(held_out) & set(test)
    assert len(train) + len(held_out) + len(test) == len(CLASSES) * PER_CLASS
    assert collections.Counter(test.values()) == {0: 3, 1: 3, 2: 3}
    assert collections.Counter(held_out.values()) == {0: 2, 1: 2, 2: 2}
    assert splits.num_train == len(train) == 15
    again = load_image_folder(root, seed=1, **kwargs)
    assert _labels_by_image(again.held_out) == held_out
    other = load_image_folder(root, seed=2, **kwargs)
    assert _labels_by_image(other.held_out) != held_out


def test_separate_test_folder(tmp_path):
    train_dir = _write_folder(tmp_path / "train")
    test_dir = _write_folder(tmp_path / "test", classes=("cat", "emu"), per_class=2)
    splits = load_image_folder(train_dir, test_dir, image_size=(6, 5), holdout_fraction=0.2)
    assert sorted(_labels_by_image(splits.test).values()) == [0, 0, 2, 2]
    assert splits.num_train == 24 and len(list(splits.held_out)) == 6


def _order(dataset):
    return [int(image[1, 1, 0]) for image, _ in dataset.as_numpy_iterator()]


def test_the_training_split_can_be_read_in_an_order_drawn_from_a_seed(tmp_path):
    splits = load_image_folder(_write_folder(tmp_path / "pets"), image_size=(6, 5),
                               holdout_fraction=0.2, test_fraction=0.2)
    files = _order(splits.train)
    # The files come one class after another: the order a small shuffle buffer would keep.
    labels = [value // 20 for value in files]
    assert labels == sorted(labels)
    drawn = splits.shuffled_train(7)
    first_pass, second_pass = _order(drawn), _order(drawn)
    assert sorted(first_pass) == sorted(files) and first_pass != files
    assert second_pass != first_pass  # Drawn again on a further pass.
    assert _order(splits.shuffled_train(7)) == first_pass
    assert _order(splits.shuffled_train(8)) != first_pass
    assert _labels_by_image(drawn) == _labels_by_image(splits.train)
    assert int(drawn.cardinality()) == splits.num_train


def test_statistics_are_computed_in_raw_scale(tmp_path):
    root = _write_folder(tmp_path / "pets", classes=("a", "b"), per_class=2)
    splits = load_image_folder(root, image_size=(6, 5), test_fraction=0.5)
    # Each training image has 29 pixels of its identifying value and one of 255.
    values = [image[1, 1, 0] for image, _ in splits.train.as_numpy_iterator()]
    pixels = np.array([255.0] * len(values) + [v for v in values for _ in range(29)])
    np.testing.assert_allclose(splits.mean, [pixels.mean()] * 3, rtol=1e-6)
    np.testing.assert_allclose(splits.std, [pixels.std()] * 3, rtol=1e-6)


def test_statistics_of_a_larger_set_are_read_across_its_classes(tmp_path, monkeypatch):
    # 6 images stand for the 2,048 read of a larger folder. In file order they were the
    # first class's alone: every pixel value below 20.
    monkeypatch.setattr(folder_source, "STATISTICS_IMAGES", 6)
    root = _write_folder(tmp_path / "pets")
    splits = load_image_folder(root, image_size=(6, 5), test_fraction=0.2)
    first_class = np.mean([255.0] + [9.0 / 2] * 29)  # the mean of class 0's images
    assert splits.mean[0] > first_class + 5
    again = load_image_folder(root, image_size=(6, 5), test_fraction=0.2)
    assert again.mean == splits.mean


def test_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing", image_size=4)
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="No images"):
        load_image_folder(tmp_path / "empty", image_size=4)
    root = _write_folder(tmp_path / "pets")
    with pytest.raises(ValueError, match="image_size"):
        load_image_folder(root, image_size=(4, 0))
    _write_folder(tmp_path / "odd_test", classes=("cat", "owl"), per_class=1)
    with pytest.raises(ValueError, match="owl"):
        load_image_folder(root, tmp_path / "odd_test", image_size=4)


def test_bad_image_files_are_refused_up_front(tmp_path):
    root = _write_folder(tmp_path / "pets")
    (root / "cat" / "empty.png").write_bytes(b"")
    (root / "dog" / "text.jpg").write_text("not an image at all")
    for index in range(5):
        (root / "emu" / f"junk{index}.gif").write_bytes(b"GIF7" * 4)
    expected = "7 file.*empty.png.*text.jpg.* and 2 more.*Delete them, or convert them to PNG"
    with pytest.raises(ValueError, match=expected):
        load_image_folder(root, image_size=4)


def test_symlink_loop_is_not_followed(tmp_path):
    root = _write_folder(tmp_path / "pets")
    os.symlink("..", root / "cat" / "up")
    (root / "dog" / "sub").mkdir()
    os.symlink(root / "dog" / "00.png", root / "dog" / "sub" / "again.png")
    splits = load_image_folder(root, image_size=(6, 5), test_fraction=0.3)
    labels = np.concatenate([[label for _, label in s] for s in (splits.train, splits.test)])
    assert collections.Counter(labels.tolist()) == {0: PER_CLASS, 1: PER_CLASS, 2: PER_CLASS}


def test_hidden_folders_and_files_are_skipped(tmp_path):
    root = _write_folder(tmp_path / "pets")
    for hidden in (root / ".ipynb_checkpoints", root / "cat" / ".cache"):
        _write_folder(hidden, classes=("x",), per_class=2)
    (root / "dog" / "._00.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    splits = load_image_folder(root, image_size=(6, 5), test_fraction=0.3)
    assert splits.class_names == CLASSES
    assert splits.num_train + len(list(splits.test)) == len(CLASSES) * PER_CLASS


def test_class_folder_without_images_is_refused(tmp_path):
    root = _write_folder(tmp_path / "pets")
    (root / "owl").mkdir()
    (root / "owl" / "readme.txt").write_text("todo")
    with pytest.raises(ValueError, match=r"\['owl'\].*no images.*Add images to them or remove"):
        load_image_folder(root, image_size=4)


def test_warns_about_classes_without_test_images(tmp_path, caplog):
    train_dir = _write_folder(tmp_path / "train")
    test_dir = _write_folder(tmp_path / "test", classes=("cat", "emu"), per_class=2)
    (test_dir / "dog").mkdir()
    with caplog.at_level(logging.WARNING):
        load_image_folder(train_dir, test_dir, image_size=4)
    assert "['dog']" in caplog.text and "n/a" in caplog.text
    caplog.clear()
    _write_folder(tmp_path / "few", classes=("cat",), per_class=4)
    _write_folder(tmp_path / "few", classes=("dog",), per_class=1)
    with caplog.at_level(logging.WARNING):
        load_image_folder(tmp_path / "few", image_size=4, test_fraction=0.5)
    assert "['dog']" in caplog.text and "test_fraction=0.5" in caplog.text


def test_single_class_folder_is_refused(tmp_path):
    root = _write_folder(tmp_path / "pets", classes=("cat",))
    with pytest.raises(ValueError, match="single class folder, 'cat'.*at least 2"):
        load_image_folder(root, image_size=4)


def test_reads_webp(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    root = _write_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=2)
    pixels = np.full((6, 5, 3), 77, np.uint8)
    for index in range(2):
        encoded = io.BytesIO()
        image_module.fromarray(pixels).save(encoded, format="WEBP", lossless=True)
        (root / "emu" / f"{index}.webp").parent.mkdir(exist_ok=True)
        (root / "emu" / f"{index}.webp").write_bytes(encoded.getvalue())
    splits = load_image_folder(root, image_size=(6, 5), test_fraction=0.5)
    assert splits.class_names == ("cat", "dog", "emu")
    images = [image for image, label in splits.train.as_numpy_iterator() if label == 2]
    assert len(images) == 1 and np.all(images[0] == 77.0)


def test_links_into_another_class_keep_that_class_label(tmp_path):
    root = _write_folder(tmp_path / "pets")
    (root / "dog" / "sub").mkdir()
    for index in range(3):
        (root / "dog" / f"{index:02d}.png").rename(root / "dog" / "sub" / f"{index:02d}.png")
    # "cat" comes first: its links would have labelled dog and emu images as cats.
    os.symlink(root / "dog" / "sub", root / "cat" / "borrowed")
    os.symlink(root / "emu" / "04.png", root / "cat" / "bird.png")
    outside = _write_folder(tmp_path / "elsewhere", classes=("more_cats",), per_class=2)
    os.symlink(outside / "more_cats", root / "cat" / "extra")
    splits = load_image_folder(root, image_size=(6, 5), test_fraction=0.3)
    labels = np.concatenate([[label for _, label in s] for s in (splits.train, splits.test)])
    assert collections.Counter(labels.tolist()) == {0: PER_CLASS + 2, 1: PER_CLASS, 2: PER_CLASS}


def test_two_class_folders_that_are_one_are_refused(tmp_path):
    root = _write_folder(tmp_path / "pets")
    os.symlink(root / "cat", root / "kitten")
    with pytest.raises(ValueError, match="'kitten'.* same folder.*Remove the link"):
        load_image_folder(root, image_size=4)


def _encoded(image_module, shape, format_name, **options):
    stream = io.BytesIO()
    pixels = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    image_module.fromarray(pixels).save(stream, format=format_name, **options)
    return stream.getvalue()


@pytest.mark.parametrize("format_name, channels, options, frames", [
    ("PNG", 3, {}, 1),
    ("JPEG", 3, {}, 1),
    ("JPEG", 3, {"progressive": True, "comment": b"x" * 60_000}, 1),  # A long segment first.
    ("BMP", 3, {}, 1),
    ("WEBP", 3, {"lossless": True}, 1),   # VP8L
    ("WEBP", 3, {"quality": 80}, 1),      # VP8
    ("WEBP", 4, {"quality": 80}, 1),      # VP8X, for the alpha channel
    ("GIF", 3, {}, 1),
    ("GIF", 3, {"save_all": True, "append_images": "frames"}, 3),
])
def test_the_pixel_count_is_read_from_each_formats_header(tmp_path, format_name, channels,
                                                          options, frames):
    image_module = pytest.importorskip("PIL.Image")
    shape = (37, 300, channels)  # Height and width told apart, one over 255.
    if options.get("append_images") == "frames":
        others = [image_module.fromarray(np.full(shape, 40 * i, np.uint8)) for i in (1, 2)]
        options = {**options, "append_images": others}
    path = tmp_path / f"image.{format_name.lower()}"
    path.write_bytes(_encoded(image_module, shape, format_name, **options))
    assert image_headers.pixel_count(str(path)) == 37 * 300 * frames
    decoded = tf.io.decode_image(path.read_bytes(), expand_animations=True)
    assert decoded.shape[-3:-1] == (37, 300)  # What TensorFlow reads agrees.


def _bmp_with_header_fields(bits, compression, pixels_bytes=24):
    """A 4x2 BMP with a 40-byte header whose bit count and compression are given."""
    header = struct.pack("<IiiHHIIiiII", 40, 4, 2, 1, bits, compression, pixels_bytes, 0, 0, 0, 0)
    return struct.pack("<2sIHHI", b"BM", 54 + pixels_bytes, 0, 0, 54) + header + bytes(
        pixels_bytes)


@pytest.mark.parametrize("variant", [
    "bmp_1", "bmp_L", "bmp_P", "bmp_RGB", "bmp_RGBA", "bmp_16", "bmp_rle8",
    "webp_still", "webp_animated"])
def test_a_variant_is_accepted_exactly_when_tensorflow_decodes_it_right(tmp_path, variant):
    # TensorFlow fails on 1- and 16-bit BMPs and animated WebPs, reads an 8-bit BMP's colour
    # palette indices as gray levels and a compressed BMP as zeros: hours into training, or
    # never said.
    image_module = pytest.importorskip("PIL.Image")
    pixels = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    image = image_module.fromarray(pixels)
    path = tmp_path / f"image.{variant.split('_')[0]}"
    if variant in ("bmp_16", "bmp_rle8"):
        path.write_bytes(_bmp_with_header_fields(*{"bmp_16": (16, 0), "bmp_rle8": (8, 1)}[variant]))
    elif variant.startswith("bmp_"):
        image.convert(variant[4:]).save(path)
    elif variant == "webp_animated":
        image.save(path, save_all=True, append_images=[image.rotate(90)], duration=100)
    else:
        image.save(path, lossless=True)
    try:
        decoded = tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False)
        expected = np.asarray(image_module.open(path).convert("RGB"))
        right = decoded.shape == expected.shape and np.array_equal(decoded.numpy(), expected)
    except tf.errors.InvalidArgumentError:
        right = False
    assert (image_headers.pixel_count(str(path)) is not None) == right
    assert right == (variant in ("bmp_L", "bmp_RGB", "bmp_RGBA", "webp_still"))


def test_a_bmp_tensorflow_cannot_decode_is_refused_at_load_naming_it(tmp_path):
    root = _write_folder(tmp_path / "pets")
    (root / "dog" / "scan.bmp").write_bytes(_bmp_with_header_fields(1, 0, pixels_bytes=8))
    with pytest.raises(ValueError, match=(
            r"1 file\(s\) .*\(a BMP other than an uncompressed 24-bit, 32-bit or 8-bit gray "
            rf"one; an animated WebP\): \[{re.escape(repr(str(root / 'dog' / 'scan.bmp')))}\]\. "
            "Delete them, or convert them to PNG")):
        load_image_folder(root, image_size=4)


def test_a_jpeg_padded_with_fill_bytes_is_still_sized(tmp_path):
    # A fill byte before the frame header once hid a 20000x20000 claim from the pixel limit.
    encoded = tf.io.encode_jpeg(np.zeros((8, 8, 3), np.uint8)).numpy()
    frame = encoded.index(b"\xff\xc0")
    padded = encoded[:frame] + b"\xff\xff" + encoded[frame + 1:]
    (tmp_path / "padded.jpg").write_bytes(padded)
    assert tf.io.decode_jpeg(padded).shape == (8, 8, 3)  # Still a JPEG to TensorFlow.
    assert image_headers.pixel_count(str(tmp_path / "padded.jpg")) == 64
    claim = padded.index(b"\xff\xc0") + 5
    bomb = padded[:claim] + struct.pack(">HH", 20_000, 20_000) + padded[claim + 4:]
    (tmp_path / "bomb.jpg").write_bytes(bomb)
    assert image_headers.pixel_count(str(tmp_path / "bomb.jpg")) == 400_000_000


@pytest.mark.parametrize("contents", [
    b"\xff\xd8\xff\xda\x00\x02",  # The image data before any frame header.
    b"\x89PNG\r\n\x1a\n",  # A header cut short.
    b"RIFF\x00\x00\x00\x00WEBPVP8Q" + bytes(20),  # A WebP chunk TensorFlow does not read.
])
def test_an_image_whose_size_cannot_be_read_is_refused(tmp_path, contents):
    (tmp_path / "image").write_bytes(contents)
    assert image_headers.pixel_count(str(tmp_path / "image")) is None


def test_a_fifo_among_the_images_is_refused_without_blocking(tmp_path):
    root = _write_folder(tmp_path / "pets")
    os.mkfifo(root / "dog" / "stream.png")
    with pytest.raises(ValueError, match=r"1 file\(s\) .*stream\.png"):
        load_image_folder(root, image_size=4)


def test_images_over_the_pixel_limit_are_refused_naming_them(tmp_path, monkeypatch):
    root = _write_folder(tmp_path / "pets")  # 6x5 images: 30 pixels.
    monkeypatch.setattr(image_files, "MAX_IMAGE_PIXELS", 29)
    with pytest.raises(ValueError) as refusal:
        load_image_folder(root, image_size=4)
    message = str(refusal.value)
    assert message.startswith(f"30 image(s) in {str(root)!r} have more than "
                              "MAX_IMAGE_PIXELS=29 pixels")
    assert f"'{root / 'cat' / '00.png'} (30 pixels)'" in message and "and 25 more" in message
    assert "Downscale them" in message
    monkeypatch.setattr(image_files, "MAX_IMAGE_PIXELS", 30)
    assert load_image_folder(root, image_size=4).num_train == 24


def test_a_small_png_claiming_huge_dimensions_is_refused_before_decoding(tmp_path):
    root = _write_folder(tmp_path / "pets")
    # The PNG signature and an IHDR chunk of 20000x20000: what a 389 KB bomb starts with.
    (root / "dog" / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sIIBBBBB", 13, b"IHDR", 20_000, 20_000,
                                            8, 2, 0, 0, 0) + bytes(4))
    with pytest.raises(ValueError, match=(
            rf"1 image\(s\) .* MAX_IMAGE_PIXELS=100000000 pixels .*"
            rf"{re.escape(str(root / 'dog' / 'bomb.png'))} \(400000000 pixels\)")):
        load_image_folder(root, image_size=4)
