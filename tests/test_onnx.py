"""ONNX export and the ONNX Runtime engine: the exported graph reproduces the torch model at any size,
a wrong graph is refused and leaves nothing, graphs are cached, and a missing onnxruntime says what to install."""

import json
import sys

import numpy as np
import pytest
import torch

import vidcycle
from conftest import run_cli, write_to_a_full_disk
from vidcycle.errors import DeviceError, ModelError
from vidcycle.metrics import psnr

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from vidcycle import files
from vidcycle.runtime import onnx_export  # noqa: E402 - needs torch only, but is pointless without onnx
from vidcycle.runtime.onnx_engine import GraphCache, load_engine  # noqa: E402

INSTALL_LINE = "pip install onnxruntime onnx"


def torch_output(model_file, batch: np.ndarray) -> np.ndarray:
    generator = vidcycle.load_model(model_file, device="cpu", precision="fp32").generator
    with torch.no_grad():
        return generator(torch.from_numpy(batch)).numpy()


def random_batch(n, height, width, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, height, width)).astype(np.float32)


def test_exported_file_runs_in_bare_onnxruntime_at_odd_sizes_and_batches(tiny_model_file, tmp_path):
    result = onnx_export.export_onnx(tiny_model_file, tmp_path / "tiny.onnx")
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (input_meta,), (output_meta,) = session.get_inputs(), session.get_outputs()
    for n, height, width in [(1, 31, 47), (3, 31, 47), (3, 17, 9), (1, 5, 3), (2, 64, 48)]:
        batch = random_batch(n, height, width, seed=height)
        got = session.run([output_meta.name], {input_meta.name: batch})[0]
        assert got.shape == (n, 3, height, width)
        np.testing.assert_allclose(got, torch_output(tiny_model_file, batch), atol=1e-5)


def test_export_metadata_names_the_model_and_its_parity(tiny_model_file, tmp_path):
    result = onnx_export.export_onnx(tiny_model_file, tmp_path / "tiny.onnx", opset=18)
    meta = onnx_export.read_metadata(result.path)
    info = vidcycle.load_model(tiny_model_file, device="cpu").info
    assert (meta["from_domain"], meta["to_domain"], meta["train_size"]) == ("summer", "winter", "32")
    assert meta["content_hash"] == info.content_hash and json.loads(meta["architecture"])["ngf"] == 8
    assert meta["opset"] == "18" and onnx.load(str(result.path)).opset_import[0].version == 18
    assert float(meta["parity_psnr_db"]) == pytest.approx(result.parity_db, abs=0.01)
    assert result.parity_db >= onnx_export.FP32_MIN_PSNR_DB and set(result.parity_by_size) == {"68x124", "37x53"}


def _shift_last_bias(graph):
    """A wrong constant: the output convolution's bias moved by 0.2 (about 25 levels before tanh)."""
    from onnx import numpy_helper
    last = [t for t in graph.graph.initializer if t.name.endswith(".bias") and list(t.dims) == [3]][-1]
    last.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(last) + np.float32(0.2), last.name))


def _poison_last_bias(graph):
    """A NaN weight, as an fp16 overflow would leave: no PSNR threshold may let it through."""
    from onnx import numpy_helper
    last = [t for t in graph.graph.initializer if t.name.endswith(".bias") and list(t.dims) == [3]][-1]
    last.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(last) * np.float32("nan"), last.name))


@pytest.mark.parametrize("break_graph, found", [(_shift_last_bias, r"\d+\.\d dB PSNR"),
                                                (_poison_last_bias, "non-finite values")])
def test_a_wrong_graph_fails_the_parity_check_and_leaves_no_file(tiny_model_file, tmp_path, break_graph, found):
    output = tmp_path / "out" / "broken.onnx"
    with pytest.raises(ModelError, match=rf"at \d+x\d+ .* only to {found} .*no file written") as caught:
        onnx_export.export_onnx(tiny_model_file, output, edit_graph=break_graph)
    assert caught.value.exit_code == 5
    assert not output.exists() and not [p for p in output.parent.glob("*") if p.is_file()]


def test_fp16_export_keeps_float32_io_and_stays_close(tiny_model_file, tmp_path):
    result = onnx_export.export_onnx(tiny_model_file, tmp_path / "half.onnx", precision="fp16")
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    batch = random_batch(2, 31, 47)
    got = session.run(None, {session.get_inputs()[0].name: batch})[0]
    assert got.dtype == np.float32
    assert onnx_export.psnr_db(got, torch_output(tiny_model_file, batch)) >= onnx_export.FP16_MIN_PSNR_DB
    assert result.fp16_torch_by_size and onnx_export.read_metadata(result.path)["precision"] == "fp16"


