"""Timing and colour that apply must keep: AVI with packed B-frames, a variable-rate clip's last frame,
and one colour decision shared by every decoder."""

from fractions import Fraction

import av
import numpy as np
import pytest

import vidcycle
from vidcycle.media import video
from vidcycle.media.video_writer import output_suffix

FPS = 24
# A not-coded VOP (DivX/Xvid's placeholder for the slot a packed B-frame freed): P type, time 0, not coded.
NOT_CODED_VOP = b"\x00\x00\x01\xb6\x50\x4f"
DIVX_PACKED = b"\x00\x00\x01\xb2DivX503b1393p"  # user data that tells decoders the B-frames are packed


def noise_frames(count, size=(64, 48), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8) for _ in range(count)]


def mpeg4_packets(frames):
    """MPEG-4 Part 2 with two B-frames between references, in decode order: [(pts, bytes)]."""
    context = av.CodecContext.create("mpeg4", "w")
    context.width, context.height, context.pix_fmt = 64, 48, "yuv420p"
    context.time_base, context.framerate = Fraction(1, FPS), Fraction(FPS)
    context.max_b_frames, context.gop_size = 2, 12
    packets = []
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        packets += [(p.pts, bytes(p)) for p in context.encode(frame)]
    return packets + [(p.pts, bytes(p)) for p in context.encode(None)]


def packed_chunks(packets):
    """DivX/Xvid 'packed bitstream': one chunk per display slot; a reference shares its chunk with the
    first B-frame after it, later B-frames get one each, and a not-coded VOP fills the freed slot."""
    chunks, i = [], 0
    while i < len(packets):
        j = i + 1
        while j < len(packets) and packets[j][0] < packets[i][0]:
            j += 1
        b_frames = [data for _, data in packets[i + 1:j]]
        chunks += [packets[i][1] + b_frames[0], *b_frames[1:], NOT_CODED_VOP] if b_frames else [packets[i][1]]
        i = j
    first = chunks[0]
    start = first.index(b"\x00\x00\x01\xb2")  # lavc's own user data gives way to DivX's
    chunks[0] = first[:start] + DIVX_PACKED + first[first.index(b"\x00\x00\x01", start + 4):]
    return chunks


