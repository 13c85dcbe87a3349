"""An image folder's runs tell the same images (moved) from other ones, by the files' digests.

A teacher, a reference and a store of another run, and the workdir resumed, are
taken when their folder holds the same files, wherever it now lies, and refused
when a file was added, removed, relabelled or rewritten: a model that learnt
from other images may have learnt from this run's held-out ones.
"""

import dataclasses
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from tllm_tf import reference as reference_lib
from tllm_tf.data import image_files
from tllm_tf.data.folder_source import load_image_folder
from tllm_tf.pipeline import build
from tllm_tf.pipeline import model_origin
from tllm_tf.pipeline import preflight
from tllm_tf.pipeline import stages
from tllm_tf.pipeline import workdir
from tllm_tf.pipeline.config import RunConfig
from tllm_tf.pipeline.workdir_files import DATA_FILE

CLASSES = ("cat", "dog", "owl")


def _write_png(path, value):
    image = np.full((5, 5, 3), value, np.uint8)
    image[0, 0] = 255
    path.write_bytes(tf.io.encode_png(image).numpy())


def _write_folder(root, per_class=12):
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            _write_png(root / name / f"{index:02d}.png", 20 * label + index)
    return root


def _config(workdir, folder, **overrides):
    values = dict(workdir=str(workdir), dataset="image_folder", image_folder=str(folder),
                  image_size=5, teacher_model="cnn_tiny", student_model="mlp_16",
                  teacher_epochs=1, epochs=1, batch_size=4, holdout_fraction=0.25, verbose=0)
    return RunConfig(**dict(values, **overrides))


def _digests(folder):
    return load_image_folder(str(folder), image_size=5, holdout_fraction=0.25).split_digests


# -- the digests ---------------------------------------------------------------

def test_the_same_files_in_a_moved_folder_give_the_same_digests(tmp_path):
    before = _digests(_write_folder(tmp_path / "pets"))
    shutil.move(str(tmp_path / "pets"), str(tmp_path / "elsewhere"))
    assert _digests(tmp_path / "elsewhere") == before
    assert set(before) == {"train", "held_out", "test"}
    assert len({before["train"], before["held_out"], before["test"]}) == 3


@pytest.mark.parametrize("change", ["added", "removed", "relabelled", "rewritten"])
def test_a_changed_file_changes_the_digests_of_the_splits(tmp_path, change):
    folder = _write_folder(tmp_path / "pets")
    before = _digests(folder)
    if change == "added":
        _write_png(folder / "cat" / "new.png", 7)
    elif change == "removed":
        os.remove(folder / "dog" / "03.png")
    elif change == "relabelled":
        shutil.move(str(folder / "dog" / "03.png"), str(folder / "owl" / "03b.png"))
    else:  # Another image of another size under the same name.
        image = np.zeros((9, 9, 3), np.uint8)
        image[1:4, 2:7] = 200
        (folder / "owl" / "05.png").write_bytes(tf.io.encode_png(image).numpy())
    assert _digests(folder) != before


def test_the_digest_does_not_depend_on_the_order_of_the_files(tmp_path):
    folder = _write_folder(tmp_path / "pets", per_class=3)
    paths, labels = image_files.list_image_files(str(folder), CLASSES)
    order = np.random.default_rng(0).permutation(len(paths))
    assert (image_files.files_digest(str(folder), paths, labels)
            == image_files.files_digest(str(folder), [paths[i] for i in order], labels[order]))


def test_the_digest_is_the_same_however_the_folder_is_written(tmp_path, monkeypatch):
    folder = _write_folder(tmp_path / "pets", per_class=3)
    monkeypatch.chdir(tmp_path)
    digests = set()
    for written in (str(folder), str(folder) + "/", "pets", "./pets/"):
        paths, labels = image_files.list_image_files(written, CLASSES)
        digests.add(image_files.files_digest(written, paths, labels))
        # Paths written otherwise than the folder, as a caller of its own might.
        digests.add(image_files.files_digest(
            written, [os.path.abspath(path) for path in paths], labels))
    assert len(digests) == 1


# -- a run's teacher, reference, store and workdir -----------------------------

