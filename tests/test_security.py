"""What a run trusts (docs/security.md): model files with code are refused at
every entry point, and the JSON files a run reads back are parsed as data."""

import io
import json
import os
import re
import zipfile

import keras
import numpy as np
import pytest
from keras.src.saving import serialization_lib

import tllm_tf
from conftest import make_mlp
from conftest import within
from tllm_tf.pipeline import checkpointing
from tllm_tf.pipeline import model_io
from tllm_tf import held_out_predictions
from tllm_tf import json_checks
from tllm_tf import reference
from tllm_tf import reference_history
from tllm_tf.pipeline import stage_inputs
from tllm_tf.pipeline import stages
from tllm_tf.pipeline import workdir_files
from tllm_tf.pipeline.config import RunConfig
from tllm_tf.data import load_digits
DIGITS_SHAPE, DIGITS_CLASSES = (8, 8, 1), 10


def _marking(marker):
    """A `lambda` that creates `marker` and doubles its input."""
    return lambda t: (open(marker, "w").close(), t * 2.0)[1]


@pytest.fixture
def planted(tmp_path):
    """A digits classifier whose Lambda layer, when built, creates a marker file.

    Returns `(path, marker)`: if `marker` exists after a load, the file's code ran.
    """
    marker = str(tmp_path / "code_ran")
    inputs = keras.Input(DIGITS_SHAPE)
    flat = keras.layers.Flatten()(inputs)
    # Runs whenever the layer is built: at this construction, and at any load that builds it.
    doubled = keras.layers.Lambda(_marking(marker), name="doubler")(flat)
    path = str(tmp_path / "planted.keras")
    keras.Model(inputs, keras.layers.Dense(DIGITS_CLASSES)(doubled)).save(path)
    os.remove(marker)
    return path, marker


def _assert_refused_naming(message, path):
    assert path in message
    assert "Lambda layer 'doubler'" in message and "Python code" in message


def test_helper_refuses_a_lambda_layer_naming_the_file_and_the_layer(planted):
    path, marker = planted
    with pytest.raises(model_io.UnsafeModelError) as refusal:
        model_io.load_keras_model(path, role="teacher")
    _assert_refused_naming(str(refusal.value), path)
    assert "the teacher" in str(refusal.value)
    assert not os.path.exists(marker)


def test_helper_refuses_even_where_unsafe_deserialization_is_switched_on(planted):
    path, marker = planted
    # What `keras.config.enable_unsafe_deserialization()` does, undone at exit.
    with serialization_lib.SafeModeScope(False):
        # Keras's own safe_mode=True gives way to the process-wide switch ...
        keras.models.load_model(path, compile=False, safe_mode=True)
        assert os.path.exists(marker)
        os.remove(marker)
        # ... the helper does not.
        with pytest.raises(model_io.UnsafeModelError):
            model_io.load_keras_model(path)
    assert not os.path.exists(marker)


def test_helper_loads_models_without_code_and_tllm_custom_objects(tmp_path, seeded):
    plain = make_mlp("plain")
    plain.save(tmp_path / "plain.keras")
    loaded = model_io.load_keras_model(tmp_path / "plain.keras")
    np.testing.assert_array_equal(loaded.get_weights()[0], plain.get_weights()[0])
    distiller = tllm_tf.Distiller(make_mlp("student"), make_mlp("teacher"))
    distiller.save(tmp_path / "distiller.keras")
    assert isinstance(model_io.load_keras_model(tmp_path / "distiller.keras"), tllm_tf.Distiller)


@pytest.mark.slow
def test_helper_loads_a_zoo_model_with_custom_layers_in_a_fresh_process(zygote, tmp_path):
    # ShuffleNet's layers are registered when the zoo is imported, which
    # tools/evaluate.py and tools/export.py do not do themselves.
    from tllm_tf import models

    path = str(tmp_path / "shufflenet.keras")
    models.build_model("shufflenetv1", 4, (32, 32, 3)).save(path)
    script = ("import sys; assert 'tllm_tf.models' not in sys.modules; "
              "from tllm_tf.pipeline import model_io; "
              f"print(model_io.load_keras_model({path!r}).name)")
    # Forked from tests/zygote.py, which has imported TensorFlow and Keras, not the zoo.
    result = zygote.run(["-c", script], timeout=300,
                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]


