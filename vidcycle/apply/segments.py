"""Long clips in segments that survive a crash: a clip longer than one segment is translated as a run
of closed segment files in a work folder beside the output, each listed in a journal once it is on
disk, then joined by stream copy with the source's audio, subtitles and metadata.

    .NAME.EXT.parts/journal.jsonl     the clip's identity (source, model, options), then one line per
                                      finished segment (its span, pts, end, frame count and sha256),
                                      and {"joined": true} once the output is about to appear
    .NAME.EXT.parts/lock              flock'ed by the run that writes the output; holds its pid
    .NAME.EXT.parts/00003.mp4         segment 3: the video alone, starting on a keyframe
    .NAME.EXT.parts/00003.state.npz   with --temporal, the blender's state after its last frame

A segment is SEGMENT_SECONDS of the clip's timeline: x264 puts a keyframe every 250 frames by
default (~10 s at 24-30 fps), so starting each segment on one costs about nothing, and a crash
loses at most that much work. Running the same job again finds the journal, checks that source,
model and options are the same, keeps the finished segments, seeks to the first unfinished one
and goes on; anything not in the journal (a half-written segment) is discarded, and a journal line
that is not a whole record of a segment (cut short by a kill, damaged, foreign) is a segment not
done. The work folder is hidden, so folder jobs never take its segments for inputs, and it goes
when the output is done; a run killed while it went leaves it "joined" (or without a journal), and
the next run on that output removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vidcycle.apply.pipeline import make_blender, stream_clip
from vidcycle.errors import MediaError, OutputExistsError, UsageError
from vidcycle.files import atomic_path, remove_partials, write_atomic
from vidcycle.media.video import DecodeStats, VideoInfo, VideoReader, open_container
from vidcycle.media.video_writer import EncodeSettings, VideoWriter, output_pix_fmt, resolved_settings
from vidcycle.models.modelfile import file_sha256, state_hash

SEGMENT_SECONDS = 10
JOURNAL, LOCK, FORMAT, VERSION = "journal.jsonl", "lock", "vidcycle-apply-journal", 1
SAMPLE_BYTES = 1 << 20  # the source's first and last MiB are hashed: a changed file is seen without reading it all
log = logging.getLogger("vidcycle")


def work_folder(dst) -> Path:
    """Where a clip's segments and journal wait until the output is done."""
    dst = Path(dst)
    return dst.with_name(f".{dst.name}.parts")


def window_seconds(info: VideoInfo, options) -> float | None:
    """How long the part of the clip to translate lasts, as far as the header knows."""
    if not info.duration:
        return None
    left = max(0.0, info.duration - (options.start or 0))
    return min(left, options.duration) if options.duration else left


def is_segmented(info: VideoInfo, options) -> bool:
    """Clips longer than one segment are; a --max-frames preview and a clip of unknown length are not."""
    seconds = window_seconds(info, options)
    return options.max_frames is None and seconds is not None and seconds > SEGMENT_SECONDS


def spans(seconds: float) -> list[tuple[Fraction, Fraction | None]]:
    """Segment k covers [k * SEGMENT_SECONDS, (k + 1) * SEGMENT_SECONDS) of the translated timeline; the last
    one runs to the end, wherever the header's duration was wrong."""
    count = max(1, math.ceil(seconds / SEGMENT_SECONDS))
    step = Fraction(SEGMENT_SECONDS)
    return [(k * step, (k + 1) * step if k < count - 1 else None) for k in range(count)]


