"""Writing translated clips with PyAV: the source's timing, size, colour tags, range, rotation and sample
aspect ratio, its audio and subtitles copied packet for packet (re-encoded only where the container
refuses the codec), its titles and dates, odd sizes kept, every encoder flushed (docs/video.md).
"""

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from vidcycle.errors import MediaError, UsageError
from vidcycle.media.video import RANGE_JPEG, RANGE_MPEG, CarriedItem, VideoReader, av_reason, is_empty_mov_text

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
# Subtitle codecs each container takes as a packet copy (text subtitles are not converted); absent: try.
SUBTITLE_COPY = {".mp4": ("mov_text",), ".m4v": ("mov_text",), ".mov": ("mov_text",), ".webm": ("webvtt",)}


CHROMA = ("420", "444", "source")


@dataclass(frozen=True)
class EncodeSettings:
    codec: str | None = None  # None: by container (libx264; libvpx-vp9 for webm)
    crf: int | None = None
    preset: str | None = None
    # 4:2:0 by default: browsers, phones and most hardware decoders play no 4:4:4 H.264 (High 4:4:4).
    chroma: str = "420"  # "444", or "source": 4:4:4 for 4:4:4 and RGB sources, 4:2:0 for the rest


@dataclass(frozen=True)
class LostPackets:
    """Packets of a copied source stream that the output container refused or dropped on its own."""

    stream_index: int
    kind: str  # "audio", "subtitle"
    codec: str
    packets: int
    bytes: int
    container: str  # the output's suffix

    def __str__(self) -> str:
        return (f"{self.kind} stream {self.stream_index} ({self.codec}): {self.packets} packet(s), {self.bytes} "
                f"bytes, dropped by the {self.container} muxer (damaged or partial ones, as a rule); write .mkv "
                f"to keep them")


