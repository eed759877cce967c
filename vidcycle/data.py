"""Training data: frames sampled from footage and photos, a frame cache, and the unpaired dataset.

Videos are sampled (a rate in frames per second or every Nth frame, a cap per
clip spread over the whole clip, near-duplicates of the last kept frame
skipped) and extracted once into a cache keyed by the source file's identity
and the sampling settings; photos are read in place. `UnpairedDataset` draws
X and Y independently and augments as the paper does (resize to the load
size, random crop, random horizontal flip, values in [-1, 1]).
"""

import glob
import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from .errors import MediaError, OutputExistsError, TrainingError, VidcycleError
from .images import IMAGE_SUFFIXES, is_image_path, read_image
from .store import store_home
from .translator import frames_to_batch
from .video import VIDEO_SUFFIXES, DecodeStats, iter_frames, probe

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


@dataclass
class ExtractReport:
    written: list[Path]
    failures: list[tuple[Path, str]]


def default_cache_dir() -> Path:
    return store_home() / "frames"


# ---------------------------------------------------------------- finding media

def collect_media(inputs: Sequence) -> list[Path]:
    """Videos and images under `inputs` (files or folders, searched recursively), sorted, each once.

    In folders, files are picked by suffix and hidden files are skipped; a file
    named explicitly is kept whatever its suffix (PyAV decides if it is a video).
    Raises MediaError for an input that does not exist.
    """
    found: dict[Path, Path] = {}
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            candidates = sorted(p for p in path.rglob("*") if p.is_file() and _is_media_name(p, path))
        elif path.is_file():
            candidates = [path]
        else:
            raise MediaError(f"{raw}: no such file or folder")
        for candidate in candidates:
            found.setdefault(candidate.resolve(), candidate)
    return sorted(found.values())


def _is_media_name(path: Path, root: Path) -> bool:
    if any(part.startswith(".") for part in path.relative_to(root).parts):
        return False
    suffix = path.suffix.lower()
    return suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES


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
            small = _small_gray(frame.rgb) if sampling.dedup_threshold > 0 else None
            duplicate = (small is not None and last_small is not None
                         and float(np.mean(np.abs(small - last_small))) < sampling.dedup_threshold)
            if not duplicate:
                last_small = small
                state["partner_index"] = frame.index + 1 if sampling.partners else None
                yield frame, True
                continue
        if frame.index == state["partner_index"]:
            yield frame, False


def _small_gray(rgb: np.ndarray) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = min(1.0, DEDUP_WIDTH / width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA) if scale < 1 else rgb
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)


def _stored_size(rgb: np.ndarray, sampling: SamplingConfig) -> np.ndarray:
    height, width = rgb.shape[:2]
    side = sampling.max_side
    if not side or (not sampling.square and min(height, width) <= side):
        return rgb
    if sampling.square:
        return resize_to(rgb, (side, side))
    scale = side / min(height, width)
    return resize_to(rgb, (max(side, round(width * scale)), max(side, round(height * scale))))


def training_size(width: int, height: int, load_size: int, keep_aspect: bool) -> tuple[int, int]:
    """(width, height) a frame is resized to before cropping: load x load (the reference), or
    the shorter side to load_size with the aspect ratio kept."""
    if not keep_aspect:
        return load_size, load_size
    scale = load_size / min(width, height)
    return max(load_size, round(width * scale)), max(load_size, round(height * scale))


def resize_for_training(rgb: np.ndarray, load_size: int, keep_aspect: bool) -> np.ndarray:
    height, width = rgb.shape[:2]
    return resize_to(rgb, training_size(width, height, load_size, keep_aspect))


