"""Does torch.compile or channels_last make `vidcycle apply`'s network faster on this CPU, counting the compile?

    python benchmarks/apply_compile.py [--size 320x180] [--batch 4] [--turns 3] [--threads N]

For the teacher-sized reference generator (9 blocks, ngf 64) and the demo student (its built-in
model's architecture), each in float32 and bf16: the network's forward over one batch of --size frames
(what vidcycle apply's network thread runs), as

  eager            the Translator's own module (contiguous NCHW), as vidcycle apply runs it with --engine torch
  channels_last    the same module and input in channels_last memory
  compile          torch.compile (inductor) of it; the first call pays the compile, reported apart
  compile + cl     both
  onnxruntime      (float32 only) the engine `--engine auto` picks for float32 on the CPU

Times are medians over --turns, taken in turns (every variant once per turn), as ratios to eager.
`repays after` is how many frames the compile's one-time cost needs before the faster forward has paid
it back (compile seconds / seconds saved per frame): a clip of 24 fps x 60 s is 1,440 frames.
"""

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `vidcycle apply` sets it

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from machine import cpu_description  # noqa: E402
from vidcycle.models.modelfile import ModelInfo, save_model  # noqa: E402
from vidcycle.models.nets import GeneratorSpec, build_generator  # noqa: E402
from vidcycle.models.store import load_generator  # noqa: E402

BUILTIN = ROOT / "vidcycle" / "builtin_models" / "demo-summer2winter.safetensors"


def networks(folder: Path) -> dict:
    """name -> (generator, its model file)."""
    spec = GeneratorSpec(n_blocks=9, ngf=64)
    teacher = build_generator(spec).eval()
    save_model(folder / "teacher.safetensors", teacher, ModelInfo(spec=spec))
    student, _ = load_generator(BUILTIN)
    return {"teacher 9 blocks ngf 64": (teacher, folder / "teacher.safetensors"),
            "demo student": (student.eval(), BUILTIN)}


def variants(net, dtype, batch):
    """label -> (a callable running one forward, compile seconds)."""
    made = {}
    for label, memory, compiled in (("eager", torch.contiguous_format, False),
                                    ("channels_last", torch.channels_last, False),
                                    ("compile", torch.contiguous_format, True),
                                    ("compile + cl", torch.channels_last, True)):
        module = copy.deepcopy(net).to(memory_format=memory)
        module = torch.compile(module) if compiled else module
        example = batch.to(memory_format=memory)
        forward = _forward(module, example, dtype)
        started = time.perf_counter()
        forward()  # the first call compiles (and warms the eager one's allocator)
        made[label] = (forward, time.perf_counter() - started if compiled else 0.0)
    return made


def _forward(module, example, dtype):
    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            return module(example)
    return run


def onnx_variant(path: Path, batch):
    from vidcycle.runtime.onnx_engine import load_engine

    started = time.perf_counter()
    engine = load_engine(path, device="cpu", precision="fp32")
    engine.run(batch.numpy())
    return (lambda: engine.run(batch.numpy())), time.perf_counter() - started


def timed(forward) -> float:
    started = time.perf_counter()
    forward()
    return time.perf_counter() - started


def table(args) -> None:
    width, height = args.size
    batch = torch.rand(args.batch, 3, height, width) * 2 - 1
    print(f"| network | precision | variant | s per frame | x eager | first call (compile) s | repays after |")
    print("|---|---|---|---:|---:|---:|---:|")
    folder = Path(tempfile.mkdtemp())
    os.environ["VIDCYCLE_HOME"] = str(folder / "home")  # the ONNX graphs it builds go there
    for name, (net, path) in networks(folder).items():
        for dtype in (torch.float32, torch.bfloat16):
            made = variants(net, dtype, batch)
            if dtype == torch.float32:
                made["onnxruntime"] = onnx_variant(path, batch)
            seconds = {label: [] for label in made}
            for _ in range(args.turns):
                for label, (forward, _) in made.items():
                    seconds[label].append(timed(forward) / args.batch)
            eager = statistics.median(seconds["eager"])
            for label, (_, compile_s) in made.items():
                per_frame = statistics.median(seconds[label])
                saved = eager - per_frame
                repays = (f"{compile_s / saved:,.0f} frames" if saved > 0 else "never") if compile_s else ""
                print(f"| {name} | {str(dtype).removeprefix('torch.')} | {label} | {per_frame:.4f} | "
                      f"{per_frame / eager:.2f} | {compile_s:.1f} | {repays} |", flush=True)
            torch._dynamo.reset()


def size_arg(text: str) -> tuple:
    width, height = text.lower().split("x")
    return int(width), int(height)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=size_arg, default=(320, 180))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_description()}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    table(args)


if __name__ == "__main__":
    main()
