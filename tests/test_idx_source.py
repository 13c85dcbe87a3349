"""Tests of tllm_tf.data.idx_source on tiny IDX files the tests write.

The real Fashion-MNIST is never read: every test points the Debian default
directory at an empty folder and passes its own `idx_dir` or tfds mock.
"""

import collections
import gzip
import struct
import tracemalloc

import numpy as np
import pytest

from conftest import prepared_tfds
from conftest import written_tfds
from tllm_tf.data import idx_format
from tllm_tf.data import idx_source
from tllm_tf.data import load_dataset
from tllm_tf.data.errors import DamagedDataError
from tllm_tf.data.errors import DataNotFoundError
from tllm_tf.data.idx_format import IDXFormatError
from tllm_tf.data.idx_format import read_idx
from tllm_tf.data.idx_source import load_fashion_mnist
from tllm_tf.data.splits import stratified_split
from tllm_tf.data.splits import stratified_subset

NUM_TRAIN_IMAGES = 40
NUM_TEST_IMAGES = 20


def _idx_bytes(array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(path, array, compress):
    data = _idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)


def _arrays(seed=0):
    rng = np.random.default_rng(seed)

    def images_and_labels(count):
        labels = np.arange(count) % 10
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        # Pixel 0 holds the image's index, so each image can be told apart.
        images[:, 0, 0] = np.arange(count)
        return images, labels

    return images_and_labels(NUM_TRAIN_IMAGES) + images_and_labels(NUM_TEST_IMAGES)


def _write_fashion_mnist(directory, compress=True):
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    arrays = _arrays()
    for stem, array in zip(idx_source.IDX_FILES.values(), arrays):
        _write_idx(directory / (stem + suffix), array, compress)
    return arrays


@pytest.fixture(autouse=True)
def empty_debian_dir(tmp_path, monkeypatch):
    """Never the machine's real data: the Debian default is an empty folder."""
    empty = tmp_path / "debian"
    empty.mkdir()
    monkeypatch.setattr(idx_source, "DEBIAN_DIR", str(empty))
    return empty