def write_packed_avi(path, frames):
    """An AVI like DivX/Xvid wrote: packed MPEG-4 B-frames (no pts, one chunk per slot) and AC3 from 0 s."""
    chunks = packed_chunks(mpeg4_packets(frames))
    samples = len(frames) * 48000 // FPS // 1536 * 1536
    tone = np.sin(np.arange(samples) * 2 * np.pi * 440 / 48000).astype(np.float32) * 0.2
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.time_base = 64, 48, Fraction(1, FPS)
        audio = out.add_stream("ac3", rate=48000)
        audio.layout = "stereo"
        done = 0
        for slot, chunk in enumerate(chunks):
            packet = av.Packet(chunk)
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, slot, slot, Fraction(1, FPS)
            packet.is_keyframe = chunk[3] == 0xB0  # starts with a sequence header: an I-frame
            out.mux(packet)
            while done < samples and done <= (slot + 1) * 48000 // FPS:
                part = np.ascontiguousarray(np.stack([tone[done:done + 1536]] * 2))
                frame = av.AudioFrame.from_ndarray(part, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = 48000, done
                out.mux(audio.encode(frame))
                done += 1536
        out.mux(audio.encode(None))
    return path


def video_frames(path):
    """Decoded frames in display order: (seconds, RGB)."""
    with av.open(str(path)) as container:
        return [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def audio_packets(path):
    with av.open(str(path)) as container:
        return [(bytes(p), float(p.pts * p.time_base)) for p in container.demux(audio=0) if p.size]


def test_packed_bframe_avi_keeps_display_order_all_audio_and_alignment(tmp_path, tiny_model_file):
    src = write_packed_avi(tmp_path / "divx.avi", noise_frames(48))
    dst = tmp_path / ("out" + output_suffix(src))
    vidcycle.translate_video(src, dst, tiny_model_file, vidcycle.ApplyOptions(side_by_side=True))

    source, output = video_frames(src), video_frames(dst)
    assert len(output) == len(source) == 48
    for k, (_, frame) in enumerate(output):  # the left half is the source frame the reader gave
        errors = [np.abs(frame[:, :64].astype(int) - rgb).mean() for _, rgb in source]
        assert int(np.argmin(errors)) == k
    # AVI stores no pts: slot k is shown at k / fps, and the audio starts with slot 0.
    assert np.allclose([seconds for seconds, _ in output], [k / FPS for k in range(48)], atol=0.001)
    source_audio, output_audio = audio_packets(src), audio_packets(dst)
    assert len(output_audio) == len(source_audio) > 40
    assert [data for data, _ in output_audio] == [data for data, _ in source_audio]
    assert np.allclose([t for _, t in output_audio], [t for _, t in source_audio], atol=0.001)
    assert abs(output[0][0] - output_audio[0][1]) < 0.001


def write_vfr(path, pts_ms, last_ms):
    """A variable-rate clip whose packets carry each frame's duration, the uneven last one included."""
    durations = [b - a for a, b in zip(pts_ms, pts_ms[1:])] + [last_ms]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        stream.codec_context.flags |= av.codec.context.Flags.frame_duration
        for rgb, pts, duration in zip(noise_frames(len(pts_ms)), pts_ms, durations):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base, frame.duration = pts, Fraction(1, 1000), duration
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def clip_end(path):
    """Container duration, stream duration and the last frame's pts + duration, in seconds."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        last = list(container.decode(stream))[-1]
        return (container.duration / av.time_base, stream.duration and float(stream.duration * stream.time_base),
                float((last.pts + last.duration) * last.time_base))


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_variable_rate_clip_ends_where_its_source_ends(tmp_path, tiny_model_file, suffix):
    src = write_vfr(tmp_path / f"vfr{suffix}", [0, 40, 73, 140, 180, 260, 275, 330, 400, 433], last_ms=17)
    dst = tmp_path / f"out{suffix}"
    vidcycle.translate_video(src, dst, tiny_model_file, vidcycle.ApplyOptions())
    assert clip_end(src)[2] == pytest.approx(0.450, abs=1e-6)  # the source really has the uneven last frame
    assert clip_end(dst) == clip_end(src)


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
], ids=["sd-container601-frames709", "hd-container709-frames601"])
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


def frame_times(path):
    """Every frame's time in display order (seconds), and where the clip ends (its container's duration)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = sorted(float(packet.pts * packet.time_base) for packet in container.demux(stream) if packet.size)
        return times, container.duration / av.time_base


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
@pytest.mark.parametrize("last_ms", [17, 1500], ids=["short-last-frame", "long-last-frame"])
def test_a_variable_rate_clip_in_segments_keeps_every_frames_time_and_its_end(tmp_path, monkeypatch,
                                                                               tiny_model_file, suffix, last_ms):
    from vidcycle.apply import segments
    monkeypatch.setattr(segments, "SEGMENT_SECONDS", 1)  # the clip below makes five or six segments
    gaps = np.random.default_rng(3).integers(330, 731, 14)  # frame times 0.33-0.73 s, as in a Cinepak AVI
    # MKV keeps each packet's duration as written; FFmpeg's MP4 muxer cuts a clip like this one short.
    src = write_vfr(tmp_path / "vfr.mkv", [0, *np.cumsum(gaps).tolist()], last_ms=last_ms)
    dst = tmp_path / f"out{suffix}"
    vidcycle.translate_video(src, dst, tiny_model_file, vidcycle.ApplyOptions(engine="torch"), device="cpu",
                             precision="fp32")
    (source, source_end), (output, output_end) = frame_times(src), frame_times(dst)
    assert source_end == pytest.approx((gaps.sum() + last_ms) / 1000, abs=1e-3)  # the source is as meant
    assert len(output) == len(source) == 15
    assert np.abs(np.array(output) - source).max() < 0.001
    assert abs(output_end - source_end) < min(last_ms, gaps.min()) / 1000 / 2


def write_cinepak_avi(path, slots, fps=30):
    """An AVI like an old camera or game capture wrote: Cinepak (RGB in), a frame only in some of the
    1/fps slots, so the frame times vary and the last frame lasts one slot."""
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("cinepak", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb24"
        stream.time_base = stream.codec_context.time_base = Fraction(1, fps)
        for rgb, slot in zip(noise_frames(len(slots)), slots):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = slot, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_an_avi_with_uneven_frame_times_in_segments_ends_where_its_source_ends(tmp_path, monkeypatch,
                                                                              tiny_model_file):
    from vidcycle.apply import segments
    monkeypatch.setattr(segments, "SEGMENT_SECONDS", 3)
    slots = [0, *np.cumsum(np.random.default_rng(2).integers(10, 22, 39)).tolist()]  # 0.33-0.73 s apart
    src = write_cinepak_avi(tmp_path / "capture.avi", slots)
    dst = tmp_path / "out.mp4"
    vidcycle.translate_video(src, dst, tiny_model_file, vidcycle.ApplyOptions(engine="torch"), device="cpu",
                             precision="fp32")
    (source, source_end), (output, output_end) = frame_times(src), frame_times(dst)
    assert source_end == pytest.approx((slots[-1] + 1) / 30, abs=1e-3)
    assert len(output) == len(source) == 40
    assert np.abs(np.array(output) - source).max() < 0.001
    assert abs(output_end - source_end) < 0.5 / 30
