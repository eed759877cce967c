"""Video I/O with PyAV: decoding frames as RGB arrays with their timestamps.

All PyAV use lives here, so its exceptions are translated in one place.
"""

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .errors import MediaError

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                  ".wmv", ".flv", ".3gp", ".ogv", ".gif"}


@dataclass
class DecodedFrame:
    index: int
    pts: int | None
    time_base: Fraction | None
    rgb: np.ndarray  # uint8 HxWx3

    @property
    def seconds(self) -> float | None:
        if self.pts is None or self.time_base is None:
            return None
        return float(self.pts * self.time_base)


@dataclass
class DecodeStats:
    frames: int = 0
    damaged_packets: int = 0


def is_video_path(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def source_colorspace(stream) -> str:
    """The RGB conversion matrix for a stream: its tag, else BT.709 for HD and BT.601 for SD."""
    context = stream.codec_context
    tagged = {1: "ITU709", 5: "ITU601", 6: "ITU601", 9: "ITU709"}.get(int(getattr(context, "colorspace", 2) or 2))
    if tagged == "ITU709" and int(context.colorspace) == 9:
        return "ITU709"  # BT.2020 non-constant: nearest swscale matrix without HDR tone mapping
    if tagged:
        return tagged
    return "ITU709" if (context.height or 0) >= 720 else "ITU601"


def iter_frames(path, stats: DecodeStats | None = None):
    """Yield DecodedFrame for every decodable frame of the first video stream.

    Decodes packet by packet so a damaged packet is skipped and counted in
    `stats.damaged_packets` instead of ending the clip. Raises MediaError when
    the file cannot be opened or has no video stream.
    """
    stats = stats if stats is not None else DecodeStats()
    container = open_container(path)
    try:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        colorspace = source_colorspace(stream)
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                stats.damaged_packets += 1
                continue
            for frame in frames:
                yield DecodedFrame(stats.frames, frame.pts, frame.time_base,
                                   frame.to_ndarray(format="rgb24", src_colorspace=colorspace))
                stats.frames += 1
    finally:
        container.close()


def open_container(path):
    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise MediaError(f"{path}: cannot open as media ({_reason(error)})") from error


def _video_stream(container, path):
    if not container.streams.video:
        raise MediaError(f"{path}: no video stream")
    return container.streams.video[0]


def _reason(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__