def identity(src: Path, dst: Path, info: VideoInfo, translator, options) -> dict:
    """What a clip's segments depend on: the source file, the model's weights, the options that change
    pixels or encoding (after defaults are resolved, so that naming a default is the same job), and how the
    network runs (precision and engine change pixels too)."""
    stat = src.stat()
    model = translator.info.content_hash or state_hash(translator.generator.state_dict())
    settings = resolved_settings(options.encode, dst.suffix)
    width = info.width * (2 if options.side_by_side else 1)
    return {"source": {"path": str(src.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                       "sample": _sample_hash(src, stat.st_size)},
            "model": model,
            "options": {"codec": settings.codec, "crf": settings.crf, "preset": settings.preset,
                        "pix_fmt": output_pix_fmt(settings, width, info.height, info.pix_fmt, dst),
                        "side_by_side": options.side_by_side, "temporal": options.temporal, "start": options.start,
                        "duration": options.duration, "container": dst.suffix.lower(),
                        "engine": translator.engine_name, "precision": translator.precision,
                        "device": translator.device.type, "segment_seconds": SEGMENT_SECONDS}}


def _sample_hash(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(SAMPLE_BYTES))
        handle.seek(max(0, size - SAMPLE_BYTES))
        digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def difference(then: dict, now: dict) -> str | None:
    """What differs between a journal's identity and this job's, in words; None when they agree."""
    version = then.get("version")
    if type(version) is not int:
        return "its journal is damaged (no format version)"
    if version > VERSION:
        return f"its journal is from a newer vidcycle (journal format {version}, this one reads {VERSION})"
    if then.get("source") != now["source"]:
        return "the source file changed since (size, date or content)"
    if then.get("model") != now["model"]:
        return f"it was made with another model (content hash {str(then.get('model'))[:12]}, now {now['model'][:12]})"
    before = _with_defaults(then.get("options"))
    changed = [f"{key} {before.get(key)!r} then, {value!r} now" for key, value in now["options"].items()
               if before.get(key) != value and not (key == "pix_fmt" and key not in before)]
    return f"it was made with other options ({'; '.join(changed)})" if changed else None


def _with_defaults(options) -> dict:
    """A journal's options with the encoder defaults filled in (journals before 2026-12 wrote None for them)."""
    if not isinstance(options, dict):
        return {}
    suffix = options.get("container")
    if not isinstance(suffix, str) or not all(isinstance(options.get(key), (str, int, type(None)))
                                              for key in ("codec", "crf", "preset")):
        return options
    settings = resolved_settings(EncodeSettings(options.get("codec"), options.get("crf"), options.get("preset")),
                                 suffix)
    return {**options, "codec": settings.codec, "crf": settings.crf, "preset": settings.preset}


@dataclass
class Journal:
    """The work folder's record: the clip's identity, then one line per finished segment. While open, it
    holds the work folder's lock (None for the torchrun processes that join a run another one opened)."""

    folder: Path
    done: dict = field(default_factory=dict)  # segment index -> its journal line
    lock: int | None = None  # the descriptor flock holds

    @classmethod
    def open(cls, folder: Path, now: dict, overwrite: bool, dst: Path, count: int, tidy: bool = True) -> Journal:
        """The journal of an unfinished run of this same job, or a new one. `count`: how many segments the
        clip has. `tidy`: take the lock and remove what the journal does not list (False for the processes
        that join a run another one opened). Raises OutputExistsError when another vidcycle holds the work
        folder, or an unfinished run of another job is there and `overwrite` is not set."""
        for path in (folder, folder / LOCK) if overwrite else ():
            if path.is_symlink() or path.exists() and not (path.is_dir() if path == folder else path.is_file()):
                _remove(path)  # not what vidcycle makes there: --overwrite clears whatever is in the way
        lock = _lock(folder, dst) if tidy else None
        try:
            return cls._open(folder, now, overwrite, dst, count, tidy, lock)
        except BaseException:
            if lock is not None:
                os.close(lock)
            raise

    @classmethod
    def _open(cls, folder, now, overwrite, dst, count, tidy, lock) -> Journal:
        path = folder / JOURNAL
        if path.exists() or path.is_symlink():
            header, lines, problem = _read(path)
            problem = problem or difference(header, now)
            if problem is None:
                return cls(folder, _kept(folder, lines, count, tidy), lock)
            if not overwrite:
                raise OutputExistsError(f"{dst}: an unfinished run in {folder} cannot be continued: {problem}; pass "
                                        f"overwrite=True (--overwrite) to start afresh")
            log.warning("%s: starting afresh: %s", dst, problem)
        folder.mkdir(parents=True, exist_ok=True)
        _clear(folder)
        # Whole or absent: a kill right after the folder appeared must leave nothing that looks damaged.
        write_atomic(path, json.dumps({"format": FORMAT, "version": VERSION, **now}) + "\n", durable=True)
        return cls(folder, {}, lock)

    def record(self, line: dict) -> None:
        _append(self.folder / JOURNAL, line)
        self.done[line["segment"]] = line

    def frames(self) -> int:
        return sum(line["frames"] for line in self.done.values())

    def reread(self, count: int) -> None:
        """Take in the segments other processes recorded since this one opened the journal."""
        header, lines, problem = _read(self.folder / JOURNAL)
        if problem is None:
            self.done = _kept(self.folder, lines, count, tidy=True)

    def close(self) -> None:
        """Let go of the work folder's lock (a killed process lets go of it too)."""
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None


def _lock(folder: Path, dst: Path) -> int:
    """Hold the work folder's lock file for this process; its pid goes in it, for the message another run
    gives. flock dies with its holder, so a killed run leaves no stale lock. Raises OutputExistsError when
    another process holds it."""
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)  # never write through a link
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(descriptor)
            raise OutputExistsError(f"{dst}: another vidcycle (pid {holder}) is writing this output (work folder "
                                    f"{folder}); wait for it to finish, or stop it and run again") from None
        except BaseException:
            os.close(descriptor)
            raise
        try:
            current = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
            return descriptor
        os.close(descriptor)  # the run that held it finished and removed the folder meanwhile: take a new one


