"""Winograd's transformed weights shared within a training step (`filters_shared`), against transforming
them at every call: the float32 CycleGAN step of shipped recipes, the two in turns in one process.

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/shared_filters.py
    python benchmarks/shared_filters.py [--recipes cyclegan128,cyclegan128-budget] [--reps 8] [--threads 2]

Only where training uses Winograd's convolutions (float32 on an AVX2 CPU, or AVX-512 on an Intel one) is
there anything to share; elsewhere both rows run the same step. Reported: the median of --reps steps after
three warm-up ones, and shared / every call.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from machine import cpu_description  # noqa: E402
from train_speed import make_step  # noqa: E402
from winograd_speed import in_turns  # noqa: E402
from vidcycle.runtime.allocator import keep_freed_memory  # noqa: E402
from vidcycle.runtime.winograd import winograd_pays  # noqa: E402
from vidcycle.training.recipe import load_recipe, shipped_recipes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", default="cyclegan128,cyclegan128-budget")
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as every training run does
    print(cpu_description(), f"; {args.threads} threads; Winograd's used in float32:",
          winograd_pays(torch.device("cpu"), torch.float32), flush=True)
    for name in args.recipes.split(","):
        recipe = load_recipe(shipped_recipes()[name])
        steps = {"every call": make_step(recipe, torch.float32, False, shared_filters=False),
                 "shared": make_step(recipe, torch.float32, False, shared_filters=True)}
        medians = in_turns(steps, args.reps)
        print(f"{name:<20} float32 every call {medians['every call']:.3f} s/it, shared {medians['shared']:.3f} s/it, "
              f"shared / every call {medians['shared'] / medians['every call']:.3f}", flush=True)


if __name__ == "__main__":
    main()
