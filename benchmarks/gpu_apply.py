"""GPU apply benchmark (issue 6): 1080p end-to-end frames/s of the apply path, and what limits it.

    PYTHONPATH=. python benchmarks/gpu_apply.py [--frames 240] [--size 1920x1080] [--device cuda]
                                                [--batch-sizes 4,8,16] [--presets ultrafast,veryfast,fast,medium]

Needs torch with CUDA and PyAV; OpenCV, safetensors, click and tqdm are not
needed (stand-ins are installed for missing safetensors; no model file is
read). Generates a --size clip (H.264 + AAC, --frames at 24 fps) in a
temporary folder and a random-init 9-block ngf-64 generator (the reference
architecture; weights do not change the cost). Measures, each after a warm-up:

  decode alone    vidcycle.video.VideoReader: PyAV frame-threaded decode + RGB conversion
  network alone   Translator.translate_tensor on decoded frames (uint8 in, pinned, fp16, uint8 out),
                  for each --batch-sizes
  encode alone    vidcycle.video_writer.VideoWriter from RGB frames (libx264 CRF 17), for each --presets
  end-to-end      vidcycle.apply.translate_video (decode thread, network thread, encoder), default
                  settings, then with each faster preset
  naive loop (b)  OpenCV read, one frame at a time, float32 on the GPU, OpenCV write (needs OpenCV;
                  --naive-frames of them)

The verdict names the slowest stage at the default settings: the end-to-end
rate cannot beat it. Output: a table on stdout, and results.json in $OUT
when that variable names a folder. Keep --frames so the run stays under a few
minutes (about 2 at the defaults on an H200 with 16 cores).
"""

import argparse
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _stand_in_safetensors():
    """vidcycle.translator imports the model-file module, which imports safetensors; this script reads no files."""
    try:
        import safetensors  # noqa: F401
        import safetensors.torch  # noqa: F401  (the name the model-file module imports)
    except ImportError:
        def unavailable(*args, **kwargs):
            raise RuntimeError("safetensors is not installed here; gpu_apply.py does not read model files")
        module = types.ModuleType("safetensors")
        module.SafetensorError = type("SafetensorError", (Exception,), {})
        module.safe_open = unavailable
        torch_module = types.ModuleType("safetensors.torch")
        torch_module.load_file = torch_module.save_file = unavailable
        module.torch = torch_module
        sys.modules["safetensors"], sys.modules["safetensors.torch"] = module, torch_module


_stand_in_safetensors()
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `vidcycle apply` sets it, before torch loads OpenMP

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from vidcycle.apply import ApplyOptions, translate_video  # noqa: E402
from vidcycle.translator import default_batch_size  # noqa: E402
from vidcycle.modelfile import ModelInfo  # noqa: E402
from vidcycle.nets import GeneratorSpec, build_generator  # noqa: E402
from vidcycle.translator import Translator  # noqa: E402
from vidcycle.video import DecodedFrame, VideoReader, probe  # noqa: E402
from vidcycle.video_writer import DEFAULT_PRESET, EncodeSettings, VideoWriter  # noqa: E402

from clips import FPS, write_sliding_clip  # noqa: E402


