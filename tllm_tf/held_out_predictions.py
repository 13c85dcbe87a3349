"""The reference's per-image results on the held-out split, for the paired rule.

(Over 300 lines: the file's format, its checked reader and the callback that records it
belong together.)

The paired identification rule (`tllm_tf.identification`) compares the
distilled student with the label-only reference image by image, so it needs
to know *which* held-out images the reference classified correctly, after
every epoch for an epoch-matched comparison, and the calibrated rule each
image's calibrated probability of its true class (`tllm_tf.calibration`). `PredictionRecorder` records
that while the reference trains; `save_predictions` / `load_predictions`
keep it in a NumPy `.npz` file (loaded with `allow_pickle=False`: data only)
next to the reference's JSON file.
"""

import dataclasses
import math
import os
import zipfile
import zlib

import keras
import numpy as np

from tllm_tf import atomic
from tllm_tf import calibration
from tllm_tf import identification
from tllm_tf import metrics as metrics_lib

PREDICTIONS_FILE = "held_out_predictions.npz"
# A held-out split of ImageNet's size times a few hundred epochs stays far below this.
MAX_FILE_BYTES = 1 << 30
# The arrays' size once decompressed, read from their headers before they are: a
# held-out split of 100,000 images over 1,000 epochs is 100 MB of `correct` (and 400 MB of
# float32 `scores`: record such a run with fewer epochs between rows, or without scores).
MAX_ARRAY_BYTES = 1 << 28
# The reference stage counts as done while its reference.json (and model and test
# results) exist, so re-running it alone would not rewrite a damaged predictions file.
_REWRITE = ("Delete the reference stage's directory (the one holding this file and "
            "reference.json) and re-run that stage to rewrite both.")


def predictions_path(reference_path):
    """Where the predictions of the reference file `reference_path` live.

    Args:
        reference_path: path of a reference's accuracy file (`reference.json`).

    Returns:
        The path of `PREDICTIONS_FILE` in the same folder.
    """
    return os.path.join(os.path.dirname(os.path.abspath(reference_path)), PREDICTIONS_FILE)


def sibling_predictions(reference_path, rule):
    """The predictions file to read with a reference file: which form of the reference is used.

    Args:
        reference_path: path of a reference's accuracy file (`reference.json`).
        rule: the identification rule, one of `identification.RULES`.

    Returns:
        `predictions_path(reference_path)` where that file exists and the
        rule reads per-image results (the paired rule); otherwise `None` (the
        reference file's per-class accuracies are read instead).
    """
    path = predictions_path(reference_path)
    return (path if identification.reads_per_image_results(rule) and os.path.exists(path)
            else None)


