"""GPU apply benchmark: 1080p frames/s of the network alone and of the whole apply pipeline, what limits it,
and the GPU memory at the default batch.

    python benchmarks/gpu_apply.py                      # everything this machine can run
    python benchmarks/gpu_apply.py --network-only       # synthetic frames: needs torch alone (no PyAV)
    python benchmarks/gpu_apply.py --network-only --device cpu --size 96x64 --blocks 1 --ngf 8 --frames 4

Runs on a bare GPU machine: torch is the only must. Stages, each timed after a warm-up:

  network           Translator.translate_tensor on synthetic uint8 frames (pinned upload, fp16 by default,
                    uint8 back), at the default batch the memory plan picks and at --batch-sizes, in the
                    contiguous layout the translator uses and, on CUDA, channels_last for comparison
  one-frame fp32    the same generator one frame at a time in float32 (the naive loop's arithmetic)
  decode, encode    PyAV alone (skipped without PyAV)
  end-to-end        vidcycle.apply.jobs.translate_video on a generated --size clip with audio (needs PyAV)

results.json (in $OUT when that names a folder, else --results) is written whatever happens, with the
stage that failed and its error. The verdict names the slowest stage: the end-to-end rate cannot beat it.
Target on an H200: >= 120 frames/s end to end at 1080p with the 9-block ngf-64 generator in fp16.
"""

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `vidcycle apply` sets it, before torch loads OpenMP

import numpy as np  # noqa: E402
import torch  # noqa: E402

TARGET_FPS = 120


class Report(dict):
    """What was measured so far; saved whatever happens."""

    def __init__(self, path: Path):
        super().__init__(stages_done=[], failed_stage=None)
        self.path = path

    def stage(self, name: str, run):
        started = time.perf_counter()
        try:
            value = run()
        except Exception as error:  # noqa: BLE001 - recorded, then re-raised: the report is the point
            self["failed_stage"], self["error"] = name, f"{type(error).__name__}: {error}"
            self["traceback"] = traceback.format_exc()
            raise
        self["stages_done"].append(name)
        print(f"[{name} done in {time.perf_counter() - started:.1f} s]", flush=True)
        return value

    def save(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self, indent=2, default=str))
        print(f"results: {self.path}")


def random_generator(blocks: int, ngf: int, seed: int = 0):
    """A ResnetGenerator of this size with random weights (the same for the same seed), and its ModelInfo."""
    from vidcycle.models.modelfile import ModelInfo
    from vidcycle.models.nets import GeneratorSpec, build_generator
    torch.manual_seed(seed)
    spec = GeneratorSpec(n_blocks=blocks, ngf=ngf)
    return build_generator(spec), ModelInfo(spec=spec)


def make_translator(args, memory_format=None):
    from vidcycle.runtime.translator import Translator
    translator = Translator(*random_generator(args.blocks, args.ngf), args.device, args.precision)
    if memory_format is not None:
        translator.generator.to(memory_format=memory_format)
    return translator


