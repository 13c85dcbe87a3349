"""A run's workdir: its ownership (`config.json`) and its models, written atomically.

A run may be killed at any moment and re-run with the same command, so every
file is either written atomically (`tllm_tf.atomic`) or append-only with its
tail repaired on resume (`checkpointing`). The file names: `workdir_files`.
"""

import json
import os

from tllm_tf import atomic
from tllm_tf.pipeline import config as config_lib
from tllm_tf.pipeline.workdir_files import CONFIG_FILE

# Fields that may change between runs of one workdir: they choose what to run
# and how fast, not what is computed (a student added to --students trains; those
# already trained stay as they are).
RESUMABLE_CHANGES = frozenset({
    "stage", "students", "method", "verbose", "strategy", "jit_compile", "steps_per_execution",
    "data_dir", "manual_dir", "download", "teacher_path", "reference_path", "cache",
    "deterministic", "refit_fallback",
})


def save_model(model, path):
    """Saves a `.keras` file atomically."""
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f"tmp{os.getpid()}-{name}")
    model.save(temporary)
    os.replace(temporary, path)


def claim(workdir, config):
    """Writes `config.json`, or checks that the workdir belongs to `config`.

    Raises:
        ValueError: if the workdir holds a run of a different configuration,
            naming the flags that differ; nothing is overwritten.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG_FILE)
    if os.path.exists(path):
        try:
            with open(path) as handle:
                previous = config_lib.RunConfig.from_json(handle.read())
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(
                f"{path!r} is not a readable configuration ({error}). Use a new "
                "--workdir, or delete that file if the workdir is yours to reuse."
            ) from None
        differences = [
            f"--{name}: {getattr(previous, name)!r} in the workdir, {getattr(config, name)!r} now"
            for name in config_lib.RunConfig.__dataclass_fields__
            if name not in RESUMABLE_CHANGES and name != "workdir"
            and getattr(previous, name) != getattr(config, name)
        ]
        if differences:
            raise ValueError(
                f"The workdir {workdir!r} belongs to a run with a different "
                "configuration, so it will not be resumed:\n  " + "\n  ".join(differences)
                + "\nUse a new --workdir, or the workdir's flags.")
    atomic.write_json(path, json.loads(config.to_json()))
