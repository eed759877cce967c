"""The video pipeline: clips come back with the source's frames, timing, size, audio, colour and rotation."""

import threading
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from conftest import write_clip
from vidcycle.apply.jobs import ApplyOptions, translate_video
from vidcycle.errors import MediaError, OutputExistsError
from vidcycle.models.modelfile import ModelInfo
from vidcycle.models.nets import GeneratorSpec
from vidcycle.runtime.translator import Translator, load_model


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x


def identity_translator() -> Translator:
    return Translator(_Identity(), ModelInfo(spec=GeneratorSpec(2, 8)), device="cpu", precision="fp32",
                      name="identity")


def describe(path) -> dict:
    """What a player sees: frame times, size, colour tags, rotation, and the raw audio packets."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = list(container.decode(video))
        context = video.codec_context
        result = {"times": [f.pts * f.time_base for f in frames], "size": (frames[0].width, frames[0].height),
                  "tags": (int(context.colorspace), int(context.color_primaries), int(context.color_trc),
                           int(context.color_range)),
                  "rotation": frames[0].rotation, "codec": context.name}
    with av.open(str(path)) as container:
        result["audio"] = [(bytes(p), p.pts) for s in container.streams.audio for p in container.demux(s) if p.size]
        result["audio_codecs"] = [s.codec_context.name for s in container.streams.audio]
    return result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from vidcycle.models.modelfile import save_model
    from vidcycle.models.nets import build_generator
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    spec = GeneratorSpec(n_blocks=2, ngf=8)
    save_model(path, build_generator(spec), ModelInfo(spec=spec, train_size=32, source="test"))
    return load_model(path, "cpu", "auto")


def assert_faithful(src, dst):
    before, after = describe(src), describe(dst)
    assert len(after["times"]) == len(before["times"])
    assert after["times"] == before["times"]
    assert after["size"] == before["size"]
    assert after["audio"] == before["audio"]
    colorspace, primaries, trc, color_range = after["tags"]
    assert colorspace != 2 and primaries != 2 and trc != 2 and color_range != 0  # 2/0: unspecified
    return before, after


def test_constant_rate_with_aac_keeps_frames_times_and_audio_packets(tmp_path, tiny):
    src = write_clip(tmp_path / "cfr.mp4", frames=10, size=(64, 48), fps=24, audio=True)
    result = translate_video(src, tmp_path / "out.mp4", tiny)
    before, after = assert_faithful(src, tmp_path / "out.mp4")
    assert result.frames == 10
    assert len(after["audio"]) > 5 and after["audio_codecs"] == ["aac"]


def test_variable_rate_stays_variable(tmp_path, tiny):
    pts = [0, 100, 150, 400, 410, 700, 1000, 1003, 1300]
    src = write_clip(tmp_path / "vfr.mp4", frames=len(pts), size=(64, 48), fps=24, pts_list=pts)
    translate_video(src, tmp_path / "out.mp4", tiny)
    _, after = assert_faithful(src, tmp_path / "out.mp4")
    gaps = {b - a for a, b in zip(after["times"], after["times"][1:])}
    assert len(gaps) > 3  # a constant-rate rewrite would have one gap


def test_odd_size_322x182_kept_in_h264_and_vp9(tmp_path, tiny):
    src = write_clip(tmp_path / "odd.webm", frames=5, size=(322, 182), codec="libvpx-vp9", audio=False)
    translate_video(src, tmp_path / "odd.mp4", tiny)
    _, after = assert_faithful(src, tmp_path / "odd.mp4")
    assert after["codec"] == "h264" and after["size"] == (322, 182)
    translate_video(src, tmp_path / "odd_out.webm", tiny)
    _, after = assert_faithful(src, tmp_path / "odd_out.webm")
    assert after["codec"] == "vp9"


def test_rotation_is_written_back(tmp_path, tiny):
    src = tmp_path / "rotated.mp4"
    with av.open(str(src), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(90)
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 30 * i, np.uint8), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    translate_video(src, tmp_path / "out.mp4", tiny)
    before, after = assert_faithful(src, tmp_path / "out.mp4")
    assert before["rotation"] == 90 and after["rotation"] == 90


def test_pcm_audio_is_reencoded_to_aac_when_mp4_refuses_it(tmp_path, tiny):
    src = tmp_path / "pcm.mov"
    with av.open(str(src), "w") as container:
        video = container.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=48000, layout="mono")
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for k in range(25):  # 0.5 s of a tone
            samples = (8000 * np.sin(np.arange(k * 960, (k + 1) * 960) * 0.06)).astype(np.int16)[None]
            chunk = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            chunk.sample_rate, chunk.pts = 48000, k * 960
            container.mux(audio.encode(chunk))
        container.mux(audio.encode(None))
    translate_video(src, tmp_path / "out.mp4", tiny)
    after = describe(tmp_path / "out.mp4")
    assert after["audio_codecs"] == ["aac"] and len(after["audio"]) >= 20
    assert len(after["times"]) == 12


@pytest.mark.parametrize("color_range", ["MPEG", "JPEG"])
def test_bt709_tags_drive_both_conversions(tmp_path, color_range):
    """An identity model must give back the source colours; decoding 709 as 601 (or full range as
    limited) would be off by many levels."""
    range_tag = {"MPEG": 1, "JPEG": 2}[color_range]
    colours = np.array([[200, 30, 60], [20, 180, 90], [40, 60, 220], [230, 220, 40]], np.uint8)
    rgb = np.repeat(np.repeat(colours.reshape(2, 2, 3), 32, axis=0), 32, axis=1)
    src = tmp_path / "bt709.mp4"
    with av.open(str(src), "w") as container:
        stream = container.add_stream("libx264", rate=24, options={"crf": "10"})
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.codec_context.colorspace = stream.codec_context.color_primaries = stream.codec_context.color_trc = 1
        stream.codec_context.color_range = range_tag
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                format="yuv420p", dst_colorspace="ITU709", dst_color_range=color_range)
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    translate_video(src, tmp_path / "out.mp4", identity_translator())
    after = describe(tmp_path / "out.mp4")
    assert after["tags"] == (1, 1, 1, range_tag)
    with av.open(str(tmp_path / "out.mp4")) as container:
        frame = next(container.decode(video=0))
        decoded = frame.to_ndarray(format="rgb24", src_colorspace="ITU709", src_color_range=color_range)
    centres = decoded[16::32, 16::32].reshape(4, 3).astype(int)
    assert np.abs(centres - colours.astype(int)).max() <= 6


def test_window_and_side_by_side(tmp_path, tiny):
    src = write_clip(tmp_path / "long.mp4", frames=24, size=(64, 48), fps=24, audio=True)
    translate_video(src, tmp_path / "first.mp4", tiny, ApplyOptions(max_frames=5, side_by_side=True))
    first = describe(tmp_path / "first.mp4")
    assert len(first["times"]) == 5 and first["size"] == (128, 48)
    translate_video(src, tmp_path / "piece.mp4", tiny, ApplyOptions(start=0.5, duration=0.25))
    piece = describe(tmp_path / "piece.mp4")
    assert len(piece["times"]) == 6  # frames 12..17 at 24 fps
    assert piece["times"][0] == 0 and piece["times"][-1] == Fraction(5, 24)
    assert piece["audio"] and all(pts >= 0 for _, pts in piece["audio"])


def test_existing_output_is_refused_and_input_untouched(tmp_path, tiny):
    src = write_clip(tmp_path / "in.mp4", frames=4)
    original = src.read_bytes()
    (tmp_path / "out.mp4").write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="overwrite=True"):  # the API names its parameter
        translate_video(src, tmp_path / "out.mp4", tiny)
    assert (tmp_path / "out.mp4").read_bytes() == b"keep me"
    with pytest.raises(OutputExistsError, match="overwrite the input"):
        translate_video(src, src, tiny, ApplyOptions(overwrite=True))
    assert src.read_bytes() == original
    translate_video(src, tmp_path / "out.mp4", tiny, ApplyOptions(overwrite=True))
    assert len(describe(tmp_path / "out.mp4")["times"]) == 4


class _FailingTranslator(Translator):
    def translate_tensor(self, frames):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2:
            raise RuntimeError("network broke")
        return frames.clone()


def test_a_failing_stage_stops_the_others_and_leaves_nothing(tmp_path):
    src = write_clip(tmp_path / "in.mp4", frames=40)
    broken = _FailingTranslator(_Identity(), ModelInfo(spec=GeneratorSpec(2, 8)), device="cpu", precision="fp32")
    with pytest.raises(RuntimeError, match="network broke"):
        translate_video(src, tmp_path / "out.mp4", broken, ApplyOptions(batch_size=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]
    assert not [t for t in threading.enumerate() if t.name.startswith("vidcycle-")]


def test_unreadable_clip_is_a_media_error(tmp_path, tiny):
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(MediaError, match="text.mp4"):
        translate_video(tmp_path / "text.mp4", tmp_path / "out.mp4", tiny)
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("suffix", [".mkv", ".mov"])
def test_other_containers_keep_frames_audio_and_times(tmp_path, tiny, suffix):
    src = write_clip(tmp_path / "in.mp4", frames=8, audio=True)
    translate_video(src, tmp_path / f"out{suffix}", tiny)
    before, after = describe(src), describe(tmp_path / f"out{suffix}")
    assert len(after["times"]) == 8 and after["size"] == before["size"]
    # Matroska counts in milliseconds (1/24 s lands within half of one) and cannot store the AAC priming
    # packet's negative time, so its muxer shifts every stream alike: compare times from the first frame.
    shift = after["times"][0] - before["times"][0]
    assert shift == 0 if suffix == ".mov" else 0 <= shift <= Fraction(1, 20)
    assert max(abs(a - shift - b) for a, b in zip(after["times"], before["times"])) <= Fraction(1, 2000)
    assert [data for data, _ in after["audio"]] == [data for data, _ in before["audio"]]


def test_window_past_the_end_writes_nothing(tmp_path, tiny):
    src = write_clip(tmp_path / "in.mp4", frames=6)
    with pytest.raises(MediaError, match="no frames"):
        translate_video(src, tmp_path / "out.mp4", tiny, ApplyOptions(start=30))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


@pytest.mark.parametrize("stage", ["decode", "encode"])
def test_decode_or_encode_failure_stops_the_pipeline(tmp_path, tiny, monkeypatch, stage):
    from vidcycle.media import video_writer as video
    src = write_clip(tmp_path / "in.mp4", frames=40)
    if stage == "decode":
        items = video.VideoReader.items

        def failing_items(self):
            for count, item in enumerate(items(self)):
                if count == 9:
                    raise MediaError("disk vanished")
                yield item
        monkeypatch.setattr(video.VideoReader, "items", failing_items)
    else:
        def failing_write(self, rgb, pts, time_base):
            raise MediaError("encoder refused")
        monkeypatch.setattr(video.VideoWriter, "write_frame", failing_write)
    with pytest.raises(MediaError, match="disk vanished|encoder refused"):
        translate_video(src, tmp_path / "out.mp4", tiny, ApplyOptions(batch_size=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]
    assert not [t for t in threading.enumerate() if t.name.startswith("vidcycle-")]


def with_metadata(src, dst, container_tags: dict, audio_language: str):
    """A copy of src, packets untouched, with container tags and a language on its audio stream."""
    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        out.metadata.update(container_tags)
        video = out.add_stream_from_template(source.streams.video[0])
        audio = out.add_stream_from_template(source.streams.audio[0])
        audio.metadata["language"] = audio_language
        for packet in source.demux():
            if packet.size:
                packet.stream = video if packet.stream.type == "video" else audio
                out.mux(packet)
    return dst


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_title_date_place_and_audio_language_go_along(tmp_path, tiny, suffix):
    tags = {"title": "Lake at dawn", "creation_time": "2026-07-01T05:30:00.000000Z", "comment": "first snow"}
    src = with_metadata(write_clip(tmp_path / f"plain{suffix}", frames=6, audio=True), tmp_path / f"tagged{suffix}",
                        tags, "fra")
    translate_video(src, tmp_path / f"out{suffix}", tiny)
    with av.open(str(tmp_path / f"out{suffix}")) as out:
        kept = {key.lower(): value for key, value in out.metadata.items()}
        assert {key: kept.get(key) for key in tags} == tags
        assert out.streams.audio[0].metadata.get("language") == "fra"


def test_an_hdr_source_is_converted_with_a_warning_and_keeps_its_tags(tmp_path, tiny, caplog):
    src = tmp_path / "hdr.mp4"
    with av.open(str(src), "w") as out:  # 10-bit BT.2020 PQ, as phones record HDR
        stream = out.add_stream("libx265", rate=24, options={"x265-params": "log-level=error"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p10le"
        context = stream.codec_context
        context.color_primaries, context.color_trc, context.colorspace, context.color_range = 9, 16, 9, 1
        for i in range(4):
            rgb = np.full((48, 64, 3), 60 + 20 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p10le")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    translate_video(src, tmp_path / "out.mp4", tiny)
    warnings = [r.getMessage() for r in caplog.records if r.name == "vidcycle" and r.levelname == "WARNING"]
    assert len(warnings) == 1 and "HDR source (PQ)" in warnings[0]
    after = describe(tmp_path / "out.mp4")
    assert len(after["times"]) == 4 and after["tags"][:3] == (9, 9, 16)


ASS_HEADER = (b"[Script Info]\r\nScriptType: v4.00+\r\n\r\n[V4+ Styles]\r\nFormat: Name, Fontname, Fontsize\r\n"
              b"Style: Default,Arial,20\r\n\r\n[Events]\r\nFormat: Layer, Start, End, Style, Text\r\n")


def with_subtitles(src, dst, codec: str, lines: list[bytes]):
    """A copy of src with a text subtitle stream (one line per 0.1 s)."""
    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        copies = {s.index: out.add_stream_from_template(s) for s in (*source.streams.video, *source.streams.audio)}
        subtitles = out.add_stream(codec)
        subtitles.codec_context.subtitle_header = ASS_HEADER
        subtitles.time_base = Fraction(1, 1000)
        for packet in source.demux():
            if packet.size:
                packet.stream = copies[packet.stream.index]
                out.mux(packet)
        for n, line in enumerate(lines):
            packet = av.Packet(len(line).to_bytes(2, "big") + line if codec == "mov_text" else line)
            packet.pts = packet.dts = 100 * n
            packet.duration, packet.stream, packet.time_base = 80, subtitles, subtitles.time_base
            out.mux(packet)
    return dst


def subtitle_packets(path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for s in container.streams.subtitles for p in container.demux(s) if p.size]


@pytest.mark.parametrize("suffix,codec", [(".mkv", "subrip"), (".mp4", "mov_text")])
def test_subtitles_are_carried_packet_for_packet(tmp_path, tiny, suffix, codec):
    plain = write_clip(tmp_path / f"plain{suffix}", frames=8, audio=True)
    src = with_subtitles(plain, tmp_path / f"subtitled{suffix}", codec, [b"Snow falls", b"on the lake"])
    translate_video(src, tmp_path / f"out{suffix}", tiny)
    assert subtitle_packets(tmp_path / f"out{suffix}") == subtitle_packets(src) != []
    assert_faithful(src, tmp_path / f"out{suffix}")
    from vidcycle.quality.flicker import measure_flicker
    check = {c.name: c for c in measure_flicker(src, tmp_path / f"out{suffix}").checks}["subtitles"]
    assert check.same and "2 packets" in check.translated


def test_subtitles_mp4_cannot_hold_are_left_out_with_a_warning(tmp_path, tiny, caplog):
    src = with_subtitles(write_clip(tmp_path / "plain.mkv", frames=6), tmp_path / "subtitled.mkv", "subrip",
                         [b"Hello"])
    result = translate_video(src, tmp_path / "out.mp4", tiny)
    warnings = [r.getMessage() for r in caplog.records if r.name == "vidcycle" and r.levelname == "WARNING"]
    assert result.frames == 6 and subtitle_packets(tmp_path / "out.mp4") == []
    assert len(warnings) == 1 and "subtitle stream" in warnings[0] and "srt" in warnings[0] and ".mkv" in warnings[0]
    from vidcycle.quality.flicker import measure_flicker
    check = {c.name: c for c in measure_flicker(src, tmp_path / "out.mp4").checks}["subtitles"]
    assert not check.same and check.translated == "none"