def test_helper_says_what_is_wrong_with_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(ValueError, match=r"The teacher file .*missing\.keras' does not exist"):
        model_io.load_keras_model(str(tmp_path / "missing.keras"), role="teacher")
    (tmp_path / "weights.h5").write_bytes(b"\x89HDF")
    with pytest.raises(ValueError, match=r"Expected a \.keras file.*weights\.h5"):
        model_io.load_keras_model(str(tmp_path / "weights.h5"))
    (tmp_path / "text.keras").write_text("not a zip")
    with pytest.raises(ValueError, match=r"text\.keras': it is not a Keras model file"):
        model_io.load_keras_model(str(tmp_path / "text.keras"))


def _tool(zygote, *args):
    return zygote.run(args, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


@pytest.mark.slow
def test_export_tool_refuses_it_and_writes_nothing(zygote, planted, tmp_path):
    path, marker = planted
    export_dir = tmp_path / "exported"
    result = _tool(zygote, "tools/export.py", f"--model_path={path}", f"--export_dir={export_dir}")
    assert result.returncode == 1 and "flags:" not in result.stderr  # The message, not the help.
    _assert_refused_naming(result.stderr, path)
    assert "Traceback" not in result.stderr
    assert not os.path.exists(export_dir) and not os.path.exists(marker)
    assert sorted(os.listdir(tmp_path)) == ["planted.keras"]


@pytest.mark.slow
def test_evaluate_tool_refuses_it_and_writes_nothing(zygote, planted, tmp_path):
    path, marker = planted
    result = _tool(zygote, "tools/evaluate.py", f"--model_path={path}", "--dataset=digits",
                   f"--json={tmp_path / 'eval.json'}")
    assert result.returncode == 1 and "flags:" not in result.stderr  # The message, not the help.
    _assert_refused_naming(result.stderr, path)
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["planted.keras"]


def test_teacher_path_refuses_it(planted):
    # Passes once `stage_inputs.load_teacher` loads through `model_io.load_keras_model`.
    path, marker = planted
    with pytest.raises(model_io.UnsafeModelError) as refusal:
        stage_inputs.load_teacher(path, load_digits())
    _assert_refused_naming(str(refusal.value), path)
    assert not os.path.exists(marker)


def test_resume_refuses_a_teacher_planted_in_the_workdir(planted, tmp_path):
    """A resumed run reads back the finished teacher stage's model.keras:
    a file swapped in there is refused before the student stage writes anything.

    The other files a resume reads are data: the checkpoint's weights
    (`load_weights` of an .h5 file into a model built from code, see the
    checkpoint tests below) and JSON files; the finished reference's and
    students' model.keras are only tested for existence.
    """
    path, marker = planted
    workdir = tmp_path / "run"
    os.makedirs(workdir / "teacher")
    os.replace(path, workdir / "teacher" / workdir_files.MODEL_FILE)
    (workdir / "teacher" / workdir_files.PER_CLASS_FILE).write_text("{}")  # Stage finished.
    config = RunConfig(workdir=str(workdir), stage="student", students=("distilled",),
                       num_train=64, batch_size=32, epochs=1, reference_fallback=False,
                       verbose=0)  # No reference: this run is KD alone.
    with pytest.raises(model_io.UnsafeModelError) as refusal:
        stages.run(config)
    _assert_refused_naming(str(refusal.value), str(workdir / "teacher" / workdir_files.MODEL_FILE))
    assert not os.path.exists(marker)
    student_dir = workdir / "student_kd"
    assert not os.path.exists(student_dir) or os.listdir(student_dir) == []


def _checkpointed_distiller(tiny_data, directory):
    x, y = tiny_data
    keras.utils.set_random_seed(0)
    distiller = tllm_tf.Distiller(make_mlp("student"), make_mlp("teacher"))
    distiller.compile(optimizer="sgd")
    distiller.fit(x, y, epochs=1, verbose=0,
                  callbacks=[checkpointing.EpochCheckpoint(directory)])
    return distiller


@pytest.mark.parametrize("state, message", [
    ({"epoch": 1, "weights": "../../teacher/model.keras"}, "weights must be a file name"),
    ({"epoch": 1, "weights": "/etc/epoch-1.weights.h5"}, "weights must be a file name"),
    ({"epoch": 1, "weights": "../epoch-1.weights.h5"}, "weights must be a file name"),
    ({"epoch": 1, "weights": 7}, "weights must be a file name"),
    ({"epoch": -1, "weights": "epoch-1.weights.h5"}, "epoch must be a non-negative integer"),
    ({"epoch": "1", "weights": "epoch-1.weights.h5"}, "epoch must be a non-negative integer"),
    ({"epoch": 1.5, "weights": "epoch-1.weights.h5"}, "epoch must be a non-negative integer"),
    ({"epoch": True, "weights": "epoch-1.weights.h5"}, "epoch must be a non-negative integer"),
    ({"epoch": float("nan"), "weights": "epoch-1.weights.h5"},
     "epoch must be a non-negative integer"),
    ([1, "epoch-1.weights.h5"], "expected a JSON object"),
    ({"epoch": 1, "weights": "epoch-1.weights.h5", "padding": "x" * 70000}, "more than 65536"),
])
def test_hostile_checkpoint_state_is_refused_before_anything_is_loaded(
        tiny_data, tmp_path, planted, state, message):
    directory = str(tmp_path / "checkpoint")
    _checkpointed_distiller(tiny_data, directory)
    # A planted model beside the checkpoint, which a traversal could aim at.
    os.replace(planted[0], tmp_path / "model.keras")
    state_path = os.path.join(directory, checkpointing.STATE_FILE)
    with open(state_path, "w") as handle:
        json.dump(state, handle)
    keras.utils.set_random_seed(1)
    fresh = tllm_tf.Distiller(make_mlp("student"), make_mlp("teacher"))
    fresh.compile(optimizer="sgd")
    before = [np.array(w) for w in fresh.get_weights()]
    with pytest.raises(checkpointing.CheckpointError) as refusal:
        checkpointing.restore(fresh, directory)
    assert state_path in str(refusal.value) and message in str(refusal.value)
    for old, new in zip(before, fresh.get_weights()):
        np.testing.assert_array_equal(old, new)
    with pytest.raises(checkpointing.CheckpointError):
        checkpointing.saved_epoch(directory)


def _write(path, content):
    with open(path, "w") as handle:
        handle.write(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def _record(**fields):
    return {"format": reference.FORMAT, "version": 1, "num_classes": 3,
            "per_class_accuracy": [0.5, None, 1.0], **fields}


@pytest.mark.parametrize("content, message", [
    ([0.5, 0.5], "not a tllm_tf reference file"),
    (_record(version=2), "version=2"),
    (_record(version="1"), "version='1'"),
    (_record(num_classes="3"), "num_classes must be an integer"),
    (_record(num_classes=True), "num_classes must be an integer"),
    (_record(num_classes=10**9), "num_classes must be an integer in [2, 1000000]"),
    (_record(num_classes=1, per_class_accuracy=[1.0]), "num_classes must be an integer"),
    (_record(per_class_accuracy="0.5,0.5,0.5"), "per_class_accuracy must be a list"),
    (_record(per_class_accuracy=[0.5] * 100_000), "per_class_accuracy has 100000 entries"),
    (_record(per_class_accuracy=[0.5, "x", 1.0]), "per_class_accuracy[1] must be an accuracy"),
    (_record(per_class_accuracy=[0.5, 2.0, 1.0]), "per_class_accuracy[1] must be an accuracy"),
    (_record(per_class_accuracy=[0.5, [0.5], 1.0]), "per_class_accuracy[1] must be an accuracy"),
    ('{"format": "tllm_tf.reference", "version": 1, "num_classes": 3, '
     '"per_class_accuracy": [0.5, Infinity, 1.0]}', "per_class_accuracy[1] must be an accuracy"),
    ('{"format": "tllm_tf.reference", "version": 1, "num_classes": 3, '
     '"per_class_accuracy": [0.5, 0.5, 1.0], "num_samples": [4, NaN, 4]}',
     "num_samples[1] must be a non-negative integer count. Received: nan"),
    (_record(num_samples=[4, None, 4]), "num_samples[1] must be a non-negative integer"),
    (_record(num_samples=[4, -1, 4]), "num_samples[1] must be a non-negative integer"),
    (_record(num_samples=[4, 2.5, 4]), "num_samples[1] must be a non-negative integer"),
    (_record(num_samples=[4, 4]), "num_samples must be a list of num_classes=3"),
    (_record(per_epoch_accuracy={"1": [0.5, 0.5, 0.5]}), "per_epoch_accuracy must be a list"),
    (_record(per_epoch_accuracy=[[0.5] * 3, [0.5] * 4]), "per_epoch_accuracy[1] has 4 entries"),
    (_record(per_epoch_accuracy=[[0.5] * 3, [0.5, -0.1, 0.5]]),
     "per_epoch_accuracy[1][1] must be an accuracy"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ('{"format": "tllm_tf.reference", "num_classes": 1' + "0" * 5000 + "}", "not valid JSON"),
])
def test_hostile_reference_file_is_refused_naming_the_file_and_the_field(
        tmp_path, content, message):
    path = _write(tmp_path / "reference.json", content)
    for load in (reference.load_reference, reference.load_reference_history):
        with pytest.raises(ValueError) as refusal:
            load(path)
        assert path in str(refusal.value) and message in str(refusal.value)


def test_reference_file_over_the_size_cap_is_refused_unparsed(tmp_path):
    path = str(tmp_path / "reference.json")
    with open(path, "w") as handle:
        handle.truncate(reference.MAX_FILE_BYTES + 1)  # Sparse: nothing is written.
    with pytest.raises(ValueError, match=f"{reference.MAX_FILE_BYTES + 1} bytes, more than"):
        reference.load_reference(path)


def test_valid_reference_files_still_load(tmp_path):
    # A NaN literal (json.dump of a float NaN) means "no held-out sample", as null does.
    path = _write(tmp_path / "reference.json",
                  '{"format": "tllm_tf.reference", "version": 1, "num_classes": 2, '
                  '"per_class_accuracy": [NaN, 0], "num_samples": [0, 3], '
                  '"per_epoch_accuracy": [[null, 1], [NaN, 0.5]]}')
    np.testing.assert_array_equal(reference.load_reference(path), [np.nan, 0.0])
    np.testing.assert_array_equal(reference.load_reference_history(path),
                                  [[np.nan, 1.0], [np.nan, 0.5]])


def test_history_log_skips_lines_with_a_hostile_epoch(tmp_path):
    path = tmp_path / "per_epoch_accuracy.jsonl"
    lines = [{"epoch": "1", "per_class_accuracy": [0.1, 0.1]},
             {"epoch": 1.5, "per_class_accuracy": [0.2, 0.2]},
             {"epoch": 2, "per_class_accuracy": [0.3, 0.3]},
             {"epoch": 1, "per_class_accuracy": ["x", 0.4]}]
    _write(path, "\n".join(json.dumps(line) for line in lines) + "\n")
    history = reference_history.read_history_log(str(path), 2, 2)
    np.testing.assert_array_equal(history, [[np.nan, np.nan], [0.3, 0.3]])


# Reference predictions: arrays are sized from their headers before they are decompressed.


def _npy_header(dtype, shape):
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        stream, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                 "fortran_order": False, "shape": shape})
    return stream.getvalue()


def _write_npz(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return str(path)


def test_predictions_whose_headers_claim_huge_arrays_are_refused_unread(tmp_path):
    # Headers alone, no data: a 1 GiB int8 labels array and its (1, 2**30) correct.
    path = _write_npz(tmp_path / "held_out_predictions.npz", {
        "labels.npy": _npy_header(np.int8, (2**30,)),
        "correct.npy": _npy_header(bool, (1, 2**30))})
    with pytest.raises(ValueError) as refusal:
        tllm_tf.load_predictions(path)
    assert str(refusal.value).startswith(
        f"Reference predictions {path!r} hold arrays of {2**31} bytes once decompressed "
        f"(labels ({2**30},), correct (1, {2**30})), over the "
        f"{held_out_predictions.MAX_ARRAY_BYTES}-byte limit")


def test_predictions_over_the_array_limit_are_refused(tmp_path, monkeypatch):
    path = str(tmp_path / "held_out_predictions.npz")
    tllm_tf.save_predictions(path, np.arange(100) % 4, np.ones((10, 100), bool))
    monkeypatch.setattr(held_out_predictions, "MAX_ARRAY_BYTES", 1400 - 1)
    with pytest.raises(ValueError, match="hold arrays of 1401 bytes once decompressed"):
        tllm_tf.load_predictions(path)
    monkeypatch.setattr(held_out_predictions, "MAX_ARRAY_BYTES", 1401)
    assert tllm_tf.load_predictions(path).correct.shape == (10, 100)


def test_the_scores_count_towards_the_array_limit(tmp_path, monkeypatch):
    path = str(tmp_path / "held_out_predictions.npz")
    tllm_tf.save_predictions(path, np.arange(100) % 4, np.ones((10, 100), bool),
                             scores=np.full((10, 100), 0.5))
    # 400 bytes of labels, 1,000 of correct and 4,000 of float32 scores.
    monkeypatch.setattr(held_out_predictions, "MAX_ARRAY_BYTES", 5400 - 1)
    with pytest.raises(ValueError, match="hold arrays of 5401 bytes once decompressed"):
        tllm_tf.load_predictions(path)


def test_predictions_with_a_raw_member_in_place_of_an_array_are_refused(tmp_path):
    # np.load would return the member "labels", which has no .npy header, as raw bytes.
    stream = io.BytesIO()
    np.save(stream, np.ones((1, 3), bool))
    path = _write_npz(tmp_path / "held_out_predictions.npz", {
        "labels": bytes(1 << 20), "correct.npy": stream.getvalue()})
    with pytest.raises(ValueError, match=f"{re.escape(repr(path))} is not a tllm_tf predictions"):
        tllm_tf.load_predictions(path)


def test_predictions_of_the_wrong_kind_are_refused_from_their_headers(tmp_path):
    path = _write_npz(tmp_path / "held_out_predictions.npz", {
        "labels.npy": _npy_header(np.int32, (3,)),
        "correct.npy": _npy_header(np.float64, (2**20, 3))})
    with pytest.raises(ValueError, match=r"inconsistent: labels int32 \(3,\), correct float64"):
        tllm_tf.load_predictions(path)


# -- a workdir's files: regular files, of a capped size ------------------------------


def _special_file(tmp_path, kind):
    """A name in `tmp_path` that is a FIFO, a link to a device, or a folder."""
    path = tmp_path / kind
    if kind == "fifo":  # Opened for reading, it would wait for a writer.
        os.mkfifo(path)
    elif kind == "dev_zero":  # Read to its end, it would fill the memory.
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    return str(path)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "folder"])
def test_the_capped_reader_refuses_what_is_not_a_regular_file_unread(tmp_path, kind):
    path = _special_file(tmp_path, kind)
    with within(), pytest.raises(ValueError) as refusal:
        json_checks.read_capped(path, 100, kind="test file", remedy="Delete it.")
    assert str(refusal.value) == (
        f"{path!r} is not a regular file (a FIFO, a device or a folder), so it is not a test "
        "file this package wrote. Nothing was read. Delete it.")


