"""Long clips in segments: a clip killed mid-way and run again is the clip an uninterrupted run makes, a
journal of another job is refused, and two processes share one clip."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch.multiprocessing as mp

from conftest import clip_facts as facts, as_rank, free_port, run_cli, write_clip
from vidcycle.apply import segments
from vidcycle.apply.jobs import ApplyOptions, translate_video
from vidcycle.apply.journal import JOURNAL, VERSION, Journal, work_folder
from vidcycle.apply.segments import SEGMENT_SECONDS
from vidcycle.errors import OutputExistsError

FPS = 12
SECONDS = 2 * SEGMENT_SECONDS + 4  # three segments: 10 s, 10 s and 4 s
COMMON = ["--device", "cpu", "--precision", "fp32", "--engine", "torch"]


@pytest.fixture
def long_clip(tmp_path):
    return write_clip(tmp_path / "long.mp4", frames=FPS * SECONDS, size=(48, 32), fps=FPS, audio=True)


def apply_args(src, model, dst, *extra):
    return ["apply", src, "-m", model, "-o", dst, *COMMON, *extra]


def kill_during_segment(args, folder: Path, segment: int, seconds: float = 120):
    """Run `vidcycle ARGS` in a process and SIGKILL it while it writes `segment` (the ones before it are in the
    journal and its temporary file exists)."""
    job = subprocess.Popen([sys.executable, "-m", "vidcycle", *map(str, args)], stderr=subprocess.PIPE,
                           stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and job.poll() is None:
            journal = folder / JOURNAL
            lines = journal.read_text().splitlines() if journal.exists() else []
            if len(lines) > segment and list(folder.glob(f".{segment:05d}.*")):
                job.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        assert job.wait() == -signal.SIGKILL, job.stderr.read().decode()[-2000:]
    finally:
        job.kill()
        job.wait()


@pytest.mark.parametrize("temporal", [[], ["--temporal"]], ids=["per-frame", "temporal"])
def test_a_clip_killed_mid_segment_and_run_again_is_the_clip_an_uninterrupted_run_makes(
        tmp_path, long_clip, tiny_model_file, temporal):
    whole, resumed = tmp_path / "whole.mp4", tmp_path / "resumed.mp4"
    assert run_cli(*apply_args(long_clip, tiny_model_file, whole, *temporal)).exit_code == 0
    kill_during_segment(apply_args(long_clip, tiny_model_file, resumed, *temporal), work_folder(resumed), 1)
    assert not resumed.exists() and len((work_folder(resumed) / JOURNAL).read_text().splitlines()) == 2
    again = run_cli(*apply_args(long_clip, tiny_model_file, resumed, *temporal))
    assert again.exit_code == 0, again.output
    assert not work_folder(resumed).exists()
    pts, pixels, audio = facts(whole)
    pts_again, pixels_again, audio_again = facts(resumed)
    assert len(pts) == FPS * SECONDS and pts == pts_again
    assert np.array_equal(pixels, pixels_again)
    assert audio == audio_again and len(audio) > 0
    assert whole.read_bytes() == resumed.read_bytes()  # x264 is deterministic at these settings
    with av.open(str(long_clip)) as source:
        assert audio == [(p.pts, bytes(p)) for p in source.demux(audio=0) if p.size]  # every packet, as it came


def test_segments_keep_the_source_timing_and_start_on_keyframes(tmp_path, long_clip, tiny_model_file):
    out = tmp_path / "out.mp4"
    assert run_cli(*apply_args(long_clip, tiny_model_file, out)).exit_code == 0
    with av.open(str(long_clip)) as source:
        source_pts = [frame.pts * frame.time_base for frame in source.decode(video=0)]
    with av.open(str(out)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
        keyframes = sorted(p.pts * p.time_base for p in packets if p.is_keyframe)
        output_pts = sorted(p.pts * p.time_base for p in packets)
    assert output_pts == source_pts
    assert {0, SEGMENT_SECONDS, 2 * SEGMENT_SECONDS} <= set(keyframes)


def unfinished(tmp_path, monkeypatch, src, model, dst, *extra):
    """An unfinished run: every segment written, killed before the join."""
    def killed(clip):
        raise KeyboardInterrupt
    monkeypatch.setattr("vidcycle.apply.jobs.join", killed)
    result = run_cli(*apply_args(src, model, dst, *extra))
    assert result.exit_code == 130 and (work_folder(dst) / JOURNAL).exists(), result.output
    monkeypatch.undo()


def other_model(tmp_path):
    from vidcycle.models.modelfile import ModelInfo, save_model
    from vidcycle.models.nets import GeneratorSpec, build_generator
    spec = GeneratorSpec(n_blocks=2, ngf=8)
    path = tmp_path / "other.safetensors"
    save_model(path, build_generator(spec), ModelInfo(spec=spec))
    return path


def newer_journal(folder: Path):
    path = folder / JOURNAL
    lines = path.read_text().splitlines()
    header = json.loads(lines[0]) | {"version": VERSION + 1}
    path.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")


@pytest.mark.parametrize("change, expected", [
    ("model", "made with another model"),
    ("options", "other options (crf 17 then, 20 now)"),
    ("source", "the source file changed"),
    ("journal", "newer vidcycle (journal format 2, this one reads 1)"),
])
def test_an_unfinished_run_of_another_job_is_refused_in_one_line(tmp_path, monkeypatch, long_clip, tiny_model_file,
                                                                 change, expected):
    out = tmp_path / "out.mp4"
    unfinished(tmp_path, monkeypatch, long_clip, tiny_model_file, out, "--crf", "17")
    model, extra = tiny_model_file, ["--crf", "17"]
    if change == "model":
        model = other_model(tmp_path)
    elif change == "options":
        extra = ["--crf", "20"]
    elif change == "source":
        write_clip(long_clip, frames=FPS * SECONDS, size=(48, 32), fps=FPS, audio=True, seed=1)
    else:
        newer_journal(work_folder(out))
    refused = run_cli(*apply_args(long_clip, model, out, *extra))
    named = [line for line in refused.stderr.splitlines() if "unfinished run" in line]
    assert refused.exit_code == 8 and len(named) == 1, refused.output  # its one input failed, an output in the way
    assert expected in named[0] and "pass --overwrite to start afresh" in named[0] and not out.exists()
    assert "overwrite=True" not in refused.stderr  # the command line's words, not the API's
    options = ApplyOptions(crf=int(extra[1]), engine="torch")
    with pytest.raises(OutputExistsError, match=re.escape(expected) + ".*pass overwrite=True to start afresh"):
        translate_video(long_clip, out, model, options, device="cpu", precision="fp32")
    afresh = run_cli(*apply_args(long_clip, model, out, *extra, "--overwrite"))
    assert afresh.exit_code == 0 and out.exists() and not work_folder(out).exists(), afresh.output


def test_the_same_job_continues_from_its_segments(tmp_path, monkeypatch, long_clip, tiny_model_file):
    out = tmp_path / "out.mp4"
    unfinished(tmp_path, monkeypatch, long_clip, tiny_model_file, out)
    translated = []
    real = segments._translate
    monkeypatch.setattr(segments, "_translate", lambda clip, k, *rest: translated.append(k) or real(clip, k, *rest))
    assert run_cli(*apply_args(long_clip, tiny_model_file, out)).exit_code == 0
    assert translated == [] and out.exists()  # every segment was on disk: only the join ran


def test_a_clip_within_one_segment_needs_no_work_folder(tmp_path, monkeypatch, tiny_model_file):
    short = write_clip(tmp_path / "short.mp4", frames=FPS * (SEGMENT_SECONDS - 2), size=(48, 32), fps=FPS)
    monkeypatch.setattr(Journal, "open", lambda *a, **k: pytest.fail("a short clip opened a journal"))
    assert run_cli(*apply_args(short, tiny_model_file, tmp_path / "out.mp4")).exit_code == 0


def _rank(rank, src, model, out, port):
    as_rank(rank, port)
    from vidcycle.apply.jobs import ApplyOptions, translate_inputs
    from vidcycle.apply import segments as spied

    real = spied._translate

    def record(clip, k, *rest):
        (Path(out).parent / f"segment{k}.rank{rank}").touch()
        return real(clip, k, *rest)
    spied._translate = record
    result = translate_inputs([src], out, model, ApplyOptions(engine="torch"), device="cpu", precision="fp32")
    assert not result.failures, result.failures


def test_two_processes_share_one_clip_and_join_what_one_process_makes(tmp_path, long_clip, tiny_model_file):
    alone = tmp_path / "alone.mp4"
    assert run_cli(*apply_args(long_clip, tiny_model_file, alone)).exit_code == 0
    shared = tmp_path / "shared" / "out.mp4"
    shared.parent.mkdir()
    mp.spawn(_rank, args=(str(long_clip), str(tiny_model_file), str(shared), free_port()), nprocs=2, join=True)
    made = sorted(path.name for path in shared.parent.glob("segment*"))
    assert made == ["segment0.rank0", "segment1.rank1", "segment2.rank0"]
    if shared.read_bytes() != alone.read_bytes():
        again = tmp_path / "again.mp4"
        assert run_cli(*apply_args(long_clip, tiny_model_file, again)).exit_code == 0
        pytest.fail(f"the shared clip differs from one process's ({where_clips_differ(alone, shared)}); a second "
                    f"one-process run equals the first: {again.read_bytes() == alone.read_bytes()}, the shared: "
                    f"{again.read_bytes() == shared.read_bytes()}")


def where_clips_differ(one, other) -> str:
    """Which frames of two clips of the same timing differ, and by how much (for a failure's message)."""
    pts, pixels, audio = facts(one)
    pts_other, pixels_other, audio_other = facts(other)
    if pts != pts_other or audio != audio_other:
        return "timing or audio"
    difference = np.abs(pixels.astype(int) - pixels_other.astype(int)).reshape(len(pixels), -1).max(axis=1)
    frames = np.flatnonzero(difference)
    return f"frames {frames.min()}-{frames.max()} ({len(frames)} of {len(pts)}) by up to {difference.max()}" \
        if len(frames) else "the same pixels"
