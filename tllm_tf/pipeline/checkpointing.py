"""Per-epoch checkpoints that a killed run resumes from with nothing lost.

`EpochCheckpoint` writes, at the end of every epoch, the model's weights
(for a `Distiller`: the student, the teacher and the class mask) together with
the optimizer's state (its iteration count, hence the learning-rate schedule's
position, and its slots) to `epoch-<e>.weights.h5`, then renames a small JSON
file naming that epoch and file into place, then deletes the older weights. A
kill at any moment leaves the state file pointing at a complete checkpoint.
`restore` loads it back and returns the epoch to resume from.

Unlike `keras.callbacks.BackupAndRestore`, the epoch is readable *before*
`fit` starts, so the input pipeline can be rebuilt at the right epoch (the
shuffle order of epoch `e` depends only on the seed and `e`).

Resume in one place: `resume` loads the chief's checkpoint on every worker of
a multi-worker run, and `truncate_jsonl` / `truncate_csv_history` cut a
stage's append-only logs back to the checkpointed epoch, so that what a
killed run wrote after its last checkpoint is written once, by the resumed run.
"""

import csv
import io
import json
import os

import keras

from tllm_tf import atomic
from tllm_tf import json_checks
from tllm_tf.pipeline import multi_worker

STATE_FILE = "checkpoint.json"
WEIGHTS_SUFFIX = ".weights.h5"
# The state is two fields (~50 bytes); a bigger file is not one this module wrote.
MAX_STATE_BYTES = 64 * 2**10
_LOG_REMEDY = ("Remove it (the stage writes a new one, without the epochs before), or use a "
               "new --workdir.")


class CheckpointError(ValueError):
    """A checkpoint that exists but cannot be read."""


def _weights_file(epoch):
    return f"epoch-{epoch}{WEIGHTS_SUFFIX}"


def _epoch_of(name):
    """The epoch of the weights file `name` (as `_weights_file` names it), or None."""
    digits = name[len("epoch-"):-len(WEIGHTS_SUFFIX)]
    return int(digits) if digits.isdigit() and _weights_file(int(digits)) == name else None


def _state(epoch):
    """The state file's content that points at epoch `epoch`'s weights."""
    return {"epoch": epoch, "weights": _weights_file(epoch)}


def _check_state(state):
    """The reason `state` is not a checkpoint state this module wrote, or None."""
    if not isinstance(state, dict):
        return f"expected a JSON object, got {type(state).__name__}"
    epoch, weights = state.get("epoch"), state.get("weights")
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0):
        return f"epoch must be a non-negative integer, got {epoch!r:.40}"
    # A plain file name: the state must not point restore at a file outside
    # its directory ("../../teacher/model.keras").
    if not (isinstance(weights, str) and weights.endswith(WEIGHTS_SUFFIX)
            and os.path.basename(weights) == weights and "\\" not in weights
            and "\0" not in weights):
        return (f"weights must be a file name ending in {WEIGHTS_SUFFIX} inside the "
                f"checkpoint directory, got {weights!r:.80}")
    return None


def _read_state(directory):
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        return {"epoch": 0}
    remedy = (f"Delete {directory!r} to restart this stage from scratch; nothing else was "
              f"changed.{_keeping_newest_weights(directory, path)}")
    try:
        # A FIFO or a device is refused unread: the cap alone would not stop a wait on a FIFO.
        text = json_checks.read_capped(
            path, MAX_STATE_BYTES, kind="checkpoint state", remedy=remedy)
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    try:
        state = json.loads(text)
        reason = _check_state(state)
        if reason:
            raise ValueError(reason)
        return {"epoch": state["epoch"], "weights": state["weights"]}
    except (ValueError, RecursionError) as error:
        raise CheckpointError(f"Checkpoint state {path!r} is corrupt ({error}). {remedy}") from None


def _keeping_newest_weights(directory, state_path):
    """The other remedy for a state file that cannot be read: point it at the newest weights.

    The state is written after the weights it names, so the newest weights file is complete
    unless the state was made by hand; `restore` refuses it by name if it is not.
    """
    epochs = [epoch for epoch in map(_epoch_of, os.listdir(directory)) if epoch is not None]
    if not epochs:
        return ""
    epoch = max(epochs)
    return (f" Or, to resume after epoch {epoch}, replace {state_path!r} by a file holding "
            f"{json.dumps(_state(epoch))}.")


def saved_epoch(directory):
    """Returns the number of finished epochs checkpointed in `directory` (0 if none).

    Raises:
        CheckpointError: if the state file is corrupt, or is not a regular file
            (a FIFO, a device) of at most `MAX_STATE_BYTES`.
    """
    return _read_state(directory)["epoch"]


