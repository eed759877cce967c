"""Frames per forward on the CPU: is one frame at a time or four faster, per precision and engine?

    python benchmarks/cpu_batch.py [--size 320x240] [--rounds 4]

For a 9-block ngf-64 and a 6-block ngf-16 generator (random init: weights do not change the cost),
network alone on 8 frames, frames/s at batch 1 and batch 4: torch float32, torch bf16 (where the
CPU has native bf16) and ONNX Runtime float32, interleaved round by round, best of --rounds after
one warm-up round. vidcycle.runtime.translator.CPU_BATCH follows from this table.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `vidcycle apply` sets it

import torch  # noqa: E402

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from machine import cpu_description  # noqa: E402
from vidcycle.runtime.device import cpu_has_fast_bf16  # noqa: E402
from vidcycle.runtime.memory import Plan  # noqa: E402
from vidcycle.models.modelfile import ModelInfo, save_model  # noqa: E402
from vidcycle.models.nets import GeneratorSpec, build_generator  # noqa: E402
from vidcycle.runtime.translator import load_model  # noqa: E402

SPECS = (GeneratorSpec(9, 64), GeneratorSpec(6, 16))
BATCHES = (1, 4)


def translators(work: Path) -> dict:
    os.environ["VIDCYCLE_HOME"] = str(work / "home")  # ONNX graphs are cached there
    made = {}
    for spec in SPECS:
        path = work / f"g{spec.n_blocks}x{spec.ngf}.safetensors"
        save_model(path, build_generator(spec), ModelInfo(spec=spec, source="benchmark"))
        made[(spec.label, "torch fp32")] = load_model(path, "cpu", "fp32")
        if cpu_has_fast_bf16():
            made[(spec.label, "torch bf16")] = load_model(path, "cpu", "bf16")
        made[(spec.label, "onnxruntime fp32")] = load_model(path, "cpu", "fp32", engine="onnxruntime")
    return made


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    width, height = map(int, args.size.lower().split("x"))
    print(f"{cpu_description()}; {torch.get_num_threads()} torch threads; load {os.getloadavg()[0]:.1f}")
    frames = torch.randint(0, 256, (8, height, width, 3), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        runs = translators(Path(tmp))
        best = {}
        for round_ in range(args.rounds + 1):
            for key, translator in runs.items():
                for batch in BATCHES:
                    translator._plans[(height, width)] = Plan(batch, None)  # force the batch for this size
                    start = time.perf_counter()
                    translator.translate_tensor(frames)
                    fps = len(frames) / (time.perf_counter() - start)
                    if round_:
                        best[key + (batch,)] = max(best.get(key + (batch,), 0.0), fps)
    print(f"network alone at {width}x{height}, frames/s (best of {args.rounds}):")
    for label, engine in runs:
        one, four = best[(label, engine, 1)], best[(label, engine, 4)]
        print(f"  {label:<26} {engine:<17} batch 1 {one:7.2f}   batch 4 {four:7.2f}   4 / 1 = {four / one:.2f}")
    print(f"load {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
