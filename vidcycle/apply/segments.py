"""Long clips in segments that survive a crash: a clip longer than one segment is translated as a run
of closed segment files in a work folder beside the output, each listed in a journal once it is on
disk, then joined by stream copy with the source's audio, subtitles and metadata.

    .NAME.EXT.parts/journal.jsonl     the clip's identity (source, model, options), then one line per
                                      finished segment (its span, pts, frame count, size and sha256)
    .NAME.EXT.parts/00003.mp4         segment 3: the video alone, starting on a keyframe
    .NAME.EXT.parts/00003.state.npz   with --temporal, the blender's state after its last frame

A segment is SEGMENT_SECONDS of the clip's timeline: x264 puts a keyframe every 250 frames by
default (~10 s at 24-30 fps), so starting each segment on one costs about nothing, and a crash
loses at most that much work. Running the same job again finds the journal, checks that source,
model and options are the same, keeps the finished segments, seeks to the first unfinished one
and goes on; anything not in the journal (a half-written segment) is discarded. The work folder
is hidden, so folder jobs never take its segments for inputs, and it goes when the output is done.
"""

from __future__ import annotations

import contextlib
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

from vidcycle.errors import MediaError, OutputExistsError
from vidcycle.files import atomic_path, remove_partials, write_atomic
from vidcycle.media.video import DecodeStats, VideoInfo, VideoReader, open_container
from vidcycle.media.video_writer import VideoWriter
from vidcycle.models.modelfile import file_sha256, state_hash
from vidcycle.apply.pipeline import make_blender, stream_clip

SEGMENT_SECONDS = 10
JOURNAL, FORMAT, VERSION = "journal.jsonl", "vidcycle-apply-journal", 1
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


