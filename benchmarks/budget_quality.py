"""What a user's time buys: schedules and averaged weights at equal compute, on the paired season benchmark.

    python benchmarks/budget_quality.py train --work DIR [--iterations 264] [--seeds 0,1] [--slots 2]
    python benchmarks/budget_quality.py timed --work DIR --minutes 40 [--seeds 0,1] [--set K=V --tag=-T]
    python benchmarks/budget_quality.py report --work DIR [--variants last,hl30,hl1000-r0.05]

The sets are benchmarks/methods.py's (400 unpaired summer and winter photos at 320x180 from seed 1000
on, 40 paired test scenes from seed 900000 on), the recipe the 128-px CycleGAN (recipes/cyclegan128,
keep_aspect). The budget is an iteration count (--iterations: what the machine time buys at a measured
s/it; 1055 was 40 minutes of one core of a 2-core EPYC), so the outcome does not depend on what else
ran beside it:

- cut: the paper's schedule (200 epochs, half constant) stopped by --max-steps at the budget: what a
  clock cut gives, at full learning rate;
- fitted: the schedule fitted to the budget (half constant, half decay), as --time plans it and as
  benchmarks/methods.py fitted it by hand; one run per seed;
- fitted + average HL: the same runs' generators averaged with each half-life (iterations), kept
  beside the recipe's in the same run, so the comparison with the last iterate is exact;
- timedMm: `--time M` minutes for real (the library call `vidcycle train --time` makes), one run per
  seed side by side, its iterations whatever the machine gave, the same averages kept beside it;
  --set gives the runs a recipe setting and --tag names them for it (timed40m-idt4-seed0-s2w).

Each run exports its last iterate under its own name (optim.ema_halflife 0) and each average as
NAME-hlH[-rR]; hl1000-r0.1 is the default average.

report scores each on the test pairs as `vidcycle eval` does (PSNR, SSIM, Lab delta E against the
winter truth) and its flicker on samples/summer_clip.mp4 (`vidcycle eval-video`'s warping error less
the source's), with the spread over seeds.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `vidcycle train` runs

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from machine import cpu_description  # noqa: E402
from methods import SAME_DATA, render_sets  # noqa: E402

RECIPE = "cyclegan128"
# (half-life in iterations, ramp-up): fixed half-lives, and StyleGAN2-ADA's ramped rule
AVERAGES = ((10, 0.0), (30, 0.0), (100, 0.0), (1000, 0.05), (1000, 0.1), (1000, 0.2), (3000, 0.3))


def averages_label(halflife, rampup) -> str:
    return f"hl{halflife:g}" + (f"-r{rampup:g}" if rampup else "")


# ---------------------------------------------------------------- one training run, in a child

def train_child(args) -> None:
    """A run through the library, with extra averaged generators kept beside it and exported as
    NAME-hlH models."""
    from vidcycle import train
    from vidcycle.models.store import put
    from vidcycle.training import run as run_module
    from vidcycle.training.averaging import WeightAverage
    from vidcycle.training.exports import directions
    from vidcycle.training.recipe import load_recipe, shipped_recipes
    from vidcycle.training.run_folder import run_source
    from vidcycle.training.trainer import RunOptions

    extras = {}
    primary_start = run_module.start_average

    def start_average(run, state):
        primary_start(run, state)
        extras.update({averages_label(h, r): WeightAverage(run.method.generators(), h, r) for h, r in AVERAGES})
        run.average = Both(run.average, extras)

    class Both:
        """The recipe's average (or none) and the extras, updated together."""

        def __init__(self, primary, extra):
            self.primary, self.extra = primary, extra

        def update(self, iteration):
            for average in [self.primary, *self.extra.values()]:
                if average is not None:
                    average.update(iteration)

        def state_dict(self):
            return self.primary.state_dict() if self.primary is not None else None

    real_export = run_module.export

    def export(run):
        run.average = run.average.primary
        made = real_export(run)
        for label, average in extras.items():
            names = {**run.record, "name": f"{run.record['name']}-{label}",
                     "reverse_name": f"{run.record['reverse_name']}-{label}"}
            for name, generator, info in directions(run.recipe, average.shadow, names, run_source(run.run_dir),
                                                    average.label()):
                put(name, generator, info)
        return made

    run_module.start_average, run_module.export = start_average, export
    # the run's own export is its last iterate (ema_halflife 0); the averages, the default's among them, are
    # the extras beside it
    overrides = {**SAME_DATA, **dict(setting.split("=", 1) for setting in args.set), "seed": args.seed,
                 "optim.ema_halflife": 0, "schedule.log_every": 25,
                 "schedule.checkpoint_every": max(1, args.iterations // 4),
                 "schedule.sample_every": max(1, args.iterations // 4)}
    if args.schedule == "fitted":
        overrides.update({"schedule.iterations": args.iterations // 2,
                          "schedule.iterations_decay": args.iterations - args.iterations // 2})
    recipe = load_recipe(shipped_recipes()[RECIPE], overrides)
    work = Path(args.work)
    options = RunOptions(x_inputs=[work / "train" / "summer"], y_inputs=[work / "train" / "winter"],
                         name=args.name, reverse_name=args.name.replace("s2w", "w2s"), out=work / "runs" / args.name,
                         overwrite=True, workers=1, max_steps=args.iterations if args.schedule == "cut" else None,
                         time_budget=args.minutes * 60 if args.schedule == "timed" else None)
    started = time.time()
    result = train(recipe, options)
    print(json.dumps({"name": args.name, "iterations": result.iteration, "minutes": (time.time() - started) / 60}))


def runs_planned(args) -> list[dict]:
    runs = [{"name": f"fitted-seed{seed}-s2w", "schedule": "fitted", "seed": seed} for seed in args.seeds]
    if args.cut:
        runs.append({"name": "cut-seed0-s2w", "schedule": "cut", "seed": 0})
    return runs


def train_all(args) -> None:
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["VIDCYCLE_HOME"] = str(work / "home")
    print(f"CPU: {cpu_description()}", flush=True)
    render_sets(work)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    waiting, running, done = runs_planned(args), [], []
    while waiting or running:
        while waiting and len(running) < args.slots:
            run = waiting.pop(0)
            log = open(work / f"{run['name']}.log", "w")
            command = [sys.executable, __file__, "child", "--work", str(work), "--name", run["name"], "--schedule",
                       run["schedule"], "--seed", str(run["seed"]), "--iterations", str(args.iterations)]
            running.append((run, subprocess.Popen(command, env=env, stdout=log, stderr=log), time.time()))
        time.sleep(5)
        for item in list(running):
            run, process, started = item
            if process.poll() is not None:
                run.update(rc=process.returncode, minutes=(time.time() - started) / 60, iterations=args.iterations)
                print(f"{run['name']}: exit {process.returncode} after {run['minutes']:.1f} min", flush=True)
                running.remove(item)
                done.append(run)
    _save_runs(work, done)


def timed(args) -> None:
    """Real `--time` runs (the library call `vidcycle train --time` makes), one per seed side by side, with
    the averaged generators kept beside them as in `train`."""
    work = args.work.resolve()
    os.environ["VIDCYCLE_HOME"] = str(work / "home")
    print(f"CPU: {cpu_description()}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    running = []
    for seed in args.seeds:
        name = f"timed{args.minutes:g}m{args.tag}-seed{seed}-s2w"
        log = open(work / f"{name}.log", "w")
        command = [sys.executable, __file__, "child", "--work", str(work), "--name", name, "--schedule", "timed",
                   "--seed", str(seed), "--minutes", f"{args.minutes:g}", "--iterations", str(args.iterations),
                   *(part for setting in args.set for part in ("--set", setting))]
        running.append(({"name": name, "schedule": "timed", "seed": seed}, subprocess.Popen(
            command, env=env, stdout=log, stderr=log), time.time()))
    for run, process, started in running:
        run.update(rc=process.wait(), minutes=(time.time() - started) / 60)
        print(f"{run['name']}: exit {run['rc']} after {run['minutes']:.1f} min", flush=True)
    _save_runs(work, [run for run, _, _ in running])


def _save_runs(work: Path, runs: list) -> None:
    path = work / "runs.json"
    known = {run["name"]: run for run in (json.loads(path.read_text()) if path.exists() else [])}
    known.update({run["name"]: run for run in runs})
    path.write_text(json.dumps(list(known.values()), indent=2))


# ---------------------------------------------------------------- scores

def report(args) -> None:
    from vidcycle.apply.jobs import ApplyOptions, translate_inputs
    from vidcycle.models.store import list_models
    from vidcycle.quality.evaluation import evaluate
    from vidcycle.quality.flicker import measure_flicker

    work = args.work.resolve()
    os.environ["VIDCYCLE_HOME"] = str(work / "home")
    print(f"CPU: {cpu_description()}")
    clip = ROOT / "samples" / "summer_clip.mp4"
    names = sorted(model.name for model in list_models() if "-s2w" in model.name
                   and (args.variants is None or model.name.partition("-s2w")[2].lstrip("-") in args.variants))
    saved = json.loads((work / "scores.json").read_text()) if (work / "scores.json").exists() else {}
    scores = {}
    for name in names:
        if name in saved:  # scored by an earlier report: a model's name is never reused in a work folder
            scores[name] = saved[name]
            continue
        result = evaluate(name, work / "test" / "summer", work / "test" / "winter", y_train=work / "train" / "winter")
        model = result.as_dict()["metrics"]["model"]
        translated = work / f"{name}.mp4"
        if not translated.exists():
            translate_inputs([clip], translated, name, ApplyOptions())
        flicker = measure_flicker(clip, translated).error.excess * 1e4
        scores[name] = {"psnr": model["psnr"], "ssim": model["ssim"], "delta_e": model["delta_e"], "flicker": flicker}
        print(f"{name:<40} {model['psnr']:6.2f} {model['ssim']:6.3f} {model['delta_e']:6.2f} {flicker:8.2f}", flush=True)
    (work / "scores.json").write_text(json.dumps({**saved, **scores}, indent=2))
    print("\n| variant | seeds | PSNR dB | SSIM | Lab dE76 | flicker x1e4 |\n|---|---:|---:|---:|---:|---:|")
    variants = {}
    for name, score in scores.items():
        variant = re.sub(r"-seed\d+", "", name.replace("-s2w", ""))
        variants.setdefault(variant, []).append(score)
    for variant, rows in variants.items():
        cells = []
        for key in ("psnr", "ssim", "delta_e", "flicker"):
            values = [row[key] for row in rows]
            mean = statistics.mean(values)
            spread = f" +- {(max(values) - min(values)) / 2:.2f}" if len(values) > 1 else ""
            cells.append(f"{mean:.3f}{spread}" if key == "ssim" else f"{mean:.2f}{spread}")
        print(f"| {variant} | {len(rows)} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("train", "timed", "report", "child"))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=264)
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0, 1])
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--cut", type=int, default=1, help="train: also the paper's schedule cut at the budget (1/0)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--variants", type=lambda text: ["" if v == "last" else v for v in text.split(",")],
                        help="report: only these (last, hl10, hl1000-r0.05, ...); default all")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="timed, child: a recipe setting for the runs, as `vidcycle train --set`")
    parser.add_argument("--tag", default="", help="timed: added to the runs' names after the minutes (-idt4)")
    parser.add_argument("--name"), parser.add_argument("--schedule"), parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    {"train": train_all, "timed": timed, "report": report, "child": train_child}[args.what](args)


if __name__ == "__main__":
    main()
