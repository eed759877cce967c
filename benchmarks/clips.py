"""Benchmark input clips: a texture sliding sideways, H.264 (encoded fast: input encoding is not what
is measured), with an AAC tone. numpy and PyAV only, so it also runs where OpenCV is missing."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FPS = 24
TONE_RATE = 48000


def write_sliding_clip(path: Path, texture: np.ndarray, frames: int, width: int, step: int, crf: int = 20,
                       audio: bool = True, fps: int = FPS) -> Path:
    """`frames` frames of `width` columns cut from `texture` (H x >= width + step * frames x 3, uint8),
    sliding `step` px a frame, at `fps`; plus a 440 Hz tone as long as the video when `audio`."""
    height = texture.shape[0]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": str(crf)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.thread_type = "AUTO"
        sound = container.add_stream("aac", rate=TONE_RATE) if audio else None
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.roll(texture, step * i, axis=1)[:, :width]),
                                               format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if sound is not None:
            _write_tone(container, sound, int(TONE_RATE * frames / fps))
    return path


def _write_tone(container, sound, total: int) -> None:
    for start in range(0, total, 1024):
        t = np.arange(start, min(total, start + 1024)) / TONE_RATE
        chunk = av.AudioFrame.from_ndarray((0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                           format="fltp", layout="mono")
        chunk.sample_rate, chunk.pts, chunk.time_base = TONE_RATE, start, Fraction(1, TONE_RATE)
        container.mux(sound.encode(chunk))
    container.mux(sound.encode(None))