@dataclasses.dataclass(frozen=True)
class ReferencePredictions:
    """Which held-out images the reference got right, after each epoch.

    Attributes:
        labels: int32 `(num_images,)`: the held-out labels, in the order
            the held-out data set yields them.
        correct: bool `(epochs, num_images)`: row `i` after epoch `i + 1`;
            the last row is the finished reference.
        prior_offsets: whether `correct` was judged after the reference's
            prior offsets (`PredictionRecorder(prior_offsets=True)`).
        scores: float32 `(epochs, num_images)`, each image's calibrated
            probability of its true class (`tllm_tf.calibration`), row by
            row as `correct`; `None` in files written before scores were
            recorded (the calibrated rule then refuses them).
    """

    labels: np.ndarray
    correct: np.ndarray
    prior_offsets: bool = False
    scores: np.ndarray = None

    def at_epoch(self, epoch):
        """The reference's per-image correctness after 0-based `epoch`.

        Args:
            epoch: the student's epoch; past the reference's last recorded
                epoch, the last one is used.

        Returns:
            A bool array `(num_images,)`.
        """
        return self.correct[min(epoch, len(self.correct) - 1)]

    def scores_at_epoch(self, epoch):
        """The reference's calibrated scores after 0-based `epoch` (as `at_epoch`).

        Args:
            epoch: the student's epoch; past the reference's last recorded
                epoch, the last one is used.

        Returns:
            A float array `(num_images,)`.
        """
        return self.scores[min(epoch, len(self.scores) - 1)]

    def to_dict(self):
        """The predictions as a JSON-ready dict, read back by `from_dict`.

        Returns:
            `{"labels": [...], "correct": [[0 or 1, ...], ...], "prior_offsets": bool,
            "scores": [[float, ...], ...] or None}`.
        """
        return {"labels": self.labels.tolist(),
                "correct": self.correct.astype(int).tolist(),
                "prior_offsets": self.prior_offsets,
                "scores": None if self.scores is None else self.scores.tolist()}

    @classmethod
    def from_dict(cls, values):
        """The `ReferencePredictions` of a dict written by `to_dict` (after a JSON round trip).

        Args:
            values: the dict.

        Returns:
            A `ReferencePredictions`.
        """
        scores = values.get("scores")
        return cls(labels=np.array(values["labels"], dtype=np.int32),
                   correct=np.array(values["correct"], dtype=bool),
                   prior_offsets=bool(values["prior_offsets"]),
                   scores=None if scores is None else np.array(scores, dtype=np.float32))

    @property
    def final(self):
        """The finished reference's per-image correctness, a bool array `(num_images,)`."""
        return self.correct[-1]

    def check_labels(self, labels, source):
        """Refuses predictions recorded on another held-out split.

        Args:
            labels: the held-out labels of this run, class ids.
            source: where the predictions came from, for the message.

        Raises:
            ValueError: unless `labels` are the held-out labels recorded here,
                in the same order.
        """
        labels = np.asarray(labels)
        if labels.shape != self.labels.shape or not np.array_equal(labels, self.labels):
            how = ("" if labels.shape != self.labels.shape
                   else " with other labels, or in another order")
            raise ValueError(
                f"The reference predictions {source!r} were recorded on another held-out "
                f"split ({self.labels.size} images; this run's has {labels.size}{how}). "
                "Use the reference of this data set, seed and --holdout_fraction "
                "(re-run the reference stage), or compare per class with rule='unpaired'. "
                "A held-out set must give its images in the same order on every pass "
                "(no .shuffle()).")


def save_predictions(path, labels, correct, prior_offsets=False, scores=None):
    """Writes a predictions file atomically.

    Args:
        path: destination `.npz` path.
        labels: int array `(num_images,)`.
        correct: bool array `(epochs, num_images)`.
        prior_offsets: whether `correct` was judged after prior offsets.
            Defaults to `False`.
        scores: float array of `correct`'s shape, the calibrated scores, or
            `None` to write none. Defaults to `None`.

    Raises:
        ValueError: if the shapes disagree.
    """
    labels = np.asarray(labels, dtype=np.int32)
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 2 or correct.shape[1] != labels.shape[0]:
        raise ValueError(
            f"Expected correct of shape (epochs, {labels.shape[0]}). "
            f"Received shape {correct.shape}.")
    arrays = {"labels": labels, "correct": correct,
              "prior_offsets": np.array(bool(prior_offsets))}
    if scores is not None:
        arrays["scores"] = np.asarray(scores, dtype=np.float32)
        if arrays["scores"].shape != correct.shape:
            raise ValueError(f"Expected scores of correct's shape {correct.shape}. "
                             f"Received shape {arrays['scores'].shape}.")
    with atomic.atomic_open(path, "wb") as stream:
        np.savez_compressed(stream, **arrays)


