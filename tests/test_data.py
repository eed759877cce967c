"""Training data: sampling, the frame cache, failures, the unpaired dataset and its loader."""

import fractions
import multiprocessing
import os

import cv2
import numpy as np
import pytest
import torch

import vidcycle.training.framecache as data  # sampling, the cache and gathering (spied on below)
from conftest import write_clip
from vidcycle.errors import MediaError, TrainingError
from vidcycle.media.images import read_rgb
from vidcycle.training.data import UnpairedDataset, make_loader, raise_if_empty, set_loader_epoch
from vidcycle.training.framecache import FrameItem, FrameSet, SamplingConfig, collect_media, gather_frames
from vidcycle.training.recipe import load_recipe

ALL = dict(dedup_threshold=0.0, max_frames_per_clip=0)  # keep every frame the rate rule selects


def write_frames_clip(path, frames, fps=24):
    """A clip showing exactly `frames` (uint8 HxWx3 each), for content-controlled tests."""
    import av
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = fractions.Fraction(1, fps)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def source_indices(frames: FrameSet, source) -> list[int]:
    """Decoded-frame indices of the cached frames of one clip (cache files are named by them)."""
    kept = sorted((i for i in frames.items if i.source == source), key=lambda i: i.clip_index)
    assert [i.clip_index for i in kept] == list(range(len(kept)))
    return [int(i.path.stem) for i in kept]


def noise_image(path, size=(48, 40), seed=0):
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return path


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def decode_counter(monkeypatch):
    """Counts clips decoded through vidcycle.media.video.iter_frames by the data module."""
    calls = []
    original = data.iter_frames

    def counting(path, stats=None, wanted=None):
        calls.append(path)
        return original(path, stats, wanted)

    monkeypatch.setattr(data, "iter_frames", counting)
    return calls


# ---------------------------------------------------------------- sampling

def test_every_nth_takes_every_nth_decoded_frame(tmp_path, cache):
    clip = write_clip(tmp_path / "a.mp4", frames=24)
    frames = gather_frames([clip], SamplingConfig(every_nth=5, **ALL), cache)
    assert source_indices(frames, clip) == [0, 5, 10, 15, 20]
    assert all(item.path.is_file() and item.path.parent.parent == cache for item in frames.items)


def test_fps_follows_timestamps_not_frame_counts(tmp_path, cache):
    steady = write_clip(tmp_path / "steady.mp4", frames=48, fps=24)
    assert source_indices(gather_frames([steady], SamplingConfig(fps=6, **ALL), cache), steady) == \
        list(range(0, 48, 4))
    # Variable frame rate: a burst of frames in the first second, then a few slow ones.
    pts = [0, 100, 200, 300, 400, 500, 2400, 2500, 4800, 7200]  # time base 1/2400 s
    vfr = write_clip(tmp_path / "vfr.mp4", frames=len(pts), fps=24, pts_list=pts)
    frames = gather_frames([vfr], SamplingConfig(fps=1, **ALL), cache)
    assert source_indices(frames, vfr) == [0, 6, 8, 9]  # first frame of seconds 0, 1, 2 and 3


def test_cap_spreads_frames_over_the_whole_clip(tmp_path, cache):
    clip = write_clip(tmp_path / "long.mp4", frames=60)
    indices = source_indices(gather_frames([clip], SamplingConfig(max_frames_per_clip=6, dedup_threshold=0),
                                           cache), clip)
    assert len(indices) == 6
    assert indices[0] == 0 and indices[-1] >= 45  # not simply the first six frames
    assert min(np.diff(indices)) >= 5