def _read(path: Path) -> tuple[dict | None, list, str | None]:
    """(header, the lines after it, None), or (None, [], what is wrong) when the file is no journal of ours.
    A line that is not JSON (cut short by a kill, damaged) stays in the list as None: not a record."""
    if not path.is_file():
        return None, [], f"its journal {path} is not a file"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None, [], f"its journal {path} is unreadable (not text)"
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except (ValueError, RecursionError):  # RecursionError: nested past what json reads
            lines.append(None)
    if not lines or not isinstance(lines[0], dict) or lines[0].get("format") != FORMAT:
        return None, [], f"its journal {path} is unreadable (not a vidcycle journal)"
    return lines[0], lines[1:], None


def _segment(line, count: int) -> int | None:
    """The segment a journal line records, or None for anything that is not a whole record of one."""
    if not isinstance(line, dict):
        return None
    k, hashes, state = line.get("segment"), line.get("hashes"), line.get("state")
    if type(k) is not int or not 0 <= k < count or line.get("file") != f"{k:05d}.mp4" or not isinstance(hashes, dict):
        return None
    if state is not None and state != f"{k:05d}.state.npz":
        return None
    if type(line.get("frames")) is not int or line["frames"] < 0 or type(line.get("damaged_packets", 0)) is not int:
        return None
    if line.get("end") is not None and type(line["end"]) is not int:
        return None
    if not _pts_range(line.get("pts")) or (line.get("pts") and not _is_fraction(line.get("time_base"))):
        return None
    names = [line["file"], *([state] if state else [])]
    return k if all(isinstance(hashes.get(name), str) for name in names) else None


def _is_fraction(text) -> bool:
    try:
        return isinstance(text, str) and Fraction(text) > 0
    except (ValueError, ZeroDivisionError):
        return False


def _pts_range(value) -> bool:
    return isinstance(value, list) and len(value) in (0, 2) and all(type(pts) is int for pts in value)


def _kept(folder: Path, lines: list, count: int, tidy: bool = True) -> dict:
    """The recorded segments whose files are whole; with `tidy`, everything else in the folder goes."""
    kept = {}
    for line in lines:
        k = _segment(line, count)
        if k is not None and all(_intact(folder / name, line["hashes"][name])
                                 for name in (line["file"], line.get("state")) if name):
            kept[k] = line
    wanted = {JOURNAL, LOCK} | {name for line in kept.values() for name in (line["file"], line.get("state")) if name}
    for path in folder.iterdir() if tidy else ():
        if path.name not in wanted:
            _remove(path)
    return kept


def _intact(path: Path, sha256: str) -> bool:
    return path.is_file() and file_sha256(path) == sha256


