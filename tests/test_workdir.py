import dataclasses
import json
import os

import numpy as np
import pytest

from conftest import within
from tllm_tf.pipeline import workdir
from tllm_tf.pipeline.config import RunConfig


def test_claim_writes_then_accepts_the_same_run_and_resumable_changes(tmp_path):
    config = RunConfig(workdir=str(tmp_path), epochs=5)
    workdir.claim(str(tmp_path), config)
    with open(tmp_path / "config.json") as handle:
        assert json.load(handle)["epochs"] == 5
    workdir.claim(str(tmp_path), RunConfig(workdir=str(tmp_path), epochs=5,
                                           stage="student", verbose=0))
    # A student added to a finished run trains beside those already there (a run of the
    # one-student default of earlier versions gets its refit).
    workdir.claim(str(tmp_path), RunConfig(workdir=str(tmp_path), epochs=5,
                                           students=("distilled", "tllm", "tllm_refit")))
    # The fallbacks judge a student once it has trained: a change applies to those still to train.
    workdir.claim(str(tmp_path), RunConfig(workdir=str(tmp_path), epochs=5,
                                           reference_fallback=False, refit_fallback=False))


def test_claim_refuses_a_workdir_of_another_configuration(tmp_path):
    workdir.claim(str(tmp_path), RunConfig(workdir=str(tmp_path), epochs=5))
    with pytest.raises(ValueError, match=r"--epochs: 5 in the workdir, 6 now(.|\n)*--temperature"):
        workdir.claim(str(tmp_path), RunConfig(workdir=str(tmp_path), epochs=6, temperature=2.0))
    with open(tmp_path / "config.json") as handle:
        assert json.load(handle)["epochs"] == 5


def test_the_schedule_is_compared_as_it_resolves_not_as_it_is_written(tmp_path):
    # Twenty epochs, warm-up 10: the default's ten looks are one an epoch, as --update_every=1.
    workdir.claim(str(tmp_path), RunConfig(workdir=str(tmp_path), epochs=20, update_every=1))
    assert workdir.config_differences(str(tmp_path), RunConfig(
        workdir=str(tmp_path), epochs=20, update_every=None, warmup_epochs=10)) == []
    # Sixty epochs: the default looks every third epoch, so a run made every epoch differs.
    sixty = tmp_path / "sixty"
    workdir.claim(str(sixty), RunConfig(workdir=str(sixty), epochs=60, update_every=1))
    assert workdir.config_differences(str(sixty), RunConfig(workdir=str(sixty), epochs=60)) == [
        "--update_every: 1 in the workdir, None now"]
    assert workdir.config_differences(str(sixty), RunConfig(
        workdir=str(sixty), epochs=60, update_every=3)) == [
        "--update_every: 1 in the workdir, 3 now"]
    # A warm-up written out as the default's half of training is the same warm-up.
    assert workdir.config_differences(str(sixty), RunConfig(
        workdir=str(sixty), epochs=60, update_every=1, warmup_epochs=30)) == []
    # Other epochs: the epochs are named, not the schedule flags written alike.
    assert workdir.config_differences(str(sixty), RunConfig(
        workdir=str(sixty), epochs=40, update_every=1)) == ["--epochs: 60 in the workdir, 40 now"]


def test_claim_refuses_a_corrupt_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable configuration"):
        workdir.claim(str(tmp_path), RunConfig(workdir=str(tmp_path)))


@pytest.mark.parametrize("planted", ["fifo", "dev_zero", "dev_null", "large"])
def test_a_config_that_is_not_a_small_regular_file_is_refused_unread(tmp_path, planted):
    # A FIFO would hang the run, /dev/zero fill its memory (tools/train.py --workdir=...).
    path = tmp_path / "config.json"
    if planted == "fifo":
        os.mkfifo(path)
    elif planted == "large":
        path.write_text(RunConfig(workdir=str(tmp_path)).to_json()[:-1]
                        + ', "pad": "' + "x" * workdir.MAX_CONFIG_BYTES + '"}')
    else:
        path.symlink_to("/dev/zero" if planted == "dev_zero" else "/dev/null")
    problem = "is not a regular file" if planted != "large" else "bytes, more than 1048576"
    planted_inode = os.lstat(path).st_ino
    with within(), pytest.raises(ValueError) as refusal:
        workdir.claim(str(tmp_path), RunConfig(workdir=str(tmp_path)))
    message = str(refusal.value)
    assert message.startswith(f"{str(path)!r} ") and problem in message
    assert message.endswith("Use a new --workdir, or delete that file if the workdir is yours "
                            "to reuse.")
    assert os.lstat(path).st_ino == planted_inode  # Left as it was, not overwritten.


