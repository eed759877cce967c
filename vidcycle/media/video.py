"""Reading video with PyAV: frames as RGB arrays with their timestamps, audio and subtitles beside them.

PyAV is used here and in vidcycle.media.video_writer (which writes translated clips
back), so its exceptions are translated in those two places. The facts behind
the choices are in docs/video.md: frame threading, timestamps kept, the colour
matrix and range taken from the source tags, damaged packets skipped. One colour
decision (Colour, from the first decoded frame) and one clock (FrameClock) serve every decoder here, so frames read for
training, evaluation and applying a model are the same pixels at the same times.
"""

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from vidcycle.errors import MediaError

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                  ".wmv", ".flv", ".3gp", ".ogv", ".gif"}
_EMPTY_MOV_TEXT = b"\x00\x00"  # an empty mov_text sample: the MP4 muxer's filler between cues

# AVColorSpace tag -> swscale matrix; untagged: BT.709 for HD, BT.601 for SD.
_MATRIX_OF_TAG = {1: "ITU709", 5: "ITU601", 6: "ITU601", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}
# Matrix -> (colorspace, primaries, transfer) tags written when the source left them unspecified.
_TAGS_OF_MATRIX = {"ITU709": (1, 1, 1), "ITU601": (6, 6, 6), "SMPTE240M": (7, 7, 7), "BT2020": (9, 9, 14)}
_UNSPECIFIED = 2
RANGE_MPEG, RANGE_JPEG = 1, 2


@dataclass
class DecodedFrame:
    index: int
    pts: int | None
    time_base: Fraction | None
    rgb: np.ndarray  # uint8 HxWx3
    duration: int | None = None  # in time_base; None when the source does not say

    @property
    def seconds(self) -> float | None:
        if self.pts is None or self.time_base is None:
            return None
        return float(self.pts * self.time_base)


@dataclass
class DecodeStats:
    frames: int = 0
    damaged_packets: int = 0


@dataclass(frozen=True)
class Colour:
    """How one stream's YUV maps to RGB and back, decided once from its first decoded frame."""

    matrix: str  # swscale name of the YUV <-> RGB matrix
    full_range: bool
    tags: tuple[int, int, int]  # colorspace, primaries, transfer, as written on the output

    @property
    def range_name(self) -> str:
        return "JPEG" if self.full_range else "MPEG"


@dataclass(frozen=True)
class VideoInfo:
    """What a clip's first video stream says about itself, checked by decoding its first frame."""

    path: str
    width: int
    height: int
    time_base: Fraction
    rate: Fraction  # average frame rate (a guess for VFR; only the encoder's rate control uses it)
    frames: int  # from the header; 0 when unknown, and it may lie
    duration: float | None  # seconds
    pix_fmt: str
    colour: Colour
    rotation: int  # display matrix, degrees counter-clockwise
    sample_aspect_ratio: Fraction | None
    audio_codecs: tuple[str, ...] = field(default=())

    @property
    def matrix(self) -> str:
        return self.colour.matrix

    @property
    def full_range(self) -> bool:
        return self.colour.full_range

    @property
    def color_tags(self) -> tuple[int, int, int]:
        return self.colour.tags

    @property
    def range_name(self) -> str:
        return self.colour.range_name


@dataclass
class CarriedItem:
    """Audio or subtitles travelling beside the frames: a packet to copy or decoded audio to re-encode."""

    stream_index: int
    packet: object = None
    frames: list = field(default_factory=list)


def is_empty_mov_text(packet) -> bool:
    """An MP4 text-subtitle sample showing nothing (written by the muxer between cues)."""
    return (packet.size == len(_EMPTY_MOV_TEXT) and packet.stream.codec_context.name == "mov_text"
            and bytes(packet) == _EMPTY_MOV_TEXT)