def _append(path: Path, line: dict) -> None:
    """One line, durable before anything relies on it: one write (atomic in O_APPEND), then fsync."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.write(descriptor, (json.dumps(line) + "\n").encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _clear(folder: Path) -> None:
    """Everything in the work folder but its lock (a new run starts here)."""
    for path in folder.iterdir():
        if path.name != LOCK:
            _remove(path)


def _joined(folder: Path) -> bool:
    """Whether the work folder is what a run left after its output was complete: its journal says it was
    joined, or is gone (the folder was being removed)."""
    path = folder / JOURNAL
    if not path.exists():
        return True
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("joined") is True:
            return True
    return False


def remove_leftover(dst) -> None:
    """Remove the work folder that a run killed after its join left beside its complete output (whatever this
    run then does with that output), unless another vidcycle holds it. What cannot be removed is named in a
    warning; the job goes on."""
    dst = Path(dst)
    folder = work_folder(dst)
    if not dst.is_file() or folder.is_symlink() or not folder.is_dir() or not _joined(folder):
        return
    try:
        descriptor = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as error:
        log.warning("%s: cannot remove %s, left by an earlier run after the output was complete (%s)", dst, folder,
                    error.strerror)
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        shutil.rmtree(folder)
        log.info("%s: removed %s, left by an earlier run after the output was complete", dst, folder)
    except BlockingIOError:
        pass  # another vidcycle is writing this output again (--overwrite): the folder is its own
    except OSError as error:
        log.warning("%s: cannot remove %s, left by an earlier run after the output was complete (%s)", dst, folder,
                    error.strerror)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _naming(folder: Path):
    """An OS error in the work folder names the path that failed, not the clip (the caller names that)."""
    try:
        yield
    except OSError as error:
        where = error.filename or folder
        raise UsageError(f"{where}: {error.strerror or error} (in the work folder of a long clip)") from error


# ---------------------------------------------------------------- translating segments

@dataclass
class Clip:
    """One segmented clip of a job: where it comes from and goes, and how it is cut. Close it (or use it in a
    `with`) to let go of its work folder's lock."""

    src: Path
    dst: Path
    info: VideoInfo
    options: object
    spans: list
    journal: Journal

    @property
    def folder(self) -> Path:
        return self.journal.folder

    def close(self) -> None:
        self.journal.close()

    def __enter__(self) -> Clip:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_clip(src: Path, dst: Path, info: VideoInfo, translator, options, tidy: bool = True) -> Clip:
    """The clip's plan and journal (continuing an unfinished run of the same job), its work folder locked
    unless `tidy` is False. Raises OutputExistsError (also when another vidcycle is writing `dst`), UsageError
    (the work folder cannot be written)."""
    folder = work_folder(dst)
    cut = spans(window_seconds(info, options))
    with _naming(folder):
        journal = Journal.open(folder, identity(src, dst, info, translator, options), options.overwrite, dst,
                               len(cut), tidy)
    if journal.done and tidy:  # the processes that join a torchrun share stay quiet
        log.info("%s: continuing: %d of %d segments already done", dst, len(journal.done), len(cut))
    return Clip(src, dst, info, options, cut, journal)


def translate_segments(clip: Clip, translator, reporter, indices) -> None:
    """Translate the clip's segments `indices` (in order) that the journal does not list yet.

    The rest of a clip from one segment on is read in one pass, the writer moving from segment to segment;
    scattered segments (a share under torchrun) and --temporal runs, whose blender state is saved exactly at
    each segment's end, read segment by segment (the decoder then starts at the keyframe before each).
    Raises MediaError, UsageError (the work folder cannot be written)."""
    pending = [k for k in indices if k not in clip.journal.done]
    if not pending:
        return
    blender = make_blender(clip.options.temporal)
    with _naming(clip.folder):
        if blender is None and pending == list(range(pending[0], len(clip.spans))):
            _translate(clip, pending[0], None, translator, reporter, None)
            return
        for k in pending:
            if blender is not None and k > 0:
                blender.restore(_load_state(clip, k - 1))
            _translate(clip, k, clip.spans[k][1], translator, reporter, blender)


def _load_state(clip: Clip, k: int) -> dict:
    line = clip.journal.done.get(k)
    if line is None or not line.get("state"):
        raise MediaError(f"{clip.src}: segment {k} has no recorded blender state; pass overwrite=True "
                         f"(--overwrite) to translate the clip afresh")
    with np.load(clip.folder / line["state"]) as saved:
        return {name: saved[name] for name in saved.files}


