"""A run's workdir: its ownership (`config.json`) and its models, written atomically.

A run may be killed at any moment and re-run with the same command, so every
file is either written atomically (`tllm_tf.atomic`) or append-only with its
tail repaired on resume (`checkpointing`). The file names: `workdir_files`.
"""

import contextlib
import fcntl
import filecmp
import json
import os
import re
import shutil

from tllm_tf import atomic
from tllm_tf import callbacks
from tllm_tf import json_checks
from tllm_tf import held_out_predictions as predictions_lib
from tllm_tf.pipeline import config as config_lib
from tllm_tf.pipeline import workdir_files
from tllm_tf.pipeline.workdir_files import CONFIG_FILE
from tllm_tf.pipeline.workdir_files import DATA_FILE

# Fields that may change between runs of one workdir: they choose what to run
# and how fast, not what is computed (a student added to --students trains; those
# already trained stay as they are). The two fallbacks judge a student once it has
# trained, so a change to them applies to the students still to train. A changed
# --teacher_path or --reference_path is a moved file, unless the students began
# with another one that is still there (`_input_file_changes`).
RESUMABLE_CHANGES = frozenset({
    "stage", "students", "method", "verbose", "strategy", "jit_compile", "steps_per_execution",
    "data_dir", "manual_dir", "download", "teacher_path", "reference_path", "cache",
    "deterministic", "refit_fallback", "reference_fallback", "reference_fallback_significance",
})
# Paths a run may find moved when the workdir records what they held (`DATA_FILE`): the
# same images in a moved folder resume; other images are refused by their digests.
_PATHS_CHECKED_BY_CONTENT = ("image_folder", "test_image_folder")
# Why a data set named alike can hold other images, for messages.
OTHER_SOURCE = ("another copy or another source of the data set (Fashion-MNIST's IDX files and "
                "a prepared tfds directory hold its images in different orders, so one seed "
                "draws other splits from each)")
# The splits `DATA_FILE` records a digest of, each a SHA-256 in hex.
_DIGESTED_SPLITS = ("train", "held_out", "test")
_DIGEST = re.compile(r"[0-9a-f]{64}")
# A workdir's config.json is a few kilobytes; anything larger is not one.
MAX_CONFIG_BYTES = 1 << 20
_CONFIG_REMEDY = "Use a new --workdir, or delete that file if the workdir is yours to reuse."
# A data record is a few hundred bytes; anything larger is not one.
_MAX_DATA_FILE_BYTES = 1 << 12
# Fields compared by the schedule they resolve to, not as written: a run made with
# --update_every=1 and one left to the default that looks every epoch of the same fit
# train alike (callbacks.update_schedule).
SCHEDULE_FIELDS = ("warmup_epochs", "update_every")  # In update_schedule's order.
# A stage's folders that it needs only until it finishes.
_TRAINING_ONLY = frozenset({workdir_files.CHECKPOINT_DIR, workdir_files.PREDICTIONS_LOG_DIR})
# What a stage writes atomically into its folder (a kill can leave their temporaries).
_STAGE_FILES = (
    workdir_files.MODEL_FILE, workdir_files.PER_CLASS_FILE, workdir_files.REFERENCE_FILE,
    predictions_lib.PREDICTIONS_FILE, workdir_files.PRIOR_OFFSETS_FILE,
    workdir_files.REFIT_CHECK_FILE, workdir_files.REFERENCE_CHECK_FILE,
    workdir_files.MODEL_BEFORE_REFIT_CHECK_FILE, workdir_files.MODEL_BEFORE_REFERENCE_CHECK_FILE,
    workdir_files.SAVED_MODEL_DIR)
# The export's temporary folders as versions before 2026-12-06 named them.
_OLD_EXPORT_TEMPORARY = re.compile(
    re.escape(workdir_files.SAVED_MODEL_DIR) + r"\.(tmp|old)-[a-z0-9_]{8}")


def save_model(model, path):
    """Saves a `.keras` file atomically: a new file beside it, then renamed over it.

    A link planted at `path`, or at a name the save could guess, is replaced,
    never written through.
    """
    with atomic.atomic_path(path, suffix=".keras") as temporary:
        model.save(temporary)