def resolved_settings(settings: EncodeSettings, container_suffix: str) -> EncodeSettings:
    """The settings with the container's and codec's defaults filled in: what the encoder really gets."""
    codec = settings.codec or DEFAULT_CODEC.get(container_suffix.lower(), "libx264")
    crf = settings.crf if settings.crf is not None else DEFAULT_CRF.get(codec)
    return EncodeSettings(codec, crf, settings.preset or DEFAULT_PRESET.get(codec), settings.chroma)


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
    re-encoded (AAC; Opus in WebM). `carry=False` writes the video alone (a
    segment of a long clip); `video_template`, a stream of such a segment,
    makes the video a packet copy of the segments (`write_packet`) instead of
    an encode. `repeatable`: the same frames always give the same bytes (what a
    segment written again after a crash must do); x264's macroblock-tree rate
    control is then off: with it, x264 gave different bytes for the same frames
    from run to run inside the apply pipeline. Raises MediaError.
    """

    def __init__(self, path, reader: VideoReader, width: int, height: int, settings: EncodeSettings,
                 container_suffix: str, carry: bool = True, video_template=None, repeatable: bool = False):
        self.path, self.info = str(path), reader.info
        suffix = container_suffix.lower()
        settings = resolved_settings(settings, suffix)
        self.suffix = suffix
        try:
            self.container = av.open(self.path, "w", format=_muxer(suffix))
        except (av.error.FFmpegError, OSError) as error:
            raise MediaError(f"{path}: cannot create output ({av_reason(error)})") from error
        try:
            self.stream = (self._video_stream(width, height, settings, repeatable) if video_template is None
                           else self._copied_video_stream(video_template))
            self.dropped: list[str] = []  # streams the container refused, one line each
            self.carried = {**self._audio_streams(reader, suffix), **self._subtitle_streams(reader, suffix)} \
                if carry else {}
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
        self._video_dts: int | None = None  # of the last copied video packet (write_packet)
        self._copied: dict[int, list[int]] = {}  # source stream index -> [packets, bytes] handed to the muxer
        self._refused: dict[int, list[int]] = {}  # source stream index -> [packets, bytes] the muxer refused
        self.lost_packets: list[LostPackets] = []  # after close(): what the container refused or dropped
        self.pts_range: list[int] = []  # first and last pts written (in the source's time base)
        self.end_pts: int | None = None  # after close(): where the last frame written ends (source time base)

    def _video_stream(self, width: int, height: int, settings: EncodeSettings, repeatable: bool):
        info, codec = self.info, settings.codec
        pix_fmt = output_pix_fmt(settings, width, height, info.pix_fmt, self.path)
        options = _encoder_options(codec, settings)
        if repeatable and codec == "libx264":
            options["x264-params"] = "mbtree=0"
        try:
            stream = self.container.add_stream(codec, rate=info.rate, options=options)
        except (av.error.FFmpegError, ValueError) as error:
            raise MediaError(f"unknown or unusable codec {codec!r} ({av_reason(error)}); try libx264, libx265, "
                             f"libvpx-vp9") from error
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = info.time_base
        stream.thread_type = "AUTO"  # frame threads: 14-30% faster than PyAV's default slice threads
        context = stream.codec_context
        context.time_base = info.time_base
        context.flags |= av.codec.context.Flags.frame_duration  # frame durations go on to the packets
        context.colorspace, context.color_primaries, context.color_trc = info.color_tags
        context.color_range = RANGE_JPEG if info.full_range else RANGE_MPEG
        if info.sample_aspect_ratio:
            context.sample_aspect_ratio = info.sample_aspect_ratio
        if info.rotation:
            stream.set_display_rotation(info.rotation)
        return stream

    def _copied_video_stream(self, template):
        stream = self.container.add_stream_from_template(template)
        stream.time_base = self.info.time_base
        if self.info.rotation:
            stream.set_display_rotation(self.info.rotation)
        return stream

    def write_packet(self, packet):
        """A packet of an encoded segment, copied as it is (stream copy). A decode time that does not move on
        from the one before is moved on by one tick: a segment's first decode times reach back by its
        reorder delay, past the previous segment's last where its frames are far apart (seen with VFR)."""
        packet.stream = self.stream
        if self._video_dts is not None and packet.dts is not None:
            base = self.stream.time_base  # the muxer's own once the header is written
            if packet.time_base != base:
                for name in ("pts", "dts", "duration"):
                    value = getattr(packet, name)
                    if value is not None:
                        setattr(packet, name, round(value * packet.time_base / base))
                packet.time_base = base
            if packet.dts <= self._video_dts:
                packet.dts = self._video_dts + 1
        self._mux(packet)
        if packet.dts is not None:
            self._video_dts = packet.dts  # in the stream's time base: muxing rebased it

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
                self.dropped.append(f"subtitle stream {source.index} ({name}) left out: {av_reason(error)}")
        return streams

    def write_frame(self, rgb: np.ndarray, pts: int, time_base: Fraction):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame = self._reformatter.reformat(frame, format=self.stream.pix_fmt, dst_colorspace=self.info.matrix,
                                           dst_color_range=self.info.range_name)
        frame.pts, frame.time_base = pts, time_base
        self.pts_range[1:] = [pts] if self.pts_range else [pts, pts]
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
            frame.duration = self._reader.last_frame_duration(frame.pts) or 0  # 0: unknown, the muxer guesses
        self.end_pts = frame.pts + frame.duration if frame.duration else None
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
            size = packet.size
            packet.stream = stream
            try:
                self.container.mux(packet)
            except (av.error.InvalidDataError, av.error.ArgumentError):
                _count(self._refused, item.stream_index, size)  # one packet the muxer will not take; go on
            except av.error.FFmpegError as error:
                raise MediaError(f"{self.path}: writing failed ({av_reason(error)})") from error
            else:
                _count(self._copied, item.stream_index, size)
            return
        for frame in item.frames:
            self._mux(stream.encode(frame))

    def close(self, next_start: Fraction | None = None):
        """Flush every encoder (x264's lookahead holds frames) and write the trailer. `next_start`
        (seconds): when the frame after the last one written begins, for a segment of a longer clip."""
        if self.stream.codec_context.is_encoder:
            self._encode_pending(next_start)
            self._mux(self.stream.encode(None))
        for stream in self.carried.values():
            if stream.type == "audio" and stream.codec_context.is_encoder:
                self._mux(stream.encode(None))
        try:
            self.container.close()
        except av.error.FFmpegError as error:
            raise MediaError(f"{self.path}: finishing the file failed ({av_reason(error)})") from error
        self.lost_packets = self._lost()

    def _lost(self) -> list[LostPackets]:
        """Copied packets that are not in the file: refused by the muxer, or dropped on its own (seen: the MP4
        muxer leaves out a first AC3 packet that is a partial frame). Raises MediaError."""
        try:
            kept = self._read_back() if self._copied else {}
        except av.error.FFmpegError as error:
            raise MediaError(f"{self.path}: the file just written cannot be read back ({av_reason(error)})") \
                from error
        lost = []
        for index in sorted({*kept, *self._refused}):
            refused = self._refused.get(index, [0, 0])
            dropped = [a - b for a, b in zip(self._copied[index], kept[index])] if index in kept else [0, 0]
            source = self._reader.container.streams[index]
            lost.append(LostPackets(index, source.type, source.codec_context.name, refused[0] + dropped[0],
                                    refused[1] + dropped[1], self.suffix))
        return [item for item in lost if item.packets > 0]

    def _read_back(self) -> dict:
        """{source index: [packets, bytes] in the file} of the copied streams whose packet count in the file's
        header comes up short of what was given (a container whose header counts none, as MKV's, is not
        checked; none was seen to drop any). Only those are read back, packet sizes and no decoding."""
        with av.open(self.path) as written:
            short = {}
            for index, (packets, _) in self._copied.items():
                stream = written.streams[self.carried[index].index]
                if stream.frames and stream.frames < packets:
                    short[stream.index] = index
            kept = {index: [0, 0] for index in short.values()}
            if short:
                for packet in written.demux(*(written.streams[i] for i in short)):
                    if packet.size:
                        _count(kept, short[packet.stream.index], packet.size)
        return kept

    def abort(self):
        try:
            self.container.close()
        except av.error.FFmpegError:
            pass  # the file is deleted by the caller; its trailer does not matter

    def _mux(self, packets):
        try:
            self.container.mux(packets)
        except av.error.FFmpegError as error:
            raise MediaError(f"{self.path}: writing failed ({av_reason(error)})") from error