def test_the_capped_reader_refuses_a_larger_file_and_reads_through_links_if_asked(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("0123456789")
    assert json_checks.read_capped(str(path), 10, kind="log", remedy="") == b"0123456789"
    with pytest.raises(ValueError, match="is 10 bytes, more than 9, the most a log may have"):
        json_checks.read_capped(str(path), 9, kind="log", remedy="")
    link, dangling = tmp_path / "link.jsonl", tmp_path / "dangling.jsonl"
    link.symlink_to(path)
    dangling.symlink_to(tmp_path / "not_there")
    assert json_checks.read_capped(str(link), 10, kind="log", remedy="") == b"0123456789"
    with pytest.raises(FileNotFoundError):
        json_checks.read_capped(str(dangling), 10, kind="log", remedy="")
    # A file rewritten in place is refused when it is a link, even a dangling one.
    for name in (link, dangling):
        with pytest.raises(ValueError, match=f"{name}' is a symbolic link .*Remove it."):
            json_checks.read_capped(str(name), 10, kind="log", remedy="Remove it.",
                                    follow_links=False)


@pytest.mark.parametrize("target_exists", [False, True])
def test_a_history_csv_planted_as_a_link_is_refused_before_anything_is_written(
        tmp_path, target_exists):
    # `tools/train.py --workdir=wd` with wd/teacher/history.csv -> /elsewhere/x.csv wrote there.
    from tllm_tf.pipeline import fitting
    outside = tmp_path / "elsewhere.csv"
    if target_exists:
        outside.write_text("precious\n")
    stage_dir = tmp_path / "wd" / "teacher"
    stage_dir.mkdir(parents=True)
    (stage_dir / workdir_files.HISTORY_FILE).symlink_to(outside)
    with pytest.raises(ValueError, match="history.csv' is a symbolic link .*Remove it"):
        fitting.stage_callbacks(str(stage_dir), chief=True, start_epoch=0)
    assert outside.read_text() == "precious\n" if target_exists else not outside.exists()


@pytest.mark.parametrize("planted", ["fifo", "dev_zero"])
def test_the_logs_read_back_refuse_what_is_not_a_regular_file_unread(tmp_path, planted):
    from tllm_tf import mask_log
    for name, read in (
            ("mask_log.jsonl", mask_log.load_mask_history),
            ("per_epoch_accuracy.jsonl", lambda path: reference_history.read_history_log(
                path, 2, 2))):
        path = _special_file(tmp_path, planted)
        with within(), pytest.raises(ValueError, match=(
                f"{path}' is not a regular file .*Nothing was read. Train the .* again")):
            read(path)
        os.remove(path)
