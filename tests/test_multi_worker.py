"""Multi-worker training: workers on 127.0.0.1 agree, and only the chief writes.

The slow tests start two `tools/train.py` processes (through
`tests/record_worker.py`, which saves each worker's final student and masks),
each told its place by its own `TF_CONFIG`, each with its own `--workdir`,
each forked from the session's zygote (tests/zygote.py, which has imported
TensorFlow); about 10 seconds per two-worker run on 2 CPU cores.
"""

import glob
import json
import os
import signal
import socket
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import checkpointed_epoch
from conftest import make_mlp
from tllm_tf.pipeline import checkpointing
from tllm_tf.pipeline import cluster_config
from tllm_tf.pipeline import config as config_lib
from tllm_tf.pipeline import multi_worker
from tllm_tf.pipeline import run_setup
from tllm_tf.pipeline import workdir as workdir_lib
from tllm_tf.pipeline import worker_failures

FLAGS = ["--flagfile=configs/demo.flags", "--teacher_model=cnn_tiny", "--teacher_epochs=1",
         "--epochs=3", "--students=tllm", "--warmup_epochs=0", "--batch_size=32",
         "--num_train=300", "--deterministic", "--verbose=0", "--strategy=multi_worker"]
TIMEOUT_S = 300


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _start_workers(zygote, workdirs, record_dir, log_dir, flags=(), worker_flags=None,
                   extra_env=None):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(len(workdirs))]}
    processes = []
    worker_flags = worker_flags or [()] * len(workdirs)
    try:
        for index, workdir in enumerate(workdirs):
            env = dict(
                os.environ, **(extra_env or {}), CUDA_VISIBLE_DEVICES="",
                RECORD_DIR=str(record_dir),
                TF_CONFIG=json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}))
            processes.append(zygote.popen(
                ["tests/record_worker.py", *FLAGS, *flags, *worker_flags[index],
                 f"--workdir={workdir}"], env=env,
                stdout=os.path.join(log_dir, f"worker{index}.out"),
                stderr=os.path.join(log_dir, f"worker{index}.err")))
    except BaseException:
        for process in processes:
            process.kill()
            process.wait()
        raise
    return processes


def _wait(processes):
    """Waits for every worker; kills whatever is left at the deadline."""
    deadline = time.time() + TIMEOUT_S
    try:
        for process in processes:
            process.wait(timeout=max(1, deadline - time.time()))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _log(log_dir, index, stream):
    with open(os.path.join(log_dir, f"worker{index}.{stream}")) as handle:
        return handle.read()


def _run_workers(zygote, workdirs, record_dir, log_dir, flags=()):
    """Runs one worker per workdir to the end; returns their stdout."""
    os.makedirs(record_dir, exist_ok=True)
    os.makedirs(log_dir, exist_ok=True)
    processes = _start_workers(zygote, workdirs, record_dir, log_dir, flags)
    _wait(processes)
    for index, process in enumerate(processes):
        assert process.returncode == 0, f"worker {index}:\n" + _log(log_dir, index, "err")[-3000:]
    return [_log(log_dir, index, "out") for index in range(len(processes))]


def _record(record_dir, task, fit=None):
    """The worker's weights and masks after its only `fit`, or after its `fit`-th."""
    (path,) = glob.glob(os.path.join(record_dir, f"task{task}_fit{fit or '*'}.npz"))
    with np.load(path) as record:
        count = sum(name.startswith("weight") for name in record.files)
        weights = [record[f"weight{i}"] for i in range(count)]
        return weights, record["masks"]


def _heartbeat_ms(record_dir, task):
    (path,) = glob.glob(os.path.join(record_dir, f"task{task}_fit*.npz"))
    with np.load(path) as record:
        return int(record["heartbeat_ms"])


def _logged_masks(stage_dir):
    with open(os.path.join(stage_dir, "mask_log.jsonl")) as handle:
        return [json.loads(line)["class_mask"] for line in handle]


def _modification_times(directory):
    return {os.path.relpath(os.path.join(parent, name), directory):
            os.path.getmtime(os.path.join(parent, name))
            for parent, _, names in os.walk(directory) for name in names}


class _FakeStrategy:
    """Just what `is_chief` and `num_workers` read of a strategy."""

    def __init__(self, cluster, task_type, task_id):
        self.cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)


