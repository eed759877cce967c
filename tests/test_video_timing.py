"""Timing and colour that apply must keep: one colour decision shared by every decoder."""

import av
import numpy as np
import pytest

from vidcycle import video

FPS = 24


def noise_frames(count, size=(64, 48), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8) for _ in range(count)]


def write_mistagged(path, size, container_matrix: int, bitstream_matrix: str):
    """A clip whose container says one colour matrix and whose H.264 bitstream says another."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"x264-params": f"colormatrix={bitstream_matrix}"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        context = stream.codec_context
        context.colorspace = context.color_primaries = context.color_trc = container_matrix
        for i, rgb in enumerate(noise_frames(2, size)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("size, container_matrix, bitstream_matrix, suffix", [
    ((64, 48), 6, "bt709", ".mkv"),  # SD, container BT.601, frames BT.709
    ((1280, 720), 1, "smpte170m", ".mp4"),  # HD, container BT.709, frames BT.601
])
def test_training_and_apply_decoders_give_the_same_rgb(tmp_path, size, container_matrix, bitstream_matrix, suffix):
    path = write_mistagged(tmp_path / f"clip{suffix}", size, container_matrix, bitstream_matrix)
    training = [frame.rgb for frame in video.iter_frames(path)]
    reader = video.VideoReader(path, video.probe(path))
    try:
        applying = [item.rgb for item in reader.items() if isinstance(item, video.DecodedFrame)]
    finally:
        reader.close()
    assert len(training) == len(applying) == 2
    for a, b in zip(training, applying):
        np.testing.assert_array_equal(a, b)
