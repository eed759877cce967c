"""What the web app may touch: paths typed on the page stay inside its roots, names stay names, uploads
stay under their limit, and `serve --help` loads neither gradio nor torch. (No browser needed;
tests/test_serve.py drives the same refusals through the page.)"""

from pathlib import Path

import pytest

from vidcycle.errors import UsageError
from vidcycle.web.places import Places, check_name


@pytest.fixture
def places(tmp_path):
    root = tmp_path / "root"
    (root / "clips").mkdir(parents=True)
    (root / "clips" / "a.mp4").write_bytes(b"")
    (tmp_path / "outside").mkdir()
    (root / "out").symlink_to(tmp_path / "outside")
    (root / "inner").symlink_to(root / "clips")
    return Places.make([root], tmp_path / "work")


def test_paths_inside_a_root_are_found_relative_or_absolute(places):
    root = places.roots[0]
    assert places.in_root("clips/a.mp4") == root / "clips" / "a.mp4"
    assert places.in_root(str(root / "clips")) == root / "clips"
    assert places.in_root("inner") == root / "clips"  # a symlink that stays inside is fine
    assert places.in_root("") == root


@pytest.mark.parametrize("typed, said", [
    ("../root/clips", "'..' is refused"), ("clips/../../x", "'..' is refused"),
    ("out", "a symlink that leads outside the roots is refused"),
    ("/etc", "a path outside the roots is refused"), ("clips/missing.mp4", "not found under"),
])
def test_paths_that_leave_the_roots_are_refused_in_one_line(places, typed, said):
    with pytest.raises(UsageError, match=said) as refused:
        places.in_root(typed)
    assert "\n" not in str(refused.value)


def test_a_root_the_server_was_not_given_is_refused(places, tmp_path):
    with pytest.raises(UsageError, match="not one of this server's roots"):
        places.in_root("x", str(tmp_path / "outside"))


def test_what_the_app_serves_must_be_its_own(places, tmp_path):
    assert places.inside_own(places.work / "tasks" / "x.mp4") == places.work / "tasks" / "x.mp4"
    with pytest.raises(UsageError):
        places.inside_own(places.work / ".." / "outside")


@pytest.mark.parametrize("name", ["..", "a/b", "../x", "a..b", "", ".hidden", "x" * 101])
def test_names_are_names(name):
    with pytest.raises(UsageError):
        check_name(name)
    assert check_name("summer2winter-v2.1") == "summer2winter-v2.1"


def test_an_upload_above_the_limit_is_refused_before_anything_runs(places, tmp_path):
    pytest.importorskip("gradio", reason="the web extra is not installed")
    from vidcycle.errors import MediaError
    from vidcycle.web.app import Page
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 4096)
    with pytest.raises(MediaError, match=r"big\.png: .* above the upload limit of .*\(--max-upload\)"):
        Page(places, max_upload=1024).keep_upload(str(big))
    assert not (places.work / "uploads").exists() or not any((places.work / "uploads").rglob("big.png"))


def test_an_upload_keeps_a_usable_name_inside_the_work_folder(places, tmp_path):
    pytest.importorskip("gradio", reason="the web extra is not installed")
    from vidcycle.web.app import Page
    spaced = tmp_path / "my summer photo.png"
    spaced.write_bytes(b"\x89PNG")
    kept = Page(places, max_upload=1 << 20).keep_upload(str(spaced))
    assert kept.name == "my_summer_photo.png" and places.work in kept.parents


def test_serve_help_teaches_without_loading_gradio_or_torch():
    import subprocess
    import sys
    code = ("import sys; from vidcycle.cli import cli; sys.argv=['vidcycle','serve','--help']\n"
            "try:\n    cli()\nexcept SystemExit:\n    pass\n"
            "assert 'gradio' not in sys.modules and 'torch' not in sys.modules")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "--root" in shown.stdout and "http://127.0.0.1:7860" in shown.stdout


@pytest.mark.parametrize("task_id", ["../../etc", "20261204-232017-c216cc/..", "", "x"])
def test_a_task_id_is_an_id_not_a_path(places, task_id):
    from vidcycle.web import tasks
    with pytest.raises(UsageError, match="not a task id"):
        tasks.read(places.work, task_id)
    with pytest.raises(UsageError, match="not a task id"):
        tasks.cancel(places.work, task_id)