def test_engine_matches_the_translator_and_its_graph_is_built_once(tiny_model_file, isolated_store):
    cache = GraphCache()
    engine = load_engine(tiny_model_file, device="cpu", threads=1, cache=cache)
    again = load_engine(tiny_model_file, device="cpu", cache=cache)
    assert cache.builds == 1 and engine.threads == 1 and again.threads == torch.get_num_threads()
    fresh = GraphCache()  # as a new process would: the entry on disk is reused
    load_engine(tiny_model_file, device="cpu", cache=fresh)
    assert fresh.builds == 0
    (entry,) = (isolated_store / "onnx").glob("*.onnx")
    assert entry.name.startswith(engine.info.content_hash) and f"ort{ort.__version__}" in entry.name

    frames = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 31, 47, 3), dtype=np.uint8))
    expected = vidcycle.load_model(tiny_model_file, device="cpu", precision="fp32").translate_tensor(frames)
    got = engine.translate_tensor(frames)
    assert got.dtype == torch.uint8 and got.shape == (3, 31, 47, 3)
    assert (got.int() - expected.int()).abs().max() <= 1  # float32 rounding may flip a .5 level
    assert engine.translate(frames[0].numpy()).shape == (31, 47, 3)


def test_an_interrupted_build_leaves_no_cache_entry(tiny_model_file, isolated_store, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(files.os, "replace", interrupted)  # Ctrl-C after the graph is written, before the rename
        with pytest.raises(KeyboardInterrupt):
            load_engine(tiny_model_file, device="cpu")
    folder = isolated_store / "onnx"
    assert not folder.exists() or not list(folder.iterdir())
    cache = GraphCache()
    load_engine(tiny_model_file, device="cpu", cache=cache)
    assert cache.builds == 1


def test_missing_onnxruntime_is_a_device_error_naming_the_install(tiny_model_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(DeviceError, match="pip install onnxruntime onnx") as caught:
        load_engine(tiny_model_file, device="cpu")
    assert caught.value.exit_code == 7 and "\n" not in str(caught.value)
    result = run_cli("models", "export-onnx", str(tiny_model_file), "-o", str(tmp_path / "m.onnx"))
    assert result.exit_code == 7 and result.output.count("\n") == 1 and INSTALL_LINE in result.output
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_prints_the_path_and_reports_parity(tiny_model_file, tmp_path):
    output = tmp_path / "tiny.onnx"
    result = run_cli("models", "export-onnx", str(tiny_model_file), "-o", str(output))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(output) and output.is_file()
    assert "dB at worst" in result.stderr and "needs >= 60" in result.stderr
    again = run_cli("models", "export-onnx", str(tiny_model_file), "-o", str(output))
    assert again.exit_code == 8 and "--overwrite" in again.output


def test_an_export_the_disk_cannot_take_is_one_line_and_leaves_nothing(tiny_model_file, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "write_atomic", write_to_a_full_disk)
    output = tmp_path / "graphs" / "tiny.onnx"
    result = run_cli("models", "export-onnx", str(tiny_model_file), "-o", str(output))
    assert result.exit_code == ModelError.exit_code and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (f"vidcycle: error: {output}: cannot write the ONNX file (No "
                                                      f"space left on device)")
    assert list(output.parent.iterdir()) == []


def test_export_help_states_the_thresholds_the_code_uses():
    result = run_cli("models", "export-onnx", "--help")
    text = " ".join(result.output.split())
    fp32, fp16 = onnx_export.FP32_MIN_PSNR_DB, onnx_export.FP16_MIN_PSNR_DB
    assert f"below {fp32:.0f} dB PSNR ({fp16:.0f} dB with --fp16" in text
    sizes = " and ".join(f"{h}x{w}" for h, w in onnx_export.CHECK_SIZES)
    assert sizes in text


@pytest.mark.slow  # torch.export + onnxscript take ~10 s even for a tiny net
def test_dynamo_exporter_gives_the_same_dynamic_graph(tiny_model_file, tmp_path):
    pytest.importorskip("onnxscript")
    result = onnx_export.export_onnx(tiny_model_file, tmp_path / "dynamo.onnx", exporter="dynamo")
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for n, height, width in [(3, 31, 47), (1, 17, 9), (1, 3, 2)]:
        batch = random_batch(n, height, width)
        got = session.run(None, {session.get_inputs()[0].name: batch})[0]
        np.testing.assert_allclose(got, torch_output(tiny_model_file, batch), atol=1e-5)
    assert result.opset >= 18 and "dynamo" in onnx_export.read_metadata(result.path)["exporter"]


def textured_frames(count, height=40, width=56, seed=0):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 180, width)[None, :, None]
    return [np.clip(ramp + rng.integers(0, 76, (height, width, 3)), 0, 255).astype(np.uint8) for _ in range(count)]


def test_int8_calibrated_on_its_input_runs_and_says_what_it_is(tiny_model_file, tmp_path):
    from vidcycle.runtime.onnx_engine import OrtEngine
    from vidcycle.runtime.onnx_int8 import INT8_MIN_PSNR_DB, quantize_int8
    fp32 = onnx_export.export_onnx(tiny_model_file, tmp_path / "tiny.onnx").path
    frames = textured_frames(4)
    result = quantize_int8(fp32, tmp_path / "tiny.int8.onnx", frames)
    assert result.parity_db >= INT8_MIN_PSNR_DB and result.calibration_frames == 4
    engine = OrtEngine(result.path, device="cpu")
    assert engine.precision == "int8" and engine.info.from_domain == "summer"
    assert engine.translate(frames[0][:31, :47]).shape == (31, 47, 3)


def test_int8_calibrated_on_unrepresentative_frames_is_refused_and_leaves_nothing(tiny_model_file, tmp_path):
    from vidcycle.runtime.onnx_int8 import quantize_int8
    fp32 = onnx_export.export_onnx(tiny_model_file, tmp_path / "tiny.onnx").path
    flat = [np.full((40, 56, 3), 128, np.uint8)]  # activation ranges of a grey frame clip real ones
    output = tmp_path / "int8" / "tiny.int8.onnx"
    with pytest.raises(ModelError, match=r"int8 refused: check frame \d+ .* dB PSNR"):
        quantize_int8(fp32, output, flat, check_frames=textured_frames(2))
    assert not output.exists() and not list(output.parent.iterdir())


# ---------------------------------------------------------------- apply --engine

def clip_facts(path):
    import av
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = [(frame.pts, frame.to_ndarray(format="rgb24")) for frame in container.decode(video)]
    with av.open(str(path)) as container:
        audio = [(p.pts, bytes(p)) for p in container.demux(container.streams.audio[0]) if p.size]
    return frames, audio


def test_apply_with_onnxruntime_keeps_frames_timing_and_audio_as_torch_does(tiny_model_file, tmp_path):
    from conftest import write_clip
    src = write_clip(tmp_path / "in.mp4", frames=10, size=(62, 46), audio=True)
    outputs = {}
    for engine in ("torch", "onnxruntime"):
        outputs[engine] = tmp_path / f"{engine}.mp4"
        result = run_cli("apply", str(src), "-m", str(tiny_model_file), "--engine", engine,
                         "--precision", "fp32", "--crf", "0", "-o", str(outputs[engine]))
        assert result.exit_code == 0, result.output
        assert f"vidcycle: {engine} fp32 on cpu" in result.stderr  # the one-line note
    (torch_frames, torch_audio), (ort_frames, ort_audio) = (clip_facts(outputs[e]) for e in ("torch", "onnxruntime"))
    assert [pts for pts, _ in ort_frames] == [pts for pts, _ in torch_frames] and len(ort_frames) == 10
    assert ort_audio == torch_audio and len(ort_audio) > 0
    for (_, a), (_, b) in zip(ort_frames, torch_frames):
        assert psnr(a, b) >= onnx_export.FP32_MIN_PSNR_DB - 20  # after YUV (identical frames: +inf)


def test_apply_engine_onnxruntime_without_it_is_the_exit_7_line(tiny_model_file, tmp_path, monkeypatch):
    import cv2
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((20, 24, 3), np.uint8))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = run_cli("apply", str(tmp_path / "a.png"), "-m", str(tiny_model_file),
                     "--engine", "onnxruntime", "-o", str(tmp_path / "b.png"))
    assert result.exit_code == DeviceError.exit_code == 7
    assert result.output.count("\n") == 1 and INSTALL_LINE in result.output
    assert not (tmp_path / "b.png").exists()


