"""A teacher's logits on every training view, computed once, read by every student.

(Over 300 lines: one class, whose build, resume and batch-aligned reading share one file
format; where each file lives and whether it is whole is `soft_label_files`.)

Distilling N students from one teacher costs N teacher passes per epoch; a
store costs one, after which a distillation epoch costs about what a
label-only epoch does. The idea is FKD's (Shen and Xing, "A Fast Knowledge
Distillation Framework for Visual Recognition", ECCV 2022), which stores the
teacher's soft labels of each training view, as does ReLabel (Yun et al.,
CVPR 2021) for one view per image.

The training pipeline is seeded per epoch, so epoch `e`'s batches (crops,
flips, MixUp/CutMix mixes) are the same on every run: the store runs the
teacher on exactly those batches and keeps, per view, its top-k logits and
the log-sum-exp of the others (`tllm_tf.data.top_k_logits`). Files, in one
directory:

* `store.json`: the fingerprint (teacher weights' SHA-256, the views'
  description, `top_k`, `dtype`, `num_classes`) and `batches_per_shard`;
* `epoch_EEEEE_part_PPPPP.npz`: `batches_per_shard` consecutive batches of
  epoch `E` (the whole epoch by default): the logits as kept (`np.savez`,
  not zip-compressed: float16 logits barely compress), each
  batch's size and the float64 sum of its images (checked when read, which
  catches another epoch's or another seed's batches, not images reordered
  or mirrored within a batch);
* `epoch_EEEEE.json`: written last; the epoch is complete.

Every file is written atomically, so a killed build leaves whole shards, and
the next `build` continues after them. `build` also checks, cheaply, the
files it keeps (each index against its parts, each part's zip directory)
and rebuilds an epoch whose files are missing or damaged. This module runs
the teacher as it is given; it imports no model or pipeline code. See
docs/soft_label_store.md.
"""

import contextlib
import functools
import hashlib
import json
import logging
import os

import numpy as np
import tensorflow as tf

from tllm_tf import atomic
from tllm_tf.data import soft_label_files
from tllm_tf.data import top_k_logits

STORE_FILE = soft_label_files.STORE_FILE

# Every class, in float16: measured in docs/soft_label_store.md, keeping the
# top 10 of 100 classes moved the KD loss at T=4 by 34%, float16 by 3e-6.
DEFAULT_DTYPE = "float16"
DTYPES = ("float16", "float32")
# A part's most batches where an epoch is one part: no bound.
_ANY_NUMBER = np.iinfo(np.int64).max
_OWN_KEYS = ("teacher_sha256", "num_classes", "top_k", "dtype", "batches_per_shard")

def teacher_sha256(teacher):
    """SHA-256 of a Keras model's weights (shapes, dtypes and values, in order).

    Args:
        teacher: a Keras model or layer.

    Returns:
        A hex string.
    """
    digest = hashlib.sha256()
    for weight in teacher.weights:
        value = np.asarray(weight.numpy())
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