def resize_to(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (width, height): area averaging where both sides shrink (antialiased, like the
    reference's PIL resize), bicubic otherwise."""
    height, width = rgb.shape[:2]
    if size == (width, height):
        return rgb
    shrinking = size[0] <= width and size[1] <= height
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


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
    _write_image(folder / name, rgb)
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


def _write_image(path: Path, rgb: np.ndarray) -> None:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if path.suffix == ".png":
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        # 4:2:0 chroma (the default) loses nothing: the source video is 4:2:0 already.
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, CACHE_JPEG_QUALITY])
    if not ok:
        raise MediaError(f"{path}: could not encode frame")
    try:
        path.write_bytes(data.tobytes())
    except OSError as error:
        raise VidcycleError(f"{path.parent}: cannot write frames ({error.strerror or error}); "
                            f"free some space or choose another folder") from error


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
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{key}.partial-{os.getpid()}-", dir=cache_dir))
    except OSError as error:
        raise VidcycleError(f"frame cache {cache_dir}: cannot write ({error.strerror or error}); "
                            f"pass another cache folder or set VIDCYCLE_HOME") from error
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
    temporary = folder / (MARKER + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, folder / MARKER)


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
                  threads: int | None = None) -> FrameSet:
    """Every usable frame under `inputs`: cached video frames and photos read in place.

    Clips are decoded once per (file identity, sampling) and photos checked
    once per file identity; a second call decodes nothing. Files are handled
    by `threads` threads (default: a quarter of the CPUs, at most 4; PyAV,
    OpenCV and file I/O release the GIL), results kept in file order.

    Unreadable files are listed in `failures` (file, reason), not raised.
    `progress` (optional) gets start(total files), update(1) per file, close().
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
            return [], (path, _reason(error, path))

    results: dict[Path, tuple] = {}
    if progress:
        progress.start(len(media))
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vidcycle-frames")
    try:
        futures = {pool.submit(one, path): path for path in media}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if progress:
                progress.update(1)
    except BaseException:
        stop.set()  # running extractions stop at their next frame and clean up
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if progress:
            progress.close()
    items = [item for path in media for item in results[path][0]]
    failures = [results[path][1] for path in media if results[path][1] is not None]
    return FrameSet(items, failures, inputs)


class _Cancelled(Exception):
    """Raised inside an extraction thread when the gather it belongs to was interrupted."""


def _reason(error: Exception, path: Path) -> str:
    text = str(error)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def raise_if_empty(x: FrameSet, y: FrameSet) -> None:
    """Raise TrainingError naming the domain, its inputs and why, when a domain has no usable frames."""
    for name, frames in (("x", x), ("y", y)):
        if frames.items:
            continue
        where = ", ".join(str(p) for p in frames.inputs) or "(no inputs)"
        if frames.failures:
            shown = "; ".join(f"{p.name}: {why}" for p, why in frames.failures[:3])
            more = f" and {len(frames.failures) - 3} more" if len(frames.failures) > 3 else ""
            why = f"all {len(frames.failures)} media files failed ({shown}{more})"
        else:
            why = (f"no videos or images found (images: {', '.join(sorted(IMAGE_SUFFIXES))}; "
                   f"videos: anything PyAV opens, e.g. .mp4 .mov .mkv .webm)")
        raise TrainingError(f"--{name} {where}: no usable frames: {why}")


# ---------------------------------------------------------------- reading images

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
        note.parent.mkdir(parents=True, exist_ok=True)
        temporary = note.with_name(f".{note.name}.{os.getpid()}")
        temporary.write_text(f"{width} {height}", encoding="ascii")
        os.replace(temporary, note)
    except OSError:
        pass  # only a speed-up: the photo is probed again next time
    return width, height


def probe_image(path: Path) -> tuple[int, int]:
    """Decode an image once to check it is readable; its (width, height). Raises MediaError.

    JPEGs are checked at 1/8 scale (libjpeg decodes the whole stream but skips
    most of the inverse DCT), so a folder of camera photos is probed quickly;
    their size is then known to within 8 pixels (rounded up), which is all the
    loader needs to pick its own reduced-scale decoding.
    """
    reduce = 8 if path.suffix.lower() in (".jpg", ".jpeg") else 1
    rgb = read_rgb(path, reduce)
    height, width = rgb.shape[:2]
    return (width * reduce, height * reduce) if reduce > 1 else (width, height)


_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def read_rgb(path: Path, reduce: int = 1) -> np.ndarray:
    """An image file as uint8 HxWx3 RGB, as `vidcycle apply` sees it (upright by EXIF, 16-bit
    scaled, gray expanded, alpha set aside), or a JPEG decoded at 1/2, 1/4 or 1/8 scale
    (libjpeg's scaled inverse DCT; OpenCV applies the EXIF orientation). Raises MediaError.
    """
    if reduce == 1:
        return read_image(path).rgb
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise MediaError(f"{path}: cannot read ({error.strerror or error})") from error
    bgr = cv2.imdecode(data, _REDUCED[reduce]) if data.size else None
    if bgr is None or bgr.size == 0:
        raise MediaError(f"{path}: not an image (empty, damaged or unknown format)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_cached_frame(path: Path) -> np.ndarray:
    """A frame the cache wrote (plain 8-bit JPEG, upright): the short path, ~2x faster than read_rgb."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise MediaError(f"{path}: cannot read cached frame ({error.strerror or error}); "
                         f"was the frame cache deleted during training?") from error
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if bgr is None:
        raise MediaError(f"{path}: cached frame is damaged; delete its folder to extract it again")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------- the dataset

