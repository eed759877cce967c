"""Video I/O with PyAV: decoding frames as RGB arrays with their timestamps, and
writing translated frames back with the source's timing, size, colour, rotation
and audio.

All PyAV use lives here, so its exceptions are translated in one place. The
facts behind the choices are in docs/video.md: frame threading on both ends,
per-frame pts copied, the encoder flushed, audio copied packet for packet,
the colour matrix and range taken from the source tags both ways, rotation
written back, odd sizes kept. One colour decision (Colour, from the first decoded
frame) and one clock (FrameClock) serve every decoder here, so frames read for
training, evaluation and applying a model are the same pixels at the same times.
"""

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from .errors import MediaError

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                  ".wmv", ".flv", ".3gp", ".ogv", ".gif"}
# Containers written as they came; an input in any other container gets an .mp4 output.
WRITABLE_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm"}
DEFAULT_CODEC = {".webm": "libvpx-vp9"}  # everything else: libx264
# Visually lossless defaults. x264 CRF 17 is the usual "transparent" point; "fast"
# because the CPU encoder, not the network, sets the floor on a GPU machine.
DEFAULT_CRF = {"libx264": 17, "libx265": 20, "libvpx-vp9": 24, "libsvtav1": 24}
DEFAULT_PRESET = {"libx264": "fast", "libx265": "fast", "libsvtav1": "8"}
# Audio codecs each container takes as a packet copy; others are re-encoded. None: anything.
_MP4_AUDIO = {"aac", "mp3", "ac3", "eac3", "opus", "flac", "alac"}
AUDIO_COPY = {".mp4": _MP4_AUDIO, ".m4v": _MP4_AUDIO,
              ".mov": _MP4_AUDIO | {"pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_f32le"},
              ".mkv": None, ".webm": {"opus", "vorbis"}}
AUDIO_FALLBACK = {".webm": "libopus"}  # everything else: aac
_EMPTY_MOV_TEXT = b"\x00\x00"  # an empty mov_text sample: the MP4 muxer's filler between cues
# Subtitle codecs each container takes as a packet copy (text subtitles are not converted); absent: try.
SUBTITLE_COPY = {".mp4": ("mov_text",), ".m4v": ("mov_text",), ".mov": ("mov_text",), ".webm": ("webvtt",)}

# AVColorSpace tag -> swscale matrix; untagged: BT.709 for HD, BT.601 for SD.
_MATRIX_OF_TAG = {1: "ITU709", 5: "ITU601", 6: "ITU601", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}
# Matrix -> (colorspace, primaries, transfer) tags written when the source left them unspecified.
_TAGS_OF_MATRIX = {"ITU709": (1, 1, 1), "ITU601": (6, 6, 6), "SMPTE240M": (7, 7, 7), "BT2020": (9, 9, 14)}
_UNSPECIFIED = 2
_RANGE_MPEG, _RANGE_JPEG = 1, 2


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
    return tag == _RANGE_JPEG or (tag != _RANGE_MPEG and pix_fmt.startswith("yuvj"))


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
        raise MediaError(f"{path}: cannot open as media ({_reason(error)})") from error


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
        raise MediaError(f"{path}: unreadable video ({_reason(error)})") from error
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
    The container stays open until close(), because copied audio packets
    and their decoders belong to it.
    """

    def __init__(self, path, info: VideoInfo, start: float | None = None, duration: float | None = None,
                 max_frames: int | None = None, stats: DecodeStats | None = None):
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

    def close(self):
        self.container.close()

    def items(self):
        """Yield DecodedFrame and CarriedItem until the clip or the window ends. Raises MediaError."""
        try:
            if self.window_start:
                self.container.seek(int(self.window_start / self.video.time_base), stream=self.video, backward=True)
            for packet in self.container.demux(self.video, *self.audio_streams, *self.subtitle_streams):
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
        except av.error.FFmpegError as error:
            raise MediaError(f"{self.path}: read failed after {self.stats.frames} frames ({_reason(error)})") \
                from error

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


@dataclass(frozen=True)
class EncodeSettings:
    codec: str | None = None  # None: by container (libx264; libvpx-vp9 for webm)
    crf: int | None = None
    preset: str | None = None


def output_suffix(input_path) -> str:
    """The container an output of this clip is written in: the input's when writable, else .mp4."""
    suffix = Path(input_path).suffix.lower()
    return suffix if suffix in WRITABLE_SUFFIXES else ".mp4"


# Written by the muxer and encoders themselves, or about the source's encoding, not its content.
_ENCODING_METADATA = {"encoder", "major_brand", "minor_version", "compatible_brands", "handler_name", "vendor_id",
                      "duration", "_statistics_tags", "_statistics_writing_app", "_statistics_writing_date_utc",
                      "bps", "number_of_frames", "number_of_bytes"}