class SoftLabelStore:
    """The teacher's logits on each epoch's training views, in sharded files.

    Opening a directory that holds a store checks its fingerprint; `build`
    computes the epochs not stored yet; `dataset` and `attach` give batches
    `({"images": images, "teacher_logits": logits}, labels)`, which
    `tllm_tf.Distiller` trains from without running its teacher.

    Args:
        directory: where the store lives; created by `build`.
        teacher: Keras model returning logits; run with `training=False`.
        epoch_views: `epoch -> tf.data.Dataset` of `(images, labels)`
            batches: the training views of that (0-based) epoch, the same on
            every call and on every pass over them, e.g.
            `lambda e: train_batches(data, config, e, e + 1)`
            (`tllm_tf.pipeline.build`; `make_pipeline`'s batches, drawn again
            on each pass, fail under a distribution strategy, whose `fit`
            reads a batch before the pass it trains on). tf.data's seeds
            combine with the global seed: make the views under the same
            `keras.utils.set_random_seed` when building and when reading (a
            mismatch is detected when read).
        num_classes: size of the teacher's logit vectors.
        views_fingerprint: dict of JSON values that determine the views
            (data set name, size and seed, augmentation, MixUp/CutMix,
            batch size, ...); a store built with other values is refused.
        top_k: classes kept per view, `1 <= top_k <= num_classes` (the
            larger values are taken as `num_classes`). `top_k=num_classes`
            with `dtype="float32"` stores the logits exactly. Defaults to
            `None`: every class, `num_classes` (the top k alone cost KD's
            dark knowledge at T=4, see docs/soft_label_store.md), also when
            reopening: a store of another `top_k` is refused, never read as
            if it held every class.
        dtype: `"float16"` or `"float32"`, the dtype of the stored logits.
            Defaults to `None`: the stored value, or `"float16"`.
        batches_per_shard: batches per file, `>= 1`; a killed build loses
            at most one file's work. Recorded with the store: reopening it
            with another value is refused. Defaults to `None`: the stored
            value, or one file per epoch.

    Raises:
        ValueError: on a bad argument, if `directory` holds a store whose
            fingerprint or `batches_per_shard` differs (each differing field
            is named), or if its `store.json` is not a store's record.

    Example:

    >>> store = SoftLabelStore("runs/store", teacher, epoch_views,
    ...                        num_classes=10, views_fingerprint={"seed": 0})
    >>> store.build(epochs=30)
    >>> distiller.fit(store.dataset(epochs=30), epochs=30)
    """

    def __init__(self, directory, teacher, epoch_views, *, num_classes, views_fingerprint,
                 top_k=None, dtype=None, batches_per_shard=None):
        self.directory = str(directory)
        self._files = soft_label_files.StoreFiles(self.directory)
        self.teacher = teacher
        self.epoch_views = epoch_views
        _check_count("num_classes", num_classes)
        self.num_classes = int(num_classes)
        stored = self._files.read_record()
        stored_fingerprint = stored.get("fingerprint", {})
        # `is None`, not falsiness: a 0 is a bad argument, not "the default".
        # Never the stored value: that read a top-k store as every class.
        if top_k is None:
            top_k = self.num_classes
        self.dtype = dtype if dtype is not None else stored_fingerprint.get("dtype", DEFAULT_DTYPE)
        # A store.json without the key predates it: one file per epoch.
        self.batches_per_shard = (batches_per_shard if batches_per_shard is not None
                                  else stored.get("batches_per_shard"))
        _check_arguments(top_k, self.dtype, self.batches_per_shard, views_fingerprint)
        self.top_k = min(int(top_k), self.num_classes)
        # Through JSON, as stored: tuples become lists, keys strings.
        views_fingerprint = json.loads(json.dumps(views_fingerprint))
        self.fingerprint = dict(views_fingerprint, teacher_sha256=teacher_sha256(teacher),
                                num_classes=self.num_classes, top_k=self.top_k, dtype=self.dtype)
        if stored:
            self._check_record(stored)
        self._teacher_pass = None

    def _check_record(self, stored):
        _check_fingerprint(
            self.directory,
            dict(stored["fingerprint"], batches_per_shard=stored.get("batches_per_shard")),
            dict(self.fingerprint, batches_per_shard=self.batches_per_shard))

    # -- building -------------------------------------------------------------

    @property
    def built_epochs(self):
        """Number of complete epochs from epoch 0 on."""
        epoch = 0
        while os.path.exists(self._files.index_path(epoch)):
            epoch += 1
        return epoch

    def build(self, epochs):
        """Stores the teacher's logits of epochs `0 .. epochs - 1` that are missing.

        Continues a killed build after its last complete file. First removes
        the store's temporary files that a killed write left (older than a
        minute), and checks each complete epoch's files cheaply: its index
        against the part files present, each part's zip directory and array
        names (not the arrays' values). An epoch that fails is rebuilt, with
        a logged warning.

        Args:
            epochs: number of epochs the store must hold, `>= 0`.

        Returns:
            The number of batches the teacher ran on (0 if nothing was missing).

        Raises:
            ValueError: if `epochs` is not an integer `>= 0`, if an epoch's
                views are empty, if the teacher's logits are not
                `num_classes` wide, or if the directory's `store.json` is now
                another store's (or missing beside epoch files), as on
                opening.
        """
        _check_count("epochs", epochs, minimum=0)
        self._files.remove_stale_temporaries()
        with _writing(self._files.store_file()):
            self._files.create_record(
                {"fingerprint": self.fingerprint, "batches_per_shard": self.batches_per_shard})
        # Read back: another store opened on this folder may have written it first,
        # or it may have changed since this one was opened.
        self._check_record(self._files.read_record())
        computed = 0
        for epoch in range(epochs):
            if os.path.exists(self._files.index_path(epoch)):
                problem = self._files.epoch_problem(epoch, self._array_names())
                if problem is None:
                    continue
                logging.warning("The soft-label store in %s: epoch %d is damaged (%s); "
                                "rebuilding it.", self.directory, epoch, problem)
                self._files.remove_epoch(epoch)
            computed += self._build_epoch(epoch)
        return computed

    def _build_epoch(self, epoch):
        done = self._files.readable_parts(epoch, self._array_names())
        if done and self.batches_per_shard is None:
            # One file per epoch: a build killed before writing the index
            # left a whole epoch.
            self._write_index(epoch, len(done))
            return 0
        per_shard = self.batches_per_shard or np.inf
        views = self.epoch_views(epoch)
        if done:
            views = views.skip(len(done) * self.batches_per_shard)
        parts, pending, computed = len(done), [], 0
        for images, _ in views:
            pending.append(self._compress(images))
            computed += 1
            if len(pending) >= per_shard:
                self._write_part(epoch, parts, pending)
                parts, pending = parts + 1, []
        if pending:
            self._write_part(epoch, parts, pending)
            parts += 1
        if not parts:
            raise ValueError(
                f"Epoch {epoch}'s training views are empty: epoch_views({epoch}) gave no "
                "batch. Pass an epoch_views function that returns that epoch's batches.")
        self._write_index(epoch, parts)
        return computed

    def _compress(self, images):
        if self._teacher_pass is None:
            top_k, num_classes = self.top_k, self.num_classes
            whole = top_k == num_classes

            @tf.function(reduce_retracing=True)
            def teacher_pass(images):
                logits = tf.cast(self.teacher(images, training=False), tf.float32)
                # Checked while tracing, before the first batch is stored.
                if logits.shape[-1] != num_classes:
                    raise ValueError(
                        f"The teacher gives {logits.shape[-1]} logits per image, but the "
                        f"soft-label store was given num_classes={num_classes}. Pass the "
                        "teacher's number of classes.")
                checksum = tf.reduce_sum(tf.cast(images, tf.float64))
                if whole:
                    # The logits as they are, in class order: nothing to spread.
                    return logits, tf.zeros((0,), tf.int32), tf.zeros((0,)), checksum
                return (*top_k_logits.compress(logits, top_k), checksum)

            self._teacher_pass = teacher_pass
        return [np.asarray(value) for value in self._teacher_pass(images)]

    def _write_part(self, epoch, part, batches):
        top_logits, top_classes, rest, checksums = zip(*batches)
        arrays = dict(
            top_logits=top_k_logits.to_storage(np.concatenate(top_logits), self.dtype),
            batch_sizes=np.array([len(values) for values in top_logits], np.int64),
            image_sums=np.array(checksums, np.float64))
        if self.top_k < self.num_classes:
            arrays.update(
                top_classes=np.concatenate(top_classes).astype(
                    top_k_logits.class_dtype(self.num_classes)),
                rest_logsumexp=top_k_logits.to_storage(np.concatenate(rest), self.dtype))
        path = self._files.part_path(epoch, part)
        with _writing(path), atomic.atomic_open(path, "wb") as stream:
            np.savez(stream, **arrays)

    def _write_index(self, epoch, parts):
        path = self._files.index_path(epoch)
        with _writing(path):
            atomic.write_json(path, {"parts": parts})

    # -- reading --------------------------------------------------------------

    def dataset(self, start_epoch=0, epochs=None):
        """`epoch_views` of epochs `start_epoch .. epochs - 1` with their stored logits.

        Args:
            start_epoch: first epoch (a resumed run's). Defaults to `0`.
            epochs: end epoch, exclusive. Defaults to `None`: every built epoch.

        Returns:
            See `attach`.

        Raises:
            ValueError: see `attach`.
        """
        epochs = self.built_epochs if epochs is None else epochs
        self._check_range(start_epoch, epochs)
        views = [self.epoch_views(epoch) for epoch in range(start_epoch, epochs)]
        return self.attach(functools.reduce(lambda a, b: a.concatenate(b), views),
                           start_epoch, epochs)

    def attach(self, batches, start_epoch=0, epochs=None):
        """Pairs training batches with the stored logits of the same views.

        Args:
            batches: `tf.data.Dataset` of `(images, labels)`: the training
                views of epochs `start_epoch .. epochs - 1`, back to back.
            start_epoch: epoch of the first batch. Defaults to `0`.
            epochs: end epoch, exclusive. Defaults to `None`: every built epoch.

        Returns:
            A `tf.data.Dataset` of `({"images": images, "teacher_logits":
            logits}, labels)`, `logits` float32 `(batch, num_classes)`. A
            batch whose images are not the stored views' (their sum differs)
            stops iteration with an `InvalidArgumentError`; so does a part
            file damaged since `build` checked it, or whose arrays disagree
            (rows against batch sizes, the batches its epoch expects, class
            ids, non-finite logits), naming the file and the problem.

        Raises:
            ValueError: if the store lacks an epoch of the range, or a file
                an epoch's index lists (each named).
        """
        epochs = self.built_epochs if epochs is None else epochs
        self._check_range(start_epoch, epochs)
        paths, batch_counts = [], []
        for epoch in range(start_epoch, epochs):
            listed = self._listed_parts(epoch)
            paths += listed
            batch_counts += [self._batch_counts(part, len(listed)) for part in range(len(listed))]
        stored = tf.data.Dataset.from_tensor_slices((paths, batch_counts)).flat_map(
            self._read_part)
        paired = tf.data.Dataset.zip(batches, stored).map(
            _pair, num_parallel_calls=tf.data.AUTOTUNE)
        if int(batches.cardinality()) >= 0:
            # flat_map hides the length, which Keras's fit uses to size its epoch.
            paired = paired.apply(tf.data.experimental.assert_cardinality(batches.cardinality()))
        return paired.prefetch(tf.data.AUTOTUNE)

    def _check_range(self, start_epoch, epochs):
        built = self.built_epochs
        if not built:
            raise ValueError(
                f"The soft-label store in {self.directory} holds no epoch yet: call "
                "build(epochs) first.")
        if built < epochs:
            raise ValueError(
                f"The soft-label store in {self.directory} holds epochs 0-{built - 1}; epochs "
                f"{start_epoch}-{epochs - 1} were asked for. Call build(epochs={epochs}) "
                "first (it keeps the epochs it has).")
        if not 0 <= start_epoch < epochs:
            raise ValueError("Expected 0 <= start_epoch < epochs. Received: "
                             f"start_epoch={start_epoch!r}, epochs={epochs!r}")

    def _listed_parts(self, epoch):
        parts = self._files.index_parts(epoch)
        paths = [self._files.part_path(epoch, part) for part in range(parts or 0)]
        missing = next((path for path in paths if not os.path.exists(path)), None)
        if parts is None or missing:
            raise ValueError(
                f"The soft-label store's file {missing or self._files.index_path(epoch)} is "
                f"{'missing' if missing else 'damaged'}. Call build (run the same command "
                "again): it recomputes that epoch.")
        return paths

    def _batch_counts(self, part, parts):
        """`[fewest, most]` batches part `part` of an epoch of `parts` parts may hold."""
        if self.batches_per_shard is None:  # One part, the whole epoch.
            return [1, _ANY_NUMBER]
        # Every part but the last holds batches_per_shard; the last, what was left.
        return [1 if part == parts - 1 else self.batches_per_shard, self.batches_per_shard]

    def _read_part(self, path, batch_counts):
        logits, batch_sizes, image_sums = tf.numpy_function(
            self._load_part, [path, batch_counts], (tf.float32, tf.int64, tf.float64),
            stateful=False)
        logits = tf.ensure_shape(logits, (None, self.num_classes))
        batch_sizes = tf.ensure_shape(batch_sizes, (None,))
        return tf.data.Dataset.from_tensor_slices(
            (tf.RaggedTensor.from_row_lengths(logits, batch_sizes), image_sums))

    def _load_part(self, path, batch_counts):
        path = path.decode() if isinstance(path, bytes) else path
        try:
            with np.load(path) as arrays:
                arrays = {name: arrays[name] for name in self._array_names()}
        except soft_label_files.DAMAGED as error:
            raise ValueError(_damaged(path, error)) from error
        problem = self._arrays_problem(arrays, *batch_counts)
        if problem:
            raise ValueError(_damaged(path, problem))
        logits = arrays["top_logits"].astype(np.float32)
        if self.top_k < self.num_classes:
            logits = top_k_logits.reconstruct(
                logits, arrays["top_classes"], arrays["rest_logsumexp"], self.num_classes)
        if not np.all(np.isfinite(logits)):
            raise ValueError(_damaged(path, "a logit is not finite"))
        return (logits, arrays["batch_sizes"].astype(np.int64),
                arrays["image_sums"].astype(np.float64))

    def _arrays_problem(self, arrays, fewest_batches, most_batches):
        """What makes a part's arrays inconsistent with each other or the store, or `None`."""
        top_logits, batch_sizes = arrays["top_logits"], arrays["batch_sizes"]
        rows = len(top_logits)
        if top_logits.ndim != 2 or top_logits.shape[1] != self.top_k:
            return f"its top_logits are {top_logits.shape}, not (rows, {self.top_k})"
        if batch_sizes.ndim != 1 or arrays["image_sums"].shape != batch_sizes.shape:
            return "its batch_sizes and image_sums are not two lists of one length"
        if not fewest_batches <= len(batch_sizes) <= most_batches:
            expected = (f"at least {fewest_batches}" if most_batches == _ANY_NUMBER
                        else f"{fewest_batches}" if most_batches == fewest_batches
                        else f"{fewest_batches} to {most_batches}")
            return f"it holds {len(batch_sizes)} batches, where the epoch expects {expected}"
        if np.any(batch_sizes < 1) or batch_sizes.sum() != rows:
            return f"its {rows} logit rows are not its batch sizes' sum, {batch_sizes.sum()}"
        if self.top_k < self.num_classes:
            top_classes = arrays["top_classes"]
            if (top_classes.shape != top_logits.shape
                    or arrays["rest_logsumexp"].shape != (rows,)):
                return "its top_classes or rest_logsumexp do not match its top_logits' shape"
            classes = top_classes.astype(np.int64)
            if np.any(classes < 0) or np.any(classes >= self.num_classes):
                return f"a class id is not in [0, num_classes={self.num_classes})"
        return None

    # -- files ----------------------------------------------------------------

    def size_on_disk(self):
        """Bytes of the store's files."""
        return self._files.size_on_disk()

    def _array_names(self):
        """The arrays each part file holds."""
        names = {"top_logits", "batch_sizes", "image_sums"}
        if self.top_k < self.num_classes:
            names |= {"top_classes", "rest_logsumexp"}
        return names