@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A teacher trained on an image folder: `(tmp, folder, config)`."""
    tmp = tmp_path_factory.mktemp("teacher_run")
    folder = _write_folder(tmp / "pets")
    config = _config(tmp / "run", folder, stage="teacher")
    stages.run(config)
    return tmp, folder, config


def _moved_copy(teacher_run, name, change=None):
    tmp, folder, _ = teacher_run
    copy = tmp / name
    shutil.copytree(folder, copy)
    if change == "added":
        _write_png(copy / "cat" / "new.png", 7)
    return copy


def test_the_run_records_the_digests_of_its_splits(teacher_run):
    _, folder, config = teacher_run
    with open(os.path.join(config.workdir, DATA_FILE)) as handle:
        assert json.load(handle) == {"split_digests": _digests(folder)}


def test_a_teacher_of_the_same_images_moved_is_taken_and_of_other_images_refused(
        teacher_run, tmp_path):
    _, _, made = teacher_run
    teacher_path = os.path.join(made.workdir, "teacher", "model.keras")
    moved = _moved_copy(teacher_run, "moved_for_teacher")
    config = _config(tmp_path / "same", moved, teacher_path=teacher_path)
    model_origin.check_teacher_images(config, build.load_data(config))

    changed = _moved_copy(teacher_run, "changed_for_teacher", change="added")
    config = _config(tmp_path / "other", changed, teacher_path=teacher_path,
                     students=("distilled",))
    with pytest.raises(ValueError) as raised:
        stages.run(config)
    message = str(raised.value)
    assert "held out other images than this run of --image_folder" in message
    assert "the images of its held-out split (their paths in the folder" in message
    assert DATA_FILE in message
    assert not os.path.exists(config.workdir)  # Refused before anything trained.


def test_a_resumed_workdir_takes_its_folder_moved_and_refuses_it_changed(teacher_run):
    _, _, made = teacher_run
    moved = _moved_copy(teacher_run, "moved_for_resume")
    stages.run(_config(made.workdir, moved, stage="teacher"))  # Done already: nothing trains.

    changed = _moved_copy(teacher_run, "changed_for_resume", change="added")
    with pytest.raises(ValueError) as raised:
        stages.run(_config(made.workdir, changed, stage="teacher"))
    assert "belongs to a run of other images" in str(raised.value)
    assert "the images of the train, held-out and test splits of --image_folder=" in str(raised.value)
    assert "rewritten with another size" in str(raised.value)
    assert "--image_folder=" in str(raised.value)


def test_a_workdir_that_records_no_digests_still_compares_the_folder_path(teacher_run, tmp_path):
    # A run of before the record: its folder, moved, cannot be told from another.
    _, _, made = teacher_run
    old = tmp_path / "old_run"
    shutil.copytree(made.workdir, old)
    os.remove(old / DATA_FILE)
    with open(old / "config.json") as handle:
        folder = json.load(handle)["image_folder"]
    moved = _moved_copy(teacher_run, "moved_for_old_workdir")
    with pytest.raises(ValueError, match="--image_folder: .* in the workdir"):
        stages.run(_config(old, moved, stage="teacher"))
    stages.run(_config(old, folder, stage="teacher"))  # Its own path: resumed, recorded.
    assert os.path.isfile(old / DATA_FILE)


def test_a_reference_of_other_images_is_refused(teacher_run, tmp_path):
    _, folder, _ = teacher_run
    made = _config(tmp_path / "made", folder)
    data = build.load_data(made)
    path = str(tmp_path / "reference.json")
    reference_lib.save_reference(path, np.full(3, 0.5), preflight.held_out_counts(data),
                                 provenance=preflight.reference_provenance(made, data))

    moved = _moved_copy(teacher_run, "moved_for_reference")
    config = _config(tmp_path / "run", moved, reference_path=path)
    preflight.check_reference_origin(config, build.load_data(config))

    changed = _moved_copy(teacher_run, "changed_for_reference", change="added")
    config = _config(tmp_path / "run", changed, reference_path=path)
    with pytest.raises(ValueError, match="train_images: .* in the reference"):
        preflight.check_reference_origin(config, build.load_data(config))


def test_a_store_of_other_images_is_refused(teacher_run, tmp_path):
    _, folder, made = teacher_run
    teacher = keras.models.load_model(os.path.join(made.workdir, "teacher", "model.keras"))
    config = _config(tmp_path / "run", folder, teacher_store=str(tmp_path / "store"))
    data = build.load_data(config)
    build.soft_label_store(config, data, teacher).build(epochs=1)
    assert build.soft_label_store(config, data, teacher).fingerprint["train_images"] == (
        data.split_digests["train"])

    changed = _moved_copy(teacher_run, "changed_for_store", change="added")
    config = _config(tmp_path / "run", changed, teacher_store=str(tmp_path / "store"))
    with pytest.raises(ValueError, match="train_images"):
        build.soft_label_store(config, build.load_data(config), teacher)


def test_a_run_refused_after_its_claim_leaves_no_workdir_behind(teacher_run, tmp_path):
    # The record is written beside config.json; a refusal after the claim removes both.
    _, folder, made = teacher_run
    data = build.load_data(made)
    reference = str(tmp_path / "elsewhere" / "reference.json")
    os.makedirs(os.path.dirname(reference))
    reference_lib.save_reference(reference, np.full(3, 0.5), preflight.held_out_counts(data))
    config = _config(tmp_path / "run", folder, students=("distilled",), reference_path=reference,
                     teacher_path=os.path.join(made.workdir, "teacher", "model.keras"),
                     reference_fallback=True)
    with pytest.raises(ValueError, match="model"):
        stages.run(config)
    assert not os.path.exists(config.workdir)


# -- what the review of the first version found --------------------------------

def test_a_changed_seed_is_named_not_blamed_on_the_files(teacher_run):
    _, _, made = teacher_run
    with open(os.path.join(made.workdir, "config.json")) as handle:
        folder = json.load(handle)["image_folder"]
    with pytest.raises(ValueError) as raised:
        stages.run(_config(made.workdir, folder, stage="teacher", seed=3))
    assert "--seed: 0 in the workdir, 3 now" in str(raised.value)
    assert "other images" not in str(raised.value)


def test_a_test_folder_moves_with_its_files_and_is_refused_changed_or_added(tmp_path):
    train = _write_folder(tmp_path / "pets")
    test = _write_folder(tmp_path / "pets_test", per_class=2)
    made = _config(tmp_path / "run", train, test_image_folder=str(test), stage="teacher")
    stages.run(made)
    shutil.move(str(test), str(tmp_path / "test_moved"))
    stages.run(dataclasses.replace(made, test_image_folder=str(tmp_path / "test_moved")))

    _write_png(tmp_path / "test_moved" / "owl" / "new.png", 9)
    with pytest.raises(ValueError) as raised:
        stages.run(dataclasses.replace(made, test_image_folder=str(tmp_path / "test_moved")))
    assert "the images of the test split of --image_folder=" in str(raised.value)
    with pytest.raises(ValueError, match="--test_image_folder: .* in the workdir, None now"):
        stages.run(dataclasses.replace(made, test_image_folder=None))


def test_a_teacher_of_other_held_out_files_is_refused(teacher_run, tmp_path):
    _, folder, made = teacher_run
    config = _config(tmp_path / "run", folder,
                     teacher_path=os.path.join(made.workdir, "teacher", "model.keras"))
    data = build.load_data(config)
    other = dataclasses.replace(data, split_digests=dict(data.split_digests, held_out="0" * 64))
    with pytest.raises(ValueError, match="the images of its held-out split"):
        model_origin.check_teacher_images(config, other)
    # Other training images (the study's teachers learn from more) are no leak.
    other = dataclasses.replace(data, split_digests=dict(data.split_digests, train="0" * 64))
    model_origin.check_teacher_images(config, other)
    other = dataclasses.replace(data, split_digests=dict(data.split_digests, test="0" * 64))
    model_origin.check_teacher_images(config, other)  # Its test images are not the teacher's.


def test_the_study_still_names_a_moved_folder(teacher_run):
    # The study compares finished runs without loading their data: by the folder's path.
    _, _, made = teacher_run
    moved = dataclasses.replace(made, image_folder="/somewhere/else")
    assert any(line.startswith("--image_folder:")
               for line in workdir.config_differences(made.workdir, moved))


@pytest.mark.parametrize("written", ["fifo", "large", "other_keys", "not_hex", "not_json"])
def test_a_data_record_a_run_did_not_write_is_refused_naming_it(tmp_path, written):
    path = tmp_path / DATA_FILE
    digests = {"train": "a" * 64, "held_out": "b" * 64, "test": "c" * 64}
    if written == "fifo":  # Opened, it would wait for a writer.
        os.mkfifo(path)
    elif written == "large":
        path.write_text(json.dumps({"split_digests": digests, "pad": "x" * 10_000}))
    elif written == "other_keys":
        path.write_text(json.dumps({"split_digests": {"v2_train": "a" * 64}}))
    elif written == "not_hex":
        path.write_text(json.dumps({"split_digests": dict(digests, test="c")}))
    else:
        path.write_text('{"split_digests": ')
    with pytest.raises(ValueError) as raised:
        workdir.recorded_split_digests(str(tmp_path))
    assert str(path) in str(raised.value)
    path.unlink()
    assert workdir.recorded_split_digests(str(tmp_path)) is None
    path.write_text(json.dumps({"split_digests": digests}))
    assert workdir.recorded_split_digests(str(tmp_path)) == digests


def test_names_written_decomposed_give_the_same_digest(tmp_path):
    # A folder copied from macOS may name "café" as "cafe" and a combining accent.
    digests = []
    for root, accented in ((tmp_path / "composed", "caf\u00e9"),
                           (tmp_path / "decomposed", "cafe\u0301")):
        for name in (accented, "tea"):
            (root / name).mkdir(parents=True)
            _write_png(root / name / f"{accented}.png", 3)
        names = image_files.class_folders(str(root))
        paths, labels = image_files.list_image_files(str(root), names)
        digests.append(image_files.files_digest(str(root), paths, labels))
    assert digests[0] == digests[1]


def test_evaluating_on_other_files_of_the_folder_is_refused(teacher_run, tmp_path, zygote):
    _, _, made = teacher_run
    model = os.path.join(made.workdir, "teacher", "model.keras")
    changed = _moved_copy(teacher_run, "changed_for_evaluation", change="added")
    config = _config(tmp_path / "unused", changed)
    data = build.load_data(config)
    for split, words in (("test", "test"), ("held_out", "held-out")):
        with pytest.raises(ValueError, match=f"Evaluated on its {words} split"):
            model_origin.check_evaluation_images(model, data, split, None)
    # New images as the test folder are any the user chooses.
    model_origin.check_evaluation_images(model, data, "test", str(changed))
    moved = _moved_copy(teacher_run, "moved_for_evaluation")
    model_origin.check_evaluation_images(model, build.load_data(_config(tmp_path, moved)), "test",
                                         None)

    result = zygote.run(
        ("tools/evaluate.py", f"--model_path={model}", "--dataset=image_folder",
         f"--image_folder={changed}", "--image_size=5", "--holdout_fraction=0.25"),
        timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode != 0
    assert "images it trained on may count" in result.stderr


def test_the_tools_evaluate_a_folder_model_on_its_files_moved(teacher_run, zygote):
    # tools/evaluate.py and tools/report.py gave --image_size to the 'none' augmentation,
    # which refused it: a model of an image folder could not be evaluated at all.
    # And they read a folder given as ~/..., as tools/train.py does.
    tmp, _, made = teacher_run
    model = os.path.join(made.workdir, "teacher", "model.keras")
    _moved_copy(teacher_run, "moved_for_the_tool")
    result = zygote.run(
        ("tools/evaluate.py", f"--model_path={model}", "--dataset=image_folder",
         "--image_folder=~/moved_for_the_tool", "--image_size=5", "--holdout_fraction=0.25"),
        timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "HOME": str(tmp)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| **overall** |" in result.stdout


# -- what a new user's walk found ----------------------------------------------

def test_an_image_folder_without_its_data_set_is_refused_not_ignored(tmp_path):
    # It trained on the digits before, recording the folder in config.json.
    with pytest.raises(ValueError, match="--dataset=image_folder"):
        RunConfig(workdir=str(tmp_path), image_folder=str(tmp_path))
    from tllm_tf import data as data_lib
    with pytest.raises(ValueError, match="--dataset=image_folder"):
        data_lib.load_dataset("digits", holdout_fraction=0.2, test_image_folder=str(tmp_path))


def test_a_test_folder_that_is_the_training_folder_or_inside_it_is_refused(tmp_path):
    folder = _write_folder(tmp_path / "pets", per_class=2)
    inside = _write_folder(folder / "test", per_class=2)  # It would be a class of its own.
    beside = _write_folder(tmp_path / "pets_test", per_class=2)
    for test in (str(folder) + "/", str(inside)):
        with pytest.raises(ValueError, match="would also be training images"):
            _config(tmp_path / "run", folder, test_image_folder=test)
    with pytest.raises(ValueError, match="or the reverse"):
        _config(tmp_path / "run", inside, test_image_folder=str(folder))
    _config(tmp_path / "run", folder, test_image_folder=str(beside))


def test_a_workdir_whose_data_set_ignored_its_image_folder_still_reads(tmp_path):
    # Before 2026-12-06 --image_folder without --dataset=image_folder was taken and ignored.
    text = json.dumps(dict(json.loads(RunConfig(workdir=str(tmp_path)).to_json()),
                           image_folder=str(tmp_path / "pets")))
    assert RunConfig.from_json(text).image_folder is None


def test_a_changed_test_folder_setting_is_named_as_such(teacher_run, tmp_path):
    _, folder, made = teacher_run
    test = _write_folder(tmp_path / "pets_test", per_class=2)
    teacher_path = os.path.join(made.workdir, "teacher", "model.keras")
    config = _config(tmp_path / "run", folder, test_image_folder=str(test),
                     teacher_path=teacher_path)
    data = build.load_data(config)
    with pytest.raises(ValueError) as raised:
        model_origin.check_teacher_images(config, data)
    assert "drew its test split from --image_folder (no --test_image_folder)" in str(
        raised.value)
    assert "Give this run the teacher's --test_image_folder setting" in str(raised.value)
    with pytest.raises(ValueError, match="no --test_image_folder"):
        model_origin.check_evaluation_images(teacher_path, data, "held_out", str(test))


def test_images_of_formats_not_read_are_counted_in_a_warning(tmp_path, caplog):
    folder = _write_folder(tmp_path / "pets", per_class=2)
    for index in range(3):
        (folder / "dog" / f"scan{index}.TIFF").write_bytes(b"II*\x00")
    (folder / "owl" / "photo.heic").write_bytes(b"\x00")
    for name in ("notes.txt", "Thumbs.db", "desktop.ini", ".DS_Store"):
        (folder / "owl" / name).write_text("not an image")
    with caplog.at_level("WARNING"):
        paths, _ = image_files.list_image_files(str(folder), CLASSES)
    assert len(paths) == 6
    assert "4 image(s) in the class folders of" in caplog.text
    assert "skipped: .tiff (3), .heic (1)" in caplog.text
    caplog.clear()
    os.remove(folder / "owl" / "photo.heic")
    for index in range(3):
        os.remove(folder / "dog" / f"scan{index}.TIFF")
    with caplog.at_level("WARNING"):
        image_files.list_image_files(str(folder), CLASSES)
    assert "skipped" not in caplog.text  # Other files are no images, and pass without a word.


def test_a_run_without_image_size_says_what_size_it_resizes_to(tmp_path, capsys):
    # 224 for photographs: 28x28 images cost 64 times their pixels, and nothing said so.
    folder = _write_folder(tmp_path / "pets", per_class=4)
    stages.run(_config(tmp_path / "run", folder, image_size=None, stage="teacher", verbose=1))
    assert ("--image_size not given: every image of --image_folder is resized to 224x224"
            in capsys.readouterr().out)
    stages.run(_config(tmp_path / "run5", folder, stage="teacher", verbose=1))
    assert "--image_size not given" not in capsys.readouterr().out
