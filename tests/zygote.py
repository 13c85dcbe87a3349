"""Starts the tests' Python processes by forking one that has imported TensorFlow.

A process of its own for a tool's run costs about 8 seconds of a CPU core on
this machine before the tool does anything, nearly all of it the TensorFlow
and Keras imports; the slow tests start about thirty. Here one process, the
zygote, imports them once, as the tools do at start-up
(`console.quiet_tensorflow_start_up`), and then forks a child per process a
test starts. A child is a process of its own: its own pid, which a test can
SIGKILL, its own exit status, standard output and error (file descriptors),
environment, working directory and `sys.argv`; it runs the script (or `-c`
code) as `__main__` and exits as the interpreter does (`sys.exit`'s code, 1
with a traceback after an uncaught exception).

What a child shares with its siblings is the zygote's state after the
imports and nothing else: of tllm_tf only `tllm_tf.pipeline.console` and the
lazy package `__init__`s above it (a child registers the zoo's layers or a
user's loss itself), no TensorFlow runtime (devices, threads, collectives are
set up by the child, after its TF_CONFIG), no flags defined or parsed. Not for
the tests of what a process does before its first import (start-up messages,
what `import tllm_tf` loads): those start `python` itself.

The zygote forks while it has a single thread, so no lock can be held across
the fork: OpenBLAS (numpy's) is told to start no threads of its own, so a
child's numpy matrix products use one core; TensorFlow's threads are the
child's own.

    python tests/zygote.py
    # stdin, a JSON line per process: {"argv": [script or "-c", ...], "cwd": ...,
    #   "env": {...}, "stdout": PATH, "stderr": PATH}
    # stdout, JSON lines: {"pid": PID} once forked, {"exited": PID, "returncode": CODE}
    #   once it ended (CODE as `subprocess.Popen.returncode`: -N after signal N).
"""

import json
import os
import selectors
import subprocess
import sys
import threading
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _become(request):
    """In the child: the process of `request`, up to the end of its script."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    import runpy

    argv = list(request["argv"])
    if argv[0] == "-c":  # As `python -c CODE ARGS...`: sys.path[0] is "", sys.argv[0] "-c".
        sys.path[0] = ""
        sys.argv = ["-c", *argv[2:]]
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        exec(compile(argv[1], "<string>", "exec"), main.__dict__)
    else:  # As `python SCRIPT ARGS...`: sys.path[0] is the script's folder.
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")
    sys.exit(0)


def _returncode(status):
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def serve():
    from tllm_tf.pipeline import console

    console.quiet_tensorflow_start_up()
    import keras  # noqa: F401

    replies = os.fdopen(os.dup(1), "w")
    children = set()
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ)
    while True:
        for _ in selector.select(timeout=0.05):
            line = sys.stdin.readline()
            if not line:
                return
            request = json.loads(line)
            tasks = len(os.listdir("/proc/self/task"))
            if tasks != 1 or threading.active_count() != 1:
                raise RuntimeError(f"The zygote has {tasks} threads: no fork.")
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                replies.close()
                selector.close()
                _become(request)
            children.add(pid)
            replies.write(json.dumps({"pid": pid}) + "\n")
            replies.flush()
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                replies.write(json.dumps({"exited": pid, "returncode": _returncode(status)})
                              + "\n")
                replies.flush()


class Process:
    """What a test uses of a `subprocess.Popen`, for a child of the zygote."""

    def __init__(self, zygote, pid, args):
        self.zygote, self.pid, self.args = zygote, pid, args
        self.returncode = None

    def poll(self):
        with self.zygote.changed:
            return self.returncode

    def wait(self, timeout=None):
        with self.zygote.changed:
            if not self.zygote.changed.wait_for(
                    lambda: self.returncode is not None or self.zygote.gone, timeout=timeout):
                raise subprocess.TimeoutExpired(self.args, timeout)
            if self.returncode is None:
                raise RuntimeError(f"The zygote ended before process {self.pid}:\n"
                                   + self.zygote.errors())
            return self.returncode

    def send_signal(self, signal):
        if self.poll() is None:
            os.kill(self.pid, signal)

    def kill(self):
        self.send_signal(9)


class Zygote:
    """The client: starts tests/zygote.py, and through it the tests' processes.

    One request at a time (`lock`): the zygote answers each with the child's pid, then
    tells of each child's end, which the reader thread records on its `Process`.
    """

    def __init__(self, directory):
        self.directory = directory
        self.count = 0
        self.gone = False
        self.changed = threading.Condition()
        self.started = []  # `Process`es in the order of the requests
        self.running = {}  # pid -> `Process`
        self.lock = threading.Lock()
        self.log = open(os.path.join(directory, "zygote.err"), "w")
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.pending_args = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            message = json.loads(line)
            with self.changed:
                if "pid" in message:
                    process = Process(self, message["pid"], self.pending_args)
                    self.running[process.pid] = process
                    self.started.append(process)
                else:
                    self.running.pop(message["exited"]).returncode = message["returncode"]
                self.changed.notify_all()
        with self.changed:
            self.gone = True
            self.changed.notify_all()

    def errors(self):
        with open(self.log.name) as handle:
            return handle.read()[-3000:]

    def popen(self, args, cwd=ROOT, env=None, stdout=None, stderr=None):
        """Starts `python *args` (a script or `-c CODE`); `stdout`/`stderr`: file paths
        (default: files of its own in the zygote's directory)."""
        with self.lock:
            self.count += 1
            stdout = str(stdout or os.path.join(self.directory, f"{self.count}.out"))
            stderr = str(stderr or os.path.join(self.directory, f"{self.count}.err"))
            request = {"argv": [str(arg) for arg in args], "cwd": str(cwd),
                       "env": dict(os.environ if env is None else env),
                       "stdout": stdout, "stderr": stderr}
            with self.changed:
                known = len(self.started)
                self.pending_args = list(args)
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            with self.changed:
                self.changed.wait_for(lambda: len(self.started) > known or self.gone,
                                      timeout=120)
                if len(self.started) == known:
                    raise RuntimeError("The zygote did not fork:\n" + self.errors())
                process = self.started[known]
        process.stdout_path, process.stderr_path = stdout, stderr
        return process

    def run(self, args, timeout, cwd=ROOT, env=None):
        """`subprocess.run([python, *args], capture_output=True, text=True)`, forked."""
        process = self.popen(args, cwd=cwd, env=env)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        outputs = []
        for path in (process.stdout_path, process.stderr_path):
            with open(path) as handle:
                outputs.append(handle.read())
        return subprocess.CompletedProcess(
            [sys.executable, *args], process.returncode, outputs[0], outputs[1])

    def close(self):
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


if __name__ == "__main__":
    serve()
