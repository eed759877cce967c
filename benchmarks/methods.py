"""CycleGAN, CUT and FastCUT side by side: training speed and memory, and what each learns.

    python benchmarks/methods.py speed [--steps 6]
    python benchmarks/methods.py quality --minutes 40 --work DIR [--threads 1] [--slots 2]
    python benchmarks/methods.py report --work DIR

speed: seconds per iteration of each method's step at the 128-px config (recipes/cyclegan128,
cut128, fastcut128), in the precision `vidcycle train` picks here and in fp32. The steps take turns
one by one in one process, so other load falls on all alike; reported are medians and each method's
iterations per second over CycleGAN's. Peak memory: each (method, precision) in a child process that
builds the nets and runs three steps; the figure is its peak RSS less its RSS before the nets existed.

quality: the paired season benchmark of benchmarks/quality.py (400 unpaired summer and winter
training photos from seeds 1000 on, 40 paired test scenes from seed 900000 on). First each method's
s/it is measured with --threads threads, in turns; then each gets --minutes of that machine time as
an iteration budget (the schedule is half constant, half decay, so every run ends decayed). A
second leg trains CUT and FastCUT for CycleGAN's number of iterations (same iterations). The runs
go --slots at a time, each with --threads threads; the budgets are iterations, so the outcome does
not depend on what else ran, and the elapsed time of each run is reported beside it.

report: `vidcycle eval` on the test pairs (PSNR, SSIM, Lab delta E against the winter truth, with
the identity and Reinhard baselines) and the flicker (`vidcycle eval-video`'s warping error) of each
model on samples/summer_clip.mp4.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `vidcycle train` runs

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_description  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"cyclegan": "cyclegan128", "cut": "cut128", "fastcut": "fastcut128"}
SAME_DATA = {"data.keep_aspect": "true"}  # the 16:9 photos at their shape, for every method alike
TRAIN_SEED, TRAIN_PHOTOS, TRAIN_SIZE, TEST_SEED, TEST_PHOTOS = 1000, 400, (320, 180), 900_000, 40


# ---------------------------------------------------------------- speed and memory

def method_step(method: str, dtype_name: str):
    """A closure running one training step of `method` on fresh 128-px nets and a fixed batch."""
    import torch

    from vidcycle.training.amp import Amp
    from vidcycle.training.contrastive import build_contrastive_nets, build_contrastive_optimizers, contrastive_step
    from vidcycle.training.cyclegan import ImagePool, build_nets, build_optimizers, train_step
    from vidcycle.training.recipe import load_recipe, shipped_recipes

    recipe = load_recipe(shipped_recipes()[METHODS[method]])
    dtype = default_dtype(recipe) if dtype_name == "default" else torch.float32
    amp = Amp(torch.device("cpu"), dtype)
    generator = torch.Generator().manual_seed(1)
    size = recipe.data.crop_size
    batch = {"x": torch.rand(1, 3, size, size, generator=generator) * 2 - 1,
             "y": torch.rand(1, 3, size, size, generator=generator) * 2 - 1}
    if method == "cyclegan":
        nets = build_nets(recipe)
        optimizers = build_optimizers(nets, recipe)
        pools = {"x": ImagePool(recipe.optim.pool_size, 1), "y": ImagePool(recipe.optim.pool_size, 2)}
        return lambda: train_step(nets, optimizers, pools, batch, recipe.loss, amp), dtype
    nets = build_contrastive_nets(recipe)
    optimizers = build_contrastive_optimizers(nets, recipe)
    rng = torch.Generator().manual_seed(0)
    return lambda: contrastive_step(nets, optimizers, batch, recipe, amp, rng), dtype


def default_dtype(recipe):
    import torch

    from vidcycle.runtime.device import pick_training_precision
    return pick_training_precision("auto", torch.device("cpu"), recipe.model.ngf)


def time_in_turns(columns: list, steps: int) -> dict:
    """{column: median s/it}: every column's step once per round, --steps rounds after two warm-ups."""
    made = {column: method_step(*column)[0] for column in columns}
    times = {column: [] for column in columns}
    for round_ in range(steps + 2):
        for column, step in made.items():
            start = time.perf_counter()
            step()
            if round_ >= 2:
                times[column].append(time.perf_counter() - start)
    return {column: statistics.median(values) for column, values in times.items()}


