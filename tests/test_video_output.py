"""What apply writes must play and must say what it left out: 4:2:0 unless asked otherwise (an RGB source
included, whole or in segments), and every copied packet the output container drops, counted and named."""

from fractions import Fraction

import av
import numpy as np
import pytest

import vidcycle
from conftest import run_cli, write_clip
from vidcycle.apply import segments
from vidcycle.apply.jobs import translate_inputs
from vidcycle.media.video_writer import LostPackets

COMMON = ["--device", "cpu", "--precision", "fp32", "--engine", "torch"]


def write_rgb_clip(path, frames=24, fps=8, codec="libx264rgb"):
    """A clip stored in RGB (H.264 RGB in MKV), as screen captures and lossless intermediates are."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "rgb24"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def pix_fmt(path):
    with av.open(str(path)) as container:
        return container.streams.video[0].codec_context.pix_fmt


@pytest.mark.parametrize("segmented", [False, True], ids=["whole", "segments"])
@pytest.mark.parametrize("chroma, expected", [([], "420"), (["--chroma", "source"], "444"),
                                              (["--chroma", "444"], "444")], ids=["default", "source", "444"])
def test_an_rgb_source_comes_out_420_unless_asked(tmp_path, monkeypatch, tiny_model_file, segmented, chroma,
                                                   expected):
    if segmented:
        monkeypatch.setattr(segments, "SEGMENT_SECONDS", 1)
    src = write_rgb_clip(tmp_path / "rgb.mkv")
    assert pix_fmt(src) == "gbrp"  # planar RGB: what decoders make of H.264 RGB
    out = tmp_path / "out.mkv"
    result = run_cli("apply", src, "-m", tiny_model_file, "-o", out, *COMMON, *chroma)
    assert result.exit_code == 0, result.output
    assert pix_fmt(out) == f"yuvj{expected}p"  # full range, as RGB is; the decoder names it the old way


def test_a_420_source_can_be_written_444_and_help_says_why_420(tmp_path, tiny_model_file):
    src = write_clip(tmp_path / "a.mp4", frames=4, size=(32, 32))
    out = tmp_path / "out.mp4"
    assert run_cli("apply", src, "-m", tiny_model_file, "-o", out, *COMMON, "--chroma", "444").exit_code == 0
    assert pix_fmt(out) == "yuv444p"
    shown = run_cli("apply", "--help").output
    assert "--chroma" in shown and "plays everywhere" in shown and "[default: 420]" in shown


FPS = 24
AC3_FRAME = 1536  # samples


def write_avi_with_partial_first_ac3(path, cut=300):
    """An AVI whose first AC3 packet is only the last `cut` bytes of a frame (a capture started mid-frame):
    the MP4 muxer leaves such a packet out without a word; MKV keeps it."""
    tone = (np.sin(np.arange(3 * 48000) * 2 * np.pi * 440 / 48000) * 0.2).astype(np.float32)
    with av.open(str(path), "w", format="avi") as out:
        video = out.add_stream("mpeg4", rate=FPS)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        audio = out.add_stream("ac3", rate=48000)
        audio.layout = "stereo"
        packets = []
        for start in range(0, len(tone) - AC3_FRAME, AC3_FRAME):
            frame = av.AudioFrame.from_ndarray(np.stack([tone[start:start + AC3_FRAME]] * 2), format="fltp",
                                               layout="stereo")
            frame.sample_rate, frame.pts = 48000, start
            packets += audio.encode(frame)
        packets += audio.encode(None)
        first = packets[0]
        partial = av.Packet(bytes(first)[-cut:])
        partial.pts, partial.dts, partial.time_base = first.pts, first.dts, first.time_base
        packets[0] = partial
        for i in range(3 * FPS):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
            for packet in packets[len(packets) * i // (3 * FPS):len(packets) * (i + 1) // (3 * FPS)]:
                packet.stream = audio
                out.mux(packet)
        out.mux(video.encode(None))
    return path


def audio_packets(path):
    with av.open(str(path)) as container:
        return [bytes(packet) for packet in container.demux(audio=0) if packet.size]


@pytest.mark.parametrize("segmented", [False, True], ids=["whole", "segments"])
def test_a_packet_the_mp4_muxer_drops_is_counted_and_named(tmp_path, monkeypatch, tiny_model_file, segmented):
    if segmented:
        monkeypatch.setattr(segments, "SEGMENT_SECONDS", 1)
    src = write_avi_with_partial_first_ac3(tmp_path / "capture.avi")
    sent = audio_packets(src)
    assert len(sent[0]) == 300 and len(sent) > 80
    out = tmp_path / "out.mp4"
    result = run_cli("apply", src, "-m", tiny_model_file, "-o", out, *COMMON)
    assert result.exit_code == 0, result.output
    assert audio_packets(out) == sent[1:]  # the muxer's doing, not ours: everything else came through
    named = [line for line in result.stderr.splitlines() if "dropped by the .mp4 muxer" in line]
    assert named == [f"vidcycle: warning: {src}: audio stream 1 (ac3): 1 packet(s), 300 bytes, dropped by the "
                     f".mp4 muxer (damaged or partial ones, as a rule); write .mkv to keep them"]
    again = vidcycle.translate_video(src, tmp_path / "again.mp4", tiny_model_file,
                                     vidcycle.ApplyOptions(engine="torch"), device="cpu", precision="fp32")
    assert again.lost_packets == [LostPackets(1, "audio", "ac3", 1, 300, ".mp4")]
    job = translate_inputs([src], tmp_path / "job.mp4", tiny_model_file, vidcycle.ApplyOptions(engine="torch"),
                           device="cpu", precision="fp32")
    assert job.lost_packets == [(src, LostPackets(1, "audio", "ac3", 1, 300, ".mp4"))]


def test_mkv_keeps_the_packet_and_says_nothing(tmp_path, tiny_model_file):
    src = write_avi_with_partial_first_ac3(tmp_path / "capture.avi")
    out = tmp_path / "out.mkv"
    result = vidcycle.translate_video(src, out, tiny_model_file, vidcycle.ApplyOptions(engine="torch"),
                                      device="cpu", precision="fp32")
    assert result.lost_packets == [] and audio_packets(out) == audio_packets(src)
