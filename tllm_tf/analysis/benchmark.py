"""Throughput measurement: images per second of `fit` and of forward passes.

A timer runs warm-up rounds (tracing, XLA compilation, the first pass over a
cached data set), then timed rounds. `interleave` runs several timers in
turn, pass after pass, the order rotated each pass; the variants of one pass,
timed back to back, are a *round group*. On a shared machine the load moves
a variant's speed by 2x within minutes, but mostly alike for variants timed
within seconds of each other, so every ratio is computed inside a group and
the figure is the median of those paired ratios, with its interquartile
range (`benchmark_figures.paired_summary`, docs/benchmarks.md). Where even a pass is too
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
            callback's hooks inside the epoch (empty when none was timed).
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
    """Stamps the time of every epoch's end; placed after the other callbacks."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.end = []

    def on_epoch_end(self, epoch, logs=None):
        self.end.append(self.clock())


# The hooks a callback may run inside an epoch of `fit`; their time is the callback's share.
_EPOCH_HOOKS = ("on_batch_begin", "on_batch_end", "on_train_batch_begin", "on_train_batch_end",
                "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end")
# Hooks run once per `fit`, outside its epochs (and outside the rounds' time).
_FIT_HOOKS = ("on_train_begin", "on_train_end")


def _overrides(callback, hook):
    return getattr(type(callback), hook) is not getattr(keras.callbacks.Callback, hook)


class _TimedCallback(keras.callbacks.Callback):
    """Runs `callback`'s hooks, adding up per epoch the time its epoch hooks take.

    Timed inside its own hooks, so the figure does not depend on where `fit`
    puts the callback in the list (`Distiller.fit` moves mask updaters
    first). Only the hooks `callback` overrides are defined here: a batch
    hook, even a no-op, would stop Keras from dispatching the batch hooks
    asynchronously. `updates_class_mask` and `async_safe` are passed on.

    Args:
        callback: the `keras.callbacks.Callback` to time.
        clock: a function returning seconds (`CLOCKS`).
    """

    def __init__(self, callback, clock):
        super().__init__()
        self.callback = callback
        self.clock = clock
        self.epoch_seconds = []
        self.updates_class_mask = getattr(callback, "updates_class_mask", False)
        self.async_safe = getattr(callback, "async_safe", False)
        for hook in _EPOCH_HOOKS:
            if _overrides(callback, hook):
                setattr(self, hook, self._timed(getattr(callback, hook)))
        for hook in _FIT_HOOKS:
            if _overrides(callback, hook):
                setattr(self, hook, getattr(callback, hook))

    def _timed(self, hook):
        def run(*args, **kwargs):
            start = self.clock()
            try:
                return hook(*args, **kwargs)
            finally:
                if self.epoch_seconds:
                    self.epoch_seconds[-1] += self.clock() - start
        return run

    def set_model(self, model):
        super().set_model(model)
        self.callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_seconds.append(0.0)
        self._timed(self.callback.on_epoch_begin)(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._timed(self.callback.on_epoch_end)(epoch, logs)


class FitTimer:
    """Times `model.fit` over `dataset`, one epoch per round.

    A call runs one `fit` whose first `warmup` epochs are not timed (the
    first call compiles the step; later ones warm the callbacks, which
    Keras resets at every `fit`). A round is the time from the previous
    epoch's end to this epoch's, every callback's epoch hooks included,
    whatever their order.

    Args:
        model: a compiled `keras.Model`.
        dataset: finite batched `tf.data.Dataset` of `(x, y)`.
        timed_callback: a `keras.callbacks.Callback` run every epoch whose
            hooks inside the epoch (`on_epoch_begin`, `on_epoch_end`, batch
            and test hooks) are also timed on their own. Defaults to `None`.
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
        epoch_clock = _EpochClock(self.clock)
        timed = None
        if self.timed_callback is not None:
            timed = _TimedCallback(self.timed_callback, self.clock)
        callbacks = ([timed] if timed else []) + [epoch_clock]
        self.model.fit(self.dataset, epochs=warmup + repeats, verbose=0,
                       shuffle=False, callbacks=callbacks)
        ends = epoch_clock.end
        # warmup >= 1, so every timed epoch has the end of the one before it.
        seconds = tuple(end - previous for previous, end in zip(ends, ends[1:]))[warmup - 1:]
        callback_seconds = tuple(timed.epoch_seconds[warmup:]) if timed else ()
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


def groups_to_json(groups):
    """The round groups as JSON-ready lists, so figures can be computed again later."""
    return [{name: {"images": result.images, "seconds": list(result.seconds),
                    "callback_seconds": list(result.callback_seconds)}
             for name, result in group.items()} for group in groups]


def groups_from_json(rounds):
    """The round groups `groups_to_json` wrote."""
    return [{name: Throughput(timed["images"], tuple(timed["seconds"]),
                              tuple(timed["callback_seconds"]))
             for name, timed in group.items()} for group in rounds]


def pool(groups):
    """Pools the round groups' `Throughput`s per name (every round of a variant)."""
    pooled = dict(groups[0])
    for group in groups[1:]:
        for name, result in group.items():
            pooled[name] = pooled[name] + result
    return pooled


def _check_rounds(warmup, repeats):
    if warmup < 1 or repeats < 1:
        raise ValueError(
            "Expected warmup >= 1 and repeats >= 1. "
            f"Received: warmup={warmup}, repeats={repeats}")
