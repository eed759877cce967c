"""Network-only speed of torch and ONNX Runtime engines on the CPU, with each one's parity to torch float32.

    python benchmarks/engine_speed.py [--sizes 320x240,1280x720] [--batches 1,4] [--repeats 3]
                                      [--models 9x64,demo] [--no-int8]

For a 9-block ngf-64 generator (the reference architecture, random init:
weights do not change the cost) and the trained demo-summer2winter (6 blocks,
ngf 16; `6x16` gives a random one), at each size and batch: frames/s of
  torch fp32    the generator's forward in float32 (as Translator runs it)
  torch fp32 Winograd's  the same with Winograd's 3x3 convolutions, where Translator runs them (float32
                on a CPU torch runs with AVX2 only; blocks of 256 channels, 128 on Intel)
  torch bf16    weights and input cast to bfloat16 once (only where the CPU has native bf16)
  ort fp32      vidcycle.runtime.onnx_engine.OrtEngine on the checked float32 export
  ort int8      the same graph quantized by vidcycle.runtime.onnx_int8, calibrated and checked on the
                season sample frames resized to the benchmark size (demo) or on noise and
                structured frames (random nets); left out when its parity check refuses it
and each one's PSNR against torch float32 on the timed batch (8-bit scale over [-1, 1]):
season sample frames for demo, noise and structured frames for random nets.
Then end to end: vidcycle.apply.jobs.translate_video on a generated --e2e-sizes clip with each engine
and with --engine auto, against the naive float32 per-frame loop (OpenCV read, batch 1, torch
float32, OpenCV write; benchmarks/apply_speed.py). Targets: onnxruntime at least 1.15x the naive loop
on a CPU without native bf16 (here: --precision fp32 forced), and auto within 5% of the better engine.
Variants run interleaved, repeat by repeat, and the medians are reported with
the speed ratio to torch fp32: the machine may be shared, so trust the ratios.
OMP_WAIT_POLICY=PASSIVE as `vidcycle apply` sets it; ONNX Runtime threads do
not spin either; both use torch.get_num_threads() threads.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `vidcycle apply` sets it; before torch loads OpenMP

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import vidcycle  # noqa: E402
from vidcycle.runtime.device import _cpuinfo_flags, cpu_has_fast_bf16  # noqa: E402
from vidcycle.runtime.convolutions import use_faster_inference_convolutions  # noqa: E402
from vidcycle.runtime.onnx_engine import OrtEngine  # noqa: E402
from vidcycle.runtime.winograd import WinogradConv2d  # noqa: E402
from vidcycle.errors import ModelError  # noqa: E402
from vidcycle.models.modelfile import ModelInfo  # noqa: E402
from vidcycle.models.nets import GeneratorSpec, build_generator  # noqa: E402
from vidcycle.runtime.onnx_export import export_generator, parity_frames, psnr_db  # noqa: E402
from vidcycle.runtime.onnx_int8 import quantize_int8  # noqa: E402
from vidcycle.media.images import read_image  # noqa: E402
from vidcycle.models.frames import frames_to_batch  # noqa: E402
from vidcycle.media.video import iter_frames  # noqa: E402


def cpu_line() -> str:
    flags = _cpuinfo_flags()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni")
    shown = sorted(f for f in flags if f in wanted or f.startswith("amx"))
    load = os.getloadavg()
    return (f"CPU flags: {' '.join(shown) or 'none of avx2/avx512/amx'}; native bf16: {cpu_has_fast_bf16()}; "
            f"threads {torch.get_num_threads()} of {os.cpu_count()} cores; load average {load[0]:.1f} {load[1]:.1f}")


def bench_frames(model: str, height: int, width: int, batch: int) -> torch.Tensor:
    """The timed batch: season sample frames for the demo model, else noise, noise, structured, ..."""
    frames = calibration_frames(model, height, width) if model == "demo" else parity_frames(height, width, height)
    picks = [frames[i % len(frames)] for i in range(batch)]
    return frames_to_batch(torch.from_numpy(np.stack(picks)), torch.float32).contiguous()


def torch_runner(generator, dtype):
    net = generator.to(dtype)  # weights cast once, as Translator does

    def run(batch):
        with torch.inference_mode():
            return net(batch.to(dtype)).float()
    return run


def load_generator(model: str):
    if model == "demo":
        return vidcycle.load_model("demo-summer2winter", device="cpu", precision="fp32").generator
    blocks, ngf = map(int, model.split("x"))
    torch.manual_seed(0)
    return build_generator(GeneratorSpec(blocks, ngf)).eval()


def calibration_frames(model: str, height: int, width: int) -> list:
    if model != "demo":
        return [f for seed in range(4) for f in parity_frames(height, width, seed=seed)]
    photos = [read_image(p).rgb for p in sorted((REPO / "samples/photos").glob("summer_*.jpg"))]
    clip = [f.rgb for f in iter_frames(REPO / "samples/summer_clip.mp4") if f.index % 12 == 0]
    return [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in photos + clip]


def engines_for(model: str, size: tuple, folder: Path, int8: bool) -> tuple[dict, list]:
    generator = load_generator(model)
    spec = generator.spec
    notes = []
    runners = {"torch fp32": torch_runner(generator, torch.float32)}
    winograds = _copy(generator)
    if use_faster_inference_convolutions(winograds, torch.device("cpu"), torch.float32):
        runners["torch fp32 Winograd's"] = torch_runner(winograds, torch.float32)  # what Translator runs here
    if cpu_has_fast_bf16():
        runners["torch bf16"] = torch_runner(_copy(generator), torch.bfloat16)
    graph = folder / f"{model}.onnx"
    if not graph.exists():
        result = export_generator(generator, ModelInfo(spec), graph)
        notes.append(f"export parity {result.parity_db:.1f} dB")
    runners["ort fp32"] = OrtEngine(graph).run
    if int8:
        quantized = folder / f"{model}-{size[0]}x{size[1]}.int8.onnx"
        calibration = calibration_frames(model, *size)
        try:
            quantize_int8(graph, quantized, calibration)
            runners["ort int8"] = OrtEngine(quantized).run
        except ModelError as error:
            notes.append(f"int8 refused: {str(error).split('int8 refused: ')[-1]}")
    return runners, notes


def _copy(generator):
    clone = build_generator(generator.spec, init=False).eval()
    clone.load_state_dict(generator.state_dict())
    return clone


def measure(runners: dict, batch: torch.Tensor, repeats: int) -> dict:
    reference = runners["torch fp32"](batch).numpy()
    parity = {name: psnr_db(np.asarray(run(batch)), reference) for name, run in runners.items()}  # and warm-up
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run(batch)
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(values), parity[name]) for name, values in times.items()}


def _rate(frames_per_second: float) -> str:
    return f"{frames_per_second:8.3f}" if frames_per_second < 10 else f"{frames_per_second:8.1f}"


def end_to_end(model: str, size: tuple, frames: int, repeats: int, folder: Path) -> None:
    """`vidcycle apply`'s translate_video on a generated clip with each engine, and auto, against the naive
    float32 per-frame loop (OpenCV read, batch 1, torch float32, OpenCV write), interleaved repeat by repeat."""
    from apply_speed import in_thread, naive_loop, write_clip
    from vidcycle.apply.jobs import ApplyOptions, translate_video
    from vidcycle.models.modelfile import save_model
    width, height = size
    generator = load_generator(model)
    path = folder / f"{model}.safetensors"
    if not path.exists():
        save_model(path, _copy(generator), ModelInfo(generator.spec, source="benchmark"))
    src = write_clip(folder / f"{model}-{width}x{height}.mp4", frames, size)
    variants = {"torch fp32": ("torch", "fp32"), "onnxruntime fp32": ("onnxruntime", "fp32"),
                "auto, --precision fp32": ("auto", "fp32")}
    if cpu_has_fast_bf16():
        variants.update({"torch bf16": ("torch", "bf16"), "auto (bf16 here)": ("auto", "auto")})
    translators = {name: vidcycle.load_model(path, "cpu", precision, engine=engine)
                   for name, (engine, precision) in variants.items()}
    if translators["torch fp32"].winograd:
        translators = {"torch fp32, torch's convolutions": torchs_convolutions(
            vidcycle.load_model(path, "cpu", "fp32", engine="torch")), **translators}
    times = {name: [] for name in [*translators, "naive fp32 loop"]}
    for _ in range(repeats):
        for name, translator in translators.items():
            options = ApplyOptions(overwrite=True)
            times[name].append(in_thread(lambda: translate_video(src, folder / "out.mp4", translator, options)))
        times["naive fp32 loop"].append(frames / naive_loop(_copy(generator), src, folder / "naive.mp4"))
    naive = frames / statistics.median(times["naive fp32 loop"])
    for name, values in times.items():
        rate = frames / statistics.median(values)
        engine = translators[name].describe() if name in translators else "cv2 + torch fp32, batch 1"
        print(f"{model:>5}  {width}x{height}  end to end  {name:32s} {_rate(rate)} frames/s  "
              f"x{rate / naive:5.2f} the naive loop   ({engine})", flush=True)


def torchs_convolutions(translator):
    """The translator as it ran before Winograd's convolutions came to `vidcycle apply`: torch's in every layer."""
    for module in translator.generator.modules():
        if isinstance(module, WinogradConv2d):
            module.__class__ = torch.nn.Conv2d
    return translator


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="320x240,1280x720", help="WxH list")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--models", default="9x64,demo", help="BLOCKSxNGF (random init) or demo, a list")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--e2e-frames", type=int, default=24, help="frames of the end-to-end clip (0: skip)")
    parser.add_argument("--e2e-sizes", default="320x240", help="WxH list for the end-to-end runs")
    parser.add_argument("--network", default=True, action=argparse.BooleanOptionalAction)
    args = parser.parse_args()
    print(cpu_line())
    print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(",") if args.network else ():
            for size in args.sizes.split(","):
                width, height = map(int, size.split("x"))
                runners, notes = engines_for(model, (height, width), Path(tmp), not args.no_int8)
                for note in notes:
                    print(f"{model} {size}: {note}")
                for batch_size in map(int, args.batches.split(",")):
                    results = measure(runners, bench_frames(model, height, width, batch_size), args.repeats)
                    base = results["torch fp32"][0]
                    for name, (seconds, parity) in results.items():
                        print(f"{model:>5}  {size:>9}  batch {batch_size}  {name:21s} {_rate(batch_size / seconds)} "
                              f"frames/s  x{base / seconds:5.2f}  parity {parity:6.1f} dB")
        for model in args.models.split(",") if args.e2e_frames else ():
            for size in args.e2e_sizes.split(","):
                end_to_end(model, tuple(map(int, size.split("x"))), args.e2e_frames, args.repeats, Path(tmp))
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