@contextlib.contextmanager
def _writing(path):
    """Names `path` in an `OSError` its write raises: a full disk's names no file."""
    try:
        yield
    except OSError as error:
        if error.errno is None:
            raise
        raise OSError(error.errno, f"{error.strerror or error} while writing the "
                      f"soft-label store's file {path}") from error


def _damaged(path, problem):
    return (f"The soft-label store's file {path} is damaged ({problem}). Delete it and "
            "run the same command again: build recomputes its epoch.")


def _pair(batch, stored):
    images, labels = batch
    logits, image_sum = stored
    message = ("The batch's images are not the views the soft-label store was built "
               "from (image sums differ): pass the training batches of the same epochs, "
               "made under the same global seed (keras.utils.set_random_seed) as when the "
               "store was built, since tf.data's seeds combine with it")
    with tf.control_dependencies([
        tf.debugging.assert_equal(tf.shape(images)[0], tf.shape(logits)[0], message=message),
        tf.debugging.assert_near(tf.reduce_sum(tf.cast(images, tf.float64)), image_sum,
                                 rtol=tf.constant(1e-6, tf.float64), message=message),
    ]):
        return {"images": tf.identity(images), "teacher_logits": logits}, labels


def _check_count(name, value, minimum=1):
    if not soft_label_files.is_count(value, minimum):
        raise ValueError(
            f"Expected an integer {name} >= {minimum}. Received: {name}={value!r}")


