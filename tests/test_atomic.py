"""The one atomic write: old or new content after a failure, strict JSON, and
the permissions a plain `open()` would give."""

import json
import os
import stat

import pytest

from conftest import within
from tllm_tf import atomic


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_file_gets_the_umask_not_owner_only(tmp_path, umask_027):
    path = tmp_path / "config.json"
    atomic.write_json(str(path), {"a": 1})
    assert _mode(path) == 0o640
    with open(tmp_path / "plain.txt", "w") as stream:
        stream.write("x")
    assert _mode(path) == _mode(tmp_path / "plain.txt")


def test_a_failure_inside_the_block_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    atomic.write_json(str(path), {"epoch": 3})
    with pytest.raises(RuntimeError, match="killed"):
        with atomic.atomic_open(str(path)) as stream:
            stream.write('{"epoch": ')
            raise RuntimeError("killed while writing")
    assert json.loads(path.read_text()) == {"epoch": 3}
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_json_is_strict_nan_becomes_null_and_reads_back_as_nan(tmp_path):
    path = tmp_path / "per_class.json"
    atomic.write_json(str(path), {"accuracy": atomic.json_floats([0.5, float("nan")])})
    text = path.read_text()
    assert "NaN" not in text
    values = atomic.floats_from_json(json.loads(text)["accuracy"])
    assert values[0] == 0.5 and values[1] != values[1]


def test_umask_is_read_without_changing_it(umask_027):
    assert atomic.current_umask() == 0o027
    assert atomic.current_umask() == 0o027


def test_check_writable_refuses_what_atomic_open_could_not_write(tmp_path):
    atomic.check_writable(tmp_path / "new" / "result.json")  # a missing folder is made
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="is a directory: name a file"):
        atomic.check_writable(tmp_path / "folder")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="Cannot write .*a_file"):
        atomic.check_writable(tmp_path / "a_file" / "result.json")
    with pytest.raises(ValueError, match="Cannot write '/proc/result.json'"):
        atomic.check_writable("/proc/result.json")


def test_a_log_is_appended_where_it_is_never_through_a_link(tmp_path):
    log = tmp_path / "run" / "mask_log.jsonl"
    atomic.append_line(str(log), '{"epoch": 1}')
    atomic.append_line(str(log), '{"epoch": 2}')
    assert log.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    # A planted link, dangling or not, would make the run write outside its folder.
    outside = tmp_path / "outside.txt"
    for target_exists in (False, True):
        if target_exists:
            outside.write_text("precious\n")
        link = tmp_path / "run" / f"linked_{target_exists}.jsonl"
        link.symlink_to(outside)
        with pytest.raises(ValueError, match="is a symbolic link .*Remove the link"):
            atomic.append_line(str(link), "x")
    assert outside.read_text() == "precious\n"


def test_a_log_that_is_a_fifo_or_a_folder_is_refused_without_waiting(tmp_path):
    fifo, folder = tmp_path / "mask_log.jsonl", tmp_path / "per_epoch_accuracy.jsonl"
    os.mkfifo(fifo)  # Opened for writing, it would wait for a reader.
    folder.mkdir()
    for path in (fifo, folder):
        with within(), pytest.raises(ValueError, match=(
                f"{path} is not a regular file .*not a log this package wrote. Nothing was "
                "written. Remove it.")):
            atomic.append_line(str(path), "x")
    with open(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)):  # A reader holds it open.
        with within(), pytest.raises(ValueError, match="is not a regular file"):
            atomic.append_line(str(fifo), "x")


def test_write_json_without_replace_creates_once_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "store.json"
    atomic.write_json(str(path), {"first": 1}, replace=False)
    with pytest.raises(FileExistsError):
        atomic.write_json(str(path), {"second": 2}, replace=False)
    assert json.loads(path.read_text()) == {"first": 1}
    assert os.listdir(tmp_path) == ["store.json"]
