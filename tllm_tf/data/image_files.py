"""Listing the image files of a class-per-folder data set, safely.

Which files are each class's images: hidden files and folders are skipped,
linked folders are followed without loops and without crossing into another
class's folder, and every file's header is checked before TensorFlow reads
it, so that a file that is not an image, or a small one that decodes to
gigabytes, fails here with a message naming it rather than hours into training.
"""

import collections
import hashlib
import logging
import os
import unicodedata

import numpy as np

from tllm_tf.data import image_headers
from tllm_tf.data.errors import DataNotFoundError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")
# Image formats TensorFlow does not decode: skipped with a warning that counts them (other
# files, such as Thumbs.db or a README, are skipped without one).
UNREAD_IMAGE_EXTENSIONS = (".tif", ".tiff", ".heic", ".heif", ".avif", ".jfif", ".jxl", ".jp2",
                           ".ppm", ".pgm", ".pbm", ".pnm", ".ico", ".svg", ".psd", ".tga",
                           ".exr", ".hdr", ".dng", ".cr2", ".nef", ".arw", ".raw")
# 100 megapixels: 300 MB once decoded as RGB, far above any image of a data set.
MAX_IMAGE_PIXELS = 100_000_000
_MAX_LISTED_PATHS = 5


def _is_hidden(name):
    return name.startswith(".")


def class_folders(directory):
    """The names of the class folders of `directory`, sorted.

    Args:
        directory: folder with one sub-folder per class.

    Returns:
        A sorted list of the names of its sub-folders that are not hidden.

    Raises:
        DataNotFoundError: if `directory` does not exist.
    """
    if not os.path.isdir(directory):
        raise DataNotFoundError(
            f"Image folder {directory!r} does not exist. Pass a folder with "
            "one sub-folder of images per class."
        )
    return sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_dir() and not _is_hidden(entry.name)
    )


def _listed(paths):
    more = len(paths) - _MAX_LISTED_PATHS
    return f"{paths[:_MAX_LISTED_PATHS]}" + (f" and {more} more" if more > 0 else "")


def _check_image_files(directory, paths):
    # Cheap here; otherwise TensorFlow fails at decode time, maybe hours in.
    pixels = {path: image_headers.pixel_count(path) for path in paths}
    bad = [path for path, count in pixels.items() if count is None]
    if bad:
        raise ValueError(
            f"{len(bad)} file(s) in {os.fspath(directory)!r} are empty, unreadable, not "
            "PNG, JPEG, GIF, BMP or WebP images, or of a kind TensorFlow does not decode "
            "right (a BMP other than an uncompressed 24-bit, 32-bit or 8-bit gray one; an "
            f"animated WebP): {_listed(bad)}. Delete them, or convert them to PNG."
        )
    # Decoded whole before the resize, several at a time: a small file can take gigabytes.
    large = [f"{path} ({pixels[path]} pixels)" for path in paths
             if pixels[path] > MAX_IMAGE_PIXELS]
    if large:
        raise ValueError(
            f"{len(large)} image(s) in {os.fspath(directory)!r} have more than MAX_IMAGE_PIXELS="
            f"{MAX_IMAGE_PIXELS} pixels (an animated GIF: over all its frames): "
            f"{_listed(large)}. Downscale them (each is resized to image_size when "
            "read) or delete them."
        )


def _folder_key(path):
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _folders_not_to_enter(directory, class_dirs):
    """Keys of the top folder, its ancestors and every class folder.

    A link to one of them from inside a class folder would label the images
    of other classes as that class, or loop.
    """
    keys = {_folder_key(path) for path in class_dirs if os.path.isdir(path)}
    path = os.path.realpath(directory)
    while True:
        keys.add(_folder_key(path))
        parent = os.path.dirname(path)
        if parent == path:
            return keys
        path = parent


def _first_visit(path, visited):
    try:
        key = _folder_key(path)
    except OSError:
        return False
    if key in visited:
        return False
    visited.add(key)
    return True


def _class_owning(real_path, class_by_real_path):
    """The class whose folder holds `real_path` (the deepest such folder), or None."""
    path = real_path
    while path not in class_by_real_path:
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    return class_by_real_path[path]


def _walk_images(label, class_dirs, class_by_real_path, visited, skipped):
    """Yields `(path, real_path)` of the image files of class `label`, in sorted order.

    A linked file or folder that lies in another class's folder is left to
    that class: followed from here, it would label that class's images as
    this one. `visited` holds the `(st_dev, st_ino)` of the folders not to
    enter; every folder entered is added to it. `skipped` (a `Counter`)
    counts the files of `UNREAD_IMAGE_EXTENSIONS`, by extension.
    """

    def belongs_here(real_path):
        owner = _class_owning(real_path, class_by_real_path)
        return owner is None or owner == label

    for root, dirs, files in os.walk(class_dirs[label], followlinks=True):
        dirs[:] = [
            name
            for name in sorted(dirs)
            if not _is_hidden(name)
            and belongs_here(os.path.realpath(os.path.join(root, name)))
            and _first_visit(os.path.join(root, name), visited)
        ]
        for name in sorted(files):
            if _is_hidden(name):
                continue
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                extension = os.path.splitext(name)[1].lower()
                if extension in UNREAD_IMAGE_EXTENSIONS:
                    skipped[extension] += 1
                continue
            path = os.path.join(root, name)
            real_path = os.path.realpath(path)
            if belongs_here(real_path):
                yield path, real_path


