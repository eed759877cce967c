"""Winograd's 3x3 convolutions (vidcycle/runtime/winograd.py) against torch's, forward and backward, in
float32 on this CPU: one convolution at the sizes training runs, then whole generators.

    python benchmarks/winograd_speed.py [--reps 20] [--frames-only]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/winograd_speed.py

The second line makes an AVX-512 machine an AVX2-only CPU (oneDNN's convolutions, ATen's kernels and
MKL's matrix products alike), the kind `vidcycle train` gives Winograd's convolutions to. The two take
turns call by call, so load from other processes falls on both alike, and each call finds the caches
holding the other's data, as a convolution does inside a training step; reported: the median of --reps
calls after three warm-up ones, and Winograd's time over torch's, with its transforms in the C kernels
(`winograd_kernels.c`, where a compiler built them) and as torch operations ("torch ops", where none
did); then the first ratio again with --reps calls of each back to back (warm caches, the best case).
The training step itself: train_speed.py.

Last, the forward alone without autograd, as frames are translated: torch's, Winograd's in bands of
tile rows (what runs without autograd) and Winograd's over the whole batch at once (the bands made
as big as the batch), in turns; `vidcycle apply` lets its OpenMP threads sleep between operations, so
prefix OMP_WAIT_POLICY=PASSIVE to time what it runs.
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
from vidcycle.runtime import native, winograd  # noqa: E402
from vidcycle.runtime.winograd import min_channels, use_winograd, winograd_conv3x3, winograd_pays  # noqa: E402

CONVOLUTIONS = ((2, 256, 32), (1, 256, 32), (2, 128, 32), (2, 256, 64))   # batch, channels, side of the output
GENERATORS = ((16, 6, 128), (32, 6, 128), (64, 6, 128), (64, 9, 256))     # ngf, blocks, crop; batch 2
FRAMES = ((2, 256, 32, 32), (4, 256, 32, 32), (2, 256, 64, 64), (1, 256, 90, 160), (1, 256, 180, 320),
          (1, 128, 180, 320))   # batch, channels, output height and width: crops, then 640x360 and 1280x720 frames


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


def without_kernels(run):
    """`run` with Winograd's transforms as torch operations, as where no C compiler builds the kernels."""
    def plain():
        kept, winograd.fused_transforms = winograd.fused_transforms, lambda: None
        try:
            run()
        finally:
            winograd.fused_transforms = kept
    return plain


def row(label: str, runs: dict, reps: int, scale: float, digits: int) -> None:
    turns, warm = in_turns(runs, reps), back_to_back(runs, reps)
    print(f"{label:<34} {turns['torch'] * scale:>9.{digits}f} {turns['winograd'] * scale:>12.{digits}f} "
          f"{turns['winograd'] / turns['torch']:>5.2f}x {turns['torch ops'] / turns['torch']:>9.2f}x "
          f"{warm['winograd'] / warm['torch']:>11.2f}x", flush=True)


HEADER = f"{'torch ms':>9} {'Winograd ms':>12} {'ratio':>6} {'torch ops':>10} {'back to back':>12}"


def forward_backward(convolution, x, weight, bias, upstream):
    def run():
        torch.autograd.grad(convolution(x, weight, bias), (x, weight, bias), upstream)
    return run


def convolution_table(reps: int) -> None:
    print(f"{'one convolution, fwd + bwd':<34} {HEADER}")
    generator = torch.Generator().manual_seed(0)
    for batch, channels, side in CONVOLUTIONS:
        x = torch.randn(batch, channels, side + 2, side + 2, generator=generator, requires_grad=True)
        weight = torch.randn(channels, channels, 3, 3, generator=generator, requires_grad=True)
        bias = torch.randn(channels, generator=generator, requires_grad=True)
        upstream = torch.randn(batch, channels, side, side, generator=generator)
        runs = {"torch": forward_backward(F.conv2d, x, weight, bias, upstream),
                "winograd": forward_backward(winograd_conv3x3, x, weight, bias, upstream),
                "torch ops": without_kernels(forward_backward(winograd_conv3x3, x, weight, bias, upstream))}
        row(f"N {batch}, C {channels}, {side}x{side}", runs, reps, 1e3, 1)


def generator_table(reps: int) -> None:
    print(f"{'generator fwd + bwd, batch 2':<34} {HEADER}")
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
        row(f"{blocks} blocks, ngf {ngf}, {crop} px", {"torch": step(plain), "winograd": step(converted),
                                                       "torch ops": without_kernels(step(converted))},
            max(3, reps // 4), 1e3, 0)


def frames_table(reps: int) -> None:
    print(f"{'one convolution, forward, no autograd':<38} {'torch ms':>9} {'bands':>7} {'whole batch':>12} "
          f"{'bands, torch ops':>17}")
    generator = torch.Generator().manual_seed(0)
    for batch, channels, height, width in FRAMES:
        x = torch.randn(batch, channels, height + 2, width + 2, generator=generator)
        weight = torch.randn(channels, channels, 3, 3, generator=generator)
        bias = torch.randn(channels, generator=generator)
        kernels = winograd.transformed_filters(weight)

        def in_bands(size):
            def run():
                kept, winograd.BAND_TILE_CHANNELS = winograd.BAND_TILE_CHANNELS, size
                try:
                    winograd.convolve_transformed(x, kernels, bias)
                finally:
                    winograd.BAND_TILE_CHANNELS = kept
            return run
        with torch.inference_mode():
            medians = in_turns({"torch": lambda: F.conv2d(x, weight, bias),
                                "bands": in_bands(winograd.BAND_TILE_CHANNELS), "whole": in_bands(1 << 62),
                                "torch ops": without_kernels(in_bands(winograd.BAND_TILE_CHANNELS))},
                               max(3, reps // 2))
        print(f"{f'N {batch}, C {channels}, {height}x{width}':<38} {medians['torch'] * 1e3:>9.1f} "
              f"{medians['bands'] / medians['torch']:>6.2f}x {medians['whole'] / medians['torch']:>11.2f}x "
              f"{medians['torch ops'] / medians['torch']:>16.2f}x",
              flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20, help="timed calls of each convolution (a quarter for "
                                                              "the generators, at least 3)")
    parser.add_argument("--frames-only", action="store_true", help="only the forward without autograd")
    args = parser.parse_args()
    print(cpu_description())
    print(f"torch {torch.__version__}, kernels {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads; `vidcycle train` uses Winograd's here in float32: "
          f"{winograd_pays(torch.device('cpu'), torch.float32)} ({precision_name(torch.float32)} only), "
          f"from {min_channels()} channels; C kernels: {winograd.fused_transforms() is not None} "
          f"({native.c_compiler()} {' '.join(native.build_flags())})", flush=True)
    if not args.frames_only:
        convolution_table(args.reps)
        generator_table(args.reps)
    frames_table(args.reps)


if __name__ == "__main__":
    main()
