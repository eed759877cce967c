"""`vidcycle eval-video` and measure_flicker on small clips written in the test."""

import fractions
import json

import av
import numpy as np
import pytest

from conftest import run_cli, write_clip, write_to_a_full_disk, write_tone
from test_temporal import brightness_flicker, pan, stylise
from vidcycle.quality.flicker import measure_flicker


def write_frames(path, frames, fps=24, audio=False, pts=None, audio_seconds=None):
    """Encode exactly these frames (near-lossless H.264) with optional timestamps and an AAC tone."""
    time_base = fractions.Fraction(1, fps * 100 if pts is not None else fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "4", "preset": "ultrafast"})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt, stream.time_base = "yuv420p", time_base
        audio_stream = container.add_stream("aac", rate=44100) if audio else None
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = (pts[i] if pts is not None else i), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if audio_stream is not None:
            write_tone(container, audio_stream, audio_seconds or len(frames) / fps)
    return path


def run(*args):
    return run_cli("eval-video", *args)


def test_a_clip_against_itself_scores_its_floor_and_keeps_its_structure(tmp_path):
    clip = write_clip(tmp_path / "a.mp4", frames=12, size=(96, 64), audio=True)
    result = run(clip, clip, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    error = report["warping_error"]
    assert error["pairs"] == 11
    assert error["translated"] == error["source"]
    assert error["excess"] == 0.0
    assert 0.5 < error["mask_kept"] <= 1.0
    assert report["structure_ok"] and report["differ"] == []
    assert {c["name"] for c in report["checks"]} >= {"frames", "timestamps", "size", "audio", "rotation", "colour"}


def test_the_table_shows_the_error_the_floor_and_each_structural_fact(tmp_path):
    clip = write_clip(tmp_path / "a.mp4", frames=8, size=(64, 48), audio=True)
    result = run(clip, clip)
    assert result.exit_code == 0, result.output
    assert result.stderr == "" or "eval-video" in result.stderr  # only the progress bar
    for words in ("warping error", "source (floor)", "mask kept", "frames", "timestamps", "size", "audio"):
        assert words in result.stdout
    assert "DIFFERS" not in result.stdout


def test_a_flickering_translation_scores_clearly_above_a_stable_one(tmp_path):
    frames = pan(frames=12, step=3, width=128, height=96)
    source = write_frames(tmp_path / "source.mp4", frames)
    stable = write_frames(tmp_path / "stable.mp4", stylise(frames))
    flicker = write_frames(tmp_path / "flicker.mp4", brightness_flicker(stylise(frames)))
    stable_report = measure_flicker(source, stable)
    flicker_report = measure_flicker(source, flicker)
    assert stable_report.error.excess < 2e-4
    assert flicker_report.error.excess > 10 * max(stable_report.error.excess, 1e-5)
    assert flicker_report.structure_ok


def test_plot_draws_where_and_when_it_flickers_and_never_overwrites(tmp_path):
    import cv2

    frames = pan(frames=8, step=3, width=128, height=96)
    source = write_frames(tmp_path / "source.mp4", frames)
    flicker = write_frames(tmp_path / "flicker.mp4", brightness_flicker(stylise(frames)))
    plot = tmp_path / "flicker.png"
    result = run(source, flicker, "--plot", plot)
    assert result.exit_code == 0, result.output
    picture = cv2.imread(str(plot))
    assert picture is not None and picture.shape[1] >= 720 and picture.shape[0] > 300
    assert run(source, flicker, "--plot", plot).exit_code == 8  # exists: refused before any work
    assert run(source, flicker, "--plot", plot, "--overwrite").exit_code == 0


def test_a_plot_the_disk_cannot_take_is_one_line_naming_it_and_leaves_nothing(tmp_path, monkeypatch):
    """An OS refusal the user can mend (here a full disk) reaches the command line as one line, exit 1."""
    from vidcycle.media import charts
    frames = pan(frames=6, step=3, width=64, height=48)
    source = write_frames(tmp_path / "source.mp4", frames)
    monkeypatch.setattr(charts, "write_atomic", write_to_a_full_disk)
    plot = tmp_path / "plots" / "flicker.png"
    result = run(source, source, "--plot", plot)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1] == f"vidcycle: error: {plot}: No space left on device"
    assert list(plot.parent.iterdir()) == []
    monkeypatch.setenv("VIDCYCLE_DEBUG", "1")
    assert isinstance(run(source, source, "--plot", plot).exception, OSError)  # the traceback, for a developer


def test_structural_differences_are_named(tmp_path):
    frames = pan(frames=10, step=2, width=96, height=64)
    source = write_frames(tmp_path / "source.mp4", frames, audio=True)
    shorter = write_frames(tmp_path / "shorter.mp4", frames[:8], audio=True, audio_seconds=10 / 24)
    shifted_pts = [i * 100 + (50 if i >= 5 else 0) for i in range(10)]
    source_pts = write_frames(tmp_path / "source_pts.mp4", frames, pts=[i * 100 for i in range(10)])
    shifted = write_frames(tmp_path / "shifted.mp4", frames, pts=shifted_pts)
    resized = write_frames(tmp_path / "resized.mp4", np.ascontiguousarray(frames[:, :, :64]), audio=True)
    silent = write_frames(tmp_path / "silent.mp4", frames, audio=False)

    def differ(a, b):
        result = run(a, b, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["differ"]

    assert differ(source, shorter) == ["frames", "timestamps"]
    assert differ(source_pts, shifted) == ["timestamps"]
    assert differ(source, resized) == ["size"]
    assert differ(source, silent) == ["audio"]
    table = run(source, silent).stdout
    assert "none" in table and "DIFFERS" in table


def test_a_lost_rotation_is_named(tmp_path):
    frames = pan(frames=4, step=2, width=64, height=48)
    rotated = tmp_path / "rotated.mp4"
    with av.open(str(rotated), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(90)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    upright = write_frames(tmp_path / "upright.mp4", frames)
    report = measure_flicker(rotated, upright)
    assert [c.name for c in report.checks if not c.same] == ["rotation"]


def test_a_different_time_base_with_the_same_times_is_not_a_difference(tmp_path):
    frames = pan(frames=6, step=2, width=64, height=48)
    coarse = write_frames(tmp_path / "coarse.mp4", frames)  # time base 1/24 (muxer may refine it)
    fine = write_frames(tmp_path / "fine.mp4", frames, pts=[i * 100 for i in range(6)])  # 1/2400
    assert measure_flicker(coarse, fine).structure_ok


@pytest.mark.parametrize("which", ["source", "translated"])
def test_a_file_that_is_not_media_fails_with_one_line(tmp_path, which):
    clip = write_clip(tmp_path / "a.mp4", frames=4)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    args = (junk, clip) if which == "source" else (clip, junk)
    result = run(*args)
    assert result.exit_code == 4
    assert "junk.mp4" in result.stderr and "Traceback" not in result.output
    assert result.stderr.strip().count("\n") == 0


def test_a_missing_file_is_a_media_error(tmp_path):
    result = run(tmp_path / "nope.mp4", tmp_path / "nope2.mp4")
    assert result.exit_code == 4 and result.stderr.strip() == f"vidcycle: error: {tmp_path / 'nope.mp4'}: no such file or folder"
