"""Seconds per iteration of shipped CycleGAN recipes' steps on this CPU, as `vidcycle train` runs them (the
precision `auto` picks, Winograd's and the tap products where training uses them, freed memory kept),
the recipes in turns: what a `--time` budget buys with each.

    python benchmarks/recipe_steps.py [--recipes cyclegan,cyclegan128,cyclegan128-budget] [--reps 4]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/recipe_steps.py
    python benchmarks/recipe_steps.py --every-call [--recipes cyclegan128,cyclegan128-budget] [--reps 8]

`cyclegan` is the paper's own settings (256-px crops, 9 blocks), what a `--time` run with no recipe
trained before it took `cyclegan128-budget` on a CPU. Reported: the median of --reps steps after three
warm-up ones, each recipe's step in turn with the others', and iterations per 40 minutes at that rate.
--every-call: each recipe's float32 step also with Winograd's weights transformed at every call instead
of once a step (`filters_shared`, as training does), in the same turns, and shared / every call (only
where training uses Winograd's, float32 on an AVX2 CPU or an Intel AVX-512 one, is there a difference).
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
from vidcycle.runtime.device import pick_training_precision, precision_name  # noqa: E402
from vidcycle.training.recipe import load_recipe, shipped_recipes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", default="cyclegan,cyclegan128,cyclegan128-budget")
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--every-call", action="store_true", help="also the float32 steps without shared weights")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as every training run does
    print(cpu_description(), f"; {args.threads} threads", flush=True)
    steps, precisions = {}, {}
    for name in args.recipes.split(","):
        recipe = load_recipe(shipped_recipes()[name])
        dtype = torch.float32 if args.every_call else pick_training_precision("auto", torch.device("cpu"),
                                                                                recipe.model.ngf)
        steps[name], precisions[name] = make_step(recipe, dtype, False), precision_name(dtype)
        if args.every_call:
            steps[f"{name} every call"] = make_step(recipe, dtype, False, shared_filters=False)
            precisions[f"{name} every call"] = precisions[name]
    medians = in_turns(steps, args.reps)
    for name, seconds in medians.items():
        print(f"{name:<31} {precisions[name]:>5} {seconds:7.3f} s/it  {2400 / seconds:7.0f} iterations in 40 min",
              flush=True)
    for name in args.recipes.split(",") if args.every_call else ():
        print(f"{name}: shared / every call {medians[name] / medians[f'{name} every call']:.3f}", flush=True)


if __name__ == "__main__":
    main()
