"""Apply benchmark (issue 6): is `vidcycle apply` as fast as its network, and is its memory flat?

    python benchmarks/apply_speed.py [--frames 24] [--size 320x240] [--batch-size N] [--precision auto]
                                     [--rss-seconds 10,60] [--rss-size 640x360] [--rss-model 1x4] [--skip-rss]

Speed, on a generated --size clip with a random-init 9-block ngf-64 generator
(the reference architecture; weights do not change the cost):
  end-to-end  vidcycle.apply.jobs.translate_video, the code behind `vidcycle apply`
              (decode thread, network thread, encoder, H.264 CRF 17 + flush);
              model loaded beforehand, as a long job amortises it
  (a)         the same Translator's forward alone (translate_tensor) over
              the same frames at the same batch size and precision
  (b)         a naive loop: cv2.VideoCapture read, one frame at a time,
              float32 forward, cv2.VideoWriter write
Targets: end-to-end >= 0.85 x (a) and >= 3 x (b). Every variant is warmed up
on one batch first and runs its network in a worker thread, as the pipeline
does, in one process with OMP_WAIT_POLICY=PASSIVE as `vidcycle apply`
sets it (OpenMP workers spinning between ops starved the decode and encode
threads on 2 busy cores: the tiny net ran 4x slower inside the pipeline).

Memory: peak RSS (VmHWM) of a fresh process converting a --rss-size clip
of each --rss-seconds length (24 fps) with the apply path; the ratio of the
longest to the shortest must stay <= 1.15 (constant memory). A small
generator (--rss-model, default 1 block, ngf 4) keeps this part short; the
queues hold a fixed number of frames whatever the network.

The machine may be shared: figures are noisy; compare ratios, not absolutes.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `vidcycle apply` sets it; before torch loads OpenMP

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidcycle.apply.jobs import ApplyOptions, translate_video  # noqa: E402
from vidcycle.models.modelfile import ModelInfo, save_model  # noqa: E402
from vidcycle.models.nets import GeneratorSpec, build_generator  # noqa: E402
from vidcycle.runtime.translator import load_model  # noqa: E402
from vidcycle.media.video import iter_frames  # noqa: E402

from clips import FPS, write_sliding_clip  # noqa: E402

# Peak RSS is read from VmHWM: ru_maxrss survives execve on Linux, so a child started by this (large)
# process would report the parent's peak instead of its own.
RSS_CHILD = """
import json, sys
from vidcycle.apply.jobs import translate_video
from vidcycle.runtime.translator import load_model
translator = load_model(sys.argv[1], "cpu", sys.argv[4])
result = translate_video(sys.argv[2], sys.argv[3], translator)
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"frames": result.frames, "maxrss_kb": int(status["VmHWM"].split()[0])}))
"""


def write_clip(path: Path, frames: int, size: tuple[int, int], audio: bool = True) -> Path:
    """Moving textured content with an AAC track."""
    width, height = size
    rng = np.random.default_rng(0)
    texture = cv2.resize(rng.integers(0, 255, (height // 8 + 1, width // 4 + 1, 3), dtype=np.uint8),
                         (width * 2, height), interpolation=cv2.INTER_CUBIC)
    return write_sliding_clip(path, texture, frames, width, step=3, crf=20, audio=audio)


def in_thread(work):
    """Run `work()` in a worker thread (as the pipeline runs its network); return its wall time."""
    box = {}

    def run():
        start = time.perf_counter()
        work()
        box["seconds"] = time.perf_counter() - start

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return box["seconds"]


def network_alone(translator, frames: np.ndarray, batch: int) -> float:
    def work():
        for start in range(0, len(frames), batch):
            translator.translate_tensor(torch.from_numpy(frames[start:start + batch]))
    return len(frames) / in_thread(work)


def end_to_end(translator, src: Path, dst: Path, batch: int) -> float:
    start = time.perf_counter()
    result = translate_video(src, dst, translator, ApplyOptions(batch_size=batch, overwrite=True))
    return result.frames / (time.perf_counter() - start)


def naive_loop(generator, src: Path, dst: Path) -> float:
    count = {"frames": 0}

    def work():
        capture = cv2.VideoCapture(str(src))
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (width, height))
        with torch.no_grad():
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                x = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0
                y = generator(x)
                out = ((y[0].permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).byte().numpy()
                writer.write(np.ascontiguousarray(out[..., ::-1]))
                count["frames"] += 1
        writer.release()
        capture.release()
    seconds = in_thread(work)
    return count["frames"] / seconds


def speed(args, work: Path):
    width, height = args.size
    spec = GeneratorSpec(n_blocks=9, ngf=64)
    torch.manual_seed(0)
    generator = build_generator(spec)
    model = work / "g9x64.safetensors"
    save_model(model, generator, ModelInfo(spec=spec, source="benchmark"))
    translator = load_model(model, "cpu", args.precision)
    batch = args.batch_size or translator.batch_size(width, height)
    src = write_clip(work / "clip.mp4", args.frames, args.size)
    frames = np.stack([f.rgb for f in iter_frames(src)])
    naive_net = build_generator(spec, init=False)
    naive_net.load_state_dict(generator.state_dict())
    naive_net.eval()

    in_thread(lambda: translator.translate_tensor(torch.from_numpy(frames[:batch])))  # warm-up (oneDNN kernels)
    in_thread(lambda: naive_net(torch.zeros(1, 3, height, width)))
    rows = {"end-to-end": [], "network alone (a)": [], "naive loop (b)": []}
    for _ in range(args.repeats):
        rows["network alone (a)"].append(network_alone(translator, frames, batch))
        rows["end-to-end"].append(end_to_end(translator, src, work / "out.mp4", batch))
    rows["naive loop (b)"].append(naive_loop(naive_net, src, work / "naive.mp4"))
    best = {name: max(values) for name, values in rows.items()}

    print(f"\nSpeed: {args.frames} frames at {width}x{height}, 9-block ngf-64 generator, CPU "
          f"({torch.get_num_threads()} torch threads), precision {translator.precision}, batch {batch}, "
          f"best of {args.repeats}")
    print(f"{'variant':<22}{'frames/s':>10}")
    for name, value in best.items():
        print(f"{name:<22}{value:>10.2f}")
    vs_a = best["end-to-end"] / best["network alone (a)"]
    vs_b = best["end-to-end"] / best["naive loop (b)"]
    print(f"end-to-end / (a) = {vs_a:.2f}  (target >= 0.85: {'met' if vs_a >= 0.85 else 'NOT met'})")
    print(f"end-to-end / (b) = {vs_b:.2f}  (target >= 3: {'met' if vs_b >= 3 else 'NOT met'})")
    floor(translator, generator, best["naive loop (b)"], height, width)
    return {"fps": best, "vs_network": vs_a, "vs_naive": vs_b, "batch": batch, "precision": translator.precision}


def memory(args, work: Path):
    width, height = args.rss_size
    blocks, ngf = args.rss_model
    spec = GeneratorSpec(n_blocks=blocks, ngf=ngf)
    model = work / "rss_model.safetensors"
    save_model(model, build_generator(spec), ModelInfo(spec=spec, source="benchmark"))
    results = {}
    for seconds in args.rss_seconds:
        src = write_clip(work / f"rss_{seconds}s.mp4", int(seconds * FPS), args.rss_size)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        start = time.perf_counter()
        command = [sys.executable, "-c", RSS_CHILD, str(model), str(src), str(work / f"rss_out_{seconds}.mp4"),
                   args.precision]
        child = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if child.returncode != 0:
            raise SystemExit(f"RSS child failed for {seconds}s:\n{child.stderr}")
        facts = json.loads(child.stdout.strip().splitlines()[-1])
        facts["seconds"] = time.perf_counter() - start
        results[seconds] = facts
    print(f"\nMemory: {width}x{height} clips at {FPS} fps with AAC, {blocks}-block ngf-{ngf} generator, "
          f"fresh process each")
    print(f"{'clip':>8}{'frames':>8}{'peak RSS MiB':>14}{'wall s':>8}")
    for seconds, facts in results.items():
        print(f"{seconds:>7g}s{facts['frames']:>8}{facts['maxrss_kb'] / 1024:>14.1f}{facts['seconds']:>8.1f}")
    low, high = results[min(results)], results[max(results)]
    ratio = high["maxrss_kb"] / low["maxrss_kb"]
    print(f"peak RSS {max(results):g}s / {min(results):g}s = {ratio:.3f}  "
          f"(target <= 1.15: {'met' if ratio <= 1.15 else 'NOT met'})")
    return {"rss": results, "ratio": ratio}


def floor(translator, generator, naive_fps: float, height: int, width: int) -> None:
    """The hardware's ceiling for this network (benchmarks/roofline.py) against what 3 x (b) asks."""
    from roofline import best_conv_rate, cpu_has_amx, gflop
    with torch.inference_mode():
        work = gflop(lambda: generator.eval()(torch.zeros(1, 3, height, width)))
    rate = best_conv_rate(translator.dtype)
    print(f"ceiling: {work:.1f} GFLOP a frame at this CPU's best {translator.precision} convolution rate "
          f"({rate:.0f} GFLOP/s, AMX: {cpu_has_amx()}) = {rate / work:.2f} fps for the network alone, "
          f"even with every layer as fast as the best one; 3 x (b) asks {3 * naive_fps:.2f} fps")


def size_arg(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=24, help="frames of the speed clip")
    parser.add_argument("--size", type=size_arg, default=(320, 240))
    parser.add_argument("--batch-size", type=int, default=None, help="default: the apply default for the device")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=1, help="alternate (a) and end-to-end this often, keep best")
    parser.add_argument("--rss-seconds", type=lambda t: [float(x) for x in t.split(",")], default=[10, 60])
    parser.add_argument("--rss-size", type=size_arg, default=(640, 360))
    parser.add_argument("--rss-model", type=size_arg, default=(1, 4), help="BLOCKSxNGF of the memory run's generator")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="apply_speed_") as tmp:
        if not args.skip_speed:
            speed(args, Path(tmp))
        if not args.skip_rss:
            memory(args, Path(tmp))
    print(f"\ntotal {time.perf_counter() - started:.0f} s; own peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