def status_mib(key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in MiB. Not ru_maxrss: Linux carries that over exec
    from the parent, so a child of a big process would report the parent's peak."""
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(key)) / 1024


def memory_child(method: str, dtype_name: str) -> None:
    import torch  # noqa: F401  (loaded before the baseline is taken)
    before = status_mib("VmRSS")
    step, _ = method_step(method, dtype_name)
    for _ in range(3):
        step()
    peak = status_mib("VmHWM")
    print(json.dumps({"peak_mib": peak - before}))


def peak_memory(method: str, dtype_name: str) -> float:
    out = subprocess.run([sys.executable, __file__, "memory-child", method, dtype_name], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def speed(args) -> dict:
    import torch

    from vidcycle.runtime.device import precision_name
    from vidcycle.training.recipe import load_recipe, shipped_recipes
    torch.set_num_threads(args.threads or torch.get_num_threads())
    print(f"CPU: {cpu_description()}; {torch.get_num_threads()} threads; torch {torch.__version__}")
    default = precision_name(default_dtype(load_recipe(shipped_recipes()["cyclegan128"])))
    columns = [(method, dtype) for dtype in ("default", "fp32") for method in METHODS]
    medians = time_in_turns(columns, args.steps)
    print(f"\n128-px config, batch 1, {args.steps} steps each in turns (median); default precision here: {default}")
    print(f"{'method':<9} {'precision':<9} {'s/it':>7} {'it/s vs cyclegan':>17} {'peak MiB':>9}")
    for method, dtype in columns:
        ratio = medians[("cyclegan", dtype)] / medians[(method, dtype)]
        shown = default if dtype == "default" else "fp32"
        memory = peak_memory(method, dtype)
        print(f"{method:<9} {shown:<9} {medians[(method, dtype)]:>7.3f} {ratio:>16.2f}x {memory:>9.0f}", flush=True)
    return {f"{m}/{d}": s for (m, d), s in medians.items()}


# ---------------------------------------------------------------- quality at equal time

def render_sets(work: Path) -> None:
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_samples", ROOT / "samples" / "make_samples.py")
    samples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(samples)
    if not (work / "test" / "winter").is_dir():
        samples.make_set(work / "test", TEST_PHOTOS, 0, TEST_SEED, TRAIN_SIZE, 0, 24, paired=True, fmt="png")
    if not (work / "train" / "winter").is_dir():
        samples.make_set(work / "train", TRAIN_PHOTOS, 0, TRAIN_SEED, TRAIN_SIZE, 0, 24, paired=False, fmt="png")


def planned_runs(seconds: dict, minutes: float) -> list[dict]:
    """The runs: each method for `minutes` of its measured s/it, then CUT and FastCUT for CycleGAN's
    iterations."""
    budget = {m: max(2, int(minutes * 60 / seconds[m])) for m in METHODS}
    runs = [{"label": f"{m} {minutes:g} min", "method": m, "iterations": budget[m]} for m in METHODS]
    runs += [{"label": f"{m} {budget['cyclegan']} it", "method": m, "iterations": budget["cyclegan"]}
             for m in ("cut", "fastcut")]
    return runs


def train_command(run: dict, work: Path) -> list[str]:
    name = run["label"].replace(" ", "-")
    half = run["iterations"] // 2
    sets = {**SAME_DATA, "schedule.iterations": half, "schedule.iterations_decay": run["iterations"] - half,
            "schedule.checkpoint_every": max(1, run["iterations"] // 4), "schedule.log_every": 25}
    command = [sys.executable, "-m", "vidcycle", "train", "--x", str(work / "train" / "summer"),
               "--y", str(work / "train" / "winter"), "--recipe", METHODS[run["method"]],
               "--name", f"bench-{name}", "--out", str(work / "runs" / name), "--overwrite"]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    return command


def quality(args) -> None:
    import torch
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["VIDCYCLE_HOME"] = str(work / "home")
    print(f"CPU: {cpu_description()}", flush=True)
    render_sets(work)
    torch.set_num_threads(args.threads)
    seconds = {m: s for (m, _), s in time_in_turns([(m, "default") for m in METHODS], args.steps).items()}
    runs = planned_runs(seconds, args.minutes)
    for run in runs:
        run["s_per_it"] = seconds[run["method"]]
    print(f"s/it with {args.threads} thread(s): " + ", ".join(f"{m} {s:.3f}" for m, s in seconds.items()))
    print("plan: " + "; ".join(f"{r['label']}: {r['iterations']} iterations" for r in runs), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    waiting, running = list(runs), []
    while waiting or running:
        while waiting and len(running) < args.slots:
            run = waiting.pop(0)
            log = open(work / f"{run['label'].replace(' ', '-')}.log", "w")
            running.append((run, subprocess.Popen(train_command(run, work), env=env, stdout=log, stderr=log),
                            time.time()))
        time.sleep(5)
        for item in list(running):
            run, process, started = item
            if process.poll() is not None:
                run["elapsed_min"], run["rc"] = (time.time() - started) / 60, process.returncode
                print(f"{run['label']}: exit {process.returncode} after {run['elapsed_min']:.1f} min", flush=True)
                running.remove(item)
    (work / "runs.json").write_text(json.dumps(runs, indent=2))


def report(args) -> None:
    from vidcycle.cli.evaluate import format_report
    from vidcycle.quality.evaluation import evaluate
    from vidcycle.quality.flicker import measure_flicker
    from vidcycle.apply.jobs import ApplyOptions, translate_inputs

    work = args.work.resolve()
    os.environ["VIDCYCLE_HOME"] = str(work / "home")
    print(f"CPU: {cpu_description()}")
    runs = json.loads((work / "runs.json").read_text())
    clip = ROOT / "samples" / "summer_clip.mp4"
    rows = []
    for run in runs:
        name = f"bench-{run['label'].replace(' ', '-')}"
        result = evaluate(name, work / "test" / "summer", work / "test" / "winter", y_train=work / "train" / "winter")
        translated = work / f"{name}.mp4"
        if not translated.exists():
            translate_inputs([clip], translated, name, ApplyOptions())
        flicker = measure_flicker(clip, translated)
        rows.append((run, result, flicker))
        print(f"\n== {run['label']}: {run['iterations']} iterations, {run.get('elapsed_min', 0):.1f} min\n"
              + format_report(result))
    print(f"\n{'run':<22} {'iters':>6} {'min':>5} {'PSNR':>6} {'SSIM':>6} {'dE':>6} {'flicker excess x1e4':>20}")
    for run, result, flicker in rows:
        model = result.as_dict()["metrics"]["model"]
        print(f"{run['label']:<22} {run['iterations']:>6} {run.get('elapsed_min', 0):>5.1f} {model['psnr']:>6.2f} "
              f"{model['ssim']:>6.3f} {model['delta_e']:>6.2f} {flicker.error.excess * 1e4:>20.2f}")
    baselines = rows[0][1].as_dict()["metrics"]
    for key in ("identity", "reinhard"):
        print(f"{key:<22} {'':>6} {'':>5} {baselines[key]['psnr']:>6.2f} {baselines[key]['ssim']:>6.3f} "
              f"{baselines[key]['delta_e']:>6.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("speed", "quality", "report", "memory-child"))
    parser.add_argument("child", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0, help="threads per run (speed: default all)")
    parser.add_argument("--minutes", type=float, default=40)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vidcycle-methods"))
    args = parser.parse_args()
    if args.mode == "memory-child":
        return memory_child(*args.child)
    if args.mode == "quality":
        args.threads = args.threads or 1
    {"speed": speed, "quality": quality, "report": report}[args.mode](args)


if __name__ == "__main__":
    main()
