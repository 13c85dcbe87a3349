"""A worker that stops on an error tells the others, and they say who stopped and why.

Without this, the other workers of a multi-worker run wait at their next
collective until the coordination service's heartbeat timeout
(`strategy.HEARTBEAT_TIMEOUT_S`, two minutes) and then fail with a
message about a missed heartbeat that does not quote the error. TensorFlow's
coordination service can carry an error to every task
(`report_error_to_cluster`): the others' pending and next collectives then
abort at once, with the reporting task's name and text in their error.
"""

import contextlib
import re

import tensorflow as tf
# The coordination service's error reporting has no public API.
from tensorflow.python.eager import context as tf_context

from tllm_tf.pipeline import multi_worker
from tllm_tf.pipeline import strategy as strategy_lib

# What a worker reports, and how it is found again in another worker's error: the
# message arrives prefixed by the coordination service ("Error reported from
# /job:worker/task:1: ...") or, through a peer's aborted collective, by that
# collective's own words, and is followed by a newline or a status payload.
_STOPPED = "stopped the run: "
_REPORTED = re.compile(r"(?P<worker>\w+ \d+) " + _STOPPED
                       + r"(?P<text>.*?)(?: \[type\.googleapis\.com|\n|$)")


class WorkerFailedError(RuntimeError):
    """Raised on a worker whose run another worker stopped with an error."""


def _describe(error):
    """`'worker 1 stopped the run: ValueError: ...'`, on one line."""
    resolver = strategy_lib.cluster_resolver()
    what = ("interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt)
            else f"{type(error).__name__}: {error}")
    return f"{resolver.task_type} {resolver.task_id} {_STOPPED}" + " ".join(what.split())


def _report(strategy, error):
    """Sends `error` to every other worker; nothing with one worker."""
    if strategy_lib.num_workers(strategy) <= 1:
        return
    try:
        tf_context.context().report_error_to_cluster(tf.errors.ABORTED, _describe(error))
    except tf.errors.OpError:
        pass  # The cluster already has an error (another worker's, or ours): it has spread.


def reported_failure(error):
    """`'worker 1 stopped the run: <its error>'` if another worker's report ended `error`.

    Args:
        error: an exception raised on this worker.

    Returns:
        The line, or `None` if `error` is not such a report.
    """
    if not isinstance(error, tf.errors.OpError):
        return None
    match = _REPORTED.search(error.message)
    return None if match is None else f"{match['worker']} {_STOPPED}{match['text']}"


@contextlib.contextmanager
def shared(strategy):
    """Shares this worker's failure with the others; names theirs.

    Within it, an exception raised on this worker is reported to the
    cluster, then raised as it was; an error that another worker reported is
    raised as `WorkerFailedError` naming that worker and quoting its error.
    With one worker it changes nothing. `multi_worker.ChiefFailedError`
    (the chief's failure, already sent over a collective) is raised as it is.

    Args:
        strategy: the run's `tf.distribute.Strategy`.

    Raises:
        WorkerFailedError: when another worker stopped the run.
    """
    try:
        yield
    except multi_worker.ChiefFailedError:
        raise
    except BaseException as error:
        failure = reported_failure(error)
        if failure is not None:
            raise WorkerFailedError(
                f"{failure.rstrip('.')}. Fix that worker's problem, then run the same command "
                "on every worker: they resume from the chief's last checkpoint.") from None
        _report(strategy, error)
        raise
