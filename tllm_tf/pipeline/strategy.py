"""Making the `tf.distribute` strategy of a run, and where this process stands in it.

`--strategy=multi_worker` reads the cluster and this process's task from the
`TF_CONFIG` environment variable and starts the cluster's coordination
service; `is_chief` and `num_workers` tell any strategy's place. Keeping the
workers in agreement once they run: `multi_worker`.
"""

import json
import os

import tensorflow as tf
# TensorFlow has no public setting for the coordination service's heartbeat.
from tensorflow.python.distribute import multi_worker_util
from tensorflow.python.eager import context as tf_context

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


# The one "mirrored" strategy of this process (`make_strategy` says why).
_STRATEGIES = {}


def cluster_resolver():
    """The cluster and this process's task, from the `TF_CONFIG` environment variable.

    Returns:
        A `TFConfigClusterResolver` with a cluster and a task of type
        `"chief"` or `"worker"`.

    Raises:
        ValueError: if `TF_CONFIG` is not JSON, is unset, names no cluster,
            or gives a task of another type: `--strategy=multi_worker` would
            otherwise train alone, silently.
    """
    text = os.environ.get("TF_CONFIG")
    try:
        json.loads(text or "{}")
    except json.JSONDecodeError as error:  # TensorFlow's would name neither variable nor text.
        raise ValueError(
            f"The environment variable TF_CONFIG is not valid JSON ({error}): "
            f"TF_CONFIG={text!r}. Quote it as docs/multi_worker.md shows.") from None
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
