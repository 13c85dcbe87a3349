"""Files of a run's workdir: atomic writes, resume bookkeeping, ownership.

A run may be killed at any moment and re-run with the same command, so every
file is either written atomically (temp file + rename) or append-only with
its tail repaired on resume.
"""

import csv
import json
import os

from tllm_tf.pipeline import config as config_lib

CONFIG_FILE = "config.json"
# Fields that may change between runs of one workdir: they choose what to run
# and how fast, not what is computed.
RESUMABLE_CHANGES = frozenset({
    "stage", "method", "verbose", "strategy", "jit_compile", "steps_per_execution",
    "data_dir", "manual_dir", "download", "teacher_path", "reference_path", "cache",
    "deterministic",
})


def write_json(path, value):
    """Writes `value` as JSON to `path` atomically."""
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w") as handle:
        json.dump(value, handle, indent=1, sort_keys=True)
    os.replace(temporary, path)


def save_model(model, path):
    """Saves a `.keras` file atomically."""
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f"tmp{os.getpid()}-{name}")
    model.save(temporary)
    os.replace(temporary, path)


def truncate_jsonl(path, last_epoch):
    """Keeps the complete JSON lines of `path` whose `epoch` <= `last_epoch`.

    A resumed run appends from `last_epoch + 1`: what a killed run wrote
    after its last checkpoint, and a line torn by the kill, would otherwise
    leave duplicates or garbage in the history.
    """
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("epoch", 0) <= last_epoch:
                kept.append(json.dumps(record) + "\n")
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w") as handle:
        handle.writelines(kept)
    os.replace(temporary, path)


def truncate_csv_history(path, start_epoch):
    """Keeps the header and the rows of epochs before `start_epoch` (0-based)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    kept = [row for row in body
            if len(row) == len(header) and row[0].isdigit() and int(row[0]) < start_epoch]
    if not kept:
        os.remove(path)  # CSVLogger writes a new header.
        return
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", newline="") as handle:
        csv.writer(handle).writerows([header] + kept)
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
    write_json(path, json.loads(config.to_json()))
