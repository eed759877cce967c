"""Tiled inference: ways of giving every instance norm whole-frame statistics, compared (the table in
vidcycle/tiling.py's docstring).

    python benchmarks/tiling.py [--model demo|resnet9-16|resnet9-64] [--size 768x432] [--tile 256]
                                [--methods all|exact] [--precision fp32|bf16]

The frame is a procedural summer landscape (samples/make_samples.py), the demo model is the trained
built-in summer->winter generator; resnetN-C are random-init generators (N blocks, ngf C) for depth.
For each method: PSNR of the uint8 output against the untiled one; seams: the largest relative
difference between the mean absolute pixel step across a tile border and the steps in the 32
columns/rows beside it, then the largest excess of that ratio over the untiled output's at the same
border (a horizon or a tree trunk on a border makes the first large without any seam); compute
relative to one untiled forward (FLOPs by torch.utils.flop_counter, and wall time, which is noisy
where other work shares the cores, and each method's first run, which is the one timed, builds oneDNN
primitives for its tile sizes); the measured peak of CPU tensor memory (torch.profiler) and, for
the library's methods, the computed estimate.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

import vidcycle
from vidcycle.metrics import psnr
from vidcycle.models.frames import frames_to_batch
from vidcycle.models.nets import GeneratorSpec, build_generator, pad_to_multiple
from vidcycle.runtime import stages, tiling
from vidcycle.runtime.memory import bottleneck_bytes, estimate_run, format_size, measure_peak, weight_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))
from make_samples import render_photo  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import cpu_description  # noqa: E402


class Stats:
    """An alternative norm control: fixed statistics where given (else the tile's own), and the
    moments of every layer's input over the tile core when recording."""

    def __init__(self, count):
        self.fixed, self.recording, self.tile, self.core = [None] * count, False, (1, 1), None
        self.moments = [tiling._Moments() for _ in range(count)]

    def __call__(self, index, module, x):
        if self.recording:
            self.moments[index].add(tiling._region(x, self.core, self.tile))
        if self.fixed[index] is None:
            return F.instance_norm(x, None, None, module.weight, module.bias, True, 0.0, module.eps)
        return tiling._normalise(module, x, *self.fixed[index])

    def gathered(self):
        self.fixed = [m.stats() for m in self.moments]
        self.moments = [tiling._Moments() for _ in self.moments]


class Pooled(Stats):
    """Statistics pooled over the cores of a batch of sample tiles, then fixed."""

    def __init__(self, count, cores):
        super().__init__(count)
        self.cores = cores

    def __call__(self, index, module, x):
        moments = tiling._Moments()
        for b, core in enumerate(self.cores):
            part = tiling._region(x[b:b + 1], core, self.tile)
            moments.add(part.transpose(0, 1).reshape(1, x.shape[1], -1, 1))
        self.fixed[index] = moments.stats()
        mean, var = self.fixed[index]
        return tiling._normalise(module, x, mean.expand(x.shape[0], -1), var.expand(x.shape[0], -1))


def alternative(runner, batch, tile, overlap, how):
    """One of the methods the library does not use, built from its parts."""
    chain, multiple = runner.chain, runner.multiple
    padded = pad_to_multiple(batch, multiple)
    grid = tiling._Grid(*padded.shape[-2:], tile, overlap, multiple, 8)
    control = Stats(len(chain.layers))
    with stages.route_norms(chain.layers, control), torch.inference_mode():
        if how.startswith("downscale") or how == "jacobi":
            factor = 2 if how == "jacobi" else int(how[9:])
            size = [max(multiple, round(s / factor / multiple) * multiple) for s in padded.shape[-2:]]
            control.recording = True
            stages.run(chain, 0, len(chain.stages), F.interpolate(padded, size=size, mode="area"))
            control.gathered()
            control.recording = False
        if how == "jacobi":
            control.recording = True
            tiling._sweep(chain, {0: padded}, tiling._Sweep(0, (), len(chain.stages)), grid, control, lambda *a: None)
            control.gathered()
            control.recording = False
        if how == "sample":
            control.fixed = _sampled_stats(chain, padded, grid)
        out = tiling._blend(chain, {0: padded}, 0, grid, control)
    return out[..., :batch.shape[-2], :batch.shape[-1]].to(batch.dtype)


def _sampled_stats(chain, padded, grid, fraction=0.5):
    tiles = list(grid)
    picked = [tiles[i] for i in sorted(np.random.default_rng(0).choice(len(tiles), max(1, round(fraction * len(tiles))),
                                                                     replace=False))]
    sample = torch.cat([padded[..., t:b, left:r] for _, _, (t, b, left, r), _ in picked])
    pooled = Pooled(len(chain.layers), [core for *_, core in picked])
    pooled.tile = grid.size
    with stages.route_norms(chain.layers, pooled):
        stages.run(chain, 0, len(chain.stages), sample)
    return pooled.fixed


def to8(t):
    """A [-1, 1] tensor as the uint8 levels a frame would get (PSNR is on those, not on the floats)."""
    return ((t.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def seam_ratios(out, rows, cols):
    """Per border: mean |step| across it over the mean |step| in the 32 columns (rows) beside it."""
    image = ((out[0].float() + 1) * 127.5).round()
    ratios = []
    for picture, borders in ((image, cols), (image.transpose(1, 2), rows)):
        steps = (picture[..., 1:] - picture[..., :-1]).abs().mean(dim=(0, 1))
        for border in borders:
            beside = [c for c in range(border - 17, border + 16) if 0 <= c < steps.numel() and c + 1 not in borders]
            ratios.append((steps[border - 1] / steps[beside].mean()).item())
    return np.array(ratios)


def measured(fn):
    """(output, FLOPs, seconds, peak bytes) of one run."""
    start = time.perf_counter()
    with FlopCounterMode(display=False) as counter:
        out, peak = measure_peak(fn)
    return out, counter.get_total_flops(), time.perf_counter() - start, peak


def load(name, dtype):
    if name == "demo":
        precision = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
        return vidcycle.load_model("demo-summer2winter", device="cpu", precision=precision).generator
    blocks, ngf = (int(v) for v in name[len("resnet"):].split("-"))
    torch.manual_seed(0)
    return build_generator(GeneratorSpec(n_blocks=blocks, ngf=ngf)).eval().to(dtype)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--size", default="768x432")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--methods", choices=["all", "exact", "kept"], default="all")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default); 1 gives steadier "
                        "times on a shared machine, where every parallel op waits for both cores")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    width, height = (int(v) for v in args.size.split("x"))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}, "
          f"cpu: {cpu_description()}")
    net = load(args.model, dtype)
    runner = tiling.TiledRunner(net)
    frame = render_photo(7, "summer", (width, height))
    batch = frames_to_batch(torch.from_numpy(frame)[None], dtype)
    held = batch.nbytes + weight_bytes(net, dtype)
    with torch.inference_mode():
        net(batch)  # warm-up: oneDNN primitives for this size
        reference, flops, seconds, peak = measured(lambda: net(batch))
    estimate = estimate_run(runner, batch.shape, dtype)
    print(f"{args.model} {args.precision} {width}x{height}, tile {args.tile}: untiled {flops / 2e9:.1f} GMAC "
          f"{seconds:.1f} s, peak {format_size(peak + held)} (estimate {format_size(estimate)})")
    print(f"{'method (overlap)':38s} {'PSNR dB':>8s} {'seam %, excess':>17s} {'FLOPs x':>8s} {'(plan)':>6s} {'time x':>7s} "
          f"{'peak':>10s} {'estimate':>10s}")
    for name, keep, how in methods(args.methods, bottleneck_bytes(runner, batch.shape, dtype)):
        schedule = runner.schedule(batch.shape, batch.element_size(), keep)
        overlap = runner.overlap(schedule)
        if how:
            run = lambda: alternative(runner, batch, args.tile, overlap, how)  # noqa: E731
            estimate = predicted = None
        else:
            run = lambda: runner(batch, args.tile, overlap, keep)  # noqa: E731
            estimate = estimate_run(runner, batch.shape, dtype, "cpu", args.tile, overlap, keep)
            predicted = schedule.cost * runner.overhead(batch.shape, args.tile, overlap)
        out, f, s, p = measured(run)
        rows, cols = runner.seams(batch, args.tile, overlap, keep)
        tiled, whole = seam_ratios(out, rows, cols), seam_ratios(reference, rows, cols)
        seam = f"{100 * np.abs(tiled - 1).max():5.1f} {100 * np.abs(tiled - whole).max():5.1f}"
        print(f"{name + f' ({overlap})':38s} {psnr(to8(out), to8(reference)):8.2f} {seam:>17s} {f / flops:8.2f} "
              f"{f'{predicted:6.2f}' if predicted else '     -'} {s / seconds:7.2f} {format_size(p + held):>10s} "
              f"{format_size(estimate) if estimate else '-':>10s}", flush=True)


def methods(which, stream):
    kept = [("exact, keep 2 (between blocks)", 2 * stream, None), ("exact, keep 4 (inside blocks)", 4 * stream, None)]
    if which == "kept":
        return kept
    if which == "exact":
        return [("exact, keep nothing", 0, None)] + kept
    return [("own tile stats", 0, "local"), ("downscaled x4", 0, "downscale4"), ("downscaled x2", 0, "downscale2"),
            ("pooled 50% of tiles", 0, "sample"), ("x2 + 1 Jacobi sweep", 0, "jacobi"),
            ("exact, keep nothing", 0, None)] + kept


if __name__ == "__main__":
    main()
