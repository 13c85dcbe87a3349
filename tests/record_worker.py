"""Runs tools/train.py, recording what every distilled student ends with.

For tests/test_multi_worker.py, which compares the workers of one run: a
non-chief worker writes nothing, so this wrapper saves, after each
`Distiller.fit` of this process, the student's weights, the class mask
after every epoch and the cluster's heartbeat timeout to
`$RECORD_DIR/task<i>_fit<n>.npz` (`i` from `TF_CONFIG`).
It only reads variables, so it changes nothing in the run.

    RECORD_DIR=... TF_CONFIG=... python tests/record_worker.py --flagfile=...

With `FAIL_TASK=<i>`, worker `i` raises a `ValueError` at the end of its
first distilled epoch (a worker that stops on an error of its own). With
`HOLD_AFTER_FIRST_EPOCH=1`, every worker waits at the end of its first
distilled epoch, after the chief's checkpoint, until it is killed: a kill
then lands after exactly one epoch, however slowly the test polls.
"""

import json
import os
import runpy
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from tensorflow.python.eager import context as tf_context  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))  # train.py imports run_flags.py beside it

import tllm_tf  # noqa: E402

_fit = tllm_tf.Distiller.fit
_fits = []


class _MaskHistory(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.masks = []

    def on_epoch_end(self, epoch, logs=None):
        self.masks.append(keras.ops.convert_to_numpy(self.model.class_mask))


class _Failure(keras.callbacks.Callback):
    def __init__(self, task):
        super().__init__()
        self.task = task

    def on_epoch_end(self, epoch, logs=None):
        raise ValueError(f"injected failure of task {self.task} at epoch {epoch + 1}")


class _Hold(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            time.sleep(3600)


def _recording_fit(self, *args, callbacks=None, **kwargs):
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0)
    # Last, so it sees the mask the identification callbacks settled on.
    history = _MaskHistory()
    extra = [_Failure(task)] if os.environ.get("FAIL_TASK") == str(task) else []
    extra += [_Hold()] if os.environ.get("HOLD_AFTER_FIRST_EPOCH") == "1" else []
    result = _fit(self, *args, callbacks=list(callbacks or []) + [history] + extra, **kwargs)
    _fits.append(None)
    path = os.path.join(os.environ["RECORD_DIR"], f"task{task}_fit{len(_fits)}.npz")
    weights = {f"weight{i}": w for i, w in enumerate(self.student.get_weights())}
    coordination = tf_context.context().coordination_service
    heartbeat_ms = coordination.heartbeat_timeout_in_ms if coordination else -1
    np.savez(path, masks=np.array(history.masks), heartbeat_ms=heartbeat_ms, **weights)
    return result


tllm_tf.Distiller.fit = _recording_fit
sys.argv[0] = os.path.join(ROOT, "tools", "train.py")
runpy.run_path(sys.argv[0], run_name="__main__")
