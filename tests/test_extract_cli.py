"""`vidcycle extract`: the training sampling, written as PNG files people can inspect and curate."""

import cv2
import numpy as np

from conftest import run_cli, write_clip
from vidcycle.media.video import iter_frames
from vidcycle.training.framecache import SamplingConfig, gather_frames


def run(*args):
    return run_cli("extract", *args)


def names(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_extract_writes_lossless_frames_named_by_clip_and_index(tmp_path):
    clips = tmp_path / "clips"
    (clips / "day2").mkdir(parents=True)
    write_clip(clips / "beach.mp4", frames=12)
    write_clip(clips / "day2" / "hill.mkv", frames=7, seed=2)
    cv2.imwrite(str(clips / "photo.png"), np.zeros((8, 8, 3), np.uint8))  # images are not extracted
    out = tmp_path / "frames"
    result = run(clips, "-o", out, "--every-nth", "3", "--dedup-threshold", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    assert names(out) == ["beach_000000.png", "beach_000003.png", "beach_000006.png", "beach_000009.png",
                          "day2/hill_000000.png", "day2/hill_000003.png", "day2/hill_000006.png"]
    decoded = {frame.index: frame.rgb for frame in iter_frames(clips / "beach.mp4")}
    written = cv2.cvtColor(cv2.imread(str(out / "beach_000006.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(written, decoded[6])


def test_extract_samples_exactly_as_training_does(tmp_path):
    clip = write_clip(tmp_path / "long.mp4", frames=40)
    sampling = SamplingConfig(fps=5, max_frames_per_clip=4)
    training = gather_frames([clip], sampling, tmp_path / "cache")
    out = tmp_path / "frames"
    result = run(clip, "-o", out, "--fps", "5", "--max-frames-per-clip", "4")
    assert result.exit_code == 0, result.output
    extracted = [int(name.split("_")[1].split(".")[0]) for name in names(out)]
    assert extracted == sorted(int(item.path.stem) for item in training.items)
    assert len(extracted) == 4 and extracted[-1] > 20


def test_extract_refuses_to_overwrite_unless_asked(tmp_path):
    clip = write_clip(tmp_path / "a.mp4", frames=8)
    out = tmp_path / "frames"
    assert run(clip, "-o", out, "--dedup-threshold", "0").exit_code == 0
    before = {name: (out / name).stat().st_mtime_ns for name in names(out)}
    refused = run(clip, "-o", out, "--every-nth", "4")
    assert refused.exit_code == 8
    assert "already holds frames of a.mp4" in refused.stderr and "--overwrite" in refused.stderr
    assert {name: (out / name).stat().st_mtime_ns for name in names(out)} == before
    replaced = run(clip, "-o", out, "--every-nth", "4", "--dedup-threshold", "0", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert names(out) == ["a_000000.png", "a_000004.png"]  # the old set is replaced, not mixed in


def test_corrupt_clips_are_reported_and_the_rest_extracted(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clip(clips / "good.mp4", frames=4)
    (clips / "empty.mp4").write_bytes(b"")
    (clips / "notes.mov").write_text("not a video")
    out = tmp_path / "frames"
    result = run(clips, "-o", out, "--dedup-threshold", "0")
    assert result.exit_code == 9
    lines = result.stderr.splitlines()
    assert any(line.startswith("vidcycle: ") and "empty.mp4: empty file" in line for line in lines)
    assert sum("notes.mov" in line for line in lines) == 1
    assert "2 clip(s) could not be read" in lines[-1]
    assert names(out) == [f"good_{i:06d}.png" for i in range(4)]
    assert result.stdout == f"{out}\n"
    assert not list(out.glob(".vidcycle-extract-*"))


def test_extract_usage_errors(tmp_path):
    clip = write_clip(tmp_path / "a.mp4", frames=2)
    both = run(clip, "-o", tmp_path / "f", "--fps", "2", "--every-nth", "3")
    assert both.exit_code == 2 and "either --fps or --every-nth" in both.stderr
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "p.png"), np.zeros((8, 8, 3), np.uint8))
    none = run(photos, "-o", tmp_path / "f")
    assert none.exit_code == 4 and "no videos found" in none.stderr
    assert run(tmp_path / "missing", "-o", tmp_path / "f").exit_code == 4  # as in every command


def test_clips_with_the_same_stem_keep_apart(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clip(clips / "a.mp4", frames=2)
    write_clip(clips / "a.mkv", frames=2, seed=1)
    out = tmp_path / "frames"
    result = run(clips, clips / "a.mp4", "-o", out, "--dedup-threshold", "0")  # a.mp4 named twice: once
    assert result.exit_code == 0, result.output
    assert names(out) == ["a_mkv_000000.png", "a_mkv_000001.png", "a_mp4_000000.png", "a_mp4_000001.png"]