def is_video_path(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def stream_colour(first, context) -> Colour:
    """A stream's colour from its first decoded frame's tags, else its codec context's; untagged:
    BT.709 for HD, BT.601 for SD, and full range for yuvj formats. The frame wins because the
    bitstream is what was encoded; a container tag can disagree with it."""
    space_tag = int(first.colorspace) if int(first.colorspace) != _UNSPECIFIED else int(context.colorspace or 2)
    matrix = _matrix(space_tag, first.height)
    source_tags = (space_tag, int(first.color_primaries), int(first.color_trc))
    tags = tuple(tag if tag not in (0, _UNSPECIFIED) else default
                 for tag, default in zip(source_tags, _TAGS_OF_MATRIX[matrix]))
    range_tag = int(first.color_range) or int(context.color_range or 0)
    return Colour(matrix, _full_range(range_tag, first.format.name), tags)


class RGBConverter:
    """Decoded frames to uint8 HxWx3 RGB arrays with one stream's Colour, through one swscale context."""

    def __init__(self, colour: Colour):
        self.colour = colour
        self._reformatter = VideoReformatter()

    def __call__(self, frame) -> np.ndarray:
        return self._reformatter.reformat(frame, format="rgb24", src_colorspace=self.colour.matrix,
                                          src_color_range=self.colour.range_name).to_ndarray()


class FrameClock:
    """Each decoded frame's pts in the stream's time base, always increasing (encoders refuse others).

    Frames keep their own pts, except in AVI, which stores none: FFmpeg's parser guesses them from
    picture types, and B-frames (packed DivX/Xvid ones most) scramble the guesses and start the
    video a frame late. There a frame's time is its slot in the file: the dts of the packet that
    released it, less the decoder's delay measured on the first frame, so dropped-frame gaps
    survive. A frame with no time at all follows the one before at the average rate.
    """

    def __init__(self, container, stream, rate: Fraction):
        self.time_base = Fraction(stream.time_base or Fraction(1, 90000))
        self.step = max(1, round(1 / (rate * self.time_base)))
        self.by_slot = container.format.name == "avi"
        self._first_dts = self._delay = self._last = None

    def saw(self, packet):
        """Told of every video packet before it is decoded."""
        if self._first_dts is None and packet.dts is not None:
            self._first_dts = packet.dts

    def pts(self, frame) -> int:
        pts = self._slot(frame) if self.by_slot else frame.pts
        if pts is None:
            pts = 0 if self._last is None else self._last + self.step
        elif self._last is not None and pts <= self._last:
            pts = self._last + 1
        self._last = pts
        return pts

    def _slot(self, frame) -> int | None:
        if frame.dts is None or self._first_dts is None:
            return None
        if self._delay is None:
            self._delay = frame.dts - self._first_dts
        return frame.dts - self._delay


def _rate(stream) -> Fraction:
    return Fraction(stream.average_rate or stream.guessed_rate or Fraction(25))


def _matrix(tag: int, height: int) -> str:
    # BT.2020 non-constant maps to swscale's BT.2020 matrix; HDR transfer is not tone mapped.
    return _MATRIX_OF_TAG.get(tag) or ("ITU709" if height >= 720 else "ITU601")


def _full_range(tag: int, pix_fmt: str) -> bool:
    return tag == RANGE_JPEG or (tag != RANGE_MPEG and pix_fmt.startswith("yuvj"))


def iter_frames(path, stats: DecodeStats | None = None, wanted=None):
    """Yield DecodedFrame for every decodable frame of the first video stream.

    Decodes packet by packet so a damaged packet is skipped and counted in
    `stats.damaged_packets` instead of ending the clip. `wanted(index, pts,
    time_base) -> bool`, if given, is asked once per frame in order; frames it
    declines are counted but not converted to RGB nor yielded (sparse sampling
    then costs decoding only). Colours and times are VideoReader's: the same
    Colour and FrameClock. Raises MediaError when the file cannot be opened or
    has no video stream.
    """
    stats = stats if stats is not None else DecodeStats()
    container = open_container(path)
    try:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        clock, to_rgb = FrameClock(container, stream, _rate(stream)), None
        for packet in container.demux(stream):
            clock.saw(packet)
            for frame in _decode_packet(packet, stats):
                to_rgb = to_rgb or RGBConverter(stream_colour(frame, stream.codec_context))
                pts = clock.pts(frame)
                if wanted is None or wanted(stats.frames, pts, clock.time_base):
                    yield DecodedFrame(stats.frames, pts, clock.time_base, to_rgb(frame), frame.duration or None)
                stats.frames += 1
    finally:
        container.close()


def open_container(path):
    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise MediaError(f"{path}: cannot open as media ({av_reason(error)})") from error


def declared_size(path) -> tuple[int, int]:
    """(width, height) of the first video stream as its header declares it, nothing decoded.

    Raises MediaError for files that do not open or hold no video stream.
    """
    container = open_container(path)
    try:
        context = _video_stream(container, path).codec_context
        return int(context.width or 0), int(context.height or 0)
    finally:
        container.close()


def probe(path) -> VideoInfo:
    """Read a clip's video stream facts, decoding its first frame to be sure it is a clip.

    Raises MediaError for files that do not open, hold no video stream or no decodable frame.
    """
    container = open_container(path)
    try:
        stream = _video_stream(container, path)
        first = _first_frame(container, stream, path)
        context = stream.codec_context
        time_base = stream.time_base or Fraction(1, 90000)
        rate = _rate(stream)
        duration = float(stream.duration * time_base) if stream.duration else (
            container.duration / av.time_base if container.duration else None)
        frames = int(stream.frames or 0) or (int(round(duration * rate)) if duration else 0)
        return VideoInfo(path=str(path), width=first.width, height=first.height, time_base=Fraction(time_base),
                         rate=rate, frames=frames, duration=duration, pix_fmt=first.format.name,
                         colour=stream_colour(first, context), rotation=int(first.rotation or 0),
                         sample_aspect_ratio=context.sample_aspect_ratio,
                         audio_codecs=tuple(a.codec_context.name for a in container.streams.audio))
    except av.error.FFmpegError as error:
        raise MediaError(f"{path}: unreadable video ({av_reason(error)})") from error
    finally:
        container.close()


def _first_frame(container, stream, path):
    stats = DecodeStats()
    for packet in container.demux(stream):
        for frame in _decode_packet(packet, stats):
            return frame
    raise MediaError(f"{path}: no decodable video frame ({stats.damaged_packets} damaged packets)")


def _decode_packet(packet, stats: DecodeStats):
    try:
        return packet.decode()
    except av.error.FFmpegError:
        stats.damaged_packets += 1
        return []


class VideoReader:
    """Frames (DecodedFrame), audio and subtitles (CarriedItem) of one clip, in demux order, within a window.

    `start` and `duration` are seconds from the clip's first frame; timestamps
    come out shifted so the window starts at 0 (unshifted without `start`).
    `span` (seconds, as the shifted timestamps count them; end None: to the
    end) narrows the frames to one segment of the window: the reader seeks
    there (decodes from the start in AVI, whose frame times depend on what came
    before), yields the frames inside and notes the time of the first frame
    after it in `next_pts`. `carry=False` leaves audio and subtitles out. The
    container stays open until close(), because copied audio packets and their
    decoders belong to it.
    """

    def __init__(self, path, info: VideoInfo, start: float | None = None, duration: float | None = None,
                 max_frames: int | None = None, stats: DecodeStats | None = None, span: tuple | None = None,
                 carry: bool = True):
        self.path, self.info = str(path), info
        self.stats = stats if stats is not None else DecodeStats()
        self.container = open_container(path)
        self.video = _video_stream(self.container, path)
        self.video.thread_type = "AUTO"
        self.audio_streams = list(self.container.streams.audio)
        self.subtitle_streams = list(self.container.streams.subtitles)
        self.decode_audio: set[int] = set()  # input stream indices the writer wants decoded
        self.max_frames = max_frames
        origin = self.video.start_time * self.video.time_base if self.video.start_time is not None else 0
        self.window_start = Fraction(origin) + Fraction(start or 0) if start else None
        self.window_end = (Fraction(origin) + Fraction(start or 0) + Fraction(duration)) if duration else None
        self.clock = FrameClock(self.container, self.video, info.rate)
        self.to_rgb = RGBConverter(info.colour)
        self.last_duration: int | None = None  # of the last frame yielded, in clock.time_base
        self.span = (Fraction(span[0]), None if span[1] is None else Fraction(span[1])) if span else None
        self.carry = carry
        self.next_pts: int | None = None  # the first frame after the span (shifted, in clock.time_base)
        self.at_end = False  # the frames ran to the end of the clip (not of a window, span or --max-frames)
        self._origin = Fraction(origin)

    def close(self):
        self.container.close()

    def items(self):
        """Yield DecodedFrame and CarriedItem until the clip or the window ends. Raises MediaError."""
        try:
            target = self._seek_target()
            if target:
                self.container.seek(int(target / self.video.time_base), stream=self.video, backward=True)
            carried = [*self.audio_streams, *self.subtitle_streams] if self.carry else []
            for packet in self.container.demux(self.video, *carried):
                if packet.stream.type == "video":
                    self.clock.saw(packet)
                    for frame in _decode_packet(packet, self.stats):
                        decoded = self._take(frame)
                        if decoded is False:
                            return
                        if decoded is not None:
                            yield decoded
                elif (item := self._carried(packet)) is not None:
                    yield item
            self.at_end = True
        except av.error.FFmpegError as error:
            raise MediaError(f"{self.path}: read failed after {self.stats.frames} frames ({av_reason(error)})") \
                from error

    def last_frame_duration(self, pts: int) -> int | None:
        """How long the last frame yielded (at shifted `pts`) lasts, in clock.time_base, so that the output ends
        where the source does: to the end of the video stream where the frames ran to the end of the clip and
        the stream says how long it is, else its packet's duration, else to the end of the container (its
        longest stream); None when nothing says."""
        shift = round(self.window_start / self.clock.time_base) if self.window_start else 0
        ends = [self.last_duration and pts + self.last_duration]
        if self.at_end:
            stream, container = self.video, self.container
            if stream.duration:
                start = stream.start_time or 0
                ends.insert(0, round((start + stream.duration) * stream.time_base / self.clock.time_base) - shift)
            if container.duration:
                start = container.start_time or 0
                ends.append(round(Fraction(start + container.duration, av.time_base) / self.clock.time_base) - shift)
        return next((end - pts for end in ends if end and end > pts), None)

    def carried_items(self):
        """Yield the CarriedItem of every audio and subtitle packet in the window, decoding no video.

        Raises MediaError."""
        streams = [*self.audio_streams, *self.subtitle_streams]
        if not streams:
            return
        try:
            if self.window_start:
                self.container.seek(int(self.window_start / streams[0].time_base), stream=streams[0], backward=True)
            for packet in self.container.demux(*streams):
                if (item := self._carried(packet)) is not None:
                    yield item
        except av.error.FFmpegError as error:
            raise MediaError(f"{self.path}: read failed ({av_reason(error)})") from error

    def _seek_target(self) -> Fraction | None:
        """Where to seek before reading (source seconds), or None to read from the start."""
        if self.span and self.span[0] > 0 and self.container.format.name != "avi":
            return (self.window_start or self._origin) + self.span[0]
        return self.window_start

    def _take(self, frame):
        """The frame as a DecodedFrame, None to drop it, False when the window is over."""
        if self.max_frames is not None and self.stats.frames >= self.max_frames:
            return False
        pts, time_base = self.clock.pts(frame), self.clock.time_base
        if self.window_start is not None and pts * time_base < self.window_start:
            return None
        if self.window_end is not None and pts * time_base >= self.window_end:
            return False
        shifted = pts - (round(self.window_start / time_base) if self.window_start else 0)
        if self.span is not None:
            seconds = shifted * time_base
            if seconds < self.span[0]:
                return None
            if self.span[1] is not None and seconds >= self.span[1]:
                self.next_pts = shifted
                return False
        self.last_duration = frame.duration or None
        decoded = DecodedFrame(self.stats.frames, shifted, time_base, self.to_rgb(frame), self.last_duration)
        self.stats.frames += 1
        return decoded

    def _carried(self, packet):
        if packet.size == 0 and packet.stream.index not in self.decode_audio:
            return None  # demux's end-of-stream marker; copying it would write an empty packet
        time_base = packet.stream.time_base
        when = packet.pts if packet.pts is not None else packet.dts
        if when is not None and packet.size:
            if self.window_start is not None and when * time_base < self.window_start:
                return None
            if self.window_end is not None and when * time_base >= self.window_end:
                return None
        shift = round(self.window_start / time_base) if self.window_start else 0
        if packet.stream.index in self.decode_audio:
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                self.stats.damaged_packets += 1
                return None
            for frame in frames:
                if frame.pts is not None:
                    frame.pts -= shift
            return CarriedItem(packet.stream.index, frames=frames)
        if shift:
            packet.pts = None if packet.pts is None else packet.pts - shift
            packet.dts = None if packet.dts is None else packet.dts - shift
        return CarriedItem(packet.stream.index, packet=packet)


def _video_stream(container, path):
    if not container.streams.video:
        raise MediaError(f"{path}: no video stream")
    return container.streams.video[0]


def av_reason(error: Exception) -> str:
    """The first line of a PyAV/FFmpeg error, for our own messages."""
    text = getattr(error, "strerror", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__