def identity(src: Path, dst: Path, translator, options) -> dict:
    """What a clip's segments depend on: the source file, the model's weights, the options that change
    pixels or encoding, and how the network runs (precision and engine change pixels too)."""
    stat = src.stat()
    model = translator.info.content_hash or state_hash(translator.generator.state_dict())
    return {"source": {"path": str(src.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                       "sample": _sample_hash(src, stat.st_size)},
            "model": model,
            "options": {"codec": options.codec, "crf": options.crf, "preset": options.preset,
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
    if then.get("version", 0) > VERSION:
        return f"its journal is from a newer vidcycle (journal format {then['version']}, this one reads {VERSION})"
    if then.get("source") != now["source"]:
        return "the source file changed since (size, date or content)"
    if then.get("model") != now["model"]:
        return f"it was made with another model (content hash {str(then.get('model'))[:12]}, now {now['model'][:12]})"
    before = then.get("options") or {}
    changed = [f"{key} {before.get(key)!r} then, {value!r} now" for key, value in now["options"].items()
               if before.get(key) != value]
    return f"it was made with other options ({'; '.join(changed)})" if changed else None


@dataclass
class Journal:
    """The work folder's record: the clip's identity, then one line per finished segment."""

    folder: Path
    done: dict = field(default_factory=dict)  # segment index -> its journal line

    @classmethod
    def open(cls, folder: Path, now: dict, overwrite: bool, dst: Path, tidy: bool = True) -> Journal:
        """The journal of an unfinished run of this same job, or a new one. `tidy`: remove what the journal
        does not list (False for the processes that join a run another one opened). Raises
        OutputExistsError when an unfinished run of another job is there and `overwrite` is not set."""
        path = folder / JOURNAL
        if path.is_file():
            header, lines = _read(path)
            problem = difference(header, now) if header is not None else "its journal is unreadable"
            if problem is None:
                return cls(folder, _kept(folder, lines, tidy))
            if not overwrite:
                raise OutputExistsError(f"{dst}: an unfinished run in {folder} cannot be continued: {problem}; pass "
                                        f"overwrite=True (--overwrite) to start afresh")
            log.warning("%s: starting afresh: %s", dst, problem)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        # Whole or absent: a kill right after the folder appeared must leave nothing that looks damaged.
        write_atomic(path, json.dumps({"format": FORMAT, "version": VERSION, **now}) + "\n", durable=True)
        return cls(folder)

    def record(self, line: dict) -> None:
        _append(self.folder / JOURNAL, line)
        self.done[line["segment"]] = line

    def frames(self) -> int:
        return sum(line["frames"] for line in self.done.values())


def _read(path: Path) -> tuple[dict | None, list[dict]]:
    lines = []
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:
            break  # a line cut short by a kill: nothing after it was recorded
    header = lines[0] if lines and lines[0].get("format") == FORMAT else None
    return header, lines[1:]


def _kept(folder: Path, lines: list[dict], tidy: bool = True) -> dict:
    """The recorded segments whose files are whole; with `tidy`, everything else in the folder goes."""
    kept = {}
    for line in lines:
        files = [name for name in (line.get("file"), line.get("state")) if name]
        if all(_intact(folder / name, line["hashes"][name]) for name in files):
            kept[line["segment"]] = line
    wanted = {JOURNAL} | {name for line in kept.values() for name in (line.get("file"), line.get("state")) if name}
    for path in folder.iterdir() if tidy else ():
        if path.name not in wanted:
            path.unlink()
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


# ---------------------------------------------------------------- translating segments

@dataclass
class Clip:
    """One segmented clip of a job: where it comes from and goes, and how it is cut."""

    src: Path
    dst: Path
    info: VideoInfo
    options: object
    spans: list
    journal: Journal

    @property
    def folder(self) -> Path:
        return self.journal.folder


def open_clip(src: Path, dst: Path, info: VideoInfo, translator, options, tidy: bool = True) -> Clip:
    """The clip's plan and journal (continuing an unfinished run of the same job). Raises OutputExistsError."""
    folder = work_folder(dst)
    journal = Journal.open(folder, identity(src, dst, translator, options), options.overwrite, dst, tidy)
    return Clip(src, dst, info, options, spans(window_seconds(info, options)), journal)


def translate_segments(clip: Clip, translator, reporter, indices) -> None:
    """Translate the clip's segments `indices` (in order) that the journal does not list yet.

    The rest of a clip from one segment on is read in one pass, the writer moving from segment to segment;
    scattered segments (a share under torchrun) and --temporal runs, whose blender state is saved exactly at
    each segment's end, read segment by segment (the decoder then starts at the keyframe before each)."""
    pending = [k for k in indices if k not in clip.journal.done]
    if not pending:
        return
    blender = make_blender(clip.options.temporal)
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
                "pts": self.current.pts_range, "time_base": str(self.reader.clock.time_base),
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

def join(clip: Clip) -> int:
    """Write the output: the segments' video by stream copy, the source's audio, subtitles and metadata as a
    whole clip carries them; the output appears by rename, the work folder goes. Returns the frame count.

    Holds one packet of each side at a time. Raises MediaError.
    """
    lines = [clip.journal.done[k] for k in sorted(clip.journal.done)]
    parts = [clip.folder / line["file"] for line in lines if line["frames"]]
    if not parts:
        raise MediaError(f"{clip.src}: no frames in the chosen window (start, --start, beyond the end?)")
    info, options = clip.info, clip.options
    reader = VideoReader(clip.src, info, options.start, options.duration)
    first = open_container(parts[0])
    try:
        remove_partials(clip.dst)
        with atomic_path(clip.dst) as tmp:
            width = info.width * (2 if options.side_by_side else 1)
            writer = VideoWriter(tmp, reader, width, info.height, options.encode, clip.dst.suffix,
                                 video_template=first.streams.video[0])
            for line in writer.dropped:
                log.warning("%s: %s", clip.src, line)
            try:
                for kind, item in _in_time_order(_segment_packets(parts, first), _carried(reader)):
                    writer.write_packet(item) if kind == "video" else writer.write_carried(item)
            except BaseException:
                writer.abort()
                raise
            writer.close()
    finally:
        first.close()
        reader.close()
    shutil.rmtree(clip.folder, ignore_errors=True)
    return sum(line["frames"] for line in lines)


def _segment_packets(parts: list[Path], first):
    """("video", packet) of every segment in turn, keyed by decode time; all must share one encoding."""
    expected = first.streams.video[0].codec_context.extradata
    for path in parts:
        container = first if path == parts[0] else open_container(path)
        try:
            stream = container.streams.video[0]
            if stream.codec_context.extradata != expected:
                raise MediaError(f"{path}: this segment was encoded with other settings than the first; pass "
                                 f"overwrite=True (--overwrite) to translate the clip afresh")
            for packet in container.demux(stream):
                if packet.size:
                    yield _seconds(packet), ("video", packet)
        except av.error.FFmpegError as error:
            raise MediaError(f"{path}: unreadable segment ({error}); pass overwrite=True (--overwrite) to "
                             f"translate the clip afresh") from error
        finally:
            if container is not first:
                container.close()


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
