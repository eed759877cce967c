"""Winograd's 3x3 convolutions (vidcycle/runtime/winograd.py) against torch's, forward and backward, in
float32 on this CPU: one convolution at the sizes training runs, then whole generators.

    python benchmarks/winograd_speed.py [--reps 20]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/winograd_speed.py

The second line makes an AVX-512 machine an AVX2-only CPU (oneDNN's convolutions, ATen's kernels and
MKL's matrix products alike), the kind `vidcycle train` gives Winograd's convolutions to. The two take
turns call by call, so load from other processes falls on both alike, and each call finds the caches
holding the other's data, as a convolution does inside a training step; reported: the median of --reps
calls after three warm-up ones, and Winograd's time over torch's; then the ratio again with --reps calls
of each back to back (warm caches, the best case). The training step itself: train_speed.py.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from machine import cpu_description  # noqa: E402
from vidcycle.models.nets import GeneratorSpec, ResnetGenerator  # noqa: E402
from vidcycle.runtime.device import precision_name  # noqa: E402
from vidcycle.runtime.winograd import min_channels, use_winograd, winograd_conv3x3, winograd_pays  # noqa: E402

CONVOLUTIONS = ((2, 256, 32), (1, 256, 32), (2, 128, 32), (2, 256, 64))   # batch, channels, side of the output
GENERATORS = ((16, 6, 128), (32, 6, 128), (64, 6, 128), (64, 9, 256))     # ngf, blocks, crop; batch 2


def in_turns(runs: dict, reps: int) -> dict:
    """{label: median seconds} of each callable, called in turns."""
    for run in runs.values():
        for _ in range(3):
            run()
    times = {label: [] for label in runs}
    for _ in range(reps):
        for label, run in runs.items():
            times[label].append(timed(run))
    return {label: statistics.median(values) for label, values in times.items()}


def back_to_back(runs: dict, reps: int) -> dict:
    """{label: median seconds} of each callable, called `reps` times in a row after three warm-up calls."""
    medians = {}
    for label, run in runs.items():
        for _ in range(3):
            run()
        medians[label] = statistics.median(timed(run) for _ in range(reps))
    return medians


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def row(label: str, runs: dict, reps: int, scale: float, digits: int) -> None:
    turns, warm = in_turns(runs, reps), back_to_back(runs, reps)
    print(f"{label:<34} {turns['torch'] * scale:>9.{digits}f} {turns['winograd'] * scale:>12.{digits}f} "
          f"{turns['winograd'] / turns['torch']:>5.2f}x {warm['winograd'] / warm['torch']:>11.2f}x", flush=True)


def forward_backward(convolution, x, weight, bias, upstream):
    def run():
        torch.autograd.grad(convolution(x, weight, bias), (x, weight, bias), upstream)
    return run


def convolution_table(reps: int) -> None:
    print(f"{'one convolution, fwd + bwd':<34} {'torch ms':>9} {'Winograd ms':>12} {'ratio':>6} {'back to back':>12}")
    generator = torch.Generator().manual_seed(0)
    for batch, channels, side in CONVOLUTIONS:
        x = torch.randn(batch, channels, side + 2, side + 2, generator=generator, requires_grad=True)
        weight = torch.randn(channels, channels, 3, 3, generator=generator, requires_grad=True)
        bias = torch.randn(channels, generator=generator, requires_grad=True)
        upstream = torch.randn(batch, channels, side, side, generator=generator)
        runs = {"torch": forward_backward(F.conv2d, x, weight, bias, upstream),
                "winograd": forward_backward(winograd_conv3x3, x, weight, bias, upstream)}
        row(f"N {batch}, C {channels}, {side}x{side}", runs, reps, 1e3, 1)


def generator_table(reps: int) -> None:
    print(f"{'generator fwd + bwd, batch 2':<34} {'torch ms':>9} {'Winograd ms':>12} {'ratio':>6} {'back to back':>12}")
    for ngf, blocks, crop in GENERATORS:
        torch.manual_seed(0)
        plain = ResnetGenerator(GeneratorSpec(ngf=ngf, n_blocks=blocks))
        converted = ResnetGenerator(GeneratorSpec(ngf=ngf, n_blocks=blocks))
        converted.load_state_dict(plain.state_dict())
        use_winograd(converted, floor=1)  # every 3x3 block convolution, narrow or not (training: min_channels())
        x = torch.rand(2, 3, crop, crop) * 2 - 1

        def step(net):
            def run():
                net.zero_grad()
                net(x).mean().backward()
            return run
        row(f"{blocks} blocks, ngf {ngf}, {crop} px", {"torch": step(plain), "winograd": step(converted)},
            max(3, reps // 4), 1e3, 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20, help="timed calls of each convolution (a quarter for "
                                                              "the generators, at least 3)")
    args = parser.parse_args()
    print(cpu_description())
    print(f"torch {torch.__version__}, kernels {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads; `vidcycle train` uses Winograd's here in float32: "
          f"{winograd_pays(torch.device('cpu'), torch.float32)} ({precision_name(torch.float32)} only), "
          f"from {min_channels()} channels", flush=True)
    convolution_table(args.reps)
    generator_table(args.reps)


if __name__ == "__main__":
    main()