def _check_arguments(top_k, dtype, batches_per_shard, views_fingerprint):
    _check_count("top_k", top_k)
    if dtype not in DTYPES:
        raise ValueError(f"Expected dtype in {DTYPES}. Received: dtype={dtype!r}")
    if batches_per_shard is not None:
        _check_count("batches_per_shard", batches_per_shard)
    try:
        json.dumps(views_fingerprint)
        is_json = True
    except (TypeError, ValueError):
        is_json = False
    if not is_json or not isinstance(views_fingerprint, dict):
        raise ValueError(
            "Expected views_fingerprint to be a dict of JSON values (data set, seed, "
            "augmentation, batch size, ...) that determine the views. Received: "
            f"views_fingerprint={views_fingerprint!r}")
    clashes = sorted(set(views_fingerprint) & set(_OWN_KEYS))
    if clashes:
        raise ValueError(
            f"views_fingerprint may not set {clashes}: the store fills them in. "
            f"Received: views_fingerprint={views_fingerprint!r}")


def _check_fingerprint(directory, stored, current):
    differences = [
        f"{key}: stored {_shown(key, stored)}, now {_shown(key, current)}"
        for key in sorted(set(stored) | set(current)) if stored.get(key) != current.get(key)]
    if differences:
        raise ValueError(
            f"The soft-label store in {directory} was built for another teacher, other "
            "training views, another compression or another batches_per_shard, so its "
            f"files are not this run's; its fingerprint differs: {'; '.join(differences)}. "
            "Pass another directory to build a store for this run, delete this one to "
            "rebuild it, or use the teacher, data and arguments it was built with.")


def _shown(key, fingerprint):
    """A fingerprint's value of `key` in a message; a `top_k` of every class says so."""
    value = fingerprint.get(key)
    if key == "top_k" and value is not None and value == fingerprint.get("num_classes"):
        return f"{value!r} (every class)"
    return repr(value)