def test_auto_engine_rule(monkeypatch):
    import importlib.util

    from vidcycle.runtime.engines import pick_engine
    cpu = torch.device("cpu")
    assert pick_engine("auto", cpu, "fp32") == "onnxruntime"
    assert pick_engine("auto", cpu, "bf16") == "torch"
    assert pick_engine("torch", cpu, "fp32") == "torch"
    with pytest.raises(DeviceError, match="fp32"):
        pick_engine("onnxruntime", cpu, "bf16")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert pick_engine("auto", cpu, "fp32") == "torch"  # not installed: torch, silently


def test_the_translator_runs_either_engine_with_batches_and_tiles(tiny_model_file):
    frames = np.random.default_rng(0).integers(0, 255, (3, 41, 53, 3), dtype=np.uint8)
    plain = vidcycle.load_model(tiny_model_file, device="cpu", precision="fp32", engine="torch")
    engine = vidcycle.load_model(tiny_model_file, device="cpu", precision="fp32", engine="onnxruntime")
    assert engine.engine_name == "onnxruntime" and engine.precision == "fp32"
    difference = np.abs(engine.translate_batch(frames).astype(int) - plain.translate_batch(frames).astype(int))
    assert difference.max() <= 1
    small = vidcycle.load_model(tiny_model_file, device="cpu", precision="fp32", engine="onnxruntime",
                                max_memory="3M")
    big = np.random.default_rng(1).integers(0, 255, (1, 200, 220, 3), dtype=np.uint8)
    assert small.plan(200, 220).tile is not None  # tiles run with torch, whatever the engine
    difference = np.abs(small.translate_batch(big).astype(int) - plain.translate_batch(big).astype(int))
    assert difference.mean() < 0.5