def _as_numpy(dataset):
    images, labels = zip(*dataset.as_numpy_iterator())
    return np.stack(images), np.array(labels)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trips(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a", array, compress)
    read = read_idx(tmp_path / "a")
    assert read.dtype == np.uint8
    np.testing.assert_array_equal(read, array)


@pytest.mark.parametrize("compress", [True, False])
def test_splits_shapes_and_metadata(tmp_path, compress):
    train_images, train_labels, test_images, test_labels = _write_fashion_mnist(
        tmp_path / "idx", compress)
    splits = load_fashion_mnist(holdout_fraction=0.25, idx_dir=str(tmp_path / "idx"))
    image, label = next(iter(splits.train))
    assert image.shape == (28, 28, 1) and image.dtype.name == "float32"
    assert label.dtype.name == "int32"
    assert splits.name == "fashion_mnist"
    assert splits.num_classes == 10 and splits.image_shape == (28, 28, 1)
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    assert len(splits.class_names) == 10
    kept = _as_numpy(splits.train)[0]
    np.testing.assert_allclose(splits.mean, [kept.mean()], rtol=1e-6)
    np.testing.assert_allclose(splits.std, [kept.std()], rtol=1e-6)
    # The test split is the official one, whole and in order.
    images, labels = _as_numpy(splits.test)
    np.testing.assert_array_equal(images[..., 0], test_images)
    np.testing.assert_array_equal(labels, test_labels)


def test_held_out_is_a_disjoint_stratified_part_of_train(tmp_path):
    train_images, train_labels, _, _ = _write_fashion_mnist(tmp_path / "idx")
    splits = load_fashion_mnist(holdout_fraction=0.25, seed=3, idx_dir=str(tmp_path / "idx"))
    train_images_out, train_labels_out = _as_numpy(splits.train)
    held_images, held_labels = _as_numpy(splits.held_out)
    train_ids, held_ids = train_images_out[:, 0, 0, 0], held_images[:, 0, 0, 0]
    assert not set(train_ids) & set(held_ids)
    assert sorted(np.concatenate([train_ids, held_ids])) == list(range(NUM_TRAIN_IMAGES))
    np.testing.assert_array_equal(held_labels, train_labels[held_ids.astype(int)])
    # 4 of each class's 4 * 0.25 = 1 held out.
    assert collections.Counter(held_labels.tolist()) == {c: 1 for c in range(10)}
    assert splits.num_train == len(train_ids) == NUM_TRAIN_IMAGES - 10
    other = load_fashion_mnist(holdout_fraction=0.25, seed=4, idx_dir=str(tmp_path / "idx"))
    assert set(_as_numpy(other.held_out)[0][:, 0, 0, 0]) != set(held_ids)


def test_num_train_keeps_a_stratified_subset_and_fixes_the_other_splits(tmp_path):
    _write_fashion_mnist(tmp_path / "idx")
    idx_dir = str(tmp_path / "idx")
    full = load_fashion_mnist(holdout_fraction=0.25, idx_dir=idx_dir)
    subset = load_fashion_mnist(holdout_fraction=0.25, idx_dir=idx_dir, num_train=10)
    images, labels = _as_numpy(subset.train)
    assert subset.num_train == len(labels) == 10
    assert collections.Counter(labels.tolist()) == {c: 1 for c in range(10)}
    assert set(images[:, 0, 0, 0]) < set(_as_numpy(full.train)[0][:, 0, 0, 0])
    for split in ("held_out", "test"):
        np.testing.assert_array_equal(
            _as_numpy(getattr(subset, split))[0], _as_numpy(getattr(full, split))[0])


def test_load_dataset_registers_fashion_mnist(tmp_path, monkeypatch):
    _write_fashion_mnist(tmp_path / "idx")
    monkeypatch.setattr(idx_source, "DEBIAN_DIR", str(tmp_path / "idx"))
    splits = load_dataset("fashion_mnist", holdout_fraction=0.25, num_train=20)
    assert splits.name == "fashion_mnist" and splits.num_train == 20
    with pytest.raises(ValueError, match="num_train is only supported"):
        load_dataset("cifar10", holdout_fraction=0.25, num_train=20)


def test_bad_magic_names_the_file(tmp_path):
    _write_fashion_mnist(tmp_path / "idx")
    bad = tmp_path / "idx" / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x01\x02\x08\x01" + bytes(8)))
    with pytest.raises(IDXFormatError, match="train-labels-idx1-ubyte.gz: not an IDX file"):
        load_fashion_mnist(holdout_fraction=0.25, idx_dir=str(tmp_path / "idx"))


def test_other_type_code_is_refused(tmp_path):
    path = tmp_path / "floats"
    path.write_bytes(struct.pack(">BBBBI", 0, 0, 0x0D, 1, 2) + bytes(8))
    with pytest.raises(IDXFormatError, match="type code 0x08"):
        read_idx(path)


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_file_names_the_file(tmp_path, compress):
    data = _idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-5]
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(IDXFormatError, match="t10k-images-idx3-ubyte: truncated"):
        read_idx(path)


def test_truncated_gzip_stream_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(np.zeros((3, 28, 28), np.uint8)))[:-20])
    with pytest.raises(IDXFormatError, match="train-images-idx3-ubyte.gz: not a readable gzip"):
        read_idx(path)


def test_count_mismatch_names_both_files(tmp_path):
    _write_fashion_mnist(tmp_path / "idx", compress=False)
    _write_idx(tmp_path / "idx" / "t10k-labels-idx1-ubyte", np.zeros(19, np.uint8), False)
    with pytest.raises(IDXFormatError, match=r"20 images but .*t10k-labels-idx1-ubyte holds 19"):
        load_fashion_mnist(holdout_fraction=0.25, idx_dir=str(tmp_path / "idx"))


def test_not_found_names_both_ways(tmp_path, empty_debian_dir):
    with pytest.raises(DataNotFoundError) as error:
        load_fashion_mnist(holdout_fraction=0.25, data_dir=str(tmp_path / "tfds"))
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "tfds build fashion_mnist --data_dir" in message
    assert str(empty_debian_dir) in message and str(tmp_path / "tfds") in message


def test_debian_directory_is_found_by_itself(tmp_path, monkeypatch):
    _write_fashion_mnist(tmp_path / "debian_with_data", compress=False)
    monkeypatch.setattr(idx_source, "DEBIAN_DIR", str(tmp_path / "debian_with_data"))
    splits = load_fashion_mnist(holdout_fraction=0.25)
    assert len(_as_numpy(splits.test)[1]) == NUM_TEST_IMAGES


def test_falls_back_to_prepared_tfds(tmp_path):
    with prepared_tfds(tmp_path / "tfds", "fashion_mnist", num_examples=50):
        splits = load_fashion_mnist(holdout_fraction=0.2, data_dir=str(tmp_path / "tfds"))
        train_images, train_labels = _as_numpy(splits.train)
        _, held_labels = _as_numpy(splits.held_out)
        _, test_labels = _as_numpy(splits.test)
    assert train_images.shape[1:] == (28, 28, 1) and train_images.dtype == np.float32
    assert len(train_labels) + len(held_labels) == 50 and len(test_labels) == 50
    assert splits.num_train == len(train_labels)
    assert splits.class_names == idx_source.CLASS_NAMES


