"""No input can take the whole machine: a memory budget that tiles what does not fit, and headers read
before any decoding, so an image bomb is refused in a line."""

import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import vidcycle
from conftest import run_cli as run
from conftest import landscapes, write_clip
from vidcycle.errors import MediaError, PartialFailure, UsageError
from vidcycle.metrics import psnr
from vidcycle.models.modelfile import ModelInfo
from vidcycle.models.nets import GeneratorSpec, build_generator
from vidcycle.runtime.translator import Translator


def landscape(height, width, seed=0):
    return landscapes(1, height, width, seed)[0]


def translator(max_memory=None, n_blocks=2, ngf=8):
    torch.manual_seed(0)
    spec = GeneratorSpec(n_blocks=n_blocks, ngf=ngf)
    return Translator(build_generator(spec), ModelInfo(spec=spec), "cpu", "fp32", max_memory=max_memory)


def test_a_budget_too_small_for_the_frame_tiles_it_and_matches_the_whole_frame():
    frame = landscape(256, 256)
    whole = translator().translate(frame)
    small = translator(max_memory="6M")  # one whole 256x256 frame needs about 11.5M
    assert small.plan(256, 256).tile is not None  # the budget forces tiles
    tiled = small.translate(frame)
    assert psnr(tiled, whole) >= 40


def test_budget_as_text_is_checked(tmp_path):
    assert translator(max_memory="512M").budget == 512 * 2 ** 20
    with pytest.raises(UsageError, match="--max-memory"):
        translator(max_memory="lots")
    import cv2
    cv2.imwrite(str(tmp_path / "x.png"), landscape(32, 32))
    result = run("apply", tmp_path / "x.png", "-m", "demo-summer2winter", "--max-memory", "3X")
    assert result.exit_code == UsageError.exit_code and "--max-memory" in result.output


def test_the_default_budget_is_a_share_of_what_is_free(monkeypatch):
    from vidcycle.runtime import memory
    monkeypatch.setattr(memory, "available_ram", lambda: 8 * 2 ** 30)
    assert memory.default_budget(torch.device("cpu")) == 4 * 2 ** 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * 2 ** 30, 80 * 2 ** 30))
    assert memory.default_budget(torch.device("cuda", 0)) == int(8 * 2 ** 30)


