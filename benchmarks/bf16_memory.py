"""The memory plan's bf16 estimate against the peak torch really allocates, on this CPU as it is.

Run it twice to compare the two kinds of CPU: as is, and as an AVX2-only CPU (no native bf16):

    python benchmarks/bf16_memory.py
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/bf16_memory.py

Each row: a random-init generator, frame size and batch; whole frames, and tiles keeping nothing
(the plan's worst case); estimate over measured (>= 1: the plan errs high, as it must). About a
minute per run on 2 cores (emulated bf16 is slow).
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_description  # noqa: E402
from vidcycle.models.nets import GeneratorSpec, build_generator  # noqa: E402
from vidcycle.runtime.memory import estimate_run, measure_peak  # noqa: E402
from vidcycle.runtime.tiling import TiledRunner  # noqa: E402

CASES = [(16, 2, 2, 128, 160, None), (16, 6, 1, 256, 256, 128), (32, 4, 1, 192, 256, 128), (64, 9, 1, 192, 160, None)]


def row(ngf, blocks, batch, height, width, tile, dtype):
    torch.manual_seed(0)
    net = build_generator(GeneratorSpec(n_blocks=blocks, ngf=ngf)).eval().to(dtype)
    runner = TiledRunner(net)
    x = (torch.rand(batch, 3, height, width) * 2 - 1).to(dtype)
    held = x.nbytes + sum(t.nbytes for t in net.state_dict().values())
    with torch.inference_mode():
        run = (lambda: net(x)) if tile is None else (lambda: runner(x, tile, runner.overlap(runner.schedule(x.shape, x.element_size(), 0)), 0))
        _, peak = measure_peak(run)
    if tile is None:
        estimate = estimate_run(runner, x.shape, dtype)
    else:
        overlap = runner.overlap(runner.schedule(x.shape, x.element_size(), 0))
        estimate = estimate_run(runner, x.shape, dtype, tile=tile, overlap=overlap)
    return held + peak, estimate


def main():
    print(cpu_description())
    print("| generator, frame | precision | measured MiB | estimate MiB | estimate / measured |")
    print("|---|---|---:|---:|---:|")
    for ngf, blocks, batch, height, width, tile in CASES:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            measured, estimate = row(ngf, blocks, batch, height, width, tile, dtype)
            what = f"ngf {ngf}, {blocks} blocks, {batch}x {width}x{height}" + (f", tile {tile}" if tile else ", whole")
            print(f"| {what} | {name} | {measured / 2**20:.1f} | {estimate / 2**20:.1f} | {estimate / measured:.3f} |")


if __name__ == "__main__":
    main()
