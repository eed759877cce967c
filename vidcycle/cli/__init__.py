"""The command line: a thin click layer over the library.

Each command converts flags, calls one library function and reports; the
error boundary is the group's (vidcycle.cli.group). Heavy imports (torch,
av, cv2) happen inside commands so `--help` is instant.
"""

import atexit
import os
import sys
import threading

# Each module adds its commands to the group.
from vidcycle.cli import apply, distill, evaluate, extract, flicker, models, serve, train  # noqa: F401
from vidcycle.cli.group import cli


def main():
    """The `vidcycle` command in this process: it ends by raising SystemExit with its code, as click's do."""
    cli(prog_name="vidcycle")


def entry_point():
    """The `vidcycle` executable and `python -m vidcycle`: the command, then `leave` with its code."""
    try:
        main()
    except SystemExit as done:
        leave(done.code)


def leave(code) -> None:
    """Exit with `code` as the interpreter would, without its teardown: the threads it would wait for are
    waited for, the exit handlers run (logging's, multiprocessing's, temporary folders') and the output is
    flushed; what is skipped is freeing every tensor and module one by one, 0.6 s after a training run on a
    2-core CPU (benchmarks/README.md). Every file vidcycle writes is closed before this."""
    status = 0 if code is None else code if isinstance(code, int) else 1
    if not isinstance(code, (int, type(None))):
        print(code, file=sys.stderr)
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said on it
            pass
    os._exit(status)