def png_header(width, height):
    """A PNG that declares width x height gray pixels: a valid signature, IHDR and a tiny IDAT."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg_header(width, height):
    """A JPEG that declares width x height: SOI, a baseline SOF0 for one component, a start of scan (Pillow
    12 reads the header only up to one) and EOI."""
    sof = struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0])
    sos = bytes([1, 1, 0, 0, 63, 0])
    return (b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof
            + b"\xff\xda" + struct.pack(">H", len(sos) + 2) + sos + b"\xff\xd9")


@pytest.mark.parametrize("name, data", [("bomb.png", png_header(30000, 30000)),
                                        ("bomb.jpg", jpeg_header(30000, 30000))])
def test_an_image_bomb_is_refused_from_its_header_in_one_line(tmp_path, tiny_model_file, name, data, monkeypatch):
    import cv2
    (tmp_path / name).write_bytes(data)
    decoded = []

    def no_decoding(decoder):
        def spy(*args, **kwargs):
            decoded.append(decoder)
            raise AssertionError(f"cv2.{decoder} was asked to decode the bomb")
        return spy
    for decoder in ("imread", "imdecode", "imdecodeWithMetadata"):
        monkeypatch.setattr(cv2, decoder, no_decoding(decoder))
    result = run("apply", tmp_path / name, "-m", tiny_model_file, "-o", tmp_path / "out")
    assert decoded == []  # refused from the header alone, before any pixel was decoded
    assert result.exit_code == PartialFailure.exit_code
    line = [row for row in result.stderr.splitlines() if "30000x30000" in row]
    assert len(line) == 1 and "900 MP" in line[0] and "500 MP limit" in line[0] and "--max-pixels" in line[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_folder_with_a_bomb_converts_the_good_photos_and_exits_9(tmp_path, tiny_model_file):
    import cv2
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"good{i}.png"), landscape(40, 48, seed=i))
    (folder / "bomb.png").write_bytes(png_header(30000, 30000))
    result = run("apply", folder, "-m", tiny_model_file, "-o", tmp_path / "out")
    assert result.exit_code == PartialFailure.exit_code
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good0.png", "good1.png"]
    assert "1 of 3 inputs failed" in result.stderr


def test_max_pixels_lowers_and_raises_the_limit(tmp_path, tiny_model_file):
    import cv2
    cv2.imwrite(str(tmp_path / "photo.png"), landscape(40, 48))
    refused = run("apply", tmp_path / "photo.png", "-m", tiny_model_file, "--max-pixels", 1000,
                  "-o", tmp_path / "a.png")
    assert refused.exit_code == PartialFailure.exit_code and "48x40" in refused.stderr and "--max-pixels" in refused.stderr
    with pytest.raises(MediaError, match="above the"):
        vidcycle.translate_image(tmp_path / "photo.png", tmp_path / "b.png", tiny_model_file,
                                 vidcycle.ApplyOptions(max_pixels=1000))
    vidcycle.translate_image(tmp_path / "photo.png", tmp_path / "c.png", tiny_model_file,
                             vidcycle.ApplyOptions(max_pixels=2000))
    assert (tmp_path / "c.png").is_file()


def test_a_clip_header_above_the_limit_is_refused_before_decoding(tmp_path, tiny_model_file, monkeypatch):
    import vidcycle.apply.jobs as apply
    src = write_clip(tmp_path / "big.mp4", frames=4, size=(64, 48))
    monkeypatch.setattr(apply, "probe", lambda path: pytest.fail("decoded before the size was checked"))
    with pytest.raises(MediaError, match="64x48"):
        vidcycle.translate_video(src, tmp_path / "out.mp4", tiny_model_file, vidcycle.ApplyOptions(max_pixels=3000))
    assert not (tmp_path / "out.mp4").exists()


def test_a_clip_under_a_tiny_budget_is_tiled_and_keeps_every_frame(tmp_path):
    from vidcycle.media.video import iter_frames
    src = write_clip(tmp_path / "in.mp4", frames=5, size=(192, 160), audio=True)
    small = translator(max_memory="4M")  # one whole frame needs about 5.5M
    assert small.plan(160, 192).tile is not None
    lossless = vidcycle.ApplyOptions(crf=0)  # compare the translations, not the encoder's rounding of noise
    vidcycle.translate_video(src, tmp_path / "tiled.mp4", small, lossless)
    vidcycle.translate_video(src, tmp_path / "whole.mp4", translator(), lossless)
    tiled = [f.rgb for f in iter_frames(tmp_path / "tiled.mp4")]
    whole = [f.rgb for f in iter_frames(tmp_path / "whole.mp4")]
    assert len(tiled) == len(whole) == 5
    assert min(psnr(a, b) for a, b in zip(tiled, whole)) >= 40


def test_a_png_bomb_is_refused_from_its_header_before_torch_loads_in_a_child(tmp_path):
    """`vidcycle apply bomb.png -m demo-summer2winter` as a user runs it, in its own process: refused in a
    line, in seconds, without loading torch or the model (importing torch alone peaks at ~700 MiB with the
    CUDA build) and without decoding (900 MP of RGB would be 2.7 GB)."""
    (tmp_path / "bomb.png").write_bytes(png_header(30000, 30000))
    report = tmp_path / "report.txt"
    # The child notes, as it exits (an exit handler: the command leaves without the interpreter's teardown),
    # what it imported and its peak RSS (VmHWM: this process's own since exec; ru_maxrss would carry the
    # forked pytest's, torch included).
    code = ("import atexit, runpy, sys\n"
            "sys.argv = ['vidcycle', *sys.argv[1:]]\n"
            "def note():\n"
            "    hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:')).split()[1]\n"
            f"    open({str(report)!r}, 'w').write(' '.join([hwm] + [m for m in ('torch', 'onnxruntime')\n"
            "                                                       if m in sys.modules]))\n"
            "atexit.register(note)\n"
            "runpy.run_module('vidcycle', run_name='__main__')\n")
    root = Path(__file__).resolve().parents[1]
    started = time.perf_counter()
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        exit_code = subprocess.run([sys.executable, "-c", code, "apply", str(tmp_path / "bomb.png"), "-m",
                                "demo-summer2winter"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr,
                               env={**os.environ, "PYTHONPATH": str(root)}, timeout=60).returncode
    seconds = time.perf_counter() - started
    lines = (tmp_path / "stderr.txt").read_text().splitlines()
    assert exit_code == PartialFailure.exit_code, lines
    assert len([line for line in lines if "30000x30000 is 900 MP" in line]) == 1, lines
    peak_kib, *heavy = report.read_text().split()
    assert heavy == []  # neither torch nor ONNX Runtime was imported
    assert int(peak_kib) * 1024 < 512 * 2 ** 20 and seconds < 5, (peak_kib, seconds)
