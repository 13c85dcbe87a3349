"""Keeping the workers of a multi-worker run in agreement.

Under `tf.distribute.MultiWorkerMirroredStrategy` every worker (one process
per host, told its place by `TF_CONFIG`) runs the same program. Only the chief
writes the workdir, and the other workers read nothing from it: what they
must know from disk (whether a stage is done, the epoch to resume from, the
checkpointed weights, the teacher, the reference) the chief reads and sends
them over the same collectives that training uses. So workers need no shared
filesystem, and no worker ever reads a file the chief is halfway through
writing. With one worker (the default and mirrored strategies) every function
here does its work locally, without collectives.

Creating a variable under this strategy is itself a collective (the chief
broadcasts its initial value), so every worker must create the same variables
in the same order; the stage runner keeps to that.

Making the strategy, and whether this process is the chief: `strategy` (its
names are importable from here too: `multi_worker.make_strategy`, as the docs
and scripts call it).
"""

import json

import keras
import numpy as np
import tensorflow as tf

from tllm_tf.pipeline.strategy import HEARTBEAT_TIMEOUT_S
from tllm_tf.pipeline.strategy import cluster_resolver
from tllm_tf.pipeline.strategy import is_chief
from tllm_tf.pipeline.strategy import joining_line
from tllm_tf.pipeline.strategy import make_strategy
from tllm_tf.pipeline.strategy import num_workers

__all__ = ["ChiefFailedError", "ClassMaskFromChief", "HEARTBEAT_TIMEOUT_S", "cluster_resolver",
           "is_chief", "joining_line", "make_strategy", "num_workers", "run_on_chief",
           "sum_over_workers", "sync_variables"]

# One compiled collective per strategy and list of shapes and dtypes (the
# broadcasts), or per strategy (the sum), so a repeated call (the class mask
# at every epoch end) is not traced again.
_COMPILED_COLLECTIVES = {}


def _replica_broadcast(*values):
    context = tf.distribute.get_replica_context()
    # Global replica 0 is the chief's first device; every other replica adds
    # zeros, so the sum is the chief's value, bit for bit.
    keep = tf.equal(context.replica_id_in_sync_group, 0)
    contributions = [tf.where(keep, value, tf.zeros_like(value)) for value in values]
    # One all-reduce per dtype: an all-reduce packs its tensors into one.
    positions = {}
    for position, value in enumerate(contributions):
        positions.setdefault(value.dtype, []).append(position)
    results = list(contributions)
    for same_dtype in positions.values():
        reduced = context.all_reduce(
            tf.distribute.ReduceOp.SUM, [contributions[i] for i in same_dtype])
        for position, value in zip(same_dtype, reduced):
            results[position] = value
    return results


def _broadcast_tensors(strategy, tensors):
    """Every worker's `tensors` replaced by the chief's (same shapes and dtypes)."""
    key = (strategy,) + tuple((tuple(t.shape), t.dtype) for t in tensors)
    if key not in _COMPILED_COLLECTIVES:
        _COMPILED_COLLECTIVES[key] = tf.function(
            lambda *values: strategy.run(_replica_broadcast, args=values))
    return [strategy.experimental_local_results(result)[0]
            for result in _COMPILED_COLLECTIVES[key](*tensors)]