def synthetic_frames(count: int, width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (count, max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    big = np.repeat(np.repeat(small, 8, axis=1), 8, axis=2)
    return np.ascontiguousarray(np.pad(big, ((0, 0), (0, height - big.shape[1]), (0, width - big.shape[2]), (0, 0)),
                                       "edge")[:, :height, :width])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def network_fps(translator, frames: np.ndarray, batch: int) -> float:
    tensor = torch.from_numpy(frames)
    translator.translate_tensor(tensor[:batch])  # warm-up: cuDNN picks its kernels for this shape
    count = max(batch, len(frames) // batch * batch)
    sync(translator.device)
    start = time.perf_counter()
    for first in range(0, count, batch):
        translator.translate_tensor(tensor[first:first + batch])  # returns on the CPU: synced
    return count / (time.perf_counter() - start)


def one_frame_fp32_fps(args, frames: np.ndarray) -> float:
    """The naive loop's network: one frame at a time in float32 (no decode or encode here)."""
    from vidcycle.models.frames import batch_to_frames, frames_to_batch
    translator = make_translator(argparse.Namespace(**{**vars(args), "precision": "fp32"}))
    generator, device = translator.generator, translator.device
    count = min(len(frames), args.naive_frames)
    with torch.inference_mode():
        for n in range(count + 1):
            if n == 1:
                sync(device)
                start = time.perf_counter()
            x = frames_to_batch(torch.from_numpy(frames[n % len(frames)][None]).to(device), torch.float32)
            batch_to_frames(generator(x)).cpu()
    return count / (time.perf_counter() - start)


def measure_network(args, report: Report, width: int, height: int):
    translator = make_translator(args)
    default_batch = translator.batch_size(width, height)
    report.update(device=str(translator.device), precision=translator.precision, default_batch=default_batch,
                  plan=str(translator.plan(height, width)))
    if translator.device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(translator.device)
        torch.cuda.reset_peak_memory_stats(translator.device)
    frames = synthetic_frames(max(args.frames, default_batch), width, height)
    batches = sorted({default_batch, *(b for b in args.batch_sizes if b <= len(frames))})
    report["network_fps"] = {}
    for batch in batches:
        report["network_fps"][batch] = network_fps(translator, frames, batch)
        print(f"network alone, batch {batch}: {report['network_fps'][batch]:.2f} fps", flush=True)
    if translator.device.type == "cuda":
        report["gpu_peak_gib"] = torch.cuda.max_memory_allocated(translator.device) / 2 ** 30
        channels_last = make_translator(args, torch.channels_last)
        report["network_fps_channels_last"] = network_fps(channels_last, frames, default_batch)
        print(f"network alone, batch {default_batch}, channels_last: {report['network_fps_channels_last']:.2f} fps")
    report["one_frame_fp32_fps"] = one_frame_fp32_fps(args, frames)
    print(f"one frame at a time, fp32: {report['one_frame_fp32_fps']:.2f} fps", flush=True)
    return translator


def measure_pipeline(args, report: Report, translator, width: int, height: int):
    from clips import write_sliding_clip
    from vidcycle.apply.jobs import ApplyOptions, translate_video
    from vidcycle.media.video import DecodedFrame, VideoReader, probe
    from vidcycle.media.video_writer import DEFAULT_PRESET, EncodeSettings, VideoWriter
    with tempfile.TemporaryDirectory(prefix="gpu_apply_") as tmp:
        work = Path(tmp)
        texture = synthetic_frames(1, 2 * width, height)[0]
        src = write_sliding_clip(work / "clip.mp4", texture, args.frames, width, step=4, crf=18)
        info = probe(src)
        reader = VideoReader(src, info)
        start, decoded = time.perf_counter(), []
        for item in reader.items():
            if isinstance(item, DecodedFrame):
                decoded.append(item)
        report["decode_fps"] = len(decoded) / (time.perf_counter() - start)
        writer = VideoWriter(work / "encode.mp4", reader, width, height, EncodeSettings(), ".mp4")
        start = time.perf_counter()
        for frame in decoded:
            writer.write_frame(frame.rgb, frame.pts, frame.time_base)
        writer.close()
        reader.close()
        report["encode_fps"] = len(decoded) / (time.perf_counter() - start)
        report["x264_preset"] = DEFAULT_PRESET["libx264"]
        start = time.perf_counter()
        result = translate_video(src, work / "out.mp4", translator, ApplyOptions(overwrite=True))
        report["end_to_end_fps"] = result.frames / (time.perf_counter() - start)
    for key in ("decode_fps", "encode_fps", "end_to_end_fps"):
        print(f"{key.replace('_fps', '').replace('_', ' ')}: {report[key]:.2f} fps", flush=True)


def verdict(report: Report):
    stages = {"network": report["network_fps"][report["default_batch"]]}
    for name in ("decode", "encode"):
        if f"{name}_fps" in report:
            stages[name] = report[f"{name}_fps"]
    limit = min(stages, key=stages.get)
    report["limited_by"] = limit
    print(f"\n{report['size']}, {report.get('gpu', report['device'])}, {report['precision']}, default batch "
          f"{report['default_batch']}" + (f", GPU peak {report['gpu_peak_gib']:.2f} GiB" if "gpu_peak_gib" in report else ""))
    for name, value in stages.items():
        print(f"  {name + ' alone':<22}{value:>9.2f} fps")
    print(f"  {'one frame, fp32':<22}{report['one_frame_fp32_fps']:>9.2f} fps")
    if "end_to_end_fps" in report:
        e2e = report["end_to_end_fps"]
        print(f"  {'end to end':<22}{e2e:>9.2f} fps = {e2e / report['one_frame_fp32_fps']:.1f}x the one-frame "
              f"fp32 network")
        if (report["size"], report["blocks"], report["ngf"], report["precision"]) == ("1920x1080", 9, 64, "fp16"):
            report["target_met"] = e2e >= TARGET_FPS
            print(f"target >= {TARGET_FPS} fps end to end (H200, 1080p, 9 blocks ngf 64, fp16): "
                  f"{'met' if report['target_met'] else 'NOT met'} on {report.get('gpu', report['device'])}")
    print(f"limited by: {limit}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--network-only", action="store_true", help="synthetic frames; needs neither PyAV nor a clip")
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--naive-frames", type=int, default=24)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--blocks", type=int, default=9)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--batch-sizes", default="4,8,16", type=lambda text: [int(v) for v in text.split(",") if v])
    parser.add_argument("--results", type=Path, default=Path("results.json"))
    args = parser.parse_args()
    out = os.environ.get("OUT")
    report = Report(Path(out) / "results.json" if out and Path(out).is_dir() else args.results)
    width, height = (int(v) for v in args.size.lower().split("x"))
    report.update(size=f"{width}x{height}", blocks=args.blocks, ngf=args.ngf, torch=torch.__version__,
                  cpu_cores=os.cpu_count(), cuda=torch.cuda.is_available())
    try:
        translator = report.stage("network", lambda: measure_network(args, report, width, height))
        if not args.network_only:
            try:
                import av  # noqa: F401
            except ImportError:
                report["pipeline_skipped"] = "PyAV is not installed: network figures only"
                print(report["pipeline_skipped"])
            else:
                report.stage("pipeline", lambda: measure_pipeline(args, report, translator, width, height))
        verdict(report)
    finally:
        report.save()


if __name__ == "__main__":
    main()