def _refused(path, remove=True, make=()):
    with pytest.raises(ValueError, match="refused"):
        with workdir.removed_if_refused(str(path), remove=remove):
            path.mkdir(exist_ok=True)
            for name in make:
                (path / name).write_text("{}")
            raise ValueError("refused")


def test_a_refused_run_leaves_no_workdir_it_created(tmp_path):
    _refused(tmp_path / "run", make=["config.json"])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("existed, make, remove", [
    (True, ["config.json"], True),     # A workdir that was there before: never touched.
    (False, ["config.json", "teacher"], True),  # Holds more than a config: kept.
    (False, ["config.json"], False),   # Not this process's to remove (a non-chief worker).
])
def test_a_refused_run_keeps_every_workdir_it_may_not_remove(tmp_path, existed, make, remove):
    path = tmp_path / "run"
    if existed:
        path.mkdir()
    _refused(path, remove=remove, make=make)
    assert sorted(p.name for p in path.iterdir()) == sorted(make)


def test_a_run_that_is_not_refused_keeps_its_workdir(tmp_path):
    path = tmp_path / "run"
    with workdir.removed_if_refused(str(path)):
        workdir.claim(str(path), RunConfig(workdir=str(path)))
    assert (path / "config.json").exists()


@pytest.fixture
def two_teachers(tmp_path):
    first, second = tmp_path / "first.keras", tmp_path / "second.keras"
    first.write_bytes(b"the first teacher")
    second.write_bytes(b"another teacher")
    run = tmp_path / "run"
    workdir.claim(str(run), RunConfig(workdir=str(run), teacher_path=str(first)))
    return run, first, second


def test_a_teacher_swapped_under_begun_students_is_refused(two_teachers):
    run, first, second = two_teachers
    (run / "student_kd").mkdir()
    with pytest.raises(ValueError, match=r"--teacher_path: '.*first.keras' in the workdir "
                                         r"\(still there, and another file"):
        workdir.claim(str(run), RunConfig(workdir=str(run), teacher_path=str(second)))
    # Leaving the flag out would train a teacher here: another teacher too.
    with pytest.raises(ValueError, match="--teacher_path"):
        workdir.claim(str(run), RunConfig(workdir=str(run)))


def test_a_moved_or_copied_teacher_and_a_workdir_without_students_resume(two_teachers):
    run, first, second = two_teachers
    # No student has begun: the teacher may still change.
    workdir.claim(str(run), RunConfig(workdir=str(run), teacher_path=str(second)))
    workdir.claim(str(run), RunConfig(workdir=str(run), teacher_path=str(first)))
    (run / "student_tllm").mkdir()
    second.write_bytes(first.read_bytes())  # A byte-for-byte copy elsewhere.
    workdir.claim(str(run), RunConfig(workdir=str(run), teacher_path=str(second)))
    moved = second.rename(second.with_name("moved.keras"))  # The file it began with is gone.
    first.write_bytes(b"yet another teacher")
    workdir.claim(str(run), RunConfig(workdir=str(run), teacher_path=str(moved)))


def test_a_reference_swapped_under_begun_students_is_refused(tmp_path):
    run = tmp_path / "run"
    (run / "reference").mkdir(parents=True)
    (run / "reference" / "reference.json").write_text('{"trained": "here"}')
    other = tmp_path / "other_reference.json"
    other.write_text('{"trained": "elsewhere"}')
    workdir.claim(str(run), RunConfig(workdir=str(run)))
    (run / "student_kd").mkdir()
    with pytest.raises(ValueError, match=r"--reference_path: None in the workdir \(still there"):
        workdir.claim(str(run), RunConfig(workdir=str(run), reference_path=str(other)))