def load_predictions(path):
    """Reads a predictions file written by `save_predictions`.

    Args:
        path: the `.npz` file.

    Returns:
        A `ReferencePredictions`.

    Raises:
        ValueError: if the file is missing, too large (on disk, or its arrays
            once decompressed: more than `MAX_ARRAY_BYTES`), not such a file, or
            inconsistent; the message names the file.
    """
    if not os.path.exists(path):
        raise ValueError(f"Reference predictions not found: {path!r}.")
    if not os.path.isfile(path):  # A FIFO would wait for a writer; a device would never end.
        raise ValueError(
            f"Reference predictions {path!r} are not a regular file; this is not a file "
            f"tllm_tf wrote. {_REWRITE}")
    if os.path.getsize(path) > MAX_FILE_BYTES:
        raise ValueError(
            f"Reference predictions {path!r} are {os.path.getsize(path)} bytes, over the "
            f"{MAX_FILE_BYTES}-byte limit; this is not a file tllm_tf wrote.")
    try:
        with zipfile.ZipFile(path) as archive:
            headers = _array_headers(archive)
            problem = _header_problem(path, headers)
            arrays = None if problem else {name: _read_array(archive, name)
                                           for name in headers}
    except (OSError, ValueError, KeyError, EOFError, RecursionError, zlib.error,
            zipfile.BadZipFile) as error:
        raise ValueError(
            f"{path!r} is not a tllm_tf predictions file ({error}); it may be cut short. "
            f"{_REWRITE}") from None
    if problem:
        raise ValueError(problem)
    labels, correct = arrays["labels"], arrays["correct"]
    # Files written before the flag existed were judged without offsets.
    prior_offsets = bool(arrays.get("prior_offsets", False))
    if labels.size and labels.min() < 0:
        raise ValueError(
            f"Reference predictions {path!r} are inconsistent: labels hold negative class "
            f"ids. {_REWRITE}")
    scores = arrays.get("scores")
    if scores is not None and not np.all((scores >= 0) & (scores <= 1)):
        raise ValueError(
            f"Reference predictions {path!r} are inconsistent: scores outside [0, 1] (or "
            f"NaN). {_REWRITE}")
    return ReferencePredictions(labels=labels.astype(np.int32), correct=correct,
                                prior_offsets=prior_offsets, scores=scores)


def _array_headers(archive):
    """`{name: (shape, dtype)}` of the arrays `load_predictions` reads, from their headers.

    Read from the zip members themselves (not through `np.load`, which would
    return a member without a `.npy` header as raw bytes of any size).
    """
    names = ["labels", "correct"]
    names += [name for name in ("prior_offsets", "scores")
              if f"{name}.npy" in archive.namelist()]
    headers = {}
    for name in names:
        with archive.open(f"{name}.npy") as member:
            version = np.lib.format.read_magic(member)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"{name}.npy has .npy format version {version}")
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(member)
        headers[name] = (shape, dtype)
    return headers


def _header_problem(path, headers):
    """Why arrays of these headers must not be loaded (wrong kind, too large), or `None`."""
    (labels_shape, labels_dtype), (correct_shape, correct_dtype) = (
        headers["labels"], headers["correct"])
    offsets_shape, offsets_dtype = headers.get("prior_offsets", ((), np.dtype(bool)))
    scores_shape, scores_dtype = headers.get("scores", (correct_shape, np.dtype(np.float32)))
    if (len(labels_shape) != 1 or labels_dtype.kind not in "iu" or len(correct_shape) != 2
            or correct_dtype != bool or correct_shape[1] != labels_shape[0]
            or correct_shape[0] < 1 or offsets_shape != () or offsets_dtype != bool
            or scores_shape != correct_shape or scores_dtype.kind != "f"):
        return (f"Reference predictions {path!r} are inconsistent: labels {labels_dtype} "
                f"{labels_shape}, correct {correct_dtype} {correct_shape}, scores "
                f"{scores_dtype} {scores_shape}. {_REWRITE}")
    # Python ints: a huge shape must not overflow.
    num_bytes = sum(math.prod(shape) * dtype.itemsize for shape, dtype in headers.values())
    if num_bytes > MAX_ARRAY_BYTES:
        return (f"Reference predictions {path!r} hold arrays of {num_bytes} bytes once "
                f"decompressed (labels {labels_shape}, correct {correct_shape}), over the "
                f"{MAX_ARRAY_BYTES}-byte limit; this is not a file tllm_tf wrote. {_REWRITE}")
    return None


def _read_array(archive, name):
    with archive.open(f"{name}.npy") as member:
        return np.lib.format.read_array(member, allow_pickle=False)