def remove_leftovers(stage_dir, finished, final_files=_STAGE_FILES):
    """Removes from a stage's folder what a killed run can leave there.

    The temporaries of its files' atomic writes and SavedModel exports
    (`atomic.is_temporary`; the previous version's export folders too), and,
    once the stage has finished, the folders it needs only while it trains:
    its checkpoint and the reference's per-epoch predictions (a kill after
    the stage's last file, before they were dropped, leaves them).

    Args:
        stage_dir: the stage's folder; nothing is done if it does not exist.
        finished: whether the stage has written its last file.
        final_files: the files whose temporaries are removed. Defaults to a
            stage's; `claim` passes the workdir's own.
    """
    if not os.path.isdir(stage_dir):
        return
    for name in os.listdir(stage_dir):
        temporary = (any(atomic.is_temporary(name, final) for final in final_files)
                     or _OLD_EXPORT_TEMPORARY.fullmatch(name))
        if temporary or (finished and name in _TRAINING_ONLY):
            path = os.path.join(stage_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)


def config_differences(workdir, config, split_digests=None):
    """The flags that a finished or started run in `workdir` had set otherwise than `config`.

    Args:
        workdir: a run's workdir.
        config: the `RunConfig` it would be run with now.
        split_digests: the `DataSplits.split_digests` of `config`'s data, for a
            caller that compares them with the workdir's record (`claim`):
            then an image folder that moved is not named where the workdir
            records digests. Defaults to `None` (every path compared).

    Returns:
        One line per differing flag (`--name: old in the workdir, new now`), the
        `RESUMABLE_CHANGES` and the workdir itself left out, and `SCHEDULE_FIELDS`
        named only when the schedule they resolve to differs; empty when they
        agree or the workdir holds no run.

    Raises:
        ValueError: if the workdir's `config.json` or `data.json` cannot be read.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return []
    previous = read_config(path)
    moved = ()
    if split_digests and recorded_split_digests(workdir):
        # Set in both runs, to other paths; a folder given or left out is a flag change.
        moved = [name for name in _PATHS_CHECKED_BY_CONTENT
                 if getattr(previous, name) and getattr(config, name)]
    return [
        f"--{name}: {getattr(previous, name)!r} in the workdir, {getattr(config, name)!r} now"
        for name in config_lib.RunConfig.__dataclass_fields__
        if name not in RESUMABLE_CHANGES and name != "workdir" and name not in moved
        and _differs(previous, config, name)
    ] + _input_file_changes(workdir, previous, config)


def recorded_split_digests(workdir):
    """The split digests a run in `workdir` recorded (`DataSplits.split_digests`).

    Args:
        workdir: a run's workdir (this run's, or a teacher's from elsewhere).

    Returns:
        `{"train": ..., "held_out": ..., "test": ...}`, or None where the
        workdir records none (its data set is not an image folder, or its run
        predates the record).

    Raises:
        ValueError: naming the file, if its `data.json` is not one a run
            wrote (not a small regular file of JSON, or other keys or
            values than three SHA-256 hex digests).
    """
    path = os.path.join(workdir, DATA_FILE)
    if not os.path.lexists(path):
        return None
    remedy = ("Delete it if the workdir is yours: its images are then compared by their "
              "flags alone, and its next run records them again.")
    record = json_checks.read_json(
        path, _MAX_DATA_FILE_BYTES, kind="data record",
        missing_message=f"{path!r} went missing while it was read.", remedy=remedy)
    digests = record.get("split_digests") if isinstance(record, dict) else None
    if not (isinstance(digests, dict) and set(digests) == set(_DIGESTED_SPLITS)
            and all(isinstance(value, str) and _DIGEST.fullmatch(value)
                    for value in digests.values())):
        raise ValueError(
            f"{path!r} is not a data record a run wrote: it must hold split_digests, a "
            f"SHA-256 hex digest for each of {', '.join(_DIGESTED_SPLITS)}. {remedy}")
    return digests


def changed_splits(recorded, digests, splits=_DIGESTED_SPLITS):
    """The splits whose files differ between two records of split digests.

    Args:
        recorded: a workdir's `recorded_split_digests`, or None.
        digests: this run's `DataSplits.split_digests`, or None.
        splits: the split names compared. Defaults to all three.

    Returns:
        The names of `splits` whose digests differ; empty where either is None.
    """
    if not recorded or not digests:
        return []
    return [name for name in splits if recorded[name] != digests[name]]


def images_named_by(config):
    """The flags that name a run's images, for messages: its folders, else its data set."""
    folders = [f"--{name}={getattr(config, name)!r}" for name in _PATHS_CHECKED_BY_CONTENT
               if getattr(config, name)]
    return " and ".join(folders) or f"--dataset={config.dataset!r}"