def _translate(clip: Clip, first: int, end, translator, reporter, blender) -> None:
    """Segments from `first` on, reading the clip from that segment's start to `end` (None: its end)."""
    options = clip.options
    reader = VideoReader(clip.src, clip.info, options.start, options.duration, None, DecodeStats(),
                         span=(clip.spans[first][0], end), carry=False)
    writer = SegmentWriter(clip, first, reader, blender)
    try:
        try:
            stream_clip(reader, writer, translator, options, reporter, blender)
        except BaseException:
            writer.abort()
            raise
        writer.close(reader.next_pts * reader.clock.time_base if reader.next_pts is not None else None)
    finally:
        reader.close()


class SegmentWriter:
    """Writes consecutive segments from one stream of frames: a frame past the current segment's end closes
    that segment (fsynced, renamed into place, recorded in the journal) and opens the next."""

    def __init__(self, clip: Clip, k: int, reader: VideoReader, blender=None):
        self.clip, self.k, self.reader, self.blender = clip, k, reader, blender
        self._open()

    def _open(self) -> None:
        info, options = self.clip.info, self.clip.options
        self.name = f"{self.k:05d}.mp4"
        self._file = contextlib.ExitStack()
        tmp = self._file.enter_context(atomic_path(self.clip.folder / self.name, durable=True))
        width = info.width * (2 if options.side_by_side else 1)
        self.current = VideoWriter(tmp, self.reader, width, info.height, options.encode, ".mp4", carry=False,
                                   repeatable=True)
        self.frames, self._damaged = 0, self.reader.stats.damaged_packets

    def write_frame(self, rgb: np.ndarray, pts: int, time_base: Fraction) -> None:
        while (end := self.clip.spans[self.k][1]) is not None and pts * time_base >= end:
            self._finish(pts * time_base)
            self.k += 1
            self._open()
        self.current.write_frame(rgb, pts, time_base)
        self.frames += 1

    def write_carried(self, item) -> None:
        pass  # audio and subtitles come from the source at the join

    def close(self, next_start: Fraction | None) -> None:
        self._finish(next_start)

    def abort(self) -> None:
        self.current.abort()
        self._file.__exit__(RuntimeError, RuntimeError("aborted"), None)  # removes the temporary file

    def _finish(self, next_start: Fraction | None) -> None:
        self.current.close(next_start)
        self._file.close()
        folder, span = self.clip.folder, self.clip.spans[self.k]
        line = {"segment": self.k, "file": self.name, "span": [str(span[0]), str(span[1])], "frames": self.frames,
                "pts": self.current.pts_range, "end": self.current.end_pts,
                "time_base": str(self.reader.clock.time_base),
                "damaged_packets": self.reader.stats.damaged_packets - self._damaged,
                "hashes": {self.name: file_sha256(folder / self.name)}}
        if self.blender is not None:
            state = f"{self.k:05d}.state.npz"
            with atomic_path(folder / state, durable=True) as tmp:
                with open(tmp, "wb") as handle:
                    np.savez(handle, **self.blender.state())
            line["state"], line["hashes"][state] = state, file_sha256(folder / state)
        self.clip.journal.record(line)


# ---------------------------------------------------------------- joining them

@dataclass
class Joined:
    frames: int
    lost_packets: list = field(default_factory=list)  # video_writer.LostPackets, one per stream that lost some


def join(clip: Clip) -> Joined:
    """Write the output: the segments' video by stream copy, the source's audio, subtitles and metadata as a
    whole clip carries them; the output appears by rename, then the work folder goes (the journal says
    "joined" first, so that a run killed on the way leaves a folder the next run knows to remove). Each frame
    keeps the duration it was encoded with (the last one of the clip its source's).

    Holds one packet of each side at a time. Raises MediaError, UsageError.
    """
    lines = [clip.journal.done[k] for k in sorted(clip.journal.done)]
    parts = [line for line in lines if line["frames"]]
    if not parts:
        raise MediaError(f"{clip.src}: no frames in the chosen window (start, --start, beyond the end?)")
    info, options = clip.info, clip.options
    reader = VideoReader(clip.src, info, options.start, options.duration)
    first = open_container(clip.folder / parts[0]["file"])
    try:
        remove_partials(clip.dst)
        with atomic_path(clip.dst) as tmp:
            width = info.width * (2 if options.side_by_side else 1)
            writer = VideoWriter(tmp, reader, width, info.height, options.encode, clip.dst.suffix,
                                 video_template=first.streams.video[0])
            for line in writer.dropped:
                log.warning("%s: %s", clip.src, line)
            try:
                for kind, item in _in_time_order(_segment_packets(clip.folder, parts, first), _carried(reader)):
                    writer.write_packet(item) if kind == "video" else writer.write_carried(item)
            except BaseException:
                writer.abort()
                raise
            writer.close()
            with _naming(clip.folder):
                _append(clip.folder / JOURNAL, {"joined": True})
    finally:
        first.close()
        reader.close()
    try:
        shutil.rmtree(clip.folder)
    except OSError as error:  # the output is complete: the next run on it removes what is left
        log.warning("%s: cannot remove %s (%s); the next run on this output removes it", clip.dst,
                    error.filename or clip.folder, error.strerror)
    return Joined(sum(line["frames"] for line in lines), writer.lost_packets)


