"""Convolutions with few filters by tap products (vidcycle/runtime/few_filters.py) against torch's, in float32
on this CPU: each layer forward and backward and forward alone, then the training step with and without.

    python benchmarks/few_filters_speed.py [--reps 20] [--steps 8] [--recipe cyclegan128]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/few_filters_speed.py

The second line makes an AVX-512 machine an AVX2-only CPU. The layers: a generator's RGB output (64 or
32 channels to 3, 7x7, on its reflection-padded input) at the crops training runs, a PatchGAN's one-score
head, and 6 filters (where torch's kernels fill and the taps lose). Torch's and the taps take turns call by
call; reported: the median of --reps calls after three warm-up ones, and the taps' time over torch's.
The step: `vidcycle train`'s CycleGAN step in float32 (train_speed.py's), Winograd's convolutions in
both, the tap products in one, in turns step by step after two warm-up steps, with freed memory kept as
training keeps it; the median of --steps and the median of the per-pair ratios.
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from machine import cpu_description  # noqa: E402
from winograd_speed import in_turns, timed  # noqa: E402
from vidcycle.runtime import convolutions  # noqa: E402
from vidcycle.runtime.allocator import keep_freed_memory  # noqa: E402
from vidcycle.runtime.few_filters import few_filters_conv2d  # noqa: E402

LAYERS = (  # label, batch, channels, filters, kernel, padding, input side
    ("RGB output, 128-px step (batch 2)", 2, 64, 3, 7, 0, 134),
    ("RGB output, 128-px cycle pass (batch 1)", 1, 64, 3, 7, 0, 134),
    ("RGB output, 256-px crop", 1, 64, 3, 7, 0, 262),
    ("RGB output, ngf 32, 128 px (batch 2)", 2, 32, 3, 7, 0, 134),
    ("PatchGAN head, 128 px (batch 2)", 2, 512, 1, 4, 1, 15),
    ("6 filters (not converted)", 2, 64, 6, 7, 0, 134),
)


def layer_table(reps: int) -> None:
    print(f"{'layer':<42} {'torch ms':>9} {'taps ms':>8} {'ratio':>6} {'fwd torch':>9} {'fwd taps':>8} {'ratio':>6}")
    generator = torch.Generator().manual_seed(0)
    for label, batch, channels, filters, kernel, padding, side in LAYERS:
        x = torch.randn(batch, channels, side, side, generator=generator, requires_grad=True)
        weight = (torch.randn(filters, channels, kernel, kernel, generator=generator) * 0.01).requires_grad_()
        bias = torch.zeros(filters, requires_grad=True)
        out_side = side + 2 * padding - kernel + 1
        upstream = torch.randn(batch, filters, out_side, out_side, generator=generator)
        both = in_turns({"torch": lambda: F.conv2d(x, weight, bias, padding=padding).backward(upstream),
                         "taps": lambda: few_filters_conv2d(x, weight, bias, (padding, padding)).backward(upstream)},
                        reps)
        with torch.no_grad():
            forward = in_turns({"torch": lambda: F.conv2d(x, weight, bias, padding=padding),
                                "taps": lambda: few_filters_conv2d(x, weight, bias, (padding, padding))}, reps)
        print(f"{label:<42} {both['torch'] * 1e3:9.1f} {both['taps'] * 1e3:8.1f} {both['taps'] / both['torch']:5.2f}x"
              f" {forward['torch'] * 1e3:9.1f} {forward['taps'] * 1e3:8.1f} {forward['taps'] / forward['torch']:5.2f}x")


def step_table(recipe_name: str, steps: int) -> None:
    import train_speed
    from vidcycle.training.recipe import load_recipe, shipped_recipes

    recipe = load_recipe(shipped_recipes()[recipe_name])
    pays = convolutions.few_filters_pay
    convolutions.few_filters_pay = lambda device, dtype: False
    runs = {"Winograd's only": train_speed.make_step(recipe, torch.float32, False)}
    convolutions.few_filters_pay = pays
    runs["Winograd's and the tap products"] = train_speed.make_step(recipe, torch.float32, False)
    times = {label: [] for label in runs}
    for n in range(steps + 2):
        for label, run in (runs.items() if n % 2 == 0 else reversed(runs.items())):
            seconds = timed(run)
            if n >= 2:
                times[label].append(seconds)
    print(f"\n{recipe_name} training step, float32   median s/it   best")
    for label, values in times.items():
        print(f"  {label:<36} {statistics.median(values):9.3f} {min(values):7.3f}")
    before, after = times.values()
    print(f"  with / without the tap products: {statistics.median(after) / statistics.median(before):.3f} "
          f"(median of the per-step ratios {statistics.median(b / a for a, b in zip(before, after)):.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--steps", type=int, default=8, help="training steps of each (0: no step table)")
    parser.add_argument("--recipe", default="cyclegan128")
    args = parser.parse_args()
    keep_freed_memory()
    print(f"CPU: {cpu_description()}; {torch.get_num_threads()} threads")
    layer_table(args.reps)
    if args.steps:
        step_table(args.recipe, args.steps)


if __name__ == "__main__":
    main()
