"""Throughput measurement: images per second of `fit` and of forward passes.

A timer runs warm-up rounds (tracing, XLA compilation, the first pass over a
cached data set), then timed rounds. `interleave` runs several timers in
turn, pass after pass, the order rotated each pass; the variants of one pass,
timed back to back, are a *round group*. On a shared machine the load moves
a variant's speed by 2x within minutes, but mostly alike for variants timed
within seconds of each other, so every ratio is computed inside a group and
the figure is the median of those paired ratios, with its interquartile
range (`paired_summary`, docs/benchmarks.md). Where even a pass is too
long for the load to stay put, the timers can use the process's CPU time
instead of the wall clock (`CLOCKS`): the work done, which the neighbours'
load changes far less than the time it takes. Used by
`tools/bench_throughput.py`.
"""

import dataclasses
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

# Seconds of the wall clock, or CPU seconds of this process (all its threads).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def synthetic_dataset(num_examples, image_shape, num_classes, batch_size, seed=0):
    """Random images and labels held in memory, as a cached, prefetched pipeline.

    Args:
        num_examples: number of images; a multiple of `batch_size` keeps
            every batch the same shape.
        image_shape: shape of one image, e.g. `(32, 32, 3)`.
        num_classes: labels are drawn uniformly from `[0, num_classes)`.
        batch_size: batch size.
        seed: seed of the numpy generator. Defaults to `0`.

    Returns:
        A `tf.data.Dataset` of `(images, labels)` batches, float32 and int32.
    """
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((num_examples,) + tuple(image_shape), dtype=np.float32)
    labels = rng.integers(0, num_classes, size=num_examples, dtype=np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    return dataset.batch(batch_size).cache().prefetch(tf.data.AUTOTUNE)


def num_images(dataset):
    """Number of images in one pass over a finite batched data set.

    A batch's `x` may be a dict (e.g. `{"images", "teacher_logits"}`): every
    entry has the batch dimension first.
    """
    return int(dataset.reduce(
        0, lambda count, batch: count + tf.shape(tf.nest.flatten(batch[0])[0])[0]))


@dataclasses.dataclass(frozen=True)
class Throughput:
    """Timed rounds of one variant.

    Attributes:
        images: images processed in one round.
        seconds: duration of each timed round.
        callback_seconds: per timed round, the time spent in the timed
            callback's `on_epoch_end` (empty when none was timed).
    """

    images: int
    seconds: tuple
    callback_seconds: tuple = ()

    @property
    def images_per_second(self):
        """Images over the median round duration."""
        return self.images / statistics.median(self.seconds)

    @property
    def best_images_per_second(self):
        """Images over the fastest round: on a shared machine, load only
        slows rounds down, so this is the least disturbed figure."""
        return self.images / min(self.seconds)

    @property
    def callback_share(self):
        """Median share of a round spent in the timed callback (0 if none)."""
        if not self.callback_seconds:
            return 0.0
        return statistics.median(
            c / s for c, s in zip(self.callback_seconds, self.seconds))

    def __add__(self, other):
        if self.images != other.images:
            raise ValueError(
                "Only rounds over the same data can be pooled. Received: "
                f"{self.images} and {other.images} images per round.")
        return Throughput(self.images, self.seconds + other.seconds,
                          self.callback_seconds + other.callback_seconds)


def _clock(name):
    if name not in CLOCKS:
        raise ValueError(f"Expected clock in {sorted(CLOCKS)}. Received: clock={name!r}")
    return CLOCKS[name]


class _EpochClock(keras.callbacks.Callback):
    """Stamps the time of epoch begin and end; placed around other callbacks."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.begin = []
        self.end = []

    def on_epoch_begin(self, epoch, logs=None):
        self.begin.append(self.clock())

    def on_epoch_end(self, epoch, logs=None):
        self.end.append(self.clock())


class FitTimer:
    """Times `model.fit` over `dataset`, one epoch per round.

    A call runs one `fit` whose first `warmup` epochs are not timed (the
    first call compiles the step; later ones warm the callbacks, which
    Keras resets at every `fit`). An epoch's time includes its callbacks.

    Args:
        model: a compiled `keras.Model`.
        dataset: finite batched `tf.data.Dataset` of `(x, y)`.
        timed_callback: a `keras.callbacks.Callback` run every epoch whose
            `on_epoch_end` is also timed on its own. Defaults to `None`.
        clock: `"wall"` or `"cpu"` (`CLOCKS`). Defaults to `"wall"`.
    """

    def __init__(self, model, dataset, timed_callback=None, clock="wall"):
        self.clock = _clock(clock)
        self.model = model
        self.dataset = dataset
        self.timed_callback = timed_callback
        self.images = num_images(dataset)

    def __call__(self, warmup=1, repeats=3):
        """Returns the `Throughput` of `repeats` epochs after `warmup` epochs."""
        _check_rounds(warmup, repeats)
        first, last = _EpochClock(self.clock), _EpochClock(self.clock)
        inner = [self.timed_callback] if self.timed_callback else []
        self.model.fit(self.dataset, epochs=warmup + repeats, verbose=0,
                       shuffle=False, callbacks=[first] + inner + [last])
        seconds = tuple(e - b for b, e in zip(first.begin, last.end))[warmup:]
        callback_seconds = ()
        if self.timed_callback is not None:
            callback_seconds = tuple(
                e - b for b, e in zip(first.end, last.end))[warmup:]
        return Throughput(self.images, seconds, callback_seconds)


class ForwardTimer:
    """Times `model(x, training=False)` over `dataset`, one pass per round.

    The pass is driven the way `fit` drives its steps: a compiled forward
    pass per batch, called once per batch from Python, or, with
    `steps_per_execution > 1`, that many batches per call in a graph loop.
    The outputs are summed so that every batch's result is used, and
    nothing is gathered (unlike `predict`).

    Args:
        model: a `keras.Model`.
        dataset: finite batched `tf.data.Dataset` of `(x, ...)`.
        jit_compile: whether XLA compiles the forward pass. Defaults to `True`.
        steps_per_execution: batches per call of the compiled function,
            `>= 1`. Defaults to `1`.
        clock: `"wall"` or `"cpu"` (`CLOCKS`). Defaults to `"wall"`.
    """

    def __init__(self, model, dataset, jit_compile=True, steps_per_execution=1, clock="wall"):
        self.clock = _clock(clock)
        if steps_per_execution < 1:
            raise ValueError(
                "Expected steps_per_execution >= 1. "
                f"Received: steps_per_execution={steps_per_execution}")
        forward = tf.function(
            lambda x: tf.reduce_sum(tf.cast(model(x, training=False), tf.float32)),
            jit_compile=jit_compile)

        @tf.function
        def several_steps(iterator):
            total = tf.constant(0.0)
            for _ in tf.range(steps_per_execution):
                next_batch = iterator.get_next_as_optional()
                if next_batch.has_value():
                    total += forward(next_batch.get_value()[0])
            return total

        if steps_per_execution == 1:
            self._step = lambda iterator: forward(next(iterator)[0])
        else:
            self._step = several_steps
        self.dataset = dataset
        self.images = num_images(dataset)
        num_batches = int(dataset.reduce(0, lambda count, _: count + 1))
        self._calls = -(-num_batches // steps_per_execution)

    def __call__(self, warmup=1, repeats=3):
        """Returns the `Throughput` of `repeats` passes after `warmup` passes."""
        _check_rounds(warmup, repeats)
        seconds = []
        for round_index in range(warmup + repeats):
            start = self.clock()
            iterator = iter(self.dataset)
            totals = [self._step(iterator) for _ in range(self._calls)]
            float(tf.add_n(totals))
            if round_index >= warmup:
                seconds.append(self.clock() - start)
        return Throughput(self.images, tuple(seconds))


class CallTimer:
    """Times a call of `function`, once per round (e.g. building a soft-label store).

    Args:
        function: called with no argument; the work of one round.
        images: images one call processes.
        clock: `"wall"` or `"cpu"` (`CLOCKS`). Defaults to `"wall"`.
    """

    def __init__(self, function, images, clock="wall"):
        self.clock = _clock(clock)
        self.function = function
        self.images = int(images)

    def __call__(self, warmup=1, repeats=3):
        """Returns the `Throughput` of `repeats` calls after `warmup` calls."""
        _check_rounds(warmup, repeats)
        seconds = []
        for round_index in range(warmup + repeats):
            start = self.clock()
            self.function()
            if round_index >= warmup:
                seconds.append(self.clock() - start)
        return Throughput(self.images, tuple(seconds))


def interleave(timers, passes=2, warmup=1, repeats=3):
    """Runs the timers in turn, `passes` times, the order rotated each pass.

    Pass `p` starts with the `p`-th timer (modulo their number), so no
    variant is always first or always right after the same neighbour.

    Args:
        timers: dict from a name to a timer (`FitTimer`, `ForwardTimer`).
        passes: times each timer is run, `>= 1`. Defaults to `2`.
        warmup: untimed rounds at each run. Defaults to `1`.
        repeats: timed rounds at each run. Defaults to `3`.

    Returns:
        A list of round groups, one per pass: dicts from the timers' names to
        the `Throughput` of that pass.
    """
    if passes < 1:
        raise ValueError(f"Expected passes >= 1. Received: passes={passes}")
    names = list(timers)
    groups = []
    for pass_index in range(passes):
        shift = pass_index % len(names)
        group = {}
        for name in names[shift:] + names[:shift]:
            group[name] = timers[name](warmup=warmup, repeats=repeats)
        groups.append({name: group[name] for name in names})
    return groups


def pool(groups):
    """Pools the round groups' `Throughput`s per name (every round of a variant)."""
    pooled = dict(groups[0])
    for group in groups[1:]:
        for name, result in group.items():
            pooled[name] = pooled[name] + result
    return pooled


def quartiles(values):
    """`(lower quartile, median, upper quartile)` of `values`, linearly interpolated."""
    return tuple(float(q) for q in np.percentile(np.asarray(values, np.float64), (25, 50, 75)))


def paired_summary(per_group, ratio_keys):
    """Medians over round groups of figures computed inside each group.

    Args:
        per_group: list of dicts of figures, one per round group, with the
            same keys.
        ratio_keys: the keys that are ratios; they also get `<key>_iqr`.

    Returns:
        A dict from every key to its median over the groups, plus
        `<key>_iqr` = `[lower quartile, upper quartile]` for each ratio key
        and `pairs`, the number of groups.
    """
    summary = {}
    for key in per_group[0]:
        lower, median, upper = quartiles([figures[key] for figures in per_group])
        summary[key] = median
        if key in ratio_keys:
            summary[f"{key}_iqr"] = [lower, upper]
    summary["pairs"] = len(per_group)
    return summary


def _check_rounds(warmup, repeats):
    if warmup < 1 or repeats < 1:
        raise ValueError(
            "Expected warmup >= 1 and repeats >= 1. "
            f"Received: warmup={warmup}, repeats={repeats}")


def combined_limit(student_train, teacher_infer):
    """Images/s of a step doing nothing but one student update and one teacher pass.

    The two costs per image add up: `1 / (1 / student_train + 1 / teacher_infer)`.
    """
    return 1.0 / (1.0 / student_train + 1.0 / teacher_infer)


def distillation_figures(rates, callback_share, teacher_dtype=None):
    """The distillation benchmark's figures from the variants' images/s.

    Args:
        rates: dict with the images/s of `student_train`, `teacher_infer`,
            `keras_distiller` and `tllm_distiller`, and, with `teacher_dtype`,
            of `teacher_infer_<dtype>`, `keras_distiller_<dtype>` and
            `tllm_distiller_<dtype>` (the teacher as a copy in that dtype).
        callback_share: share of an epoch spent in the class-finding callback.
        teacher_dtype: e.g. `"bfloat16"`, or `None` (no 16-bit variants).

    Returns:
        `rates` with `limit`, `tllm_over_limit`, `tllm_over_keras` and
        `callback_share` added; with `store_distiller` and `store_build` (a
        distillation epoch from a `SoftLabelStore`, and building one epoch of
        it) in `rates`, also `store_over_student_train`, `store_over_keras`
        and `store_build_teacher_passes` (the build's time in teacher
        passes over the same images); with `teacher_dtype`, also `limit_<dtype>`
        (from the 16-bit teacher's pass), `tllm_<dtype>_over_limit_<dtype>`,
        `tllm_<dtype>_over_keras` (against Keras's Distiller as it ships,
        with the float32 teacher) and `tllm_<dtype>_over_keras_<dtype>` (both
        with the 16-bit teacher).
    """
    figures = dict(rates)
    figures["limit"] = combined_limit(figures["student_train"], figures["teacher_infer"])
    figures["tllm_over_limit"] = figures["tllm_distiller"] / figures["limit"]
    figures["tllm_over_keras"] = figures["tllm_distiller"] / figures["keras_distiller"]
    figures["callback_share"] = callback_share
    if "store_distiller" in figures:
        figures["store_over_student_train"] = (
            figures["store_distiller"] / figures["student_train"])
        figures["store_over_keras"] = figures["store_distiller"] / figures["keras_distiller"]
        # The build's time over a teacher pass's, on the same images.
        figures["store_build_teacher_passes"] = figures["teacher_infer"] / figures["store_build"]
    if teacher_dtype:
        tllm, limit = f"tllm_distiller_{teacher_dtype}", f"limit_{teacher_dtype}"
        figures[limit] = combined_limit(
            figures["student_train"], figures[f"teacher_infer_{teacher_dtype}"])
        figures[f"tllm_{teacher_dtype}_over_{limit}"] = figures[tllm] / figures[limit]
        figures[f"tllm_{teacher_dtype}_over_keras"] = figures[tllm] / figures["keras_distiller"]
        figures[f"tllm_{teacher_dtype}_over_keras_{teacher_dtype}"] = (
            figures[tllm] / figures[f"keras_distiller_{teacher_dtype}"])
    return figures


def paired_distillation_figures(groups, teacher_dtype=None):
    """`distillation_figures` per round group, then their medians and spreads.

    Each group's rates are images over the median round of its pass; its
    limit comes from its own `student_train` and `teacher_infer`, so a
    change of load between groups cancels out of every ratio.

    Args:
        groups: round groups from `interleave`, with the variants that
            `distillation_figures` needs; `tllm_distiller` has timed its
            callback.
        teacher_dtype: e.g. `"bfloat16"`, or `None`. Defaults to `None`.

    Returns:
        `paired_summary` of the groups' figures: the keys of
        `distillation_figures` (medians over groups), `<ratio>_iqr` for every
        `*_over_*` ratio and `store_build_teacher_passes`, and `pairs`.
    """
    per_group = [
        distillation_figures(
            {name: result.images_per_second for name, result in group.items()},
            group["tllm_distiller"].callback_share, teacher_dtype)
        for group in groups
    ]
    return paired_summary(per_group, [key for key in per_group[0]
                                      if "_over_" in key or key == "store_build_teacher_passes"])