def test_labels_out_of_range_name_the_file_values_and_count(tmp_path):
    _, train_labels, _, _ = _write_fashion_mnist(tmp_path / "idx")
    bad = train_labels.copy()
    bad[[0, 5, 7]] = [10, 12, 10]
    _write_idx(tmp_path / "idx" / "train-labels-idx1-ubyte.gz", bad, True)
    with pytest.raises(IDXFormatError, match=(
            r"train-labels-idx1-ubyte.gz: expected labels in 0-9 .* "
            r"Received 3 labels out of range, of values \[10, 12\]")):
        load_fashion_mnist(holdout_fraction=0.25, idx_dir=str(tmp_path / "idx"))


def test_file_without_images_is_refused_by_name(tmp_path):
    _write_fashion_mnist(tmp_path / "idx")
    _write_idx(tmp_path / "idx" / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28)), True)
    _write_idx(tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz", np.zeros(0), True)
    with pytest.raises(IDXFormatError, match=r"t10k-images-idx3-ubyte.gz holds no images"):
        load_fashion_mnist(holdout_fraction=0.25, idx_dir=str(tmp_path / "idx"))


def test_given_folder_with_some_files_names_the_missing_ones(tmp_path, monkeypatch):
    _write_fashion_mnist(tmp_path / "debian_with_data")
    monkeypatch.setattr(idx_source, "DEBIAN_DIR", str(tmp_path / "debian_with_data"))
    _write_fashion_mnist(tmp_path / "idx")
    (tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match=(
            r"idx lacks t10k-labels-idx1-ubyte\[.gz\] \(it holds 3 of the 4 files\)")):
        load_fashion_mnist(holdout_fraction=0.25, idx_dir=str(tmp_path / "idx"))


def test_given_folder_without_files_is_not_passed_over(tmp_path, monkeypatch):
    _write_fashion_mnist(tmp_path / "debian_with_data")
    monkeypatch.setattr(idx_source, "DEBIAN_DIR", str(tmp_path / "debian_with_data"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match=r"empty lacks train-images-idx3-ubyte"):
        load_fashion_mnist(holdout_fraction=0.25, idx_dir=str(tmp_path / "empty"))


def test_debian_folder_with_some_files_names_the_missing_ones(tmp_path, empty_debian_dir):
    _write_fashion_mnist(empty_debian_dir)
    (empty_debian_dir / "train-images-idx3-ubyte.gz").unlink()
    (empty_debian_dir / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match=(
            r"lacks train-images-idx3-ubyte\[.gz\], train-labels-idx1-ubyte\[.gz\] .*"
            r"apt-get install --reinstall dataset-fashion-mnist")):
        load_fashion_mnist(holdout_fraction=0.25)


@pytest.mark.parametrize("num_train", [10, 15, 25, 29])
def test_num_train_is_honoured_exactly(tmp_path, num_train):
    _write_fashion_mnist(tmp_path / "idx")
    splits = load_fashion_mnist(holdout_fraction=0.25, idx_dir=str(tmp_path / "idx"),
                                num_train=num_train)
    _, labels = _as_numpy(splits.train)
    assert splits.num_train == len(labels) == num_train
    per_class = collections.Counter(labels.tolist())
    assert set(per_class) == set(range(10))
    assert max(per_class.values()) - min(per_class.values()) <= 1


def test_num_train_below_the_number_of_classes_is_refused(tmp_path):
    _write_fashion_mnist(tmp_path / "idx")
    with pytest.raises(ValueError, match=r"num_train >= 10.* Received: num_train=9"):
        load_fashion_mnist(holdout_fraction=0.25, idx_dir=str(tmp_path / "idx"), num_train=9)


def test_stratified_subset_keeps_the_splits_that_divide_evenly():
    # Fashion-MNIST's shape: 6,000 images a class, 10% held out, num_train=5000.
    labels = np.arange(60_000) % 10
    for seed in (0, 1):
        train, _ = stratified_split(labels, fraction=0.1, seed=seed)
        _, before = stratified_split(labels[train], fraction=5000 / len(train), seed=seed + 1)
        after = stratified_subset(labels[train], 5000, seed=seed + 1)
        np.testing.assert_array_equal(after, before)


def test_huge_header_gives_the_exact_byte_count(tmp_path):
    path = tmp_path / "huge"
    path.write_bytes(struct.pack(">BBBB3I", 0, 0, 0x08, 3, 2**31, 2**31, 2**31))
    with pytest.raises(IDXFormatError, match=f"truncated: .* {16 + 2**93} bytes"):
        read_idx(path)


def test_damaged_prepared_tfds_is_named_not_reported_missing(tmp_path):
    written_tfds(tmp_path / "tfds", "fashion_mnist", num_examples=30)
    folder = tmp_path / "tfds" / "fashion_mnist"
    shard, = folder.glob("*/fashion_mnist-test.tfrecord*")
    shard.unlink()
    with pytest.raises(DamagedDataError, match=r"incomplete or damaged") as error:
        load_fashion_mnist(holdout_fraction=0.2, data_dir=str(tmp_path / "tfds"))
    assert f"Delete {shard.parent} and prepare it again" in str(error.value)
    assert f"tfds build fashion_mnist --data_dir={tmp_path / 'tfds'}" in str(error.value)


def _write_gzip_bomb(path, header, num_zeros):
    """A gzip file of `header` then `num_zeros` zero bytes, compressed a MiB at a time."""
    with gzip.open(path, "wb") as stream:
        stream.write(header)
        for _ in range(num_zeros >> 20):
            stream.write(bytes(1 << 20))


def test_gzip_is_decompressed_no_further_than_its_header_says(tmp_path):
    # 32 MiB of zeros behind a header of 4 bytes: a 32 KiB file.
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    _write_gzip_bomb(path, struct.pack(">BBBBI", 0, 0, 0x08, 1, 4), 32 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(IDXFormatError) as error:
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(error.value) == (
        f"{path}: longer than its header says: its header gives shape (4,), 12 bytes. "
        "Received: at least 13 bytes.")
    assert peak < 4 << 20


def test_gzip_header_over_the_data_limit_is_refused_before_decompressing(tmp_path, monkeypatch):
    monkeypatch.setattr(idx_format, "MAX_DATA_BYTES", 28 * 28 * 2)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _write_idx(path, np.zeros((3, 28, 28), np.uint8), compress=True)
    with pytest.raises(IDXFormatError, match=(
            r"train-images-idx3-ubyte.gz: its header gives shape \(3, 28, 28\), 2352 bytes of "
            r"data, more than the 1568-byte limit")):
        read_idx(path)
    monkeypatch.setattr(idx_format, "MAX_DATA_BYTES", 28 * 28 * 3)
    assert read_idx(path).shape == (3, 28, 28)  # The limit itself is allowed.


def test_gzip_shorter_than_its_header_gives_the_bytes_it_holds(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(struct.pack(">BBBBI", 0, 0, 0x08, 1, 10) + bytes(7)))
    with pytest.raises(IDXFormatError, match=(
            r"t10k-labels-idx1-ubyte.gz: truncated: its header gives shape \(10,\), 18 bytes. "
            r"Received: 15 bytes.")):
        read_idx(path)


def test_damaged_deflate_data_names_the_file(tmp_path):
    data = bytearray(gzip.compress(_idx_bytes(np.arange(200, dtype=np.uint8))))
    data[12:20] = b"\xff" * 8  # Inside the deflate stream, past gzip's own header.
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(IDXFormatError, match="train-labels-idx1-ubyte.gz: not a readable gzip"):
        read_idx(path)


def test_the_idx_files_and_image_folders_load_without_importing_tfds(zygote):
    # Importing tfds takes about a second: only a tfds set, through `load_tfds`, needs it.
    script = ("import sys\n"
              "import tllm_tf.data.idx_source, tllm_tf.data.folder_source\n"
              "print('BEFORE', 'tensorflow_datasets' in sys.modules)\n"
              "from tllm_tf.data import load_tfds\n"
              "print('AFTER', 'tensorflow_datasets' in sys.modules, load_tfds.__module__)\n")
    result = zygote.run(["-c", script], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BEFORE False" in result.stdout, result.stdout
    assert "AFTER True tllm_tf.data.tfds_source" in result.stdout, result.stdout


def test_the_same_images_in_another_order_give_other_split_digests(tmp_path):
    # Debian's IDX files and a prepared tfds directory hold the images in different orders,
    # so one seed draws other splits from each: the digests tell the two apart.
    same = [tmp_path / "a", tmp_path / "b"]
    for directory in same:
        _write_fashion_mnist(directory)
    digests = [load_fashion_mnist(holdout_fraction=0.2, idx_dir=str(d)).split_digests
               for d in same]
    assert digests[0] == digests[1] and set(digests[0]) == {"train", "held_out", "test"}

    shuffled = tmp_path / "shuffled"
    arrays = list(_write_fashion_mnist(shuffled))
    order = np.random.default_rng(1).permutation(len(arrays[1]))
    arrays[0], arrays[1] = arrays[0][order], arrays[1][order]  # The training images only.
    for stem, array in zip(idx_source.IDX_FILES.values(), arrays):
        _write_idx(shuffled / (stem + ".gz"), array, compress=True)
    other = load_fashion_mnist(holdout_fraction=0.2, idx_dir=str(shuffled)).split_digests
    assert other["train"] != digests[0]["train"] and other["held_out"] != digests[0]["held_out"]
    assert other["test"] == digests[0]["test"]


def test_a_model_of_a_training_subset_is_evaluated_on_its_runs_splits(tmp_path, empty_debian_dir):
    # tools/evaluate.py and tools/report.py take no --num_train: they refused every model of
    # a run with one (the study's), its training split's digest being another.
    from tllm_tf.pipeline import model_origin
    from tllm_tf.pipeline import workdir
    from tllm_tf.pipeline.config import RunConfig

    arrays = list(_write_fashion_mnist(empty_debian_dir))
    config = RunConfig(workdir=str(tmp_path / "run"), dataset="fashion_mnist",
                       holdout_fraction=0.2, num_train=20)
    trained_on = load_dataset("fashion_mnist", holdout_fraction=0.2, num_train=20)
    workdir.claim(config.workdir, config, trained_on.split_digests)
    model_path = str(tmp_path / "run" / "teacher" / "model.keras")
    evaluated = load_dataset("fashion_mnist", holdout_fraction=0.2)
    assert evaluated.split_digests["train"] != trained_on.split_digests["train"]
    for split in ("test", "held_out"):
        model_origin.check_evaluation_images(model_path, evaluated, split, None)

    # The other source's order draws other held-out images: refused, naming the cause.
    order = np.random.default_rng(1).permutation(len(arrays[1]))
    arrays[0], arrays[1] = arrays[0][order], arrays[1][order]
    for stem, array in zip(idx_source.IDX_FILES.values(), arrays):
        _write_idx(empty_debian_dir / (stem + ".gz"), array, compress=True)
    reordered = load_dataset("fashion_mnist", holdout_fraction=0.2)
    with pytest.raises(ValueError, match="copy of --dataset='fashion_mnist' that run read"):
        model_origin.check_evaluation_images(model_path, reordered, "held_out", None)
    model_origin.check_evaluation_images(model_path, reordered, "test", None)


def test_a_teacher_of_more_training_images_is_taken_and_one_of_the_other_source_refused(
        tmp_path, empty_debian_dir):
    # The study's teachers learn from --teacher_num_train images and its students from
    # --num_train: the teacher's training split is another, its held-out split the same
    # (drawn first), so it trained on none of the students' held-out images. Every study of
    # Fashion-MNIST was refused from 2026-12-07 (87ced25) until this was fixed.
    from tllm_tf.pipeline import model_origin
    from tllm_tf.pipeline import workdir
    from tllm_tf.pipeline.config import RunConfig

    arrays = list(_write_fashion_mnist(empty_debian_dir))
    teacher = RunConfig(workdir=str(tmp_path / "teacher"), dataset="fashion_mnist",
                        holdout_fraction=0.2)
    trained_on = load_dataset("fashion_mnist", holdout_fraction=0.2).split_digests
    workdir.claim(teacher.workdir, teacher, trained_on)
    student = RunConfig(workdir=str(tmp_path / "student"), dataset="fashion_mnist",
                        holdout_fraction=0.2, num_train=20,
                        teacher_path=str(tmp_path / "teacher" / "teacher" / "model.keras"))
    data = load_dataset("fashion_mnist", holdout_fraction=0.2, num_train=20)
    assert data.split_digests["train"] != trained_on["train"]
    model_origin.check_teacher_images(student, data)

    # The other source's order holds out other images: refused, naming the cause.
    order = np.random.default_rng(1).permutation(len(arrays[1]))
    arrays[0], arrays[1] = arrays[0][order], arrays[1][order]
    for stem, array in zip(idx_source.IDX_FILES.values(), arrays):
        _write_idx(empty_debian_dir / (stem + ".gz"), array, compress=True)
    reordered = load_dataset("fashion_mnist", holdout_fraction=0.2, num_train=20)
    with pytest.raises(ValueError) as raised:
        model_origin.check_teacher_images(student, reordered)
    message = str(raised.value)
    assert "held out other images than this run of --dataset='fashion_mnist'" in message
    assert "a prepared tfds directory hold its images in different orders" in message