def _segment_packets(folder: Path, lines: list[dict], first):
    """("video", packet) of every segment in turn, keyed by decode time; all must share one encoding.

    Each packet gets its frame's own time and duration back, as the journal recorded them: read back, an
    MP4 segment gives durations that are the gaps in decode order (a muxer takes them for the frames' and
    ends the video past its last frame), and a segment starting late is shifted by its edit list, which
    the MP4 muxer rounds to milliseconds."""
    expected = first.streams.video[0].codec_context.extradata
    for line in lines:
        path = folder / line["file"]
        container = first if line is lines[0] else open_container(path)
        try:
            stream = container.streams.video[0]
            if stream.codec_context.extradata != expected:
                raise MediaError(f"{path}: this segment was encoded with other settings than the first; pass "
                                 f"overwrite=True (--overwrite) to translate the clip afresh")
            shift, durations = _timing(path, stream.time_base, line)
            for packet in container.demux(stream):
                if packet.size:
                    packet.duration = durations.get(packet.pts, packet.duration)
                    packet.pts = None if packet.pts is None else packet.pts + shift
                    packet.dts = None if packet.dts is None else packet.dts + shift
                    yield _seconds(packet), ("video", packet)
        except av.error.FFmpegError as error:
            raise MediaError(f"{path}: unreadable segment ({error}); pass overwrite=True (--overwrite) to "
                             f"translate the clip afresh") from error
        finally:
            if container is not first:
                container.close()


def _timing(path: Path, time_base: Fraction, line: dict) -> tuple[int, dict]:
    """(shift, {pts: duration}) for a segment's packets, in its stream's time base, from its journal line's
    first pts and end (the last frame keeps its packet's duration where the line has no end, as lines before
    2026-12). Reads the segment's packets once more, without decoding."""
    if not line.get("pts"):
        return 0, {}
    with open_container(path) as again:
        stamps = sorted(packet.pts for packet in again.demux(again.streams.video[0])
                        if packet.size and packet.pts is not None)
    if not stamps:
        return 0, {}
    source = Fraction(line["time_base"])
    shift = round(line["pts"][0] * source / time_base) - stamps[0]
    durations = {pts: after - pts for pts, after in zip(stamps, stamps[1:])}
    if line.get("end") is not None:
        durations[stamps[-1]] = max(1, round(line["end"] * source / time_base) - shift - stamps[-1])
    return shift, durations


def _carried(reader: VideoReader):
    for item in reader.carried_items():
        if item.packet is not None:
            when = _seconds(item.packet)
        else:
            when = item.frames[0].pts * item.frames[0].time_base if item.frames and item.frames[0].pts is not None \
                else None
        yield when, ("carried", item)


def _seconds(packet) -> Fraction | None:
    stamp = packet.dts if packet.dts is not None else packet.pts
    return None if stamp is None else stamp * packet.time_base


def _in_time_order(video, carried):
    """The two streams merged by time, so the muxer's interleaving buffer stays small; an item with no time
    goes with the one before it."""
    left, right = next(video, None), next(carried, None)
    while left is not None or right is not None:
        if right is None or (left is not None and right[0] is not None
                             and (left[0] is None or left[0] <= right[0])):
            yield left[1]
            left = next(video, None)
        else:
            yield right[1]
            right = next(carried, None)