def _broadcast_text(strategy, text, chunk_size=4096):
    """The chief's `text` on every worker (`text` is ignored elsewhere)."""
    encoded = np.frombuffer(text.encode("utf-8"), np.uint8)
    (length,) = _broadcast_tensors(strategy, [tf.constant(len(encoded), tf.int64)])
    length = int(length)
    # Sent in chunks of one shape, so that one trace serves every text.
    data = np.zeros(-(-length // chunk_size) * chunk_size, np.int32)
    if is_chief(strategy):
        data[:length] = encoded
    chunks = [_broadcast_tensors(strategy, [tf.constant(data[start:start + chunk_size])])
              [0].numpy() for start in range(0, len(data), chunk_size)]
    received = np.concatenate(chunks or [data])[:length]
    return received.astype(np.uint8).tobytes().decode("utf-8")


def meet_before_raising(strategy):
    """One more sum over the workers, before they raise an error every one of them knows of.

    A worker that stops while another is still in a collective aborts it, and that worker
    then reports the aborted run instead of its own error: each waits for the others here.
    A sum aborted all the same (another worker has already stopped) is let pass.

    Args:
        strategy: the run's `tf.distribute.Strategy`.
    """
    try:
        sum_over_workers(strategy, 0.0)
    except tf.errors.OpError:
        pass


class ChiefFailedError(RuntimeError):
    """Raised on the other workers when the chief's `run_on_chief` call failed."""


def run_on_chief(strategy, function):
    """Calls `function()` on the chief only; returns its result on every worker.

    The result travels as JSON, so it must be JSON-serialisable (numbers,
    strings, lists, dicts, `None`; NaN survives); every worker, the chief
    included, gets the decoded copy. If `function` raises on the chief, the
    chief raises that error and every other worker raises `ChiefFailedError`
    quoting it, instead of waiting forever at the next collective.

    Args:
        strategy: the run's `tf.distribute.Strategy`.
        function: a callable without arguments.

    Returns:
        The JSON round trip of `function()`'s result.

    Raises:
        ChiefFailedError: on a non-chief worker, if `function` raised on the
            chief.
    """
    error, message = None, ""
    if is_chief(strategy):
        try:
            message = json.dumps({"result": function()})
        except Exception as raised:  # Reported to the other workers, then re-raised.
            error = raised
            message = json.dumps({"error": f"{type(raised).__name__}: {raised}"})
    if num_workers(strategy) > 1:
        message = _broadcast_text(strategy, message)
    record = json.loads(message)
    if "error" in record and num_workers(strategy) > 1:
        meet_before_raising(strategy)
    if error is not None:
        raise error
    if "error" in record:
        raise ChiefFailedError(
            f"The chief failed, so this worker stops too. The chief's error: "
            f"{record['error']}")
    return record["result"]


def _replica_sum(value):
    # Computed on the replica's device: the function's input itself has none, and the
    # all-reduce then finds no destination.
    local = tf.identity(value)
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, [local])


def sum_over_workers(strategy, value):
    """The sum over every replica of `value`, on every worker.

    Args:
        strategy: the run's `tf.distribute.Strategy`.
        value: this replica's number (a flag: the sum is > 0 when any worker
            set it).

    Returns:
        The sum, a float.
    """
    key = (strategy, "sum")
    if key not in _COMPILED_COLLECTIVES:
        _COMPILED_COLLECTIVES[key] = tf.function(
            lambda tensor: strategy.run(_replica_sum, args=(tensor,)))
    (total,) = _COMPILED_COLLECTIVES[key](tf.constant(value, tf.float32))
    return float(strategy.experimental_local_results(total)[0])


def sync_variables(strategy, variables):
    """Assigns the chief's values of `variables` on every worker.

    Args:
        strategy: the run's `tf.distribute.Strategy`.
        variables: Keras or TensorFlow variables, created in the same order
            on every worker.
    """
    if num_workers(strategy) == 1:
        return
    variables = list({id(variable): variable for variable in variables}.values())
    values = _broadcast_tensors(
        strategy, [tf.convert_to_tensor(variable) for variable in variables])
    for variable, value in zip(variables, values):
        variable.assign(value)


class ClassMaskFromChief(keras.callbacks.Callback):
    """Gives every worker the chief's class mask at each epoch end.

    Each worker's `UndistillableClassCallback` measures the held-out split
    on its own; on identical weights the masks agree, but non-deterministic
    kernels (GPUs) could tip a near tie. The chief's mask is the one it logs,
    so the chief's mask is the one every worker trains with. Place it after
    the `UndistillableClassCallback`.

    Args:
        strategy: the run's `tf.distribute.Strategy`.
    """

    def __init__(self, strategy):
        super().__init__()
        self.strategy = strategy

    def on_epoch_end(self, epoch, logs=None):
        sync_variables(self.strategy, [self.model.class_mask])
