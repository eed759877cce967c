"""Strided and transposed convolutions: torch's own against `runtime/channels_last.py` (oneDNN's
channels-last result transposed back to NCHW by a C kernel), in turns in one process.

    python benchmarks/strided_speed.py [--reps 15] [--threads 2]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/strided_speed.py

Training rows: forward and backward (the input's, weight's and bias's gradients) of the 128-px CycleGAN
generator's two strided and two transposed 3 x 3 layers at the batches a training step runs them (2: the
real image and the identity term's; 1: the cycle pass). Frame rows: the forward alone without autograd,
as `vidcycle apply`'s torch engine and the sample grids run them: a 9-block ngf-64 generator's transposed
layers at 640 x 360, a grid's batch of 4 at 128 px, a 32-wide student's at 640 x 360. Each figure is the
median of --reps calls, the two kinds alternating; the largest difference from torch's result (values and
gradients, relative to their largest magnitude) is printed beside it.
"""

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from machine import cpu_description  # noqa: E402
from winograd_speed import in_turns  # noqa: E402
from vidcycle.runtime.channels_last import use_channels_last_results  # noqa: E402

TRAINING = [  # (label, transposed, in channels, out channels, input side)
    ("stride 2, 64 -> 128 from 128", False, 64, 128, 128),
    ("stride 2, 128 -> 256 from 64", False, 128, 256, 64),
    ("transposed, 256 -> 128 from 32", True, 256, 128, 32),
    ("transposed, 128 -> 64 from 64", True, 128, 64, 64),
]
FRAMES = [  # (label, batch, in channels, out channels, input height, width): transposed, no autograd
    ("9x64 teacher, 256 -> 128 from 90x160", 1, 256, 128, 90, 160),
    ("9x64 teacher, 128 -> 64 from 180x320", 1, 128, 64, 180, 320),
    ("sample grid, 128 -> 64 from 64x64", 4, 128, 64, 64, 64),
    ("32-wide student, 64 -> 32 from 180x320", 1, 64, 32, 180, 320),
]


def layer(transposed: bool, in_channels: int, out_channels: int) -> nn.Module:
    if transposed:
        return nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)
    return nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)


def milliseconds(seconds: dict) -> dict:
    return {label: value * 1e3 for label, value in seconds.items()}


def largest_difference(a, b) -> float:
    return max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b))


def training_row(transposed, in_channels, out_channels, side, batch, reps):
    plain = layer(transposed, in_channels, out_channels)
    converted = copy.deepcopy(plain)
    use_channels_last_results(converted)
    x = torch.randn(batch, in_channels, side, side, requires_grad=True)
    upstream = torch.randn_like(plain(x))

    def step(net):
        return lambda: torch.autograd.grad(net(x), [x, *net.parameters()], upstream)
    times = milliseconds(in_turns({"torch": step(plain), "channels-last": step(converted)}, reps))
    difference = largest_difference(step(converted)(), step(plain)())
    return times, difference


def frame_row(batch, in_channels, out_channels, height, width, reps):
    plain = layer(True, in_channels, out_channels)
    converted = copy.deepcopy(plain)
    use_channels_last_results(converted)
    x = torch.randn(batch, in_channels, height, width)
    with torch.no_grad():
        times = milliseconds(in_turns({"torch": lambda: plain(x), "channels-last": lambda: converted(x)}, reps))
        difference = largest_difference([converted(x)], [plain(x)])
    return times, difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(cpu_description(), f"; {args.threads} threads", flush=True)
    print(f"{'forward and backward, float32':<44} {'torch ms':>9} {'chan-last ms':>13} {'ratio':>6} {'max diff':>9}")
    totals = [0.0, 0.0]
    for batch in (2, 1):
        for label, transposed, in_channels, out_channels, side in TRAINING:
            times, difference = training_row(transposed, in_channels, out_channels, side, batch, args.reps)
            totals[0] += times["torch"]
            totals[1] += times["channels-last"]
            print(f"{f'batch {batch}, {label}':<44} {times['torch']:>9.2f} {times['channels-last']:>13.2f} "
                  f"{times['channels-last'] / times['torch']:>6.2f} {difference:>9.1e}", flush=True)
    print(f"{'one generator, both batches':<44} {totals[0]:>9.2f} {totals[1]:>13.2f} {totals[1] / totals[0]:>6.2f}")
    print(f"{'forward, no autograd, float32':<44} {'torch ms':>9} {'chan-last ms':>13} {'ratio':>6} {'max diff':>9}")
    for label, batch, in_channels, out_channels, height, width in FRAMES:
        times, difference = frame_row(batch, in_channels, out_channels, height, width, args.reps)
        print(f"{f'batch {batch}, {label}':<44} {times['torch']:>9.2f} {times['channels-last']:>13.2f} "
              f"{times['channels-last'] / times['torch']:>6.2f} {difference:>9.1e}", flush=True)


if __name__ == "__main__":
    main()