def write_clip(path: Path, frames: int, size: tuple[int, int]) -> Path:
    """Moving texture (blocky noise, smoothly upsampled by the encoder's own scaler) with an AAC tone."""
    width, height = size
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (height // 8, (width * 2) // 8, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)
    texture = np.pad(texture, ((0, height - texture.shape[0]), (0, 2 * width - texture.shape[1]), (0, 0)), "edge")
    return write_sliding_clip(path, texture, frames, width, step=4, crf=18)


def decode_alone(src: Path) -> tuple[float, list]:
    info = probe(src)
    reader = VideoReader(src, info)
    frames = []
    start = time.perf_counter()
    try:
        for item in reader.items():
            if isinstance(item, DecodedFrame):
                frames.append(item)
    finally:
        reader.close()
    return len(frames) / (time.perf_counter() - start), frames


def network_alone(translator: Translator, rgb: np.ndarray, batch: int) -> float:
    translator.translate_tensor(torch.from_numpy(rgb[:batch]))  # warm-up: cudnn picks its kernels
    count = max(batch, len(rgb) // batch * batch)  # whole batches only (at least one)
    start = time.perf_counter()
    for first in range(0, count, batch):
        translator.translate_tensor(torch.from_numpy(rgb[first:first + batch]))  # returns on the CPU: synced
    return count / (time.perf_counter() - start)


def encode_alone(src: Path, frames: list, work: Path, preset: str | None) -> float:
    info = probe(src)
    reader = VideoReader(src, info)  # the writer copies its audio stream layout; no audio is written here
    out = work / f"encode_{preset}.mp4"
    writer = VideoWriter(out, reader, info.width, info.height, EncodeSettings(preset=preset), ".mp4")
    start = time.perf_counter()
    for frame in frames:
        writer.write_frame(frame.rgb, frame.pts, frame.time_base)
    writer.close()
    seconds = time.perf_counter() - start
    reader.close()
    out.unlink()
    return len(frames) / seconds


def end_to_end(translator: Translator, src: Path, work: Path, preset: str | None, batch: int | None) -> float:
    out = work / f"e2e_{preset}.mp4"
    start = time.perf_counter()
    result = translate_video(src, out, translator, ApplyOptions(preset=preset, batch_size=batch, overwrite=True))
    seconds = time.perf_counter() - start
    out.unlink()
    return result.frames / seconds


def naive_loop(spec: GeneratorSpec, state: dict, device: torch.device, src: Path, work: Path, limit: int):
    """Issue 6's baseline (b): OpenCV read, one frame at a time, float32 on the device, OpenCV write."""
    import cv2
    generator = build_generator(spec, init=False)
    generator.load_state_dict(state)
    generator.eval().to(device)
    capture = cv2.VideoCapture(str(src))
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    writer = cv2.VideoWriter(str(work / "naive.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (width, height))
    count, start = 0, None
    with torch.no_grad():
        while count < limit:
            ok, bgr = capture.read()
            if not ok:
                break
            x = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1)[None].float().div(127.5).sub(1.0).to(device)
            y = generator(x)
            out = ((y[0].permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).byte().cpu().numpy()
            writer.write(np.ascontiguousarray(out[..., ::-1]))
            count += 1
            if count == 2:  # first frames pay cudnn's warm-up
                start = time.perf_counter()
    writer.release()
    capture.release()
    return (count - 2) / (time.perf_counter() - start) if start and count > 2 else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-sizes", default="4,8,16")
    parser.add_argument("--presets", default="ultrafast,veryfast,fast,medium")
    parser.add_argument("--naive-frames", type=int, default=96, help="frames for baseline (b); 0 skips it")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    default_preset = DEFAULT_PRESET["libx264"]
    presets = [p for p in args.presets.split(",") if p]
    report = {"size": [width, height], "frames": args.frames, "cpu_cores": os.cpu_count(),
              "torch": torch.__version__, "pyav": av.__version__}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_apply_") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        src = write_clip(work / "clip.mp4", args.frames, (width, height))
        print(f"clip: {args.frames} frames {width}x{height} written in {time.perf_counter() - t:.1f} s", flush=True)

        torch.manual_seed(0)
        spec = GeneratorSpec(n_blocks=9, ngf=64)
        generator = build_generator(spec)
        state = {k: v.clone() for k, v in generator.state_dict().items()}
        translator = Translator(generator, ModelInfo(spec=spec), args.device, args.precision)
        if translator.device.type == "cuda":
            report["gpu"] = torch.cuda.get_device_name(translator.device)
        report["precision"] = translator.precision
        default_batch = default_batch_size(translator.device, width, height)
        report["default_batch"] = default_batch

        decode_alone(src)  # warm the page cache
        report["decode_fps"], frames = decode_alone(src)
        print(f"decode alone: {report['decode_fps']:.1f} fps", flush=True)
        rgb = np.stack([f.rgb for f in frames])
        batches = sorted({default_batch, *(int(b) for b in args.batch_sizes.split(",") if b)})
        report["network_fps"] = {}
        for batch in batches:
            report["network_fps"][batch] = network_alone(translator, rgb, batch)
            print(f"network alone, batch {batch}: {report['network_fps'][batch]:.1f} fps", flush=True)
        if translator.device.type == "cuda":
            report["gpu_peak_mib"] = torch.cuda.max_memory_allocated(translator.device) / 2 ** 20
        del rgb
        report["encode_fps"] = {}
        for preset in presets:
            report["encode_fps"][preset] = encode_alone(src, frames, work, preset)
            print(f"encode alone, x264 {preset}: {report['encode_fps'][preset]:.1f} fps", flush=True)
        del frames
        report["end_to_end_fps"] = {}
        for preset in [default_preset] + [p for p in presets if p in ("ultrafast", "veryfast") and p != default_preset]:
            report["end_to_end_fps"][preset] = end_to_end(translator, src, work, preset, None)
            print(f"end-to-end, x264 {preset}: {report['end_to_end_fps'][preset]:.1f} fps", flush=True)

        if args.naive_frames:
            try:
                report["naive_fps"] = naive_loop(spec, state, translator.device, src, work, args.naive_frames)
                print(f"naive loop (b): {report['naive_fps']:.1f} fps", flush=True)
            except ImportError:
                print("naive loop (b) skipped: OpenCV is not installed", flush=True)

    stages = {"decode": report["decode_fps"], "network": report["network_fps"][default_batch]}
    if default_preset in report["encode_fps"]:
        stages["encode"] = report["encode_fps"][default_preset]
    limit = min(stages, key=stages.get)
    e2e = report["end_to_end_fps"][default_preset]
    report["limited_by"] = limit
    report["end_to_end_over_slowest_stage"] = e2e / stages[limit]
    print(f"\n{width}x{height}, {args.frames} frames, {report.get('gpu', args.device)}, {report['precision']}, "
          f"default batch {default_batch}, x264 preset {default_preset}, {os.cpu_count()} CPU cores")
    print(f"{'stage':<26}{'frames/s':>10}")
    for name, value in stages.items():
        print(f"{name + ' alone':<26}{value:>10.1f}")
    print(f"{'end-to-end':<26}{e2e:>10.1f}")
    print(f"limited by: {limit} ({stages[limit]:.1f} fps); end-to-end reaches {100 * e2e / stages[limit]:.0f}% of it")
    if report.get("naive_fps"):
        print(f"end-to-end / network alone = {e2e / stages['network']:.2f} (target >= 0.85); "
              f"end-to-end / naive loop (b) = {e2e / report['naive_fps']:.2f} (target >= 3)")
    print(f"total {time.perf_counter() - started:.0f} s")
    print(json.dumps(report, default=float))
    out_dir = os.environ.get("OUT")
    if out_dir and Path(out_dir).is_dir():
        (Path(out_dir) / "results.json").write_text(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
