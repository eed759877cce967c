"""Frames from footage and photos, extracted once: sampling a clip, the frame cache, gathering a domain
(`vidcycle extract` writes frames to a folder with these pieces: vidcycle.training.extract).

Videos are sampled (a rate in frames per second or every Nth frame, a cap per
clip spread over the whole clip, near-duplicates of the last kept frame
skipped) and extracted once into a cache keyed by the source file's identity
and the sampling settings; photos are read in place.
"""

import hashlib
import json
import math
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vidcycle.errors import MediaError, UsageError
from vidcycle.files import new_folder, require_existing, walk_media, write_atomic
from vidcycle.media.images import IMAGE_SUFFIXES, is_image_path, probe_image, resize_to, small_gray, write_rgb
from vidcycle.media.video import VIDEO_SUFFIXES, DecodeStats, iter_frames, probe
from vidcycle.models.store import store_home
from vidcycle.progress import bar

CACHE_VERSION = 2           # bump when the cache layout or the sampling code changes meaning
MARKER = "frames.json"      # written last: a cache folder without it is never used
CACHE_JPEG_QUALITY = 95
DEDUP_WIDTH = 64            # near-duplicate test runs on a grayscale copy this wide


@dataclass(frozen=True)
class SamplingConfig:
    fps: float = 0.0                 # frames taken per second of footage (0: use every_nth)
    every_nth: int = 1               # take every Nth decoded frame when fps is 0
    max_frames_per_clip: int = 500   # cap per clip, spread over the whole clip (0: no cap)
    dedup_threshold: float = 2.0     # skip frames whose mean abs diff to the last kept one is below (0-255)
    max_side: int = 0                # frames whose shorter side exceeds this are downscaled (0: keep)
    square: bool = False             # store frames resized to max_side x max_side instead
    # Also keep the frame right after each kept one (its true neighbour, for the temporal loss) when
    # sampling skipped it: by rate, cap or near-duplicate test.
    partners: bool = False

    @classmethod
    def from_data_config(cls, data) -> "SamplingConfig":
        """From a recipe's `data` section. Frames are cached as the loader would resize them anyway
        (load size x load size, as the reference's resize), so training decodes small JPEGs and
        resizes nothing: ~4x faster loading than resizing 16:9 frames at every step."""
        return cls(fps=float(data.fps), every_nth=int(data.every_nth),
                   max_frames_per_clip=int(data.max_frames_per_clip),
                   dedup_threshold=float(data.dedup_threshold), max_side=int(data.load_size),
                   square=not data.keep_aspect)

    def key_fields(self) -> dict:
        fields = {"fps": self.fps, "every_nth": self.every_nth, "max_frames_per_clip": self.max_frames_per_clip,
                  "dedup_threshold": self.dedup_threshold, "max_side": self.max_side, "square": self.square}
        if self.partners:  # only then: caches made without partners keep their keys
            fields["partners"] = True
        return fields


@dataclass(frozen=True)
class FrameItem:
    path: Path                       # the image file to read (a cached frame, or the photo itself)
    source: Path                     # the video or photo it came from
    clip_index: int | None           # position among the clip's kept frames (None for photos)
    size: tuple[int, int] | None = None  # (width, height) of `path` when known (JPEG photos: to within 8 px)
    frame_index: int | None = None   # decoded-frame index in the clip (None for photos)
    partner: Path | None = None      # the decoded frame right after this one, when it was not kept itself


@dataclass
class FrameSet:
    items: list[FrameItem]
    failures: list[tuple[Path, str]]  # one (file, reason) per unreadable input
    inputs: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class ClipFrames:
    """The kept frames of one clip, written into a folder, in clip order."""
    files: list[str]
    indices: list[int]               # decoded-frame index of each kept frame
    seconds: list[float | None]
    sizes: list[tuple[int, int]]
    partners: list[str | None] = field(default_factory=list)  # file of each kept frame's successor, if written
    decoded: int = 0
    damaged_packets: int = 0


def default_cache_dir() -> Path:
    return store_home() / "frames"


# ---------------------------------------------------------------- finding media

