"""Long clips in segments that survive a crash: a clip longer than one segment is translated as a run
of closed segment files in a work folder beside the output, each listed in a journal once it is on
disk (vidcycle.apply.journal), then joined by stream copy with the source's audio, subtitles and
metadata.

A segment is SEGMENT_SECONDS of the clip's timeline: x264 puts a keyframe every 250 frames by
default (~10 s at 24-30 fps), so starting each segment on one costs about nothing, and a crash
loses at most that much work. Running the same job again keeps the segments the journal lists,
seeks to the first unfinished one and goes on; the work folder goes when the output is done.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vidcycle.apply.journal import Journal, identity, naming, work_folder
from vidcycle.apply.pipeline import make_blender, stream_clip
from vidcycle.errors import MediaError
from vidcycle.files import atomic_path, remove_partials
from vidcycle.media.video import DecodeStats, VideoInfo, VideoReader, open_container
from vidcycle.media.video_writer import VideoWriter
from vidcycle.models.modelfile import file_sha256

SEGMENT_SECONDS = 10
AFRESH = "to translate the clip afresh"  # what each failure of a kept segment tells the user to do
log = logging.getLogger("vidcycle")


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
    with naming(folder):
        journal = Journal.open(folder, identity(src, dst, info, translator, options, SEGMENT_SECONDS),
                               options.overwrite, dst, len(cut), tidy)
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
    with naming(clip.folder):
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
        said = f"{clip.src}: segment {k} has no recorded blender state; pass "
        raise MediaError(f"{said}overwrite=True {AFRESH}", cli=f"{said}--overwrite {AFRESH}")
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
            clip.journal.mark_joined()
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
                said = f"{path}: this segment was encoded with other settings than the first; pass "
                raise MediaError(f"{said}overwrite=True {AFRESH}", cli=f"{said}--overwrite {AFRESH}")
            shift, durations = _timing(path, stream.time_base, line)
            for packet in container.demux(stream):
                if packet.size:
                    packet.duration = durations.get(packet.pts, packet.duration)
                    packet.pts = None if packet.pts is None else packet.pts + shift
                    packet.dts = None if packet.dts is None else packet.dts + shift
                    yield _seconds(packet), ("video", packet)
        except av.error.FFmpegError as error:
            said = f"{path}: unreadable segment ({error}); pass "
            raise MediaError(f"{said}overwrite=True {AFRESH}", cli=f"{said}--overwrite {AFRESH}") from error
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