def test_a_workdir_in_use_by_another_process_is_refused(tmp_path):
    run = tmp_path / "run"
    with workdir.locked(run):
        run.mkdir()
        with pytest.raises(ValueError, match="run is in use by another process .*another "
                                             "--workdir"):
            with workdir.locked(run):
                pass
        with workdir.locked(tmp_path / "other"):  # another workdir: its own lock
            pass
    with workdir.locked(run):  # released at the block's end
        pass
    assert (tmp_path / ".run.lock").exists()  # beside a workdir that exists
    assert not (tmp_path / ".other.lock").exists()  # none was made: no trace


@pytest.mark.parametrize("planted", ["dangling_link", "link", "fifo", "folder"])
def test_a_lock_file_that_is_a_link_or_not_a_regular_file_is_refused(tmp_path, planted):
    lock_path, outside = tmp_path / ".run.lock", tmp_path / "outside"
    if planted == "dangling_link":  # Opened through, it would create the file it names.
        lock_path.symlink_to(outside)
    elif planted == "link":
        outside.write_text("precious\n")
        lock_path.symlink_to(outside)
    elif planted == "fifo":  # Opened, it would wait for a reader.
        os.mkfifo(lock_path)
    else:
        lock_path.mkdir()
    problem = ("is a symbolic link .*a workdir lock is written where it is, never through a "
               "link. Remove the link." if "link" in planted else
               "is not a regular file .*not a workdir lock this package wrote.*Remove it.")
    with within(), pytest.raises(ValueError, match=f"{lock_path} {problem}"):
        with workdir.locked(tmp_path / "run"):
            pass
    assert planted != "dangling_link" or not os.path.lexists(outside)
    assert planted != "link" or outside.read_text() == "precious\n"


def test_a_link_to_a_workdir_in_use_is_refused_as_the_workdir_itself(tmp_path):
    # A link to the workdir, or to a folder above it, names the same workdir: two
    # runs through the two names trained one stage at once.
    (tmp_path / "runs" / "run").mkdir(parents=True)
    (tmp_path / "link_to_run").symlink_to(tmp_path / "runs" / "run")
    (tmp_path / "link_to_runs").symlink_to(tmp_path / "runs")
    with workdir.locked(tmp_path / "runs" / "run"):
        for other_name in (tmp_path / "link_to_run", tmp_path / "link_to_runs" / "run"):
            with pytest.raises(ValueError, match="in use by another process"):
                with workdir.locked(other_name):
                    pass


def test_a_stage_run_refuses_a_workdir_another_process_holds(tmp_path):
    from tllm_tf.pipeline import stages
    config = RunConfig(workdir=str(tmp_path / "run"), num_train=100, verbose=0)
    with workdir.locked(config.workdir):
        with pytest.raises(ValueError, match="in use by another process"):
            stages.run(config)
    assert not (tmp_path / "run").exists()


def test_a_model_is_saved_to_a_new_file_and_never_through_a_link(tmp_path):
    import keras
    from tllm_tf import atomic
    precious = tmp_path / "precious.txt"
    precious.write_text("precious\n")
    target = tmp_path / "stage" / "model.keras"
    target.parent.mkdir()
    target.symlink_to(precious)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    workdir.save_model(model, str(target))
    assert precious.read_text() == "precious\n"
    assert not os.path.islink(target)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~atomic.current_umask()
    assert os.listdir(target.parent) == ["model.keras"]  # No temporary file left.
    reloaded = keras.models.load_model(target)
    np.testing.assert_array_equal(reloaded.get_weights()[0], model.get_weights()[0])


def test_a_run_killed_as_it_claimed_leaves_no_temporary_once_claimed_again(tmp_path):
    import tempfile
    from tllm_tf import atomic
    config = RunConfig(workdir=str(tmp_path), epochs=5)
    digests = {"train": "a" * 64, "held_out": "b" * 64, "test": "c" * 64}
    workdir.claim(str(tmp_path), config, digests)
    temporaries = [tempfile.mkstemp(dir=tmp_path, prefix=atomic.temporary_prefix(name),
                                    suffix=".tmp")[1] for name in ("config.json", "data.json")]
    (tmp_path / "notes.txt").write_text("kept")
    workdir.claim(str(tmp_path), config, digests)
    assert not any(os.path.exists(path) for path in temporaries)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "data.json", "notes.txt"]


