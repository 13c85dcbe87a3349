import json
import os

import keras
import numpy as np
import pytest

import tllm_tf
from conftest import make_mlp
from conftest import within
from tllm_tf import atomic
from tllm_tf.pipeline import checkpointing
from tllm_tf.pipeline import training_guards


def _distiller():
    keras.utils.set_random_seed(0)
    distiller = tllm_tf.Distiller(make_mlp("student"), make_mlp("teacher"))
    distiller.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    return distiller


def test_checkpoint_restores_weights_optimizer_mask_and_epoch(tiny_data, tmp_path):
    x, y = tiny_data
    directory = str(tmp_path / "checkpoint")
    distiller = _distiller()
    distiller.set_class_mask([1, 0, 1, 1])
    distiller.fit(x, y, batch_size=8, epochs=3, verbose=0,
                  callbacks=[checkpointing.EpochCheckpoint(directory)])
    assert checkpointing.saved_epoch(directory) == 3
    assert sorted(os.listdir(directory)) == ["checkpoint.json", "epoch-3.weights.h5"]

    resumed = _distiller()
    assert checkpointing.restore(resumed, directory) == 3
    assert resumed.undistillable_classes == [1]
    assert int(resumed.optimizer.iterations) == 12
    for a, b in zip(distiller.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(distiller.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_no_checkpoint_means_epoch_zero(tmp_path):
    assert checkpointing.restore(_distiller(), str(tmp_path / "none")) == 0


def test_non_writer_writes_nothing(tiny_data, tmp_path):
    x, y = tiny_data
    directory = str(tmp_path / "checkpoint")
    _distiller().fit(x, y, epochs=1, verbose=0,
                     callbacks=[checkpointing.EpochCheckpoint(directory, write=False)])
    assert not os.path.exists(directory)


@pytest.mark.parametrize("corruption", ["state", "weights"])
def test_corrupt_checkpoint_gets_a_clear_error_and_is_left_alone(tiny_data, tmp_path, corruption):
    x, y = tiny_data
    directory = str(tmp_path / "checkpoint")
    _distiller().fit(x, y, epochs=1, verbose=0, callbacks=[checkpointing.EpochCheckpoint(directory)])
    name = "checkpoint.json" if corruption == "state" else "epoch-1.weights.h5"
    path = os.path.join(directory, name)
    with open(path, "rb") as handle:
        content = handle.read()
    with open(path, "wb") as handle:
        handle.write(content[: len(content) // 3])
    with pytest.raises(checkpointing.CheckpointError, match="Delete|delete") as refusal:
        checkpointing.restore(_distiller(), directory)
    with open(path, "rb") as handle:
        assert handle.read() == content[: len(content) // 3]
    if corruption == "state":
        # The other way out keeps the epoch trained: the state the message gives restores it.
        state = '{"epoch": 1, "weights": "epoch-1.weights.h5"}'
        assert (f"Or, to resume after epoch 1, replace {path!r} by a file holding {state}."
                in str(refusal.value))
        with open(path, "w") as handle:
            handle.write(state)
        assert checkpointing.restore(_distiller(), directory) == 1


@pytest.mark.parametrize("planted", ["fifo", "dev_zero"])
def test_a_state_file_that_is_not_a_regular_file_is_refused_unread(tmp_path, planted):
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    path = directory / checkpointing.STATE_FILE
    if planted == "fifo":  # Its 64 KiB cap would not stop a wait for a writer.
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    with within(), pytest.raises(checkpointing.CheckpointError) as refusal:
        checkpointing.saved_epoch(str(directory))
    assert str(refusal.value) == (
        f"{str(path)!r} is not a regular file (a FIFO, a device or a folder), so it is not a "
        f"checkpoint state this package wrote. Nothing was read. Delete {str(directory)!r} to "
        "restart this stage from scratch; nothing else was changed.")


def test_checkpoint_of_another_model_is_refused(tiny_data, tmp_path):
    x, y = tiny_data
    directory = str(tmp_path / "checkpoint")
    _distiller().fit(x, y, epochs=1, verbose=0, callbacks=[checkpointing.EpochCheckpoint(directory)])
    other = tllm_tf.Distiller(make_mlp("student", width=3), make_mlp("teacher"))
    other.compile(optimizer="sgd")
    with pytest.raises(checkpointing.CheckpointError, match="new --workdir"):
        checkpointing.restore(other, directory)


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_checkpoint(tiny_data, tmp_path):
    x, y = tiny_data
    directory = str(tmp_path / "checkpoint")
    distiller = _distiller()
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0,
                  callbacks=[checkpointing.EpochCheckpoint(directory)])
    weights = np.ones(len(y), np.float32)
    weights[10] = np.nan  # the loss of the second batch becomes NaN
    with pytest.raises(training_guards.NonFiniteLossError, match="epoch 2, step 2"):
        distiller.fit(x, y, sample_weight=weights, batch_size=8, epochs=3, initial_epoch=1,
                      shuffle=False,
                      verbose=0, callbacks=[training_guards.StopOnNonFiniteLoss(),
                                            checkpointing.EpochCheckpoint(directory)])
    with open(os.path.join(directory, "checkpoint.json")) as handle:
        assert json.load(handle)["epoch"] == 1


# -- the logs a resumed stage cuts back to its checkpoint ---------------------------


def test_truncate_jsonl_drops_later_epochs_and_torn_lines(tmp_path):
    path = str(tmp_path / "log.jsonl")
    with open(path, "w") as handle:
        handle.write('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n{"epo')
    checkpointing.truncate_jsonl(path, 2)
    with open(path) as handle:
        assert [json.loads(line)["epoch"] for line in handle] == [1, 2]


def test_truncate_csv_history(tmp_path):
    path = str(tmp_path / "history.csv")
    with open(path, "w") as handle:
        handle.write("epoch,loss\n0,1.0\n1,0.5\n2,0.4\n3,0.")
    checkpointing.truncate_csv_history(path, 2)
    with open(path) as handle:
        assert handle.read().split() == ["epoch,loss", "0,1.0", "1,0.5"]
    checkpointing.truncate_csv_history(path, 0)
    assert not os.path.exists(path)


def test_truncate_jsonl_drops_damaged_lines_of_any_json_type(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"epoch": 1}\n[1, 2]\n"text"\n7\n{"epoch": "1"}\n{"epoch": true}\n'
                     b'\xff\xfe\n' + b"[" * 100_000 + b"\n{}\n{\"epoch\": 2}\n")
    checkpointing.truncate_jsonl(str(path), 1)
    # A line without an epoch is kept, as a line of epoch 0.
    assert path.read_text() == '{"epoch": 1}\n{}\n'


@pytest.mark.parametrize("truncate, name", [
    (lambda path: checkpointing.truncate_jsonl(path, 1), "mask_log.jsonl"),
    (lambda path: checkpointing.truncate_csv_history(path, 1), "history.csv")])
def test_a_log_cut_back_on_resume_is_never_read_or_written_through_a_link(
        tmp_path, truncate, name):
    outside = tmp_path / "outside"
    outside.write_text('epoch,loss\n0,1.0\n{"epoch": 1}\n')
    stage_dir = tmp_path / "stage"
    stage_dir.mkdir()
    for target in (outside, tmp_path / "not_there"):
        log = stage_dir / name
        log.symlink_to(target)
        with pytest.raises(ValueError, match=(
                f"{log}' is a symbolic link .*never through a link. Remove it")):
            truncate(str(log))
        assert os.path.islink(log)  # Not replaced by a file holding the outside file's lines.
        log.unlink()
    assert outside.read_text() == 'epoch,loss\n0,1.0\n{"epoch": 1}\n'
    assert not os.path.lexists(tmp_path / "not_there")
    os.mkfifo(stage_dir / name)
    with within(), pytest.raises(ValueError, match="is not a regular file"):
        truncate(str(stage_dir / name))


def test_truncate_csv_history_refuses_a_file_csv_cannot_read(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,\"" + "x" * 200_000 + "\"\n")
    with pytest.raises(ValueError, match=f"{path} is not a CSV history .*Remove it"):
        checkpointing.truncate_csv_history(str(path), 1)
    path.write_text("\n\n0,1.0\n")  # No header: no row can be kept.
    checkpointing.truncate_csv_history(str(path), 1)
    assert not path.exists()
    path.write_text("epoch,loss\n0,1.0\n\u00b2,0.5\n")  # A digit int() cannot read: damaged.
    checkpointing.truncate_csv_history(str(path), 1)
    assert path.read_text().split() == ["epoch,loss", "0,1.0"]


def test_a_checkpoint_never_writes_or_deletes_through_a_link(tiny_data, tmp_path):
    x, y = tiny_data
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.weights.h5").write_text("precious")
    # A planted link at the name the first epoch saves to: replaced, not written through.
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    (directory / "epoch-1.weights.h5").symlink_to(elsewhere / "precious.weights.h5")
    _distiller().fit(x, y, epochs=1, verbose=0,
                     callbacks=[checkpointing.EpochCheckpoint(str(directory))])
    assert (elsewhere / "precious.weights.h5").read_text() == "precious"
    assert not os.path.islink(directory / "epoch-1.weights.h5")
    mode = os.stat(directory / "epoch-1.weights.h5").st_mode & 0o777
    assert mode == 0o666 & ~atomic.current_umask()
    # A checkpoint folder that is a link would delete the other folder's weights files.
    linked = tmp_path / "linked_checkpoint"
    linked.symlink_to(elsewhere)
    with pytest.raises(ValueError, match="is a symbolic link .*Remove the link"):
        _distiller().fit(x, y, epochs=1, verbose=0,
                         callbacks=[checkpointing.EpochCheckpoint(str(linked))])
    assert sorted(os.listdir(elsewhere)) == ["precious.weights.h5"]