class UnpairedDataset(torch.utils.data.Dataset):
    """X and Y frames drawn independently, augmented as the paper does.

    Item i pairs X frame i % len(x) with a Y frame drawn at random; the draw,
    the crops and the flips depend only on (seed, epoch, i), so runs repeat
    exactly and DDP ranks (which see different i) differ. Like the reference
    unaligned dataset, the length is max(len(x), len(y)).
    """

    def __init__(self, x: FrameSet, y: FrameSet, load_size: int, crop_size: int, flip: bool = True,
                 seed: int = 0, temporal: bool = False, keep_aspect: bool = False):
        if not x.items or not y.items:
            raise_if_empty(x, y)
        if crop_size > load_size:
            raise TrainingError(f"crop size {crop_size} is larger than load size {load_size}")
        self.x, self.y = list(x.items), list(y.items)
        self.load_size, self.crop_size, self.flip = load_size, crop_size, flip
        self.seed, self.temporal, self.keep_aspect = seed, temporal, keep_aspect
        # Shared memory, so set_epoch reaches persistent DataLoader workers too.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._x_next = _true_neighbours(self.x)

    def __len__(self) -> int:
        return max(len(self.x), len(self.y))

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        x_index = int(index) % len(self.x)
        y_index = int(rng.integers(len(self.y)))
        x_image = self._load(self.x[x_index])
        x_view = self._draw_view(rng, x_image.shape)
        sample = {"x": self._to_tensor(x_image, x_view),
                  "y": self._to_tensor(self._load(self.y[y_index]), None, rng),
                  "x_index": x_index, "y_index": y_index}
        if self.temporal:
            neighbour = self._x_next[x_index]
            if neighbour is None:
                sample["x_next"], sample["has_next"] = sample["x"].clone(), torch.tensor(False)
            else:
                sample["x_next"] = self._to_tensor(self._load(neighbour), x_view)
                sample["has_next"] = torch.tensor(True)
        return sample

    def _load(self, item: FrameItem) -> np.ndarray:
        """Read and resize to load size x load size (the reference's resize; cached frames already are)."""
        if item.clip_index is not None:
            rgb = _read_cached_frame(item.path)
        else:
            reduce = 1
            if item.size is not None and item.path.suffix.lower() in (".jpg", ".jpeg"):
                # Big photos decode at 1/2..1/8 scale while both sides stay >= the load size (+8: the
                # probed size is rounded up to a multiple of 8).
                while reduce < 8 and min(item.size) // (reduce * 2) >= self.load_size + 8:
                    reduce *= 2
            rgb = read_rgb(item.path, reduce)
        return resize_for_training(rgb, self.load_size, self.keep_aspect)

    def _draw_view(self, rng, shape) -> tuple[int, int, bool]:
        height, width = shape[:2]
        top = int(rng.integers(height - self.crop_size + 1))
        left = int(rng.integers(width - self.crop_size + 1))
        flipped = bool(self.flip and rng.random() < 0.5)
        return top, left, flipped

    def _to_tensor(self, image: np.ndarray, view, rng=None) -> torch.Tensor:
        top, left, flipped = view if view is not None else self._draw_view(rng, image.shape)
        crop = image[top:top + self.crop_size, left:left + self.crop_size]
        crop = cv2.flip(crop, 1) if flipped else np.ascontiguousarray(crop)  # cv2.flip: ~70x a numpy copy
        frame = torch.from_numpy(crop)
        return frames_to_batch(frame[None], torch.float32)[0].contiguous()


# ---------------------------------------------------------------- the loader

def _true_neighbours(items: list[FrameItem]) -> list[FrameItem | None]:
    """For each frame, the decoded frame right after it in its clip: its partner, or the next kept
    frame when that is the very next one; None for photos, a clip's last frame, and frames whose
    successor was not kept (a pair seconds apart would teach motion, not consistency)."""
    following = {(item.source, item.clip_index): item for item in items if item.clip_index is not None}
    neighbours = []
    for item in items:
        after = following.get((item.source, item.clip_index + 1)) if item.clip_index is not None else None
        if item.partner is not None:
            neighbours.append(replace(item, path=item.partner, partner=None))
        elif after is not None and (item.frame_index is None or after.frame_index == item.frame_index + 1):
            neighbours.append(after)
        else:
            neighbours.append(None)
    return neighbours


