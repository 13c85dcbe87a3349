"""Refusing a cluster whose workers were started with other flags.

Each worker of a multi-worker run builds its own `RunConfig` from its own
command line; the chief sends its fields to the others, which compare them
with their own before anything else of the run happens (`stages.run`).
"""

import json

from tllm_tf.pipeline import config as config_lib
from tllm_tf.pipeline import multi_worker
from tllm_tf.pipeline import strategy as strategy_lib

# Fields of a `RunConfig` that may differ between workers: where each writes
# (only the chief does) or reads its own copy of the same files, and how
# much it prints. Whether a path is given must still agree.
_PER_WORKER_FIELDS = config_lib.PATH_FIELDS
_UNCHECKED_FIELDS = ("verbose",)


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
    if strategy_lib.num_workers(strategy) == 1:
        return
    own = _comparable(config_fields)
    chiefs = multi_worker.run_on_chief(strategy, lambda: own)
    differences = [f"--{key}: {own[key]!r} here, {chiefs.get(key)!r} on the chief"
                   for key in sorted(own) if own[key] != chiefs.get(key)]
    differing_workers = multi_worker.sum_over_workers(strategy, 1.0 if differences else 0.0)
    if differing_workers:
        # The chief reported the differing worker's error, not its own, under load.
        multi_worker.meet_before_raising(strategy)
    if differences:
        raise ValueError(
            "This worker was started with other flags than the chief: "
            f"{'; '.join(differences)}. Start every worker with the same flags (only "
            "paths and --verbose may differ).")
    if differing_workers:
        raise ValueError(
            "Another worker was started with other flags than this one's (its own error "
            "names them): start every worker with the same flags.")