class PredictionRecorder(keras.callbacks.Callback):
    """Records which held-out images a label-only student gets right, every epoch.

    Add it to the `fit` of the reference student. With each image's
    correctness it records its calibrated score (`tllm_tf.calibration`), for
    `rule="paired_calibrated"`. With `log_dir` each epoch's row is also
    written there as it is measured (`epoch-<e>.npy`), so the epochs of a
    killed run survive it and `read_rows` gathers them back.

    Args:
        validation_data: batched `tf.data.Dataset` of `(x, y)`, or a tuple
            `(x, y)` of arrays: the held-out split of the *training* data,
            in a fixed order.
        num_classes: number of classes.
        path: where to write the predictions file at train end. Defaults to
            `None`.
        log_dir: where to write one row per epoch. Defaults to `None`.
        prior_offsets: record the images the model gets right after its prior
            offsets, fitted on these images each epoch (`tllm_tf.prior_offsets`),
            for a callback judging with `prior_offsets=True`. Defaults to `False`.

    Attributes:
        labels: the held-out labels, after the first epoch.
        rows: `{epoch: bool array}` of the epochs this fit measured.
        score_rows: `{epoch: float array}`, their calibrated scores.
    """

    def __init__(self, validation_data, num_classes, path=None, log_dir=None,
                 prior_offsets=False):
        super().__init__()
        self.prior_offsets = bool(prior_offsets)
        self.validation_data = metrics_lib.as_dataset(validation_data)
        self.num_classes = int(num_classes)
        self.path = path
        self.log_dir = log_dir
        self.labels = None
        self.rows = {}
        self.score_rows = {}
        self._judge = None

    def on_train_begin(self, logs=None):
        self._judge = calibration.PerImageScores(self.model, self.num_classes,
                                                 with_offsets=self.prior_offsets)
        self.rows, self.score_rows = {}, {}

    def on_epoch_end(self, epoch, logs=None):
        correct, labels, scores = self._judge(self.validation_data)
        self.labels = labels
        self.rows[epoch] = correct
        self.score_rows[epoch] = scores
        if self.log_dir:
            with atomic.atomic_open(os.path.join(self.log_dir, f"epoch-{epoch + 1}.npy"),
                                    "wb") as stream:
                # float64 holds the class ids exactly.
                np.save(stream, np.stack([labels, correct, scores]).astype(np.float64))

    def on_train_end(self, logs=None):
        if self.path and self.rows:
            epochs = max(self.rows) + 1
            missing = [e + 1 for e in range(epochs) if e not in self.rows]
            if missing:
                raise ValueError(
                    f"Epochs {missing} were not recorded; write them with log_dir and "
                    "gather them with read_rows.")
            save_predictions(self.path, self.labels,
                             np.stack([self.rows[e] for e in range(epochs)]),
                             prior_offsets=self.prior_offsets,
                             scores=np.stack([self.score_rows[e] for e in range(epochs)]))

    def get_config(self):
        return {"num_classes": self.num_classes, "path": self.path, "log_dir": self.log_dir,
                "prior_offsets": self.prior_offsets}


def read_rows(log_dir, epochs):
    """Gathers the rows a `PredictionRecorder` wrote to `log_dir`.

    Args:
        log_dir: the recorder's `log_dir`.
        epochs: number of epochs expected.

    Returns:
        `(labels, correct, scores)`, or `None` if an epoch's row is missing
        or the rows disagree on the labels; `scores` is `None` where a row
        was written without them (by a version before scores).
    """
    labels, rows, score_rows = None, [], []
    for epoch in range(1, epochs + 1):
        path = os.path.join(log_dir, f"epoch-{epoch}.npy")
        if not os.path.exists(path):
            return None
        if not os.path.isfile(path):  # A FIFO would wait for a writer.
            raise ValueError(
                f"{path!r} is not a regular file, so not a row a PredictionRecorder wrote: "
                "delete it, and train the reference stage again to record it.")
        stacked = np.load(path, allow_pickle=False)
        if labels is None:
            labels = stacked[0]
        elif not np.array_equal(labels, stacked[0]):
            return None
        rows.append(stacked[1].astype(bool))
        score_rows.append(stacked[2] if len(stacked) > 2 else None)
    scores = (None if any(row is None for row in score_rows)
              else np.stack(score_rows).astype(np.float32))
    return labels.astype(np.int32), np.stack(rows), scores