def test_a_folder_job_started_again_after_a_stop_keeps_what_it_made(places, tmp_path, tiny_model_file):
    """The worker runs `vidcycle apply ... --skip-existing`: a photo translated before the server died is
    kept, not refused as an existing output, and the job lists every output."""
    import json
    import subprocess
    import sys

    from conftest import write_noisy_images
    from vidcycle.web import tasks
    photos = write_noisy_images(places.roots[0] / "photos", 2, (90, 120, 200), size=(20, 16))
    folder = tasks.task_folder(places.work, "20260101-000000-abcdef")
    (folder / "out").mkdir(parents=True)
    (folder / "out" / "img0.png").write_bytes(b"made before the stop")
    (folder / "task.json").write_text(json.dumps({"id": folder.name, "kind": "apply", "label": "photos", "args": {
        "inputs": [str(photos)], "model": str(tiny_model_file), "device": "cpu"}}))
    subprocess.run([sys.executable, "-m", "vidcycle.web.worker", str(folder)], check=True, capture_output=True)
    task = tasks.read(places.work, folder.name)
    assert task["status"] == "done"
    assert sorted(Path(p).name for p in task["result"]["outputs"]) == ["img0.png", "img1.png"]
    assert task["progress"]["done"] == task["progress"]["total"] == 2
    assert (folder / "out" / "img0.png").read_bytes() == b"made before the stop"


def test_a_time_budget_from_the_page_reaches_the_run():
    from vidcycle.training.distillation import DistillOptions
    from vidcycle.training.trainer import RunOptions
    from vidcycle.web.worker import run_options
    options = run_options(RunOptions, {"time_budget": 90.0, "max_steps": 5}, x_inputs=["a"], y_inputs=["b"])
    assert options.max_steps == 5 and options.time_budget == 90.0
    assert run_options(DistillOptions, {"time_budget": 60}, data=["a"]).time_budget == 60.0
    assert run_options(RunOptions, {}).time_budget is None


@pytest.fixture
def fake_workers(places, monkeypatch):
    """tasks.start with a child that waits for its stdin to close instead of the worker; `finish(id)` ends
    one as the worker would (its result, then exit)."""
    import json
    import subprocess
    import sys

    from vidcycle.web import tasks
    started, children = [], {}

    def start(work, task_id):
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        tasks._children[task_id] = children[task_id] = child
        (tasks.task_folder(work, task_id) / "pid.json").write_text(json.dumps({"pid": child.pid}))
        started.append(task_id)

    def finish(task_id):
        (tasks.task_folder(places.work, task_id) / "result.json").write_text(json.dumps({"status": "done"}))
        children[task_id].stdin.close()
        children[task_id].wait()

    monkeypatch.setattr(tasks, "start", start)
    yield started, finish
    for child in children.values():
        child.kill()
        child.wait()


def test_tasks_wait_their_turn_one_run_and_one_job_at_a_time(places, fake_workers):
    from vidcycle.web import tasks, views
    started, finish = fake_workers
    work = places.work
    first_run = tasks.submit(work, "train", {"out": str(work / "runs" / "a")}, "train a")
    second_run = tasks.submit(work, "distill", {"out": str(work / "runs" / "b")}, "distill b")
    job = tasks.submit(work, "apply", {"inputs": []}, "a clip")  # the other queue: runs beside the first run
    assert started == [first_run, job]
    assert tasks.read(work, second_run)["status"] == "queued"
    assert ["queued", "waits for the task before it to end"] in [row[3:] for row in views.task_rows(work, tasks.KINDS)]
    assert ["b", "", "", "", "queued"] in [row[:5] for row in views.run_rows(work / "runs", work)]
    assert tasks.start_waiting(work) == []  # nothing may start while the first run runs

    third_run = tasks.submit(work, "resume", {"out": str(work / "runs" / "c")}, "resume c")
    finish(first_run)
    assert tasks.start_waiting(work) == [second_run]  # oldest first
    tasks.cancel(work, third_run)  # out of the queue before its turn
    finish(second_run)
    assert tasks.start_waiting(work) == []
    assert started == [first_run, job, second_run]
    assert [tasks.read(work, i)["status"] for i in (first_run, second_run, third_run)] == ["done", "done", "cancelled"]


def test_tasks_a_stopped_server_left_behind_are_queued_again_in_their_old_order(places, fake_workers):
    import subprocess
    import sys

    from vidcycle.web import tasks
    started, _ = fake_workers
    work = places.work
    older = tasks.submit(work, "train", {"out": "a"}, "train a")
    newer = tasks.submit(work, "train", {"out": "b"}, "train b")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for task_id in (older, newer):  # the server and its children died: pids of processes long gone
        child = tasks._children.pop(task_id, None)
        if child is not None:
            child.kill()
            child.wait()
        (tasks.task_folder(work, task_id) / "pid.json").write_text(f'{{"pid": {gone.stdout.strip()}}}')
    assert [tasks.read(work, i)["status"] for i in (older, newer)] == ["interrupted", "interrupted"]
    started.clear()
    assert sorted(tasks.resume_interrupted(work)) == sorted([older, newer])
    assert started == [older]
    assert tasks.read(work, newer)["status"] == "queued"
