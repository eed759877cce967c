"""Model load time and single-frame translate time per precision (issue 2's figures).

    python benchmarks/model_speed.py [--size 256] [--repeats 5] [--precisions fp32,bf16]
    ONEDNN_MAX_CPU_ISA=AVX512_CORE python benchmarks/model_speed.py --precisions fp32,bf16

Builds a 9-block ngf-64 generator (the reference pretrained architecture),
saves it as a vidcycle model file, then times load_model and translate(), in
float32 and, where the CPU has bf16 arithmetic (or --precisions asks), bf16.
The second line holds an AVX-512 CPU with bf16 to a Skylake-to-Tiger-Lake one
(AVX-512, no bf16 instructions: oneDNN emulates bf16).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import vidcycle
from vidcycle.models.modelfile import ModelInfo, save_model
from vidcycle.models.nets import GeneratorSpec, build_generator
from vidcycle.runtime.device import cpu_has_fast_bf16

from machine import cpu_description


def timed(fn, repeats):
    fn()  # warm-up: allocator, oneDNN primitive cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precisions", help="comma-separated CPU precisions (default: fp32, and bf16 where native)")
    args = parser.parse_args()
    torch.manual_seed(0)
    spec = GeneratorSpec(n_blocks=9, ngf=64)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.safetensors"
        save_model(path, build_generator(spec), ModelInfo(spec))
        load_s = timed(lambda: vidcycle.load_model(path, device="cpu"), args.repeats)
        print(f"{cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"model load (9 blocks, ngf 64, {path.stat().st_size / 1e6:.1f} MB): {load_s * 1000:.0f} ms")
        frame = np.random.default_rng(0).integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)
        precisions = (args.precisions.split(",") if args.precisions
                      else ["fp32", "bf16"] if cpu_has_fast_bf16() else ["fp32"])
        if torch.cuda.is_available():
            precisions += ["cuda-fp32", "cuda-fp16"]
        for name in precisions:
            device, precision = ("cuda", name[5:]) if name.startswith("cuda-") else ("cpu", name)
            model = vidcycle.load_model(path, device=device, precision=precision)
            seconds = timed(lambda: model.translate(frame), args.repeats)
            print(f"translate one {args.size}x{args.size} frame, {name:9s}: {seconds * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