class VideoWriter:
    """Writes RGB frames with given pts into a new file, plus the reader's audio.

    The video stream gets the source's time base, colour tags, range, display
    rotation and sample aspect ratio. Each frame is held until the next one
    arrives, to be encoded with its duration (the gap to the next); the last
    one gets the source's last frame duration from the reader, so that a
    variable-rate clip ends where its source ends. Audio is copied packet for
    packet where the container takes the codec, else decoded by the reader and
    re-encoded (AAC; Opus in WebM). Raises MediaError.
    """

    def __init__(self, path, reader: VideoReader, width: int, height: int, settings: EncodeSettings,
                 container_suffix: str):
        self.path, self.info = str(path), reader.info
        suffix = container_suffix.lower()
        codec = settings.codec or DEFAULT_CODEC.get(suffix, "libx264")
        try:
            self.container = av.open(self.path, "w", format=_muxer(suffix))
        except (av.error.FFmpegError, OSError) as error:
            raise MediaError(f"{path}: cannot create output ({_reason(error)})") from error
        try:
            self.stream = self._video_stream(codec, width, height, settings)
            self.dropped: list[str] = []  # streams the container refused, one line each
            self.carried = {**self._audio_streams(reader, suffix), **self._subtitle_streams(reader, suffix)}
            _copy_metadata(reader.container, self.container)
            _copy_metadata(reader.video, self.stream)
            for index, stream in self.carried.items():
                _copy_metadata(reader.container.streams[index], stream)
        except BaseException:
            self.container.close()
            raise
        self._reader = reader
        self._reformatter = VideoReformatter()
        self._pending = None  # the frame written last, waiting for its duration
        self._last_dts: dict[int, int] = {}

    def _video_stream(self, codec: str, width: int, height: int, settings: EncodeSettings):
        info = self.info
        pix_fmt = _pix_fmt(codec, width, height, info.pix_fmt, self.path)
        try:
            stream = self.container.add_stream(codec, rate=info.rate, options=_encoder_options(codec, settings))
        except (av.error.FFmpegError, ValueError) as error:
            raise MediaError(f"unknown or unusable codec {codec!r} ({_reason(error)}); try libx264, libx265, "
                             f"libvpx-vp9") from error
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = info.time_base
        stream.thread_type = "AUTO"  # frame threads: 14-30% faster than PyAV's default slice threads
        context = stream.codec_context
        context.time_base = info.time_base
        context.flags |= av.codec.context.Flags.frame_duration  # frame durations go on to the packets
        context.colorspace, context.color_primaries, context.color_trc = info.color_tags
        context.color_range = _RANGE_JPEG if info.full_range else _RANGE_MPEG
        if info.sample_aspect_ratio:
            context.sample_aspect_ratio = info.sample_aspect_ratio
        if info.rotation:
            stream.set_display_rotation(info.rotation)
        return stream

    def _audio_streams(self, reader: VideoReader, suffix: str) -> dict:
        copyable = AUDIO_COPY.get(suffix, _MP4_AUDIO)
        streams = {}
        for source in reader.audio_streams:
            name = source.codec_context.name
            if copyable is None or name in copyable:
                try:
                    streams[source.index] = self.container.add_stream_from_template(source)
                    continue
                except (av.error.FFmpegError, ValueError):
                    pass  # the muxer refused the copy: re-encode below
            context = source.codec_context
            stream = self.container.add_stream(AUDIO_FALLBACK.get(suffix, "aac"), rate=_audio_rate(suffix, context))
            stream.layout = context.layout
            reader.decode_audio.add(source.index)
            streams[source.index] = stream
        return streams

    def _subtitle_streams(self, reader: VideoReader, suffix: str) -> dict:
        """Subtitles are copied packet for packet; a container that cannot hold the codec goes without."""
        streams = {}
        for source in reader.subtitle_streams:
            name = source.codec_context.name
            if suffix in SUBTITLE_COPY and name not in SUBTITLE_COPY[suffix]:
                self.dropped.append(f"subtitle stream {source.index} ({name}) left out: {suffix} takes "
                                    f"{', '.join(SUBTITLE_COPY[suffix])}; write .mkv to keep it")
                continue
            try:
                streams[source.index] = self.container.add_stream_from_template(source)
            except (av.error.FFmpegError, ValueError) as error:
                self.dropped.append(f"subtitle stream {source.index} ({name}) left out: {_reason(error)}")
        return streams

    def write_frame(self, rgb: np.ndarray, pts: int, time_base: Fraction):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame = self._reformatter.reformat(frame, format=self.stream.pix_fmt, dst_colorspace=self.info.matrix,
                                           dst_color_range=self.info.range_name)
        frame.pts, frame.time_base = pts, time_base
        self._encode_pending(pts * time_base)
        self._pending = frame

    def _encode_pending(self, next_start: Fraction | None):
        """Encode the held frame, lasting until `next_start` (seconds), or as its source frame did."""
        frame, self._pending = self._pending, None
        if frame is None:
            return
        if next_start is not None:
            frame.duration = round((next_start - frame.pts * frame.time_base) / frame.time_base)
        else:
            frame.duration = self._reader.last_duration or 0  # 0: unknown, the muxer guesses
        self._mux(self.stream.encode(frame))

    def write_carried(self, item: CarriedItem):
        stream = self.carried.get(item.stream_index)
        if stream is None:
            return
        if item.packet is not None:
            packet = item.packet
            if is_empty_mov_text(packet):
                return  # the MP4 muxer writes the gaps between cues itself; copied ones would double them
            last = self._last_dts.get(item.stream_index)
            if packet.dts is not None and last is not None and packet.dts <= last:
                # Non-monotonic DTS in copied audio kills the muxer hours in: nudge it.
                packet.dts = last + 1
                if packet.pts is not None and packet.pts < packet.dts:
                    packet.pts = packet.dts
            if packet.dts is not None:
                self._last_dts[item.stream_index] = packet.dts
            packet.stream = stream
            self._mux(packet)
            return
        for frame in item.frames:
            self._mux(stream.encode(frame))

    def close(self):
        """Flush every encoder (x264's lookahead holds frames) and write the trailer."""
        self._encode_pending(None)
        self._mux(self.stream.encode(None))
        for stream in self.carried.values():
            if stream.type == "audio" and stream.codec_context.is_encoder:
                self._mux(stream.encode(None))
        try:
            self.container.close()
        except av.error.FFmpegError as error:
            raise MediaError(f"{self.path}: finishing the file failed ({_reason(error)})") from error

    def abort(self):
        try:
            self.container.close()
        except av.error.FFmpegError:
            pass  # the file is deleted by the caller; its trailer does not matter

    def _mux(self, packets):
        try:
            self.container.mux(packets)
        except av.error.FFmpegError as error:
            raise MediaError(f"{self.path}: writing failed ({_reason(error)})") from error


