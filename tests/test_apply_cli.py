"""`vidcycle apply` as users run it: folders with bad files, interrupted jobs, shell pipelines, torchrun shares."""

import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

import conftest
from conftest import write_clip
from vidcycle.errors import MediaError, OutputExistsError

ROOT = Path(__file__).resolve().parents[1]


def frame_count(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def image(path, size=(40, 30), seed=0):
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return path


run_cli = partial(conftest.run_cli, catch_exceptions=False)  # an unexpected exception fails with its traceback


def vidcycle_process(*args, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "vidcycle", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def wait_for_partial(job, folder, stem, seconds=60):
    """Return once `job` has opened the temporary output `.<stem>.*` in `folder`: its writer is open and the
    clip's frames are still to come. Fails the test if the job ended first or the file never came."""
    deadline = time.monotonic() + seconds
    while not list(folder.glob(f".{stem}.*")):
        if job.poll() is not None:
            pytest.fail(f"vidcycle ended (exit {job.returncode}) before opening .{stem}.*: "
                        + job.stderr.read().decode()[-2000:])
        if time.monotonic() > deadline:
            job.kill()
            job.wait()
            pytest.fail(f"no .{stem}.* in {folder} after {seconds} s: " + job.stderr.read().decode()[-2000:])
        time.sleep(0.005)


def test_bad_folder_converts_the_good_reports_each_bad_once_and_fails(tmp_path, tiny_model_file):
    folder = tmp_path / "in"
    folder.mkdir()
    write_clip(folder / "good.mp4", frames=6, audio=True)
    write_clip(folder / "cut.mp4", frames=30)
    data = (folder / "cut.mp4").read_bytes()
    (folder / "cut.mp4").write_bytes(data[: len(data) // 2])
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("this is not a video\n")
    (folder / "sub").mkdir()
    image(folder / "sub" / "a.png")
    image(folder / "sub" / "b.jpg", seed=1)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    out = tmp_path / "out"

    result = run_cli("apply", folder, "-m", tiny_model_file, "-o", out)

    assert result.exit_code == 9
    made = sorted(result.stdout.split())
    assert made == sorted(str(out / name) for name in ("good.mp4", "sub/a.png", "sub/b.jpg"))
    assert frame_count(out / "good.mp4") == 6
    assert cv2.imread(str(out / "sub" / "a.png")).shape == (30, 40, 3)
    errors = result.stderr.splitlines()
    for bad in ("cut.mp4", "empty.mp4", "notes.mp4", "broken.png"):
        assert len([line for line in errors if bad in line]) == 1, (bad, errors)
    assert "4 of 7 inputs failed" in result.stderr
    every_file = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert every_file == ["good.mp4", "sub/a.png", "sub/b.jpg"]  # no partial or temporary file


def test_default_output_beside_input_refuses_existing_and_skips(tmp_path, tiny_model_file):
    src = write_clip(tmp_path / "clip.mp4", frames=4)
    first = run_cli("apply", src, "-m", tiny_model_file)
    expected = tmp_path / "clip_tiny.mp4"
    assert first.exit_code == 0 and first.stdout.split() == [str(expected)]
    again = run_cli("apply", src, "-m", tiny_model_file)
    assert again.exit_code == OutputExistsError.exit_code == 8 and again.stdout == ""
    assert again.stderr.splitlines() == [f"vidcycle: error: {expected}: exists; pass --overwrite to replace it or "
                                         "--skip-existing to keep it"]  # one path, the flags named
    skipped = run_cli("apply", tmp_path, "-m", tiny_model_file, "--skip-existing")
    assert skipped.exit_code == 0 and skipped.stdout == ""  # the folder walk also leaves clip_tiny.mp4 alone
    assert "1 skipped" in skipped.stderr


def test_killed_mid_clip_leaves_no_output_and_skip_existing_finishes(tmp_path):
    from vidcycle.models.modelfile import ModelInfo, save_model
    from vidcycle.models.nets import GeneratorSpec, build_generator
    spec = GeneratorSpec(n_blocks=3, ngf=32)
    model = tmp_path / "slow.safetensors"
    torch.manual_seed(0)
    save_model(model, build_generator(spec), ModelInfo(spec=spec, source="test"))
    folder = tmp_path / "in"
    folder.mkdir()
    write_clip(folder / "a_short.mp4", frames=3)
    # many small frames: even on a fast machine the job is still in this clip when its partial appears
    # (the kill follows at once), while the in-process rerun below stays cheap on a CPU
    write_clip(folder / "b_long.mp4", frames=1000, size=(32, 32))
    out = tmp_path / "out"

    job = vidcycle_process("apply", folder, "-m", model, "-o", out, "--batch-size", "2")
    wait_for_partial(job, out, "b_long")
    assert job.poll() is None, job.stderr.read().decode()
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert (out / "a_short.mp4").exists()
    assert not (out / "b_long.mp4").exists()
    short_mtime = (out / "a_short.mp4").stat().st_mtime_ns

    again = run_cli("apply", folder, "-m", model, "-o", out, "--skip-existing")
    assert again.exit_code == 0, again.stderr
    assert again.stdout.split() == [str(out / "b_long.mp4")]
    assert frame_count(out / "b_long.mp4") == 1000
    assert (out / "a_short.mp4").stat().st_mtime_ns == short_mtime
    assert sorted(p.name for p in out.iterdir()) == ["a_short.mp4", "b_long.mp4"]  # the stale partial is gone


def test_sigterm_cleans_its_temporary_file(tmp_path):
    from vidcycle.models.modelfile import ModelInfo, save_model
    from vidcycle.models.nets import GeneratorSpec, build_generator
    spec = GeneratorSpec(n_blocks=3, ngf=32)
    model = tmp_path / "slow.safetensors"
    save_model(model, build_generator(spec), ModelInfo(spec=spec, source="test"))
    # 10 s: one piece, not segments (tests/test_segments.py); cannot be done when the partial appears
    src = write_clip(tmp_path / "long.mp4", frames=3000, size=(32, 32), fps=300)
    job = vidcycle_process("apply", src, "-m", model, "-o", tmp_path / "out" / "long.mp4")
    wait_for_partial(job, tmp_path / "out", "long")
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 130, stderr.decode()
    assert list((tmp_path / "out").iterdir()) == []


def test_stdin_path_list_through_a_real_pipeline(tmp_path, tiny_model_file):
    folder = tmp_path / "photos"
    (folder / "deep").mkdir(parents=True)
    names = [folder / "plain.png", folder / "with space.jpg", folder / "deep" / "été à Zürich.png"]
    for i, path in enumerate(names):
        image(path, seed=i) if path.suffix == ".png" else cv2.imencode(".jpg", np.zeros((30, 40, 3), np.uint8))[1] \
            .tofile(str(path))
    clip = write_clip(tmp_path / "clip née.mp4", frames=4)
    listing = "".join(f"{p.relative_to(tmp_path)}\n" for p in [*names, clip]).encode()

    job = vidcycle_process("apply", "-", "-m", tiny_model_file, "-o", "out", cwd=tmp_path, stdin=subprocess.PIPE)
    stdout, stderr = job.communicate(listing, timeout=120)

    assert job.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    expected = [f"out/{p.relative_to(tmp_path)}" for p in [*names, clip]]
    assert lines == expected
    for line in lines:
        assert (tmp_path / line).stat().st_size > 0
    assert frame_count(tmp_path / "out" / "clip née.mp4") == 4


def test_single_image_bytes_stdin_to_stdout(tmp_path, tiny_model_file):
    ok, jpeg = cv2.imencode(".jpg", np.full((30, 50, 3), 120, np.uint8))
    job = vidcycle_process("apply", "-", "-o", "-", "-m", tiny_model_file, "--format", "png", stdin=subprocess.PIPE)
    stdout, stderr = job.communicate(jpeg.tobytes(), timeout=120)
    assert job.returncode == 0, stderr.decode()
    assert stdout.startswith(b"\x89PNG")
    assert cv2.imdecode(np.frombuffer(stdout, np.uint8), cv2.IMREAD_UNCHANGED).shape == (30, 50, 3)


def test_torchrun_shares_split_the_inputs_without_overlap(tmp_path, tiny_model_file, monkeypatch):
    from vidcycle.apply.jobs import translate_inputs
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        image(folder / f"p{i}.png", seed=i)
    made = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        made.append({p.name for p in translate_inputs([folder], model=tiny_model_file, output=tmp_path / "out",
                                                      device="cpu").outputs})
    assert made[0].isdisjoint(made[1])
    assert made[0] | made[1] == {f"p{i}.png" for i in range(5)}
    assert made[0] == {"p0.png", "p2.png", "p4.png"}


def test_help_teaches_the_pipeline_modes():
    text = run_cli("apply", "--help").stdout
    for phrase in ("-o -", "stdin", "torchrun", "--skip-existing", "--side-by-side", "--temporal"):
        assert phrase in text


def test_output_file_name_with_many_inputs_is_refused(tmp_path, tiny_model_file):
    image(tmp_path / "a.png")
    image(tmp_path / "b.png", seed=1)
    result = run_cli("apply", tmp_path / "a.png", tmp_path / "b.png", "-m", tiny_model_file, "-o", tmp_path / "x.png")
    assert result.exit_code == 2 and "give a folder" in result.stderr  # a usage mistake, not a crash
    assert not (tmp_path / "x.png").exists()
    bad_model = run_cli("apply", tmp_path / "a.png", "-m", "no-such-model")
    assert bad_model.exit_code == 5 and "unknown model" in bad_model.stderr


class FakeBar:
    """Stands in for tqdm (which draws nothing without a terminal), keeping its counts."""

    def __init__(self, total=None, initial=0, **kwargs):
        self.total, self.n, self.initial, self.last_print_n = total, initial, initial, initial

    def update(self, count=1):
        self.n += count

    def refresh(self):
        pass

    def close(self):
        pass


def test_the_job_bar_counts_frames_and_what_a_resumed_run_skipped(monkeypatch):
    import tqdm
    from vidcycle.cli.apply import _BarReporter
    monkeypatch.setattr(tqdm, "tqdm", FakeBar)
    bars = _BarReporter()
    bars.job_started(4)
    bars.job_planned({"long.mp4": 100, "short.mp4": 50, "photo.png": 1, "gone.png": 1})
    bars.clip_started("long.mp4", 100)
    bars.frames_skipped(40)  # finished by an interrupted run: done, but not in the rate
    bars.frames_done(60)
    bars.clip_finished()
    bars.output_written("long.mp4", "out/long.mp4")
    assert (bars.job.n, bars.job.initial, bars.job.total) == (100, 40, 152)
    bars.clip_started("short.mp4", 50)
    bars.frames_done(45)  # its header promised 50
    bars.clip_finished()
    bars.output_written("short.mp4", "out/short.mp4")
    bars.output_written("photo.png", "out/photo.png")
    bars.input_failed("gone.png", "gone.png: no such file")
    assert (bars.job.n, bars.job.total) == (146, 146)


def test_existing_outputs_refuse_a_folder_job_before_any_work_with_exit_8(tmp_path, tiny_model_file):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        image(folder / name)
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"mine")
    refused = run_cli("apply", folder, "-m", tiny_model_file, "-o", out)
    assert refused.exit_code == 8 and refused.stdout == ""
    assert refused.stderr.splitlines() == [f"vidcycle: error: {out / 'b.png'}: exists; pass --overwrite to replace "
                                           "it or --skip-existing to keep it"]
    assert sorted(p.name for p in out.iterdir()) == ["b.png"]  # nothing converted before the refusal
    from vidcycle.apply.jobs import translate_inputs
    with pytest.raises(OutputExistsError, match=r"pass overwrite=True to replace it or skip_existing=True"):
        translate_inputs([folder], out, tiny_model_file)  # the API names its parameters


def test_a_missing_input_is_refused_before_the_model_loads(tmp_path):
    image(tmp_path / "here.png")
    result = run_cli("apply", tmp_path / "here.png", tmp_path / "gone", "-m", "no-such-model")
    assert result.exit_code == MediaError.exit_code == 4  # not 5: the model was never looked up
    assert result.stderr.splitlines() == [f"vidcycle: error: {tmp_path / 'gone'}: no such file or folder"]