def _count(counts: dict, index: int, size: int) -> None:
    entry = counts.setdefault(index, [0, 0])
    entry[0] += 1
    entry[1] += size


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


def output_pix_fmt(settings: EncodeSettings, width: int, height: int, source_pix_fmt: str, path) -> str:
    """The pixel format a resolved `settings` encodes in: 4:2:0 unless settings.chroma asks otherwise; 4:4:4
    for odd sizes H.264/H.265 cannot code in 4:2:0. Raises MediaError for a chroma the codec cannot code."""
    codec, chroma = settings.codec, settings.chroma
    if chroma not in CHROMA:
        raise UsageError(f"chroma {chroma!r} is not one of {', '.join(CHROMA)}")
    odd = width % 2 or height % 2
    if chroma == "source":
        chroma = "444" if "444" in source_pix_fmt or source_pix_fmt.startswith(("rgb", "bgr", "gbr")) else "420"
    if codec in ("libx264", "libx265", "h264", "hevc"):
        return "yuv444p" if odd or chroma == "444" else "yuv420p"
    if codec == "libvpx-vp9":  # VP9 codes odd sizes in 4:2:0
        return "yuv444p" if chroma == "444" else "yuv420p"
    if odd:
        raise MediaError(f"{path}: frame size {width}x{height} is odd and {codec} needs even sides; "
                         f"use codec libx264 (--codec libx264; it writes 4:4:4 for odd sizes)")
    try:
        formats = [f.name for f in av.codec.Codec(codec, "w").video_formats or []]
    except av.error.FFmpegError:
        formats = []
    wanted = "yuv444p" if chroma == "444" else "yuv420p"
    if not formats or wanted in formats:
        return wanted
    if chroma == "444":
        raise MediaError(f"{codec} does not code 4:4:4 (yuv444p); use libx264, libx265 or libvpx-vp9, or "
                         f"chroma 420 (--chroma 420)")
    return formats[0]


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
        raise MediaError(f"crf (--crf) is not supported for codec {codec}; use libx264, libx265, libvpx-vp9 "
                         f"or libsvtav1")
    return options


