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
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf
# TensorFlow has no public setting for the coordination service's heartbeat.
from tensorflow.python.distribute import multi_worker_util
from tensorflow.python.eager import context as tf_context

from tllm_tf.pipeline import config as config_lib

# TensorFlow's default, 10 seconds, declares a healthy worker dead when its
# host is oversubscribed (two workers on two busy cores stalled that long in
# CI). A truly dead worker is still found, two minutes later.
HEARTBEAT_TIMEOUT_S = 120


class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`MultiWorkerMirroredStrategy` whose `reduce` takes what Keras 3 passes.

    With more than one worker, Keras 3's `fit` calls `reduce` on a nest (the
    first input batch, before building) and with `axis=0` on scalars (the
    logs), and TensorFlow's `reduce` accepts neither
    (https://github.com/keras-team/keras/issues/20585). This one reduces each
    value of a nest on its own, and a scalar across replicas only.
    """

    def reduce(self, reduce_op, value, axis):
        def reduce_one(per_replica):
            rank = self.experimental_local_results(per_replica)[0].shape.rank
            return super(_MultiWorkerMirroredStrategy, self).reduce(
                reduce_op, per_replica, axis if rank else None)

        return tf.nest.map_structure(reduce_one, value)


_STRATEGIES = {}

# Fields of a `RunConfig` that may differ between workers: where each writes
# (only the chief does) or reads its own copy of the same files, and how
# much it prints. Whether a path is given must still agree.
_PER_WORKER_FIELDS = config_lib.PATH_FIELDS
_UNCHECKED_FIELDS = ("verbose",)


def cluster_resolver():
    """The cluster and this process's task, from the `TF_CONFIG` environment variable.

    Returns:
        A `TFConfigClusterResolver` with a cluster and a task of type
        `"chief"` or `"worker"`.

    Raises:
        ValueError: if `TF_CONFIG` is unset, names no cluster, or gives a
            task of another type: `--strategy=multi_worker` would otherwise
            train alone, silently.
    """
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if not resolver.cluster_spec().as_dict() or resolver.task_type not in ("chief", "worker"):
        raise ValueError(
            "--strategy=multi_worker needs the environment variable TF_CONFIG to name the "
            "cluster and this worker's task, e.g. TF_CONFIG='{\"cluster\": {\"worker\": "
            "[\"host-a:12345\", \"host-b:12345\"]}, \"task\": {\"type\": \"worker\", "
            "\"index\": 0}}' (docs/multi_worker.md). Received: "
            f"TF_CONFIG={os.environ.get('TF_CONFIG')!r}. For one process, use "
            "--strategy=default or mirrored.")
    return resolver


def joining_line():
    """What a worker prints before it waits for the cluster (`TF_CONFIG`).

    Raises:
        ValueError: as `cluster_resolver`.
    """
    resolver = cluster_resolver()
    cluster = resolver.cluster_spec()
    size = sum(cluster.num_tasks(job) for job in ("chief", "worker") if job in cluster.jobs)
    return (f"{resolver.task_type} {resolver.task_id} of a cluster of {size} (TF_CONFIG): "
            "waiting until every worker has started. A worker that never starts leaves the "
            "others waiting, deaf to Ctrl-C; stop them with kill -9 (docs/multi_worker.md).")


def _configure_coordination(heartbeat_timeout_s):
    """Starts the cluster's coordination service with our heartbeat timeout.

    The same service `MultiWorkerMirroredStrategy` configures for itself when
    none is configured yet; only the timeout differs.
    """
    resolver = cluster_resolver()
    cluster_spec = resolver.cluster_spec()
    if tf_context.context().coordination_service is not None:
        return
    coordinated_job = tf_context.coordination_config_pb2.CoordinatedJob
    jobs = [coordinated_job(name=job, num_tasks=cluster_spec.num_tasks(job))
            for job in ("chief", "worker") if job in cluster_spec.jobs]
    tf_context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(cluster_spec),
        coordinated_jobs=jobs,
        heartbeat_timeout_in_ms=int(heartbeat_timeout_s * 1000))


def make_strategy(name, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S):
    """Returns the `tf.distribute` strategy for `--strategy`.

    `"multi_worker"` reads the cluster and this process's place in it from
    the `TF_CONFIG` environment variable. Create it before any other
    TensorFlow operation runs: collectives can only be configured at start-up.

    One `"mirrored"` strategy serves every call in a process (the study's
    runs, say): TensorFlow's MirroredStrategy objects all number their
    collectives from the same key, so a second one whose steps trace other
    collectives than the first's clashes with it ("Shape mismatch in the
    collective instance").

    Args:
        name: `"default"`, `"mirrored"` or `"multi_worker"`.
        heartbeat_timeout_s: with `"multi_worker"`, how long a worker may
            stay silent before the cluster declares it failed.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: for `"multi_worker"` without a cluster in `TF_CONFIG`.
    """
    if name == "mirrored":
        if "mirrored" not in _STRATEGIES:
            _STRATEGIES["mirrored"] = tf.distribute.MirroredStrategy()
        return _STRATEGIES["mirrored"]
    if name == "multi_worker":
        _configure_coordination(heartbeat_timeout_s)
        return _MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """Whether this process writes results.

    True for a single-process strategy, for the task of type `"chief"`, and
    for worker 0 of a cluster that has no `"chief"` task; False for every
    other worker.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def num_workers(strategy):
    """The number of processes training together (1 without a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return max(1, len(cluster.get("chief", ())) + len(cluster.get("worker", ())))


# One compiled broadcast per strategy and list of shapes and dtypes, so a
# repeated call (the class mask at every epoch end) is not traced again.
_BROADCASTS = {}


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
    if key not in _BROADCASTS:
        _BROADCASTS[key] = tf.function(
            lambda *values: strategy.run(_replica_broadcast, args=values))
    return [strategy.experimental_local_results(result)[0]
            for result in _BROADCASTS[key](*tensors)]


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
    if error is not None:
        raise error
    record = json.loads(message)
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


def _sum_over_workers(strategy, value):
    """The sum over every replica of `value` (a flag: > 0 when any worker set it)."""
    key = (strategy, "sum")
    if key not in _BROADCASTS:
        _BROADCASTS[key] = tf.function(lambda tensor: strategy.run(_replica_sum, args=(tensor,)))
    (total,) = _BROADCASTS[key](tf.constant(value, tf.float32))
    return float(strategy.experimental_local_results(total)[0])


def _comparable(config_fields):
    fields = {key: bool(value) if key in _PER_WORKER_FIELDS else value
              for key, value in config_fields.items() if key not in _UNCHECKED_FIELDS}
    return json.loads(json.dumps(fields))


def check_same_config(strategy, config_fields):
    """Refuses, on every worker, a cluster whose workers were started with other flags.

    Each worker builds its own configuration from its own command line; one
    started with another seed, policy or learning rate would train on other
    batches or take other steps, and the all-reduced updates would match no
    run (or fail later at a collective, naming no flag). Paths may differ
    (each worker reads its own copy; only the chief writes), as may
    `verbose`.

    Args:
        strategy: the run's `tf.distribute.Strategy`.
        config_fields: this worker's configuration as a dict of JSON values
            (`dataclasses.asdict(config)`).

    Raises:
        ValueError: on every worker if any worker's configuration differs
            from the chief's; the differing worker's message names the
            fields.
    """
    if num_workers(strategy) == 1:
        return
    own = _comparable(config_fields)
    chiefs = run_on_chief(strategy, lambda: own)
    differences = [f"--{key}: {own[key]!r} here, {chiefs.get(key)!r} on the chief"
                   for key in sorted(own) if own[key] != chiefs.get(key)]
    if differences:
        _sum_over_workers(strategy, 1.0)
        raise ValueError(
            "This worker was started with other flags than the chief: "
            f"{'; '.join(differences)}. Start every worker with the same flags (only "
            "paths and --verbose may differ).")
    if _sum_over_workers(strategy, 0.0):
        raise ValueError(
            "Another worker was started with other flags than this one's (its own error "
            "names them): start every worker with the same flags.")


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