def test_near_duplicates_of_the_last_kept_frame_are_skipped(tmp_path, cache):
    rng = np.random.default_rng(1)
    still = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    static = write_frames_clip(tmp_path / "static.mp4", [still] * 12)
    assert len(gather_frames([static], SamplingConfig(dedup_threshold=2.0), cache).items) == 1
    assert len(gather_frames([static], SamplingConfig(dedup_threshold=0.0), cache).items) == 12
    # A slow fade: each frame barely differs from the previous one, but the drift adds up
    # against the last KEPT frame, so frames are kept every few steps rather than never.
    fade = write_frames_clip(tmp_path / "fade.mp4", [np.full((48, 64, 3), 60 + i, np.uint8) for i in range(30)])
    kept = source_indices(gather_frames([fade], SamplingConfig(dedup_threshold=3.0), cache), fade)
    assert 5 <= len(kept) <= 12 and kept[0] == 0
    moving = write_clip(tmp_path / "moving.mp4", frames=10)
    assert len(gather_frames([moving], SamplingConfig(), cache).items) == 10


def test_recipe_sampling_caches_frames_already_resized_for_training(tmp_path, cache):
    recipe = load_recipe(overrides={"data.every_nth": 2, "data.load_size": 40, "data.crop_size": 32,
                                    "data.dedup_threshold": 0})
    sampling = SamplingConfig.from_data_config(recipe.data)
    assert (sampling.every_nth, sampling.max_side, sampling.square, sampling.dedup_threshold) == (2, 40, True, 0)
    clip = write_clip(tmp_path / "wide.mp4", frames=6, size=(128, 64))
    frames = gather_frames([clip], sampling, cache)
    assert len(frames.items) == 3
    for item in frames.items:  # the reference's load-size resize, done once at extraction
        assert read_rgb(item.path).shape == (40, 40, 3) and item.size == (40, 40)
    bounded = gather_frames([clip], SamplingConfig(every_nth=2, max_side=40, dedup_threshold=0), cache)
    assert [read_rgb(item.path).shape for item in bounded.items] == [(40, 80, 3)] * 3  # shorter side capped
    # Training sees the same picture either way: the resize is done once, not skipped. (The clip is
    # noise, JPEG's worst case: ~5 levels apart; the same picture mirrored is over 20 levels apart.)
    plain = UnpairedDataset(bounded, bounded, 40, 40, flip=False)[0]["x"]
    cached = UnpairedDataset(frames, frames, 40, 40, flip=False)[0]["x"]
    assert (plain - cached).abs().mean() < 0.06
    assert (plain - cached.flip(-1)).abs().mean() > 0.15


def test_clips_stored_sideways_are_sampled_upright(tmp_path, cache):
    import av
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = fractions.Fraction(1, 24)
        stream.set_display_rotation(90)  # players turn it 90 degrees counter-clockwise
        for i in range(3):
            rgb = np.zeros((48, 64, 3), np.uint8)
            rgb[:16, :16] = 255  # bright corner top-left as stored
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    frames = gather_frames([path], SamplingConfig(**ALL), cache)
    upright = read_rgb(frames.items[0].path)
    assert upright.shape == (64, 48, 3)
    assert upright[-8:, :8].mean() > 200 and upright[:8, :8].mean() < 50  # now bottom-left, as shown


# ---------------------------------------------------------------- the cache

def test_second_gather_decodes_nothing(tmp_path, cache, decode_counter, monkeypatch):
    folder = tmp_path / "x"
    folder.mkdir()
    write_clip(folder / "a.mp4", frames=8)
    write_clip(folder / "b.mkv", frames=6, seed=3)
    noise_image(folder / "photo.jpg")
    photo_reads = []
    original_probe = data.probe_image
    monkeypatch.setattr(data, "probe_image", lambda path: photo_reads.append(path) or original_probe(path))
    sampling = SamplingConfig(every_nth=2)
    first = gather_frames([folder], sampling, cache)
    assert len(decode_counter) == 2 and len(photo_reads) == 1 and len(first.items) == 8
    mtimes = {item.path: item.path.stat().st_mtime_ns for item in first.items if item.clip_index is not None}
    second = gather_frames([folder], sampling, cache)
    assert len(decode_counter) == 2 and len(photo_reads) == 1, "the second gather decoded again"
    assert second.items == first.items
    assert {item.path: item.path.stat().st_mtime_ns for item in second.items if item.clip_index is not None} == mtimes
    (folder / "photo.jpg").write_bytes(b"now broken")  # a changed photo is checked again
    third = gather_frames([folder], sampling, cache)
    assert len(photo_reads) == 2 and [p.name for p, _ in third.failures] == ["photo.jpg"]


