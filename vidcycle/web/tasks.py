"""Jobs, training runs, distillations and ONNX exports as tasks on disk, each run by a child process.

    WORK/tasks/ID/task.json      what to do: the kind and the library call's arguments (written once)
    WORK/tasks/ID/pid.json       the child process running it now (none yet: the task is queued)
    WORK/tasks/ID/progress.json  the child's progress: done, total, unit, rate, seconds left
    WORK/tasks/ID/result.json    how it ended: done (with its outputs), failed (the one-line message), cancelled
    WORK/tasks/ID/log.txt        the child's stderr: the library's "vidcycle: ..." lines
    WORK/tasks/ID/out/           what an apply job writes

Tasks wait in two queues, each running one task at a time, oldest first: training (train, resume,
distill) and jobs (apply, export-onnx). Each takes every core it is given, so a second run beside the
first would halve both and may not fit in memory; a job still runs beside a run, so trying a clip does
not wait hours. `start_waiting` starts what may start: on each submit, and every second from the server.

The child (`python -m vidcycle.web.worker TASK_DIR`, vidcycle.web.worker) calls the library function the
matching CLI command calls. It stays in the server's process group, so stopping the server stops it; a
task whose process died without a result was interrupted and `resume_interrupted` queues it again
when the server comes back: a long clip goes on from its segments' journal, a run from its checkpoint.
Cancelling terminates the child, which cleans up as after Ctrl-C.
"""

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from vidcycle.errors import UsageError
from vidcycle.files import write_atomic

TASKS = "tasks"
KINDS = ("apply", "train", "resume", "distill", "export-onnx")
QUEUES = (("train", "resume", "distill"), ("apply", "export-onnx"))  # one running task each
_starting = threading.Lock()  # the page's handlers and the server's ticker start tasks from several threads
_children: dict[str, subprocess.Popen] = {}  # started by this server: reaped by start_waiting


_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")


def tasks_dir(work: Path) -> Path:
    return Path(work) / TASKS


def task_folder(work: Path, task_id: str) -> Path:
    """WORK/tasks/ID for an id as `submit` makes them; anything else (a '..', a path) raises UsageError."""
    if not _ID.fullmatch(str(task_id or "")):
        raise UsageError(f"{task_id or '(empty)'}: not a task id")
    return tasks_dir(work) / task_id


def submit(work: Path, kind: str, args: dict, label: str) -> str:
    """Write a new task at the end of its queue, and start it if nothing of its queue runs; returns its id."""
    if kind not in KINDS:
        raise UsageError(f"{kind}: not a task kind ({', '.join(KINDS)})")
    task_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    folder = tasks_dir(work) / task_id
    (folder / "out").mkdir(parents=True)
    write_atomic(folder / "task.json", json.dumps({"id": task_id, "kind": kind, "label": label, "args": args,
                                                   "created": time.time()}, indent=2) + "\n")
    start_waiting(work)
    return task_id


def start_waiting(work: Path) -> list[str]:
    """Start the oldest queued task of each queue that has none running; returns the ids started."""
    started = []
    with _starting:
        _reap()
        everything = list_tasks(work)
        for kinds in QUEUES:
            mine = [task for task in everything if task["kind"] in kinds]
            waiting = [task for task in mine if task["status"] == "queued"]
            if waiting and not any(task["status"] == "running" for task in mine):
                first = min(waiting, key=lambda task: (task.get("created", 0), task["id"]))["id"]
                start(work, first)
                started.append(first)
    return started


def start(work: Path, task_id: str) -> None:
    folder = task_folder(work, task_id)
    with open(folder / "log.txt", "ab") as log:
        child = subprocess.Popen([sys.executable, "-m", "vidcycle.web.worker", str(folder)], stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=log, cwd=work)
    _children[task_id] = child
    write_atomic(folder / "pid.json", json.dumps({"pid": child.pid, "started": time.time()}) + "\n")


def read(work: Path, task_id: str) -> dict:
    """The task as the page shows it: task.json's fields, `status` (queued, running, done, failed,
    cancelled, interrupted), `progress` and `result`. Raises UsageError for a malformed id."""
    folder = task_folder(work, task_id)
    task = _json(folder / "task.json") or {"id": task_id, "kind": "?", "label": "?", "args": {}}
    task["folder"] = str(folder)
    task["progress"] = _json(folder / "progress.json") or {}
    task["result"] = _json(folder / "result.json")
    if task["result"]:
        task["status"] = task["result"]["status"]
    elif (folder / "cancelled").exists():
        task["status"] = "cancelled"
    elif _pid(folder) is None:
        task["status"] = "queued"
    else:
        task["status"] = "running" if _alive(task_id, folder) else "interrupted"
    return task


def list_tasks(work: Path, kinds=KINDS) -> list[dict]:
    """Every task of these kinds, newest first."""
    folder = tasks_dir(work)
    ids = sorted((p.name for p in folder.iterdir() if _ID.fullmatch(p.name) and (p / "task.json").exists()),
                 reverse=True) \
        if folder.is_dir() else []
    return [task for task in (read(work, i) for i in ids) if task["kind"] in kinds]


def cancel(work: Path, task_id: str) -> None:
    """Stop a task: its child gets SIGTERM (it cleans up as after Ctrl-C), then SIGKILL after 10 s; what it
    left in out/ (a long clip's finished segments) goes, as a cancelled task is never continued. A run's
    folder is not in out/: it keeps its checkpoint, to resume. A queued task leaves its queue; the next
    one waiting starts."""
    folder = task_folder(work, task_id)
    if not (folder / "task.json").exists():
        raise UsageError(f"{task_id}: no such task")
    with _starting:  # a queued task is cancelled before it can start, or it has a pid
        pid = _pid(folder)
        if pid is None:
            (folder / "cancelled").touch()
            return
    if _alive(task_id, folder):
        _stop(task_id, folder, pid)
    shutil.rmtree(folder / "out", ignore_errors=True)
    (folder / "out").mkdir()
    (folder / "cancelled").touch()  # last: until the child is gone, the page still says running
    start_waiting(work)


def _stop(task_id: str, folder: Path, pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(task_id, folder):
        time.sleep(0.1)
    if _alive(task_id, folder):
        os.kill(pid, signal.SIGKILL)
        while _alive(task_id, folder):
            time.sleep(0.05)


def resume_interrupted(work: Path) -> list[str]:
    """Queue again every task whose process died without a result (the server or the machine stopped), in
    its old place, and start what may start; returns the ids queued again."""
    again = [task["id"] for task in list_tasks(work) if task["status"] == "interrupted"]
    for task_id in again:
        (task_folder(work, task_id) / "pid.json").unlink(missing_ok=True)
    start_waiting(work)
    return again


def _reap() -> None:
    """Forget the children that have exited (a task with a result is never polled again, and an exited
    child not waited for stays a zombie until the server ends)."""
    for task_id, child in list(_children.items()):
        if child.poll() is not None:
            del _children[task_id]


def _alive(task_id: str, folder: Path) -> bool:
    child = _children.get(task_id)
    if child is not None:
        return child.poll() is None
    pid = _pid(folder)
    if pid is None:
        return False
    try:  # a process of an earlier server: alive, not a zombie, and still this task's worker
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and str(folder) in cmdline


def _pid(folder: Path) -> int | None:
    found = _json(folder / "pid.json")
    return found["pid"] if found else None


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
