"""The files of a `SoftLabelStore`'s directory: where each lives, and whether it is whole.

The layout (docs/soft_label_store.md): `store.json` (the fingerprint),
`epoch_EEEEE_part_PPPPP.npz` (consecutive batches of epoch `E`) and
`epoch_EEEEE.json` (the epoch's index, written last: the epoch is complete).
The checks here are cheap: an index against the part files present, each
part's zip directory and array names, never the arrays' values.
"""

import contextlib
import glob
import json
import logging
import numbers
import os
import re
import time
import zipfile

import numpy as np

from tllm_tf import atomic

STORE_FILE = "store.json"
# An epoch's part files and its index.
_EPOCH_FILE = re.compile(r"epoch_\d+(_part_\d+\.npz|\.json)")
# tllm_tf.atomic's temporary names (`.NAME.XXXXXXXX.tmp`) of a store's files only.
_TEMPORARY = re.compile(r"\.(store\.json|epoch_\d+(_part_\d+\.npz|\.json))\.\w+\.tmp")
# A younger temporary file may be another process's write in progress (two
# runs sharing one store); a killed write's is removed by a later build.
_STALE_AFTER_S = 60
# What np.load raises on a file that is not a whole .npz.
DAMAGED = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


def is_count(value, minimum=1):
    """Whether `value` is an integer (not a bool) `>= minimum`."""
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and value >= minimum)


class StoreFiles:
    """The files of one store's directory.

    Args:
        directory: the store's directory.
    """

    def __init__(self, directory):
        self.directory = directory

    def store_file(self):
        return os.path.join(self.directory, STORE_FILE)

    def index_path(self, epoch):
        return os.path.join(self.directory, f"epoch_{epoch:05d}.json")

    def part_path(self, epoch, part):
        return os.path.join(self.directory, f"epoch_{epoch:05d}_part_{part:05d}.npz")

    def part_paths(self, epoch):
        """The epoch's consecutive parts from part 0."""
        paths = []
        while os.path.exists(self.part_path(epoch, len(paths))):
            paths.append(self.part_path(epoch, len(paths)))
        return paths

    def index_parts(self, epoch):
        """The number of parts epoch `epoch`'s index lists; `None` if it is not readable."""
        try:
            with open(self.index_path(epoch)) as stream:
                parts = json.load(stream).get("parts")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            return None
        return parts if is_count(parts) else None

    def read_record(self):
        """`store.json`'s record, `{}` if there is none.

        Raises:
            ValueError: if the file is not JSON or lacks the fingerprint, or is
                missing while epoch files are present: either would otherwise
                let any teacher reuse the store.
        """
        path = self.store_file()
        if not os.path.exists(path):
            self._check_no_epoch_files()
            return {}
        try:
            with open(path) as stream:
                record = json.load(stream)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            record = error
        if not isinstance(record, dict) or not isinstance(record.get("fingerprint"), dict):
            raise ValueError(
                f"{path} is not a soft-label store's record (not JSON, or no fingerprint), "
                "so the store cannot be checked against this teacher and these views. "
                f"Delete the directory {self.directory} and run the same command again to "
                "rebuild the store.")
        return record

    def create_record(self, record):
        """Writes `store.json` holding `record`, unless the file exists.

        Never replaces one: a store opened on the same empty folder by
        another process may have written its own since, which the caller
        must read back and compare. `atomic.write_json(..., replace=False)`
        hard-links its temporary to `store.json`, which fails if it exists,
        so the file is whole whenever it exists.

        Args:
            record: a dict of JSON values.

        Raises:
            ValueError: if `store.json` is missing but epoch files are present.
        """
        path = self.store_file()
        if os.path.exists(path):
            return
        self._check_no_epoch_files()
        with contextlib.suppress(FileExistsError):
            atomic.write_json(path, record, replace=False)

    def _check_no_epoch_files(self):
        names = sorted(name for name in os.listdir(self.directory)
                       if _EPOCH_FILE.fullmatch(name)) if os.path.isdir(self.directory) else []
        # Rechecked: another build may have written store.json, then parts, meanwhile.
        if names and not os.path.exists(self.store_file()):
            raise ValueError(
                f"The soft-label store in {self.directory} has epoch files "
                f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}) but no "
                f"{STORE_FILE}, so they cannot be checked against this teacher and these "
                "views: they may be another teacher's. Delete the whole folder "
                f"{self.directory} and run the same command again to rebuild the store.")

    def size_on_disk(self):
        """Bytes of the store's files."""
        return sum(os.path.getsize(path)
                   for path in glob.glob(os.path.join(self.directory, "*")))

    def remove_stale_temporaries(self):
        """Removes the temporary files a killed write left (older than a minute)."""
        if not os.path.isdir(self.directory):
            return
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            # Suppressed: another build may have renamed it meanwhile.
            with contextlib.suppress(FileNotFoundError):
                if (_TEMPORARY.fullmatch(name)
                        and time.time() - os.path.getmtime(path) > _STALE_AFTER_S):
                    os.remove(path)

    def epoch_problem(self, epoch, array_names):
        """Why a complete epoch's files cannot be read, or `None`.

        Args:
            epoch: an epoch with an index.
            array_names: the arrays each of its parts must hold.
        """
        parts = self.index_parts(epoch)
        if parts is None:
            return f"its index {self.index_path(epoch)} is not readable"
        paths = self.part_paths(epoch)
        present = self._all_parts(epoch)
        if len(paths) != parts or len(present) != parts:
            return f"its index lists {parts} part files, {len(present)} are present"
        problems = (self.part_problem(path, array_names) for path in paths)
        return next((problem for problem in problems if problem), None)

    def part_problem(self, path, array_names):
        """Why a part file does not open as a store's `.npz` with `array_names`, or `None`.

        np.load reads the zip's directory only, not the arrays.
        """
        try:
            with np.load(path) as arrays:
                missing = sorted(set(array_names) - set(arrays.files))
        except DAMAGED as error:
            return f"{path} does not open: {error}"
        return f"{path} lacks the arrays {missing}" if missing else None

    def readable_parts(self, epoch, array_names):
        """The parts a killed build left whole; removes the first damaged one and those after."""
        paths = self.part_paths(epoch)
        for count, path in enumerate(paths):
            problem = self.part_problem(path, array_names)
            if problem:
                logging.warning("The soft-label store in %s: %s; computing it again.",
                                self.directory, problem)
                for later in paths[count:]:
                    os.remove(later)
                return paths[:count]
        return paths

    def remove_epoch(self, epoch):
        """Removes an epoch's index, then its parts."""
        # The index first: a kill in between leaves an incomplete epoch, not a wrong one.
        os.remove(self.index_path(epoch))
        for path in self._all_parts(epoch):
            os.remove(path)

    def _all_parts(self, epoch):
        return glob.glob(os.path.join(self.directory, f"epoch_{epoch:05d}_part_*.npz"))