def test_a_killed_stages_leftovers_are_removed_and_nothing_else(tmp_path):
    import tempfile
    from tllm_tf import atomic
    stage_dir = tmp_path / "student_kd"
    (stage_dir / "checkpoint").mkdir(parents=True)
    (stage_dir / "held_out_predictions").mkdir()
    (stage_dir / "tensorboard").mkdir()
    for name in ("model.keras", "history.csv", "notes.txt", ".hidden_by_the_user",
                 ".notes.20240101.txt"):
        (stage_dir / name).write_text("kept")
    (stage_dir / "saved_model.tmp-ab12cd34").mkdir()  # The previous version's name.
    # What a SIGKILL leaves: atomic writes' temporaries and an export's two folders.
    _, model_temporary = tempfile.mkstemp(
        dir=stage_dir, prefix=atomic.temporary_prefix("model.keras"), suffix=".keras")
    export_temporaries = [tempfile.mkdtemp(dir=stage_dir, suffix=suffix,
                                           prefix=atomic.temporary_prefix("saved_model"))
                          for suffix in (".tmp", ".old")]
    kept = ["checkpoint", "held_out_predictions", "tensorboard", "model.keras",
            "history.csv", "notes.txt", ".hidden_by_the_user", ".notes.20240101.txt"]
    workdir.remove_leftovers(str(stage_dir), finished=False)  # Still training.
    assert not os.path.exists(model_temporary)
    assert not any(os.path.exists(path) for path in export_temporaries)
    assert sorted(os.listdir(stage_dir)) == sorted(kept)
    workdir.remove_leftovers(str(stage_dir), finished=True)  # What only training needs, too.
    assert sorted(os.listdir(stage_dir)) == sorted(kept[2:])
    workdir.remove_leftovers(str(tmp_path / "not_there"), finished=True)


def test_a_teacher_gone_from_under_students_that_began_is_refused(tmp_path):
    run = tmp_path / "run"
    config = RunConfig(workdir=str(run), verbose=0)
    workdir.claim(str(run), config)
    (run / "student_kd").mkdir()  # A student began; the teacher's model.keras is gone.
    with pytest.raises(ValueError, match=(
            r"run/teacher/model.keras is missing, but the students in .* began with the teacher "
            r"there: .*Put the file back, or delete the student folders")):
        workdir.claim(str(run), config)
    (run / "teacher").mkdir()
    (run / "teacher" / "model.keras").write_text("")
    with pytest.raises(ValueError, match=r"run/teacher/test_per_class.json is missing"):
        workdir.claim(str(run), config)  # Not finished: it would train again.
    (run / "teacher" / "test_per_class.json").write_text("{}")
    workdir.claim(str(run), config)


def test_students_that_began_with_a_given_teacher_need_it_given_again(tmp_path):
    run = tmp_path / "run"
    given = tmp_path / "given.keras"
    given.write_text("")
    with_given = RunConfig(workdir=str(run), verbose=0, teacher_path=str(given))
    workdir.claim(str(run), with_given)
    (run / "student_kd").mkdir()
    given.unlink()  # It moved: without the flag this run would train a teacher of its own.
    with pytest.raises(ValueError, match=r"began with --teacher_path='.*given.keras' and this "
                                         r"run gives none \(give it again, at its new path"):
        workdir.claim(str(run), RunConfig(workdir=str(run), verbose=0))
    workdir.claim(str(run), dataclasses.replace(with_given, teacher_path=str(tmp_path / "moved")))


def test_claim_refuses_fashion_mnist_from_another_source_by_its_split_digests(tmp_path):
    # The IDX files and a tfds directory order the images differently: the same flags (and
    # another --data_dir, which a workdir may change) would draw other splits.
    config = RunConfig(workdir=str(tmp_path / "run"), dataset="fashion_mnist", seed=0)
    digests = {"train": "a" * 64, "held_out": "b" * 64, "test": "c" * 64}
    workdir.claim(config.workdir, config, digests)
    workdir.claim(config.workdir, config, digests)  # The same images: resumed.
    other = dataclasses.replace(config, data_dir=str(tmp_path / "tfds"))
    with pytest.raises(ValueError) as raised:
        workdir.claim(config.workdir, other, dict(digests, train="d" * 64, held_out="e" * 64))
    message = str(raised.value)
    assert "the images of the train and held-out splits of --dataset='fashion_mnist'" in message
    assert "a prepared tfds directory hold its images in different orders" in message
