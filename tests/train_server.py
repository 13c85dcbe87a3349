"""Runs tools/train.py command lines one after another in one process.

For the tests of runs refused before training (bad flags, bad inputs): most
of such a run's time in a process of its own is the TensorFlow import, about
10 seconds on 2 CPU cores, paid here once. Each command line is `app.run` of
tools/train.py's `main` with its own flags (reset in between), its standard
output and error (file descriptors 1 and 2, so C++ logging too) sent to files,
and its exit status read as the interpreter would set it: `sys.exit`'s code,
or 1 after printing the traceback of an uncaught exception.

    python tests/train_server.py
    # then per command line, on standard input, one JSON line:
    #   {"argv": ["--flagfile=...", ...], "stdout": PATH, "stderr": PATH}
    # answered by its exit status, on a line of standard output.
"""

import json
import os
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))  # train.py imports run_flags.py beside it
os.chdir(ROOT)  # flag files name each other relative to the repository root

import train  # noqa: E402  (tools/train.py; imports TensorFlow quietly, as when run)
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

# absl's usage message, printed with a refusal, shows the main module's docstring.
sys.modules["__main__"].__doc__ = train.__doc__


def _exit_status(code):
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)  # sys.exit("message"), as the interpreter does
    return 1


def _run(argv):
    flags.FLAGS.unparse_flags()
    try:
        app.run(train.main, argv=[os.path.join("tools", "train.py"), *argv])
    except SystemExit as exit:
        return _exit_status(exit.code)
    except BaseException:  # noqa: BLE001  (what an uncaught exception does to a process)
        traceback.print_exc()
        return 1
    return 0


def serve():
    replies = os.fdopen(os.dup(1), "w")
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        with open(request["stdout"], "w") as out, open(request["stderr"], "w") as err:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            try:
                status = _run(request["argv"])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                for fd, copy in zip((1, 2), saved):
                    os.dup2(copy, fd)
                    os.close(copy)
        replies.write(f"{status}\n")
        replies.flush()


if __name__ == "__main__":
    serve()