def make_loader(dataset: UnpairedDataset, batch_size: int, workers: int, shuffle: bool = True,
                distributed: bool = False, seed: int = 0, drop_last: bool = True):
    """A DataLoader whose order is a function of (seed, epoch): call set_loader_epoch before each epoch.

    A DistributedSampler shards the data (one shard per rank) when distributed,
    and with one replica otherwise, so resuming at an epoch repeats its order.
    Workers are persistent; memory is pinned when CUDA is available. Raises
    TrainingError when the data cannot fill a single batch.
    """
    from torch.utils.data import DataLoader, DistributedSampler

    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    else:
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed,
                                     drop_last=drop_last)
    if drop_last and len(sampler) < batch_size:
        raise TrainingError(f"batch size {batch_size} is larger than the {len(sampler)} samples per process "
                            f"({len(dataset)} in all); lower optim.batch_size or add frames")
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                      drop_last=drop_last, worker_init_fn=_worker_init if workers > 0 else None,
                      prefetch_factor=4 if workers > 0 else None)


def set_loader_epoch(loader, epoch: int) -> None:
    """Set the epoch on the loader's sampler and dataset (before iterating that epoch)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)


def _worker_init(_worker_id: int) -> None:
    # Each worker is one process doing one image at a time; threads inside it only oversubscribe.
    # (Not cv2.setNumThreads: in a forked child it waits forever for the parent's pool threads.)
    torch.set_num_threads(1)


# ---------------------------------------------------------------- `vidcycle extract`

def extract_frames(inputs, out_dir, sampling: SamplingConfig, overwrite: bool = False,
                   progress=None) -> ExtractReport:
    """Write the sampled frames of every video under `inputs` into `out_dir` as PNG files.

    Frames are named `<clip stem>_<frame index>.png` (the index of the frame in
    the clip), in subfolders mirroring those under each input folder. Each clip
    is written to a hidden staging folder and moved into place when complete.
    Raises OutputExistsError, before decoding anything, when frames of a clip
    are already there and `overwrite` is off (with it, they are replaced);
    MediaError when no video is found. Unreadable clips go to `failures`.
    """
    out_dir = Path(out_dir)
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    jobs = _extract_jobs(inputs, out_dir)
    if not jobs:
        raise MediaError(f"{', '.join(map(str, inputs))}: no videos found")
    clashes = [(clip, prefix) for clip, prefix in jobs if _existing_frames(prefix)]
    if clashes and not overwrite:
        clip, prefix = clashes[0]
        raise OutputExistsError(f"{prefix.parent}: already holds frames of {clip.name} "
                                f"({prefix.name}_*.png); pass --overwrite to replace them")
    written: list[Path] = []
    failures: list[tuple[Path, str]] = []
    if progress:
        progress.start(len(jobs))
    try:
        for clip, prefix in jobs:
            try:
                written.extend(_extract_one(clip, prefix, sampling))
            except MediaError as error:
                failures.append((clip, _reason(error, clip)))
            if progress:
                progress.update(1)
    finally:
        if progress:
            progress.close()
    return ExtractReport(written, failures)


def _extract_jobs(inputs: list[Path], out_dir: Path) -> list[tuple[Path, Path]]:
    """(clip, output prefix) pairs; clips whose stems clash in one folder keep their suffix in the name."""
    jobs, seen = [], set()
    for raw in inputs:
        root = raw.expanduser()
        for clip in collect_media([root]):
            if is_image_path(clip) or clip.resolve() in seen:
                continue
            seen.add(clip.resolve())
            relative = clip.parent.relative_to(root) if root.is_dir() else Path()
            jobs.append((clip, out_dir / relative, clip))
    stems: dict[tuple[Path, str], int] = {}
    for _, folder, clip in jobs:
        stems[(folder, clip.stem)] = stems.get((folder, clip.stem), 0) + 1
    result = []
    for _, folder, clip in jobs:
        name = clip.stem if stems[(folder, clip.stem)] == 1 else f"{clip.stem}_{clip.suffix.lstrip('.')}"
        result.append((clip, folder / name))
    return result


def _existing_frames(prefix: Path) -> list[Path]:
    if not prefix.parent.is_dir():
        return []
    return [p for p in prefix.parent.glob(f"{glob.escape(prefix.name)}_*.png")
            if p.stem[len(prefix.name) + 1:].isdigit()]


def _extract_one(clip: Path, prefix: Path, sampling: SamplingConfig) -> list[Path]:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".vidcycle-extract-", dir=prefix.parent))
    try:
        frames = sample_clip(clip, sampling, staging, suffix=".png")
        for old in _existing_frames(prefix):
            old.unlink()
        targets = []
        for file, index in zip(frames.files, frames.indices):
            target = prefix.parent / f"{prefix.name}_{index:06d}.png"
            os.replace(staging / file, target)
            targets.append(target)
        return targets
    finally:
        shutil.rmtree(staging, ignore_errors=True)