def _copy_metadata(source, target) -> None:
    """Titles, dates, places and languages go along; what describes the old encoding does not."""
    for key, value in (source.metadata or {}).items():
        if key.lower() not in _ENCODING_METADATA:
            target.metadata[key] = value


def _muxer(suffix: str) -> str | None:
    return {".mkv": "matroska", ".webm": "webm", ".mov": "mov", ".mp4": "mp4", ".m4v": "mp4"}.get(suffix)


def _audio_rate(suffix: str, context) -> int:
    if AUDIO_FALLBACK.get(suffix) == "libopus":
        return 48000
    return context.sample_rate if context.sample_rate in (44100, 48000, 32000, 22050, 16000, 96000) else 48000


def _pix_fmt(codec: str, width: int, height: int, source_pix_fmt: str, path: str) -> str:
    """4:2:0 where it can be; 4:4:4 for 4:4:4 sources and for odd sizes H.264/H.265 cannot code in 4:2:0."""
    odd = width % 2 or height % 2
    full_chroma = "444" in source_pix_fmt or source_pix_fmt.startswith(("rgb", "bgr", "gbr"))
    if codec in ("libx264", "libx265", "h264", "hevc"):
        return "yuv444p" if odd or full_chroma else "yuv420p"
    if codec == "libvpx-vp9":  # VP9 codes odd sizes in 4:2:0
        return "yuv444p" if full_chroma else "yuv420p"
    if odd:
        raise MediaError(f"{path}: frame size {width}x{height} is odd and {codec} needs even sides; "
                         f"use --codec libx264 (writes 4:4:4 for odd sizes)")
    try:
        formats = [f.name for f in av.codec.Codec(codec, "w").video_formats or []]
    except av.error.FFmpegError:
        formats = []
    return "yuv420p" if not formats or "yuv420p" in formats else formats[0]


def _encoder_options(codec: str, settings: EncodeSettings) -> dict:
    crf = settings.crf if settings.crf is not None else DEFAULT_CRF.get(codec)
    preset = settings.preset or DEFAULT_PRESET.get(codec)
    options = {}
    if codec in ("libx264", "libx265", "libsvtav1"):
        options = {"crf": str(crf)} | ({"preset": preset} if preset else {})
        if codec == "libx265":
            options["x265-params"] = "log-level=error"
    elif codec == "libvpx-vp9":
        options = {"crf": str(crf), "b": "0", "row-mt": "1"}
        if settings.preset:
            options["cpu-used"] = settings.preset
    elif settings.crf is not None:
        raise MediaError(f"--crf is not supported for codec {codec}; use libx264, libx265, libvpx-vp9 or libsvtav1")
    return options


def _video_stream(container, path):
    if not container.streams.video:
        raise MediaError(f"{path}: no video stream")
    return container.streams.video[0]


def _reason(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__