def splits_text(names):
    """`["train", "held_out", "test"]` -> `"the train, held-out and test splits"`."""
    words = [name.replace("_", "-") for name in names]
    listed = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return f"the {listed} split{'s' if len(words) > 1 else ''}"


def read_config(path):
    """The `RunConfig` of a workdir's `config.json`.

    Raises:
        ValueError: naming the file and the fix, if it cannot be read as one
            (a FIFO, a device or a file over `MAX_CONFIG_BYTES` is refused
            unread).
    """
    try:
        text = json_checks.read_capped(
            path, MAX_CONFIG_BYTES, kind="run configuration", remedy=_CONFIG_REMEDY)
    except OSError as error:
        raise ValueError(_unreadable_config(path, error)) from None
    try:
        return config_lib.RunConfig.from_json(text)
    except (ValueError, TypeError, KeyError, RecursionError) as error:
        raise ValueError(_unreadable_config(path, error)) from None


def _unreadable_config(path, error):
    return f"{path!r} is not a readable configuration ({error}). {_CONFIG_REMEDY}"


def _input_file_changes(workdir, previous, config):
    """The teacher or reference file swapped under students that began with another.

    A path may change because the files moved (a study root renamed, a copy
    from a cluster): that is resumable. But when a student stage has begun
    and the file it began with is still there and differs from the new one,
    the students of one workdir would learn from two teachers, or be judged
    against two references, and the report would compare them as one run.
    """
    if not _students_began(workdir):
        return []
    changes = []
    for name, stage, file_name in (
            ("teacher_path", workdir_files.TEACHER_STAGE, workdir_files.MODEL_FILE),
            ("reference_path", workdir_files.REFERENCE_STAGE, workdir_files.REFERENCE_FILE)):
        before = getattr(previous, name) or os.path.join(workdir, stage, file_name)
        now = getattr(config, name) or os.path.join(workdir, stage, file_name)
        if (os.path.isfile(before) and os.path.abspath(before) != os.path.abspath(now)
                and not (os.path.isfile(now) and filecmp.cmp(before, now, shallow=False))):
            changes.append(
                f"--{name}: {getattr(previous, name)!r} in the workdir (still there, and "
                f"another file than {getattr(config, name)!r} now): the students already "
                "trained here began with the first")
    return changes


def _another_teacher(workdir, config):
    """Why a run of `config` would train a teacher of its own for students that began in
    `workdir` with another, or None: the teacher they had is not there."""
    if config.teacher_path or not _students_began(workdir):
        return None
    previous = os.path.join(workdir, CONFIG_FILE)
    given = read_config(previous).teacher_path if os.path.exists(previous) else None
    if given:  # Moved, or it would be a change `_input_file_changes` names.
        return (f"The students in {workdir!r} began with --teacher_path={given!r} and this run "
                "gives none (give it again, at its new path if it moved)")
    stage_dir = os.path.join(workdir, workdir_files.TEACHER_STAGE)
    for name in (workdir_files.MODEL_FILE, workdir_files.PER_CLASS_FILE):
        if not os.path.isfile(os.path.join(stage_dir, name)):
            return (f"{os.path.join(stage_dir, name)} is missing, but the students in "
                    f"{workdir!r} began with the teacher there")
    return None


def _students_began(workdir):
    return any(os.path.isdir(os.path.join(workdir, workdir_files.student_stage(student)))
               for student in config_lib.STUDENTS)


def _differs(previous, config, name):
    written_otherwise = getattr(previous, name) != getattr(config, name)
    if name in SCHEDULE_FIELDS and written_otherwise:
        # Written alike but resolving otherwise can only come from --epochs, named itself.
        index = SCHEDULE_FIELDS.index(name)
        return _schedule(previous)[index] != _schedule(config)[index]
    return written_otherwise


def _schedule(config):
    return callbacks.update_schedule(config.epochs, config.warmup_epochs, config.update_every)