def collect_media(inputs: Sequence) -> list[Path]:
    """Videos and images under `inputs` (files or folders, searched recursively), sorted, each once.

    In folders, files are picked by suffix by the one walker (vidcycle.files.walk_media:
    hidden files skipped, links followed, loops walked once); a file named explicitly is
    kept whatever its suffix (PyAV decides if it is a video). Raises MediaError for an
    input that does not exist.
    """
    found: dict[Path, Path] = {}
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            candidates = walk_media(path, IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        elif path.is_file():
            candidates = [path]
        else:
            require_existing(raw)
            raise MediaError(f"{raw}: neither a file nor a folder")
        for candidate in candidates:
            found.setdefault(candidate.resolve(), candidate)
    return sorted(found.values())


# ---------------------------------------------------------------- sampling one clip

class _RateRule:
    """Which decoded frames the rate setting takes: by timestamp (fps) or every Nth. Asked in order."""

    FALLBACK_RATE = 30.0  # for frames without timestamps: assume a common rate rather than take them all

    def __init__(self, sampling: SamplingConfig):
        self.fps, self.every_nth, self.last_slot = sampling.fps, sampling.every_nth, None

    def __call__(self, index: int, pts, time_base) -> bool:
        if self.fps <= 0:
            return index % self.every_nth == 0
        seconds = float(pts * time_base) if pts is not None and time_base is not None else index / self.FALLBACK_RATE
        slot = math.floor(seconds * self.fps + 1e-6)
        if self.last_slot is not None and slot <= self.last_slot:
            return False
        self.last_slot = slot
        return True


def _kept_frames(path, sampling: SamplingConfig, stats: DecodeStats):
    """The sampling shared by training and `vidcycle extract`: the rate rule (frames it declines are
    never converted to RGB), then skipping near-duplicates of the last kept frame.

    Yields (frame, kept). With `sampling.partners`, the frame right after a kept one is yielded
    with kept False when it is not kept itself; otherwise only kept frames come.
    """
    rate = _RateRule(sampling)
    state = {"rate_taken": False, "partner_index": None}

    def wanted(index, pts, time_base) -> bool:
        state["rate_taken"] = rate(index, pts, time_base)  # asked of every frame, in order
        return state["rate_taken"] or index == state["partner_index"]

    last_small = None
    for frame in iter_frames(path, stats, wanted=wanted):
        if state["rate_taken"]:
            small = small_gray(frame.rgb, DEDUP_WIDTH) if sampling.dedup_threshold > 0 else None
            duplicate = (small is not None and last_small is not None
                         and float(np.mean(np.abs(small - last_small))) < sampling.dedup_threshold)
            if not duplicate:
                last_small = small
                state["partner_index"] = frame.index + 1 if sampling.partners else None
                yield frame, True
                continue
        if frame.index == state["partner_index"]:
            yield frame, False


def _stored_size(rgb: np.ndarray, sampling: SamplingConfig) -> np.ndarray:
    height, width = rgb.shape[:2]
    side = sampling.max_side
    if not side or (not sampling.square and min(height, width) <= side):
        return rgb
    if sampling.square:
        return resize_to(rgb, (side, side))
    scale = side / min(height, width)
    return resize_to(rgb, (max(side, round(width * scale)), max(side, round(height * scale))))


def sample_clip(path, sampling: SamplingConfig, folder: Path, suffix: str = ".jpg", stop=None) -> ClipFrames:
    """Decode `path` once and write its kept frames, upright, into `folder` as `<frame index>.<suffix>`.

    With a cap, frames stay spread over the whole clip: every other kept frame
    is dropped (and the stride doubled) whenever twice the cap is reached, and
    the rest is thinned evenly to the cap at the end. With `sampling.partners`,
    each kept frame's successor is written too when it is not kept itself.
    Raises MediaError when the file cannot be opened or yields no frame.
    """
    if _file_size(path) == 0:
        raise MediaError(f"{path}: empty file")
    # Decoded pixels ignore the display matrix and phone clips are stored sideways: train on them upright.
    turns = round(probe(path).rotation / 90) % 4
    folder.mkdir(parents=True, exist_ok=True)
    stats = DecodeStats()
    cap = sampling.max_frames_per_clip
    kept: list[list] = []  # [file, frame index, seconds, size, partner file or None]
    stride, number, taking = 1, 0, False
    for frame, is_kept in _kept_frames(path, sampling, stats):
        if stop is not None and stop.is_set():
            raise _Cancelled
        taking = is_kept and number % stride == 0
        number += is_kept
        if not taking:
            # A frame sampling passed over becomes the partner of the frame written just before it.
            if sampling.partners and kept and kept[-1][1] == frame.index - 1 and kept[-1][4] is None:
                kept[-1][4] = _write_frame(folder, frame, turns, sampling, suffix)[0]
            continue
        name, size = _write_frame(folder, frame, turns, sampling, suffix)
        kept.append([name, frame.index, frame.seconds, size, None])
        if cap and len(kept) >= 2 * cap:
            kept, stride = _thin(folder, kept, set(range(0, len(kept), 2)), sampling.partners), stride * 2
    if cap and len(kept) > cap:
        kept = _thin(folder, kept, set(np.linspace(0, len(kept) - 1, cap).round().astype(int).tolist()),
                     sampling.partners)
    if not kept:
        detail = f" ({stats.damaged_packets} damaged packets)" if stats.damaged_packets else ""
        raise MediaError(f"{path}: no decodable video frames{detail}")
    return ClipFrames(files=[k[0] for k in kept], indices=[k[1] for k in kept], seconds=[k[2] for k in kept],
                      sizes=[k[3] for k in kept], partners=[k[4] for k in kept], decoded=stats.frames,
                      damaged_packets=stats.damaged_packets)


def _write_frame(folder: Path, frame, turns: int, sampling: SamplingConfig, suffix: str) -> tuple[str, tuple]:
    """Write one decoded frame upright and at its stored size as `<frame index><suffix>`; (name, size)."""
    rgb = _stored_size(np.ascontiguousarray(np.rot90(frame.rgb, turns)) if turns else frame.rgb, sampling)
    name = f"{frame.index:07d}{suffix}"
    write_rgb(folder / name, rgb, CACHE_JPEG_QUALITY)
    return name, (rgb.shape[1], rgb.shape[0])


def _thin(folder: Path, kept: list, chosen: set, partners: bool) -> list:
    """Keep the entries at `chosen` positions and delete the others' files, except that a dropped
    frame right after a chosen one stays on as that one's partner (with partners on)."""
    for position, entry in enumerate(kept):
        if position in chosen:
            continue
        before = kept[position - 1] if position - 1 in chosen else None
        if partners and before is not None and before[4] is None and entry[1] == before[1] + 1:
            before[4], entry[0] = entry[0], None
        for name in (entry[0], entry[4]):
            if name:
                (folder / name).unlink()
    return [entry for position, entry in enumerate(kept) if position in chosen]


def _file_size(path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError as error:
        raise MediaError(f"{path}: cannot read ({error.strerror or error})") from error


# ---------------------------------------------------------------- the frame cache

def cache_key(path: Path, sampling: SamplingConfig) -> str:
    stat = path.stat()
    identity = {"version": CACHE_VERSION, "path": str(path.resolve()), "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns, "sampling": sampling.key_fields()}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)[:40]
    return f"{stem}-{digest}"


def cached_clip(path: Path, sampling: SamplingConfig, cache_dir: Path, stop=None) -> list[FrameItem]:
    """The clip's kept frames from the cache, extracting them first if needed.

    Extraction happens in a private folder that is renamed into place only once
    its marker is written, so an interrupted run is redone and concurrent runs
    (e.g. several DDP ranks) never see half a folder. Raises MediaError.
    """
    try:
        key = cache_key(path, sampling)
    except OSError as error:
        raise MediaError(f"{path}: cannot read ({error.strerror or error})") from error
    final = cache_dir / key
    items = _read_cached(final, path)
    if items is not None:
        return items
    try:
        partial = new_folder(cache_dir, f".{key}.partial-{os.getpid()}-")
    except OSError as error:
        raise UsageError(f"frame cache {cache_dir}: cannot write ({error.strerror or error}); "
                         f"pass another cache_dir (--cache-dir) or set VIDCYCLE_HOME") from error
    _remove_stale_partials(cache_dir, key, keep=partial)
    try:
        clip = sample_clip(path, sampling, partial, stop=stop)
        _write_marker(partial, path, sampling, clip)
        if _read_cached(final, path) is not None:
            shutil.rmtree(partial, ignore_errors=True)  # another process finished the same clip meanwhile
        else:
            if final.exists():  # an unfinished or damaged folder from an older run
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.rename(partial, final)
            except OSError:
                if _read_cached(final, path) is None:
                    raise
                shutil.rmtree(partial, ignore_errors=True)  # lost the race to another process
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    items = _read_cached(final, path)
    if items is None:
        raise MediaError(f"{path}: frame cache {final} is unreadable after extraction")
    return items


def _write_marker(folder: Path, source: Path, sampling: SamplingConfig, clip: ClipFrames) -> None:
    record = {"version": CACHE_VERSION, "source": str(source.resolve()), "sampling": sampling.key_fields(),
              "decoded": clip.decoded, "damaged_packets": clip.damaged_packets,
              "frames": [{"file": f, "index": i, "seconds": s, "size": list(z), "partner": p}
                         for f, i, s, z, p in zip(clip.files, clip.indices, clip.seconds, clip.sizes,
                                                  clip.partners or [None] * len(clip.files))]}
    write_atomic(folder / MARKER, json.dumps(record), durable=True)


def _read_cached(folder: Path, source: Path) -> list[FrameItem] | None:
    try:
        record = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        frames = record["frames"]
        items = [FrameItem(folder / f["file"], source, n, tuple(f["size"]), f["index"],
                           folder / f["partner"] if f.get("partner") else None) for n, f in enumerate(frames)]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    files = [item.path for item in items] + [item.partner for item in items if item.partner]
    if not items or not all(file.is_file() for file in files):
        return None
    return items


def _remove_stale_partials(cache_dir: Path, key: str, keep: Path) -> None:
    """Folders left by extractions that were killed (their process is gone)."""
    for partial in cache_dir.glob(f".{key}.partial-*"):
        if partial == keep:
            continue
        try:
            pid = int(partial.name.split(".partial-")[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(partial, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers come from an interrupted call in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- gathering a domain

def gather_frames(inputs, sampling: SamplingConfig, cache_dir: Path | None = None, progress=None,
                  threads: int | None = None, label: str = "frames") -> FrameSet:
    """Every usable frame under `inputs`: cached video frames and photos read in place.

    Clips are decoded once per (file identity, sampling) and photos checked
    once per file identity; a second call decodes nothing. Files are handled
    by `threads` threads (default: a quarter of the CPUs, at most 4; PyAV,
    OpenCV and file I/O release the GIL), results kept in file order.

    Unreadable files are listed in `failures` (file, reason), not raised.
    `progress` (a vidcycle.progress.Progress) counts the files in a bar named `label`.
    Raises MediaError only for an input path that does not exist.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    cache_root = cache_dir.resolve()
    media = [p for p in collect_media(inputs) if cache_root not in p.resolve().parents]  # never our own cache
    threads = threads or min(4, max(1, (os.cpu_count() or 1) // 4))
    stop = threading.Event()

    def one(path: Path):
        if stop.is_set():
            raise _Cancelled
        try:
            if is_image_path(path):
                return [FrameItem(path, path, None, _checked_photo_size(path, cache_dir))], None
            return cached_clip(path, sampling, cache_dir, stop), None
        except MediaError as error:
            return [], (path, reason(error, path))

    results: dict[Path, tuple] = {}
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vidcycle-frames")
    with bar(progress, label, len(media), "file") as counter:
        try:
            futures = {pool.submit(one, path): path for path in media}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                counter.update(1)
        except BaseException:
            stop.set()  # running extractions stop at their next frame and clean up
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    items = [item for path in media for item in results[path][0]]
    failures = [results[path][1] for path in media if results[path][1] is not None]
    return FrameSet(items, failures, inputs)


class _Cancelled(Exception):
    """Raised inside an extraction thread when the gather it belongs to was interrupted."""


def reason(error: Exception, path: Path) -> str:
    """An error's message without the path it starts with (the caller names the file itself)."""
    text = str(error)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _checked_photo_size(path: Path, cache_dir: Path) -> tuple[int, int]:
    """probe_image, remembered per file identity so a second run decodes no photo either."""
    try:
        stat = path.stat()
    except OSError as error:
        raise MediaError(f"{path}: cannot read ({error.strerror or error})") from error
    identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    note = cache_dir / "photos" / hashlib.sha256(identity.encode()).hexdigest()[:24]
    try:
        width, height = (int(v) for v in note.read_text(encoding="ascii").split())
        return width, height
    except (OSError, ValueError):
        pass
    width, height = probe_image(path)
    try:
        write_atomic(note, f"{width} {height}")
    except OSError:
        pass  # only a speed-up: the photo is probed again next time
    return width, height