@pytest.mark.parametrize("cluster, task_type, task_id, expected", [
    ({"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "chief", 0, True),
    ({"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "worker", 0, False),
    ({"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "worker", 1, False),
    ({"worker": ["b:1", "c:1"]}, "worker", 0, True),
    ({"worker": ["b:1", "c:1"]}, "worker", 1, False),
    ({"worker": ["b:1"], "evaluator": ["e:1"]}, "evaluator", 0, False),
])
def test_is_chief(cluster, task_type, task_id, expected):
    assert multi_worker.is_chief(_FakeStrategy(cluster, task_type, task_id)) is expected


def test_single_process_strategies_are_the_chief_of_one_worker():
    for strategy in (tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0"])):
        assert multi_worker.is_chief(strategy)
        assert multi_worker.num_workers(strategy) == 1
    cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"], "evaluator": ["e:1"]}
    assert multi_worker.num_workers(_FakeStrategy(cluster, "worker", 1)) == 3


def test_run_on_chief_returns_the_json_round_trip_and_raises_the_chiefs_error():
    strategy = tf.distribute.get_strategy()
    result = multi_worker.run_on_chief(
        strategy, lambda: {"epoch": 3, "accuracy": [0.5, float("nan")]})
    assert result["epoch"] == 3 and result["accuracy"][0] == 0.5
    assert np.isnan(result["accuracy"][1])

    def fail():
        raise ValueError("no such teacher")

    with pytest.raises(ValueError, match="no such teacher"):
        multi_worker.run_on_chief(strategy, fail)


def test_restore_builds_the_optimizer_once_in_the_strategy_scope(tmp_path, tiny_data):
    # Every worker must create the optimizer's variables, in the scope, before
    # the chief loads a checkpoint into them; the load must not build it again.
    devices = [device.name for device in tf.config.list_logical_devices("CPU")[:2]]
    # Not collectives: their keys would clash with another test's strategy.
    strategy = tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice())

    def compiled_model():
        with strategy.scope():
            model = make_mlp("student")
            model.compile(
                optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.01)),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    directory = str(tmp_path / "checkpoint")
    trained = compiled_model()
    trained.fit(*tiny_data, batch_size=16, epochs=1, verbose=0,
                callbacks=[checkpointing.EpochCheckpoint(directory)])
    restored = compiled_model()
    assert checkpointing.resume(restored, directory) == 1
    assert len(restored.optimizer.variables) == len(trained.optimizer.variables)
    for restored_variable, trained_variable in zip(
            restored.optimizer.variables, trained.optimizer.variables):
        assert isinstance(restored_variable.value, tf.distribute.DistributedValues)
        np.testing.assert_array_equal(restored_variable.numpy(), trained_variable.numpy())
    assert int(restored.optimizer.iterations.numpy()) == 2


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, zygote):
    """One two-worker run: its directory and the workers' stdout."""
    directory = tmp_path_factory.mktemp("uninterrupted")
    # Without the reference's fallback, so that the chief saves the student both workers
    # trained (test_every_worker_refits_with_the_chiefs_final_mask runs with it).
    outputs = _run_workers(zygote, [str(directory / "chief"), str(directory / "worker1")],
                           directory / "records", directory / "logs", ["--noreference_fallback"])
    return directory, outputs


@pytest.mark.slow
def test_two_workers_train_the_same_student_and_only_the_chief_writes(
        zygote, uninterrupted, tmp_path):
    run_dir, (chief_out, worker_out) = uninterrupted
    chief_dir, worker_dir = str(run_dir / "chief"), str(run_dir / "worker1")
    chief_weights, chief_masks = _record(run_dir / "records", 0)
    worker_weights, worker_masks = _record(run_dir / "records", 1)
    moved = [w for w in chief_weights if w.size > 1 and np.abs(w).max() > 0]
    assert moved, "the student has no trained weights"
    for chief_weight, worker_weight in zip(chief_weights, worker_weights, strict=True):
        np.testing.assert_array_equal(chief_weight, worker_weight)
    np.testing.assert_array_equal(chief_masks, worker_masks)
    assert len(chief_masks) == 3
    # Not TensorFlow's 10 s, which killed healthy workers on a busy CI host.
    for task in (0, 1):
        assert _heartbeat_ms(run_dir / "records", task) == multi_worker.HEARTBEAT_TIMEOUT_S * 1000
    stage_dir = os.path.join(chief_dir, "student_tllm")
    assert _logged_masks(stage_dir) == chief_masks.tolist()

    # The chief wrote the whole run; the other worker not even its workdir.
    for path in ("config.json", "teacher/model.keras", "teacher/history.csv",
                 "reference/reference.json", "student_tllm/model.keras",
                 "student_tllm/history.csv", "student_tllm/saved_model/saved_model.pb"):
        assert os.path.exists(os.path.join(chief_dir, path)), path
    assert os.listdir(os.path.join(stage_dir, "tensorboard"))
    assert not glob.glob(os.path.join(chief_dir, "*", "checkpoint"))
    assert not os.path.exists(worker_dir)
    assert "student_tllm: test accuracy" in chief_out
    assert "non-chief" in worker_out and "test accuracy" not in worker_out

    exported = keras.models.load_model(os.path.join(stage_dir, "model.keras"), compile=False)
    for saved, recorded in zip(exported.get_weights()[:-1], chief_weights[:-1], strict=True):
        np.testing.assert_array_equal(saved, recorded)
    # The last bias carries the prior offsets the chief fitted after training (the default).
    with open(os.path.join(stage_dir, "prior_offsets.json")) as handle:
        offsets = np.array(json.load(handle)["offsets"], np.float32)
    np.testing.assert_allclose(exported.get_weights()[-1], chief_weights[-1] + offsets, atol=1e-6)

    # Run again, the chief finds every stage done and tells the other worker. With the
    # reference's fallback on (the default, a change a workdir takes): only the chief has
    # the reference to check, and the other worker must still join the check's collective.
    written = _modification_times(chief_dir)
    again_out, _ = _run_workers(
        zygote, [chief_dir, worker_dir], tmp_path / "records_again", tmp_path / "logs_again")
    assert not os.listdir(tmp_path / "records_again"), "a stage was trained again"
    assert chief_out.splitlines()[-4:] == again_out.splitlines()[-4:]
    rewritten = _modification_times(chief_dir)
    # config.json is rewritten by every run that claims the workdir, and the report by every
    # run that finishes (tools/train.py writes it at the end); nothing else.
    changed = {path for path in written if rewritten[path] != written[path]}
    assert {path for path in changed if not path.startswith("report/")} == {"config.json"}
    assert rewritten.keys() == written.keys()
    assert not os.path.exists(worker_dir)


@pytest.mark.slow
def test_every_worker_refits_with_the_chiefs_final_mask(zygote, uninterrupted, tmp_path):
    uninterrupted_dir = str(uninterrupted[0] / "chief")
    inputs = [f"--teacher_path={os.path.join(uninterrupted_dir, 'teacher', 'model.keras')}",
              f"--reference_path={os.path.join(uninterrupted_dir, 'reference', 'reference.json')}",
              "--students=tllm,tllm_refit", "--masked_classes=4"]
    chief_dir, worker_dir = str(tmp_path / "chief"), str(tmp_path / "worker1")
    chief_out, _ = _run_workers(zygote, [chief_dir, worker_dir], tmp_path / "records",
                                tmp_path / "logs", inputs)
    final_mask = _logged_masks(os.path.join(chief_dir, "student_tllm"))[-1]
    assert final_mask[4] == 0.0
    chief_weights, chief_masks = _record(tmp_path / "records", 0, fit=2)  # fit 2: the refit.
    worker_weights, worker_masks = _record(tmp_path / "records", 1, fit=2)
    for chief_weight, worker_weight in zip(chief_weights, worker_weights, strict=True):
        np.testing.assert_array_equal(chief_weight, worker_weight)
    # Every epoch of either worker, the tllm student's final mask, and no update of its own.
    assert chief_masks.tolist() == worker_masks.tolist() == [final_mask] * 3
    # The chief judges the refit against the tllm student and saves the one it keeps.
    with open(os.path.join(chief_dir, "student_tllm_refit", "refit_check.json")) as handle:
        kept = json.load(handle)["kept"]
    if kept == "tllm":
        chief_weights = keras.models.load_model(
            os.path.join(chief_dir, "student_tllm", "model.keras"), compile=False).get_weights()
    # ... and then against the label-only reference (the default), on the chief only.
    with open(os.path.join(chief_dir, "student_tllm_refit", "reference_check.json")) as handle:
        if json.load(handle)["kept"] == "reference":
            chief_weights = keras.models.load_model(
                os.path.join(uninterrupted_dir, "reference", "model.keras"),
                compile=False).get_weights()
    saved = keras.models.load_model(
        os.path.join(chief_dir, "student_tllm_refit", "model.keras"), compile=False)
    for saved_weight, recorded in zip(saved.get_weights(), chief_weights, strict=True):
        np.testing.assert_array_equal(saved_weight, recorded)
    assert "student_tllm_refit: test accuracy" in chief_out
    assert not os.path.exists(worker_dir)


@pytest.mark.slow
def test_a_chief_that_refuses_to_start_stops_every_worker(zygote, tmp_path):
    chief_dir, worker_dir = str(tmp_path / "chief"), str(tmp_path / "worker1")
    workdir_lib.claim(chief_dir, config_lib.RunConfig(workdir=chief_dir, seed=7))
    os.makedirs(tmp_path / "logs")
    processes = _start_workers(zygote, [chief_dir, worker_dir], tmp_path, tmp_path / "logs")
    _wait(processes)
    assert [process.returncode for process in processes] == [1, 1]
    refusal = "belongs to a run with a different configuration"
    assert refusal in _log(tmp_path / "logs", 0, "err")
    worker_error = _log(tmp_path / "logs", 1, "err")
    assert "The chief failed, so this worker stops too" in worker_error
    assert refusal in worker_error and "Traceback" not in worker_error
    assert not os.path.exists(worker_dir)


@pytest.mark.slow
def test_workers_started_with_other_flags_are_all_refused_before_training(zygote, tmp_path):
    chief_dir, worker_dir = str(tmp_path / "chief"), str(tmp_path / "worker1")
    os.makedirs(tmp_path / "logs")
    processes = _start_workers(zygote, [chief_dir, worker_dir], tmp_path, tmp_path / "logs",
                               worker_flags=[(), ("--seed=1", "--verbose=1")])
    _wait(processes)
    assert [process.returncode for process in processes] == [1, 1]
    assert "--seed: 1 here, 0 on the chief" in _log(tmp_path / "logs", 1, "err")
    assert "--verbose:" not in _log(tmp_path / "logs", 1, "err")  # may differ
    assert "Another worker was started with other flags" in _log(tmp_path / "logs", 0, "err")
    assert not os.path.exists(os.path.join(chief_dir, "teacher"))


@pytest.mark.slow
@pytest.mark.parametrize("failing", [1, 0])
def test_a_worker_that_stops_on_an_error_stops_the_others_quoting_it(zygote, tmp_path, failing):
    workdirs = [str(tmp_path / "chief"), str(tmp_path / "worker1")]
    os.makedirs(tmp_path / "logs")
    processes = _start_workers(zygote, workdirs, tmp_path, tmp_path / "logs",
                               extra_env={"FAIL_TASK": str(failing)})
    _wait(processes)
    assert [process.returncode for process in processes] == [1, 1]
    injected = f"injected failure of task {failing} at epoch 1"
    assert f"Error: {injected}" in _log(tmp_path / "logs", failing, "err")
    other = _log(tmp_path / "logs", 1 - failing, "err")
    # Without the report it waited for the heartbeat timeout and did not quote the error.
    assert (f"Error: worker {failing} stopped the run: ValueError: {injected}. Fix that "
            "worker's problem, then run the same command on every worker") in other
    assert "Traceback" not in other


def test_another_workers_reported_error_is_recognised_and_nothing_else():
    reported = tf.errors.AbortedError(
        None, None, "Collective ops is aborted by: Error reported from /job:chief/task:0: "
        "chief 0 stopped the run: OSError: disk full [type.googleapis.com/tensorflow."
        "CoordinationServiceError='x']\nThe error could be from a previous operation.")
    assert (worker_failures.reported_failure(reported)
            == "chief 0 stopped the run: OSError: disk full")
    # Through a peer's aborted collective, without the service's prefix.
    assert worker_failures.reported_failure(tf.errors.AbortedError(
        None, None, "Collective ops is aborted by: Collective ops is aborted by: worker 0 "
        "stopped the run: interrupted (Ctrl-C)\nThe error could be from a previous operation.")
    ) == "worker 0 stopped the run: interrupted (Ctrl-C)"
    assert worker_failures.reported_failure(tf.errors.UnavailableError(
        None, None, "Socket closed")) is None
    assert worker_failures.reported_failure(ValueError("worker 1 stopped the run: y")) is None


def test_another_workers_error_is_quoted_once_with_its_own_full_stop():
    reported = tf.errors.AbortedError(
        None, None, "Collective ops is aborted by: worker 1 stopped the run: ValueError: The "
        "store holds no epoch yet.\nThe error could be from a previous operation.")
    with pytest.raises(worker_failures.WorkerFailedError) as raised:
        with worker_failures.shared(tf.distribute.get_strategy()):
            raise reported
    assert str(raised.value).startswith(
        "worker 1 stopped the run: ValueError: The store holds no epoch yet. Fix that worker's "
        "problem, then run the same command on every worker")


def test_one_worker_shares_nothing_and_raises_as_it_was():
    with pytest.raises(ValueError, match="its own"):
        with worker_failures.shared(tf.distribute.get_strategy()):
            raise ValueError("its own")


def test_multi_worker_without_a_cluster_is_refused(monkeypatch):
    for tf_config in (None, '{"cluster": {}, "task": {"type": "worker", "index": 0}}',
                      '{"clustr": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}'):
        if tf_config is None:
            monkeypatch.delenv("TF_CONFIG", raising=False)
        else:
            monkeypatch.setenv("TF_CONFIG", tf_config)
        with pytest.raises(ValueError, match="needs the environment variable TF_CONFIG"):
            multi_worker.make_strategy("multi_worker")
    # TensorFlow's own error named neither TF_CONFIG nor what it held.
    monkeypatch.setenv("TF_CONFIG", "{cluster")
    with pytest.raises(ValueError, match=r"TF_CONFIG is not valid JSON \(Expecting property "
                                         r"name .*\): TF_CONFIG='\{cluster'"):
        multi_worker.make_strategy("multi_worker")


def test_the_joining_line_names_the_task_and_the_cluster(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
         "task": {"type": "worker", "index": 1}}))
    assert multi_worker.joining_line().startswith("worker 1 of a cluster of 3 (TF_CONFIG)")


@pytest.mark.slow
def test_workers_distil_from_a_bfloat16_teacher(zygote, uninterrupted, tmp_path):
    # Each worker's bfloat16 copy of the teacher had its variables' initial values
    # broadcast by collective ops, which refuse bfloat16: every worker stopped.
    uninterrupted_dir = str(uninterrupted[0] / "chief")
    inputs = [f"--teacher_path={os.path.join(uninterrupted_dir, 'teacher', 'model.keras')}",
              f"--reference_path={os.path.join(uninterrupted_dir, 'reference', 'reference.json')}",
              "--noreference_fallback", "--teacher_dtype=bfloat16", "--epochs=2"]
    _run_workers(zygote, [str(tmp_path / "chief"), str(tmp_path / "worker1")],
                 tmp_path / "records", tmp_path / "logs", inputs)
    chief_weights, chief_masks = _record(tmp_path / "records", 0)
    worker_weights, worker_masks = _record(tmp_path / "records", 1)
    for chief_weight, worker_weight in zip(chief_weights, worker_weights, strict=True):
        np.testing.assert_array_equal(chief_weight, worker_weight)
    np.testing.assert_array_equal(chief_masks, worker_masks)


@pytest.mark.slow
def test_killed_workers_resume_from_the_chiefs_checkpoint(zygote, uninterrupted, tmp_path):
    uninterrupted_dir = str(uninterrupted[0] / "chief")
    # The whole run again, with the reference's fallback (the default): the resumed chief
    # finds its own reference, which the other worker's empty workdir lacks, and every
    # worker must still join the chief's check of it.
    inputs = []
    killed_dir, worker_dir = str(tmp_path / "killed"), str(tmp_path / "killed1")
    stage_dir = os.path.join(killed_dir, "student_tllm")
    os.makedirs(tmp_path / "records_killed")
    os.makedirs(tmp_path / "logs_killed")
    # The workers wait after their first epoch: the kill lands there, whatever the load.
    processes = _start_workers(zygote, [killed_dir, worker_dir], tmp_path / "records_killed",
                               tmp_path / "logs_killed", inputs,
                               extra_env={"HOLD_AFTER_FIRST_EPOCH": "1"})
    try:
        deadline = time.time() + TIMEOUT_S
        while checkpointed_epoch(stage_dir) < 1 and time.time() < deadline:
            assert all(p.poll() is None for p in processes), "a worker ended before the kill"
            time.sleep(0.02)
    finally:
        for process in processes:
            process.send_signal(signal.SIGKILL)
        _wait(processes)
    assert checkpointed_epoch(stage_dir) == 1
    assert not os.path.exists(os.path.join(stage_dir, "model.keras"))

    _run_workers(zygote, [killed_dir, worker_dir], tmp_path / "records_resumed",
                 tmp_path / "logs_resumed", inputs)
    assert _logged_masks(stage_dir) == _logged_masks(
        os.path.join(uninterrupted_dir, "student_tllm"))
    # The student as trained, before the fallback may hand over the reference's weights.
    chief_weights, _ = _record(tmp_path / "records_resumed", 0)
    uninterrupted_weights, _ = _record(uninterrupted[0] / "records", 0)
    for a, b in zip(chief_weights, uninterrupted_weights, strict=True):
        np.testing.assert_array_equal(a, b)
    resumed = keras.models.load_model(os.path.join(stage_dir, "model.keras"), compile=False)
    with open(os.path.join(stage_dir, "reference_check.json")) as handle:
        kept = json.load(handle)["kept"]
    expected_path = (os.path.join(killed_dir, "reference", "model.keras") if kept == "reference"
                     else os.path.join(uninterrupted_dir, "student_tllm", "model.keras"))
    expected = keras.models.load_model(expected_path, compile=False)
    for a, b in zip(resumed.get_weights(), expected.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    worker_weights, _ = _record(tmp_path / "records_resumed", 1)
    for a, b in zip(chief_weights, worker_weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not os.path.exists(worker_dir)


@pytest.mark.parametrize("stage_file", [
    os.path.join("reference", "reference.json"), os.path.join("teacher", "model.keras")])
def test_a_workers_own_files_do_not_change_which_collectives_it_joins(
        monkeypatch, tmp_path, stage_file):
    # Each run_on_chief is a collective every worker must join, but only the chief's
    # workdir holds the stages' files (a resumed run): the calls must not depend on them.
    calls = []
    monkeypatch.setattr(multi_worker, "run_on_chief",
                        lambda strategy, function: calls.append(function))

    def collectives(workdir):
        calls.clear()
        config = config_lib.RunConfig(workdir=str(workdir), dataset="digits", epochs=2,
                                      batch_size=32)
        run_setup.prepare(config, tf.distribute.get_strategy())
        return len(calls)

    chief_dir = tmp_path / "chief"
    (chief_dir / stage_file).parent.mkdir(parents=True)
    (chief_dir / stage_file).write_text("{}")
    assert collectives(chief_dir) == collectives(tmp_path / "worker1")


def test_one_mirrored_strategy_serves_every_run_of_a_process():
    # A second MirroredStrategy numbers its collectives from the same keys as
    # the first and clashes with it (the study runs many configs in one process).
    assert multi_worker.make_strategy("mirrored") is multi_worker.make_strategy("mirrored")


def test_workers_compare_whether_a_path_is_given_not_where_nor_verbose():
    chief = cluster_config._comparable({"seed": 0, "workdir": "/a", "teacher_path": "/t/m.keras",
                                        "masked_classes_from": "", "verbose": 2})
    worker = cluster_config._comparable({"seed": 0, "workdir": "/b", "teacher_path": "/u/m.keras",
                                         "masked_classes_from": "", "verbose": 0})
    assert chief == worker == {"seed": 0, "workdir": True, "teacher_path": True,
                               "masked_classes_from": False}
    assert cluster_config._comparable({"seed": 0, "workdir": "/a", "teacher_path": None,
                                       "masked_classes_from": ""}) != chief