@contextlib.contextmanager
def locked(workdir, lock=True):
    """Holds an exclusive lock on `workdir` for the block; refuses it if another process holds one.

    Two processes on one workdir (two study processes given the same seeds, or
    the same command started twice) would append to the same logs and
    results and interleave their checkpoints. The lock is `fcntl.flock` on a
    hidden file beside the workdir, `.<name>.lock` (beside its real path, so
    that a link to the workdir locks the same file), released when the block
    ends or the process dies; it is removed when the workdir does not exist
    after the block (a run refused before training).

    Args:
        workdir: the run's workdir.
        lock: whether this process locks (the chief of a multi-worker run;
            the other workers write nothing). Defaults to `True`.

    Yields:
        Nothing. A lock file that cannot be made (a parent that is a file,
        say) is skipped: the checks before training name what is wrong.

    Raises:
        ValueError: if another process holds the lock, or the lock file is a
            symbolic link (even a dangling one: it would create a file where
            it points), a FIFO (it would wait for a reader) or a device
            (`atomic.open_in_place`).
    """
    path = os.path.realpath(workdir)
    lock_path = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")
    handle = None
    if lock:
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            handle = atomic.open_in_place(lock_path, kind="workdir lock")
    if handle is None:
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"{workdir} is in use by another process (it holds {lock_path}): two "
                "processes on one workdir would interleave their files. Wait for it to end, "
                "or use another --workdir (a study: give each process other --seeds)."
            ) from None
        try:
            yield
        finally:
            if not os.path.exists(path):
                with contextlib.suppress(OSError):
                    os.remove(lock_path)


@contextlib.contextmanager
def removed_if_refused(workdir, remove=True):
    """Removes a workdir the block created when the block refuses the run.

    A run refused by its checks (a flag out of range for the data, an unknown
    data set, a missing reference) should leave no trace: otherwise an empty
    workdir, or one holding only the `config.json` of a run that never
    trained, is left behind, and claims the next run of other flags.

    Args:
        workdir: the run's workdir.
        remove: whether this process removes it (the chief, in a multi-worker
            run). Defaults to `True`.

    Yields:
        Nothing. On a `ValueError` inside the block, a workdir that did not
        exist before it and holds nothing but what `claim` writes is removed,
        then the error propagates. A workdir that existed is never touched.
    """
    existed = os.path.exists(workdir)
    try:
        yield
    except ValueError:
        if remove and not existed:
            with contextlib.suppress(OSError):
                if set(os.listdir(workdir)) <= {CONFIG_FILE, DATA_FILE}:
                    for name in (CONFIG_FILE, DATA_FILE):
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(os.path.join(workdir, name))
                    os.rmdir(workdir)
        raise


def claim(workdir, config, split_digests=None):
    """Writes `config.json`, or checks that the workdir belongs to `config`.

    Args:
        workdir: the run's workdir.
        config: its `RunConfig`.
        split_digests: the data's `DataSplits.split_digests`, recorded in
            `DATA_FILE` and compared with what the workdir recorded before.
            Defaults to `None` (nothing recorded or compared).

    Raises:
        ValueError: if the workdir holds a run of a different configuration,
            naming the flags that differ, or of other images in its image
            folder, or a file of its teacher is gone from under students
            that began with it; nothing is overwritten.
    """
    os.makedirs(workdir, exist_ok=True)
    differences = config_differences(workdir, config, split_digests)
    if differences:
        raise ValueError(
            f"The workdir {workdir!r} belongs to a run with a different "
            "configuration, so it will not be resumed:\n  " + "\n  ".join(differences)
            + "\nUse a new --workdir, or the workdir's flags.")
    # After the flags: another --seed or --holdout_fraction draws other splits of the same files.
    changed = changed_splits(recorded_split_digests(workdir), split_digests)
    if changed:
        if config.image_folder:
            how = ("files of them have been added, removed, moved to another class or "
                   "rewritten with another size")
        else:
            how = f"the images differ: {OTHER_SOURCE}"
        raise ValueError(
            f"The workdir {workdir!r} belongs to a run of other images: since it began, the "
            f"images of {splits_text(changed)} of {images_named_by(config)} have changed "
            f"({how}; their digests in {os.path.join(workdir, DATA_FILE)} differ). Its models "
            "learnt from the images of then, so it will not be resumed: put those images "
            "back, or use a new --workdir.")
    problem = _another_teacher(workdir, config)
    if problem:
        raise ValueError(
            f"{problem}: a teacher trained here would teach the students still to train, and "
            "the report would compare students of two teachers. Put the file back, or delete "
            "the student folders (student_*) to train them again with a new teacher, or use a "
            "new --workdir.")
    # What a run killed as it claimed the workdir left.
    remove_leftovers(workdir, finished=False, final_files=(CONFIG_FILE, DATA_FILE))
    atomic.write_json(os.path.join(workdir, CONFIG_FILE), json.loads(config.to_json()))
    if split_digests:
        atomic.write_json(os.path.join(workdir, DATA_FILE), {"split_digests": split_digests})