def restore(model, directory):
    """Loads the latest checkpoint of `directory` into a compiled `model`.

    Args:
        model: the compiled `keras.Model` that wrote the checkpoint.
        directory: the checkpoint directory.

    Returns:
        The epoch to resume from (0 when there is no checkpoint).

    Raises:
        CheckpointError: if the checkpoint is corrupt (a state file that is
            not a small regular file of two fields of the right types, or that
            names a file outside `directory`) or does not match `model`.
    """
    state = _read_state(directory)
    if state["epoch"] == 0:
        return 0
    path = os.path.join(directory, state["weights"])
    # Built once only: a second build of a LossScaleOptimizer adds variables,
    # and the checkpoint's optimizer state would then be skipped.
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    try:
        model.load_weights(path)
    except Exception as error:  # h5py and Keras raise many types here.
        raise CheckpointError(
            f"Could not restore checkpoint {path!r}: {error}. If the model or "
            f"its configuration changed, use a new --workdir; to restart this "
            f"stage, delete {directory!r}."
        ) from error
    return state["epoch"]


def resume(model, directory):
    """Loads the chief's checkpoint on every worker; returns the epoch to resume from.

    Args:
        model: the compiled model, built in its distribution strategy's scope.
        directory: the stage's checkpoint directory.
    """
    strategy = model.distribute_strategy
    with strategy.scope():
        # Every worker creates the optimizer's variables, in the same order.
        model.optimizer.build(model.trainable_variables)
    start_epoch = multi_worker.run_on_chief(strategy, lambda: restore(model, directory))
    if start_epoch:
        multi_worker.sync_variables(strategy, model.variables + model.optimizer.variables)
    return start_epoch


def truncate_jsonl(path, last_epoch):
    """Keeps the complete JSON lines of `path` whose `epoch` <= `last_epoch`.

    A resumed run appends from `last_epoch + 1`: what a killed run wrote
    after its last checkpoint, and a line torn by the kill, would otherwise
    leave duplicates or garbage in the history. A line that is not a JSON
    object with an integer `epoch` (or none) is dropped as damaged.

    Raises:
        ValueError: naming the file, if it is a symbolic link (even a
            dangling one), not a regular file, or over `json_checks.MAX_LOG_BYTES`.
    """
    text = _read_log(path)
    if text is None:
        return
    kept = []
    for line in text.split("\n"):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # Torn, not text, or nested too deep.
            continue
        epoch = record.get("epoch", 0) if isinstance(record, dict) else None
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch <= last_epoch:
            kept.append(json.dumps(record) + "\n")
    with atomic.atomic_open(path) as handle:
        handle.writelines(kept)


def truncate_csv_history(path, start_epoch):
    """Keeps the header and the rows of epochs before `start_epoch` (0-based).

    Run before `keras.callbacks.CSVLogger` appends to `path`, which it opens
    through a link: the refusals below keep it from writing outside the stage.

    Raises:
        ValueError: naming the file, if it is a symbolic link (even a
            dangling one), not a regular file, over `json_checks.MAX_LOG_BYTES`
            or not CSV.
    """
    text = _read_log(path)
    if text is None:
        return
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as error:  # A field over csv's size limit, say.
        raise ValueError(f"{path} is not a CSV history ({error}). {_LOG_REMEDY}") from None
    if not rows:
        return
    header, body = rows[0], rows[1:]
    kept = [row for row in body
            if len(row) == len(header) > 0 and row[0].isdecimal() and int(row[0]) < start_epoch]
    if not kept:
        os.remove(path)  # CSVLogger writes a new header.
        return
    with atomic.atomic_open(path) as handle:
        csv.writer(handle).writerows([header] + kept)


def _read_log(path):
    """The text of a log that a resumed stage cuts back and rewrites, or None if there is none.

    A link is refused, not read through: the log would be replaced by a file
    holding what it pointed to, and the stage would then append to that.
    """
    try:
        return json_checks.read_log_text(path, kind="log", remedy=_LOG_REMEDY,
                                         follow_links=False)
    except FileNotFoundError:
        return None


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves weights, optimizer state and the epoch at every epoch end.

    Args:
        directory: where the checkpoint lives.
        write: whether this process writes (False on non-chief workers of a
            multi-worker run). Defaults to `True`.
    """

    def __init__(self, directory, write=True):
        super().__init__()
        self.directory = directory
        self.write = write

    def on_epoch_end(self, epoch, logs=None):
        if not self.write:
            return
        if os.path.islink(self.directory):
            # It deletes its older files: through a link, another folder's.
            raise ValueError(
                f"The checkpoint folder {self.directory} is a symbolic link (to "
                f"{os.readlink(self.directory)!r}): a checkpoint is written, and its older "
                "files deleted, where it is, never through a link. Remove the link.")
        os.makedirs(self.directory, exist_ok=True)
        state = _state(epoch + 1)
        weights = state["weights"]
        # A link planted at the final name is replaced, not written through.
        with atomic.atomic_path(os.path.join(self.directory, weights),
                                suffix=WEIGHTS_SUFFIX) as temporary:
            self.model.save_weights(temporary)
        with atomic.atomic_open(os.path.join(self.directory, STATE_FILE)) as handle:
            json.dump(state, handle)
        for name in os.listdir(self.directory):
            if name.endswith(WEIGHTS_SUFFIX) and name != weights:
                os.remove(os.path.join(self.directory, name))