def test_threads_change_speed_not_results(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    for i in range(4):
        write_clip(folder / f"c{i}.mp4", frames=6 + i, seed=i)
        noise_image(folder / f"p{i}.png", seed=i)
    (folder / "bad.mp4").write_text("not a video")
    one = gather_frames([folder], SamplingConfig(**ALL), tmp_path / "cache1", threads=1)
    three = gather_frames([folder], SamplingConfig(**ALL), tmp_path / "cache3", threads=3)
    strip = lambda frames: [(i.source, i.clip_index, i.path.name) for i in frames.items]  # noqa: E731
    assert strip(one) == strip(three) and len(one.items) == 4 + sum(6 + i for i in range(4))
    assert one.failures == three.failures == [(folder / "bad.mp4", three.failures[0][1])]


def test_cache_is_redone_when_the_source_or_the_sampling_changes(tmp_path, cache, decode_counter):
    clip = write_clip(tmp_path / "a.mp4", frames=8)
    assert len(gather_frames([clip], SamplingConfig(**ALL), cache).items) == 8
    assert len(gather_frames([clip], SamplingConfig(every_nth=4, **ALL), cache).items) == 2
    assert len(decode_counter) == 2
    write_clip(clip, frames=12, seed=5)  # same name, new content
    os.utime(clip, ns=(clip.stat().st_atime_ns, clip.stat().st_mtime_ns + 10**9))
    assert len(gather_frames([clip], SamplingConfig(**ALL), cache).items) == 12
    assert len(decode_counter) == 3


def test_interrupted_extraction_is_redone_never_half_used(tmp_path, cache, monkeypatch):
    clip = write_clip(tmp_path / "a.mp4", frames=10)
    original = data.iter_frames

    def dies_midway(path, stats=None, wanted=None):
        for frame in original(path, stats, wanted):
            if frame.index == 5:
                raise KeyboardInterrupt
            yield frame

    monkeypatch.setattr(data, "iter_frames", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        gather_frames([clip], SamplingConfig(**ALL), cache)
    assert not any(cache.glob("*/frames.json"))
    monkeypatch.setattr(data, "iter_frames", original)
    # A folder left by a run killed outright (no marker) is not trusted either.
    key = data.cache_key(clip, SamplingConfig(**ALL))
    (cache / key).mkdir(parents=True, exist_ok=True)
    (cache / key / "0000000.jpg").write_bytes(b"half")
    # Leftovers of an extraction whose process died are cleared; a live process's are left alone.
    dead = cache / f".{key}.partial-999999999-x"
    live = cache / f".{key}.partial-{os.getppid()}-y"
    dead.mkdir()
    live.mkdir()
    frames = gather_frames([clip], SamplingConfig(**ALL), cache)
    assert len(frames.items) == 10
    assert all(read_rgb(item.path).shape == (48, 64, 3) for item in frames.items)
    assert sorted(p.name for p in cache.iterdir()) == sorted([key, live.name])


# ---------------------------------------------------------------- failures

def test_corrupt_files_are_reported_and_skipped(tmp_path, cache):
    folder = tmp_path / "x"
    (folder / "sub").mkdir(parents=True)
    write_clip(folder / "good.mp4", frames=4)
    noise_image(folder / "sub" / "photo.png")
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("this is not a video\n")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    whole = (folder / "good.mp4").read_bytes()
    (folder / "cut.mp4").write_bytes(whole[: len(whole) // 3])
    frames = gather_frames([folder], SamplingConfig(), cache)
    failed = {path.name: reason for path, reason in frames.failures}
    assert set(failed) == {"empty.mp4", "text.mp4", "broken.png", "cut.mp4"}
    assert failed["empty.mp4"] == "empty file"
    assert all(reason for reason in failed.values())
    assert sorted({item.source.name for item in frames.items}) == ["good.mp4", "photo.png"]
    assert len(frames.items) == 5


def test_progress_hears_of_every_file(tmp_path, cache):
    from contextlib import contextmanager

    from vidcycle.progress import Bar, Progress
    calls = []

    class Counter(Bar):
        def update(self, count=1, **status):
            calls.append(("update", count))

    class Recorder(Progress):
        @contextmanager
        def bar(self, label, total=None, unit="it", initial=0):
            calls.append(("start", total))
            try:
                yield Counter()
            finally:
                calls.append(("close",))

    folder = tmp_path / "in"
    folder.mkdir()
    write_clip(folder / "a.mp4", frames=3)
    noise_image(folder / "b.png")
    (folder / "c.mp4").write_bytes(b"")
    gather_frames([folder], SamplingConfig(), cache, progress=Recorder())
    assert calls == [("start", 3), ("update", 1), ("update", 1), ("update", 1), ("close",)]
    # A cache kept inside the input folder is not mistaken for photos on the next run.
    inside = gather_frames([folder], SamplingConfig(), folder / "cache")
    again = gather_frames([folder], SamplingConfig(), folder / "cache")
    assert len(again.items) == len(inside.items) == 4


def test_collect_media_is_recursive_sorted_and_skips_other_files(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for name in ["b/deep/z.webm", "b/a.JPG", "c.tiff", "d.mov", "notes.txt", ".hidden/x.png", "._e.jpg", "f.bmp"]:
        (tmp_path / name).write_bytes(b"x")
    found = collect_media([tmp_path, tmp_path / "c.tiff"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["b/a.JPG", "b/deep/z.webm", "c.tiff", "d.mov",
                                                                  "f.bmp"]
    with pytest.raises(MediaError, match="missing_dir: no such file or folder"):
        collect_media([tmp_path / "missing_dir"])


def test_empty_domain_is_a_clear_training_error(tmp_path, cache):
    empty = tmp_path / "winter"
    empty.mkdir()
    (empty / "readme.txt").write_text("no media here")
    broken = tmp_path / "summer"
    broken.mkdir()
    (broken / "clip.mp4").write_bytes(b"")
    good = tmp_path / "good"
    good.mkdir()
    noise_image(good / "a.png")
    x, y = (gather_frames([p], SamplingConfig(), cache) for p in (good, empty))
    with pytest.raises(TrainingError, match=r"--y\) .*winter: no usable frames: no videos or images found"):
        raise_if_empty(x, y)
    x = gather_frames([broken], SamplingConfig(), cache)
    with pytest.raises(TrainingError, match=r"--x\) .*summer: no usable frames: all 1 media files failed "
                                            r"\(clip.mp4: empty file\)"):
        raise_if_empty(x, y)
    with pytest.raises(TrainingError, match="--x"):
        UnpairedDataset(x, gather_frames([good], SamplingConfig(), cache), 32, 32)


# ---------------------------------------------------------------- reading images

def test_images_of_any_depth_channels_and_orientation_read_as_rgb(tmp_path):
    from PIL import Image
    gray16 = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100)
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    bgra = np.zeros((20, 30, 4), np.uint8)
    bgra[..., 2], bgra[..., 3] = 200, 128
    cv2.imwrite(str(tmp_path / "alpha.png"), bgra)
    for name in ("g16.png", "alpha.png"):
        rgb = read_rgb(tmp_path / name)
        assert rgb.dtype == np.uint8 and rgb.shape == (20, 30, 3)
    assert read_rgb(tmp_path / "alpha.png")[0, 0].tolist() == [200, 0, 0]
    # A 40x20 picture stored sideways, with EXIF orientation 6 (rotate 90 degrees clockwise to show).
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), (250, 10, 10)).save(tmp_path / "turned.jpg", exif=exif.tobytes())
    assert read_rgb(tmp_path / "turned.jpg").shape == (40, 20, 3)
    width, height = data.probe_image(tmp_path / "turned.jpg")  # probed at 1/8 scale: within 8 px
    assert 20 <= width < 28 and 40 <= height < 48


def test_big_jpegs_load_at_reduced_scale_with_the_same_result_size(tmp_path, cache):
    big = tmp_path / "big.jpg"
    cv2.imwrite(str(big), cv2.resize(np.random.default_rng(0).integers(0, 255, (20, 30, 3), np.uint8),
                                     (1200, 800), interpolation=cv2.INTER_CUBIC))
    frames = gather_frames([big], SamplingConfig(), cache)
    assert frames.items[0].size == (1200, 800) and frames.items[0].path == big  # used in place
    dataset = UnpairedDataset(frames, frames, load_size=64, crop_size=64, flip=False)
    sample = dataset[0]["x"]
    full = cv2.resize(read_rgb(big), (64, 64), interpolation=cv2.INTER_AREA)
    expected = torch.from_numpy(full).permute(2, 0, 1).float() / 127.5 - 1
    assert sample.shape == (3, 64, 64)
    assert (sample - expected).abs().mean() < 0.03


# ---------------------------------------------------------------- the dataset

def photo_set(tmp_path, name, count, size=(48, 40)):
    folder = tmp_path / name
    folder.mkdir()
    for i in range(count):
        noise_image(folder / f"{i:02d}.png", size, seed=hash((name, i)) % 1000)
    return gather_frames([folder], SamplingConfig(), tmp_path / "cache")


def test_dataset_shapes_range_length_and_determinism(tmp_path):
    x, y = photo_set(tmp_path, "x", 3), photo_set(tmp_path, "y", 7)
    dataset = UnpairedDataset(x, y, load_size=40, crop_size=32, seed=1)
    assert len(dataset) == 7
    sample = dataset[5]
    for key in ("x", "y"):
        assert sample[key].shape == (3, 32, 32) and sample[key].dtype == torch.float32
        assert sample[key].min() >= -1 and sample[key].max() <= 1 and sample[key].std() > 0.2
    assert sample["x_index"] == 5 % 3
    again = UnpairedDataset(x, y, load_size=40, crop_size=32, seed=1)[5]
    assert torch.equal(sample["x"], again["x"]) and torch.equal(sample["y"], again["y"])
    other_seed = UnpairedDataset(x, y, load_size=40, crop_size=32, seed=2)[5]
    dataset.set_epoch(3)
    later = dataset[5]
    assert not torch.equal(sample["x"], later["x"]) or not torch.equal(sample["y"], later["y"])
    assert not torch.equal(sample["x"], other_seed["x"]) or not torch.equal(sample["y"], other_seed["y"])


def test_crop_and_flip_follow_the_paper(tmp_path):
    # A horizontal ramp: a crop's left edge tells its offset, its direction tells whether it was flipped.
    folder = tmp_path / "ramp"
    folder.mkdir()
    ramp = np.repeat(np.repeat(np.arange(0, 240, 4, dtype=np.uint8)[None, :, None], 60, 0), 3, 2)
    cv2.imwrite(str(folder / "r.png"), ramp)
    frames = gather_frames([folder], SamplingConfig(), tmp_path / "cache")
    dataset = UnpairedDataset(frames, frames, load_size=60, crop_size=32, flip=True)
    lefts, flips = set(), 0
    for epoch in range(40):
        dataset.set_epoch(epoch)
        row = dataset[0]["x"][0, 0]
        flipped = bool(row[0] > row[-1])
        flips += flipped
        lefts.add(round(float(row[-1 if flipped else 0] + 1) * 127.5 / 4))
    assert 8 <= flips <= 32
    assert len(lefts) > 10 and min(lefts) >= 0 and max(lefts) <= 60 - 32
    unflipped = UnpairedDataset(frames, frames, load_size=60, crop_size=32, flip=False)
    for epoch in range(10):
        unflipped.set_epoch(epoch)
        row = unflipped[0]["x"][0, 0]
        assert row[0] < row[-1]


def test_y_is_drawn_independently_of_x(tmp_path):
    x, y = photo_set(tmp_path, "x", 20), photo_set(tmp_path, "y", 20)
    dataset = UnpairedDataset(x, y, load_size=32, crop_size=32)
    pairs = [(dataset[i]["x_index"], dataset[i]["y_index"]) for i in range(20)]
    assert sum(a == b for a, b in pairs) <= 4
    assert len({b for _, b in pairs}) >= 8
    dataset.set_epoch(1)
    assert [dataset[i]["y_index"] for i in range(20)] != [b for _, b in pairs]


def test_temporal_pairs_share_clip_crop_and_flip(tmp_path, cache):
    rng = np.random.default_rng(4)
    base = rng.integers(40, 200, (48, 64, 3), dtype=np.int16)
    # Each frame is the previous one brightened by 8 levels: under the same crop and flip the pair
    # differs by a constant; under any other crop it would differ like noise.
    clip = write_frames_clip(tmp_path / "clip.mp4", [(base + 8 * i).astype(np.uint8) for i in range(4)])
    photo = noise_image(tmp_path / "photo.png", (64, 48))
    x = gather_frames([clip, photo], SamplingConfig(**ALL), cache)
    dataset = UnpairedDataset(x, x, load_size=48, crop_size=32, temporal=True, seed=3)
    seen_next, seen_none = 0, 0
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            sample = dataset[i]
            item = dataset.x[sample["x_index"]]
            if item.clip_index is not None and item.clip_index < 3:
                assert sample["has_next"].item() is True
                difference = (sample["x_next"] - sample["x"]) * 127.5
                assert abs(difference.mean().item() - 8) < 2 and difference.std() < 3
                seen_next += 1
            else:
                assert sample["has_next"].item() is False
                assert torch.equal(sample["x_next"], sample["x"])
                seen_none += 1
    assert seen_next == 9 and seen_none == 6



def brightening_clip(path, frames=24):
    """Each frame the previous one brightened by 4 levels: a true neighbour differs by 4, a frame
    n apart by 4n, so a pair's difference tells how far apart its frames were."""
    base = np.random.default_rng(5).integers(20, 100, (48, 64, 3), dtype=np.int16)
    return write_frames_clip(path, [(base + 4 * i).astype(np.uint8) for i in range(frames)])


@pytest.mark.parametrize("sampling", [dict(fps=4.0, dedup_threshold=0.0, max_frames_per_clip=0),
                                      dict(dedup_threshold=0.0, max_frames_per_clip=3)],
                         ids=["by-rate", "by-cap"])
def test_temporal_pairs_are_true_neighbours_when_sampling_skips_frames(tmp_path, cache, sampling):
    clip = brightening_clip(tmp_path / "clip.mp4")
    plain = gather_frames([clip], SamplingConfig(**sampling), cache)
    paired = gather_frames([clip], SamplingConfig(**sampling, partners=True), cache)
    kept = source_indices(plain, clip)
    assert source_indices(paired, clip) == kept and all(b - a >= 6 for a, b in zip(kept, kept[1:]))
    assert all(item.partner is None for item in plain.items)
    assert [int(item.partner.stem) for item in paired.items] == [i + 1 for i in kept]
    # Without partners, frames 6+ apart are not passed off as neighbours; with them, every frame pairs.
    without = UnpairedDataset(plain, plain, load_size=48, crop_size=32, temporal=True)
    assert not any(without[i]["has_next"].item() for i in range(len(without)))
    dataset = UnpairedDataset(paired, paired, load_size=48, crop_size=32, temporal=True)
    for i in range(len(dataset)):
        sample = dataset[i]
        assert sample["has_next"].item() is True
        difference = (sample["x_next"] - sample["x"]) * 127.5
        assert abs(difference.mean().item() - 4) < 1.5


def test_partners_leave_with_the_frames_the_cap_drops(tmp_path, cache):
    clip = brightening_clip(tmp_path / "clip.mp4")
    paired = gather_frames([clip], SamplingConfig(dedup_threshold=0.0, max_frames_per_clip=3, partners=True),
                           cache)
    folder = paired.items[0].path.parent
    on_disk = sorted(p.name for p in folder.iterdir() if p.suffix == ".jpg")
    assert on_disk == sorted([i.path.name for i in paired.items] + [i.partner.name for i in paired.items])


# ---------------------------------------------------------------- the loader

def test_loader_batches_and_epochs_reach_persistent_workers(tmp_path):
    x, y = photo_set(tmp_path, "x", 8), photo_set(tmp_path, "y", 5)
    dataset = UnpairedDataset(x, y, load_size=40, crop_size=32, temporal=True)
    before = len(multiprocessing.active_children())
    loader = make_loader(dataset, batch_size=4, workers=2, seed=7)
    assert loader.persistent_workers
    assert len(multiprocessing.active_children()) == before + 2   # forked at once, while the process is small

    def epoch_of(loader, epoch):
        set_loader_epoch(loader, epoch)
        batches = list(loader)
        assert [b["x"].shape for b in batches] == [(4, 3, 32, 32)] * 2
        assert all(b["has_next"].dtype == torch.bool for b in batches)
        return torch.cat([b["x"] for b in batches]), torch.cat([b["x_index"] for b in batches])

    first, order0 = epoch_of(loader, 0)
    second, order1 = epoch_of(loader, 1)
    assert sorted(order0.tolist()) == list(range(8)) and order0.tolist() != order1.tolist()
    fresh = make_loader(UnpairedDataset(x, y, load_size=40, crop_size=32, temporal=True), 4, 0, seed=7)
    again, order = epoch_of(fresh, 1)
    assert torch.equal(order, order1) and torch.equal(again, second)
    again, order = epoch_of(fresh, 0)     # what the early workers fetched before epoch 0 began was dropped
    assert torch.equal(order, order0) and torch.equal(again, first)


def test_distributed_ranks_get_disjoint_shards(tmp_path, monkeypatch):
    x, y = photo_set(tmp_path, "x", 12), photo_set(tmp_path, "y", 12)
    import torch.distributed as dist
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(dist, "get_rank", lambda group=None, rank=rank: rank)
        loader = make_loader(UnpairedDataset(x, y, 32, 32), batch_size=2, workers=0, distributed=True)
        set_loader_epoch(loader, 0)
        shards.append([(int(a), int(b)) for batch in loader for a, b in zip(batch["x_index"], batch["y_index"])])
    xs = [{a for a, _ in shard} for shard in shards]
    assert len(shards[0]) == len(shards[1]) == 6
    assert not xs[0] & xs[1] and xs[0] | xs[1] == set(range(12))


def test_batch_larger_than_the_data_is_refused(tmp_path):
    x = photo_set(tmp_path, "x", 3)
    with pytest.raises(TrainingError, match="batch size 8 is larger than the 3 samples"):
        make_loader(UnpairedDataset(x, x, 32, 32), batch_size=8, workers=0)


def test_hand_built_frame_sets_work(tmp_path):
    path = noise_image(tmp_path / "a.png")
    items = FrameSet([FrameItem(path, path, None)], [])
    assert UnpairedDataset(items, items, 40, 40)[0]["x"].shape == (3, 40, 40)


def test_keep_aspect_resizes_the_shorter_side_and_crops_from_the_whole_width(tmp_path, cache):
    recipe = load_recipe(overrides={"data.keep_aspect": True, "data.load_size": 40, "data.crop_size": 32,
                                    "data.dedup_threshold": 0})
    sampling = SamplingConfig.from_data_config(recipe.data)
    assert not sampling.square
    clip = write_clip(tmp_path / "wide.mp4", frames=2, size=(128, 64))
    frames = gather_frames([clip], sampling, cache)
    assert [read_rgb(item.path).shape for item in frames.items] == [(40, 80, 3)] * 2  # 2:1 kept
    dataset = UnpairedDataset(frames, frames, 40, 32, flip=False, keep_aspect=True)
    assert dataset[0]["x"].shape == (3, 32, 32)
    assert dataset._load(frames.items[0]).shape == (40, 80, 3)  # crops come from the unsquashed frame
    squashed = UnpairedDataset(frames, frames, 40, 32, flip=False)
    assert squashed._load(frames.items[0]).shape == (40, 40, 3)  # the reference's resize, for contrast