def _class_by_real_path(directory, class_dirs):
    """Maps each class folder's real path to its class index.

    Raises:
        ValueError: if two class folders are one folder (through a link).
    """
    class_by_real_path = {}
    for label, class_dir in enumerate(class_dirs):
        real_path = os.path.realpath(class_dir)
        if real_path in class_by_real_path and os.path.isdir(real_path):
            first = os.path.basename(class_dirs[class_by_real_path[real_path]])
            raise ValueError(
                f"Class folders {first!r} and {os.path.basename(class_dir)!r} of "
                f"{os.fspath(directory)!r} are the same "
                f"folder ({real_path!r}, through a link): their images would have two "
                "labels. Remove the link or give each class its own folder."
            )
        class_by_real_path.setdefault(real_path, label)
    return class_by_real_path


def list_image_files(directory, class_names):
    """Lists the images of each class folder, in a fixed order.

    Hidden files and folders (names starting with `.`) are skipped; so are
    other files not named as images (`IMAGE_EXTENSIONS`), with a warning
    that counts those of image formats it does not read (a `.tiff`). Linked
    folders are followed, but none twice, and none that is the top folder,
    one of its parents or a class folder; a linked file or folder inside
    another class's folder is that class's; a file reached twice is listed
    once. Every listed file must start like a PNG, JPEG, GIF, BMP or WebP,
    of at most `MAX_IMAGE_PIXELS` pixels where its header says its size.

    Args:
        directory: folder with one sub-folder per class.
        class_names: the class names; class `i` is the folder
            `class_names[i]`. A class without a folder has no images.

    Returns:
        `(paths, labels)`: a list of file paths and an int32 array.

    Raises:
        ValueError: if `directory` has a class folder not in `class_names`,
            two class folders that are one (a link), no images, image files
            that are empty or not images, or images of more than
            `MAX_IMAGE_PIXELS` pixels.
    """
    unknown = sorted(set(class_folders(directory)) - set(class_names))
    if unknown:
        raise ValueError(
            f"{directory!r} has class folders that the training folder lacks: "
            f"{unknown}. Give every split the same class folders."
        )
    class_dirs = [os.path.join(directory, class_name) for class_name in class_names]
    class_by_real_path = _class_by_real_path(directory, class_dirs)
    visited = _folders_not_to_enter(directory, class_dirs)
    paths, labels, real_paths = [], [], set()
    skipped = collections.Counter()
    for label in range(len(class_dirs)):
        for path, real_path in _walk_images(label, class_dirs, class_by_real_path, visited,
                                            skipped):
            if real_path not in real_paths:
                real_paths.add(real_path)
                paths.append(path)
                labels.append(label)
    if not paths:
        raise ValueError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in the class "
            f"folders of {directory!r}."
        )
    if skipped:
        logging.warning(
            "%d image(s) in the class folders of %r are of formats this loader does not read "
            "(it reads %s), and are skipped: %s. Convert them to PNG or JPEG to use them.",
            sum(skipped.values()), os.fspath(directory), ", ".join(IMAGE_EXTENSIONS),
            ", ".join(f"{name} ({count})" for name, count in skipped.most_common()))
    _check_image_files(directory, paths)
    return paths, np.asarray(labels, np.int32)


def files_digest(directory, paths, labels):
    """A digest of which files a split reads, with their labels and sizes.

    Paths count relative to `directory` (their names in Unicode's composed
    form, as one file system and another may write them otherwise), so the
    same images in a moved or copied folder give the same digest, and a file
    added, removed, moved to another class or rewritten with another size
    gives another. An image edited to the same size is not told apart:
    reading every file's contents would cost a read of the whole data set.

    Args:
        directory: the folder `paths` lie in.
        paths: the split's image files.
        labels: their class ids.

    Returns:
        A SHA-256 hex digest, the same for the same files in any order.
    """
    prefix = os.path.join(directory, "")

    def relative(path):  # `list_image_files`' paths start with `directory`: no relpath needed.
        name = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, directory)
        return unicodedata.normalize("NFC", name.replace(os.sep, "/"))

    lines = sorted(f"{int(label)}\t{relative(path)}\t{os.path.getsize(path)}\n"
                   for path, label in zip(paths, labels))
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()
