"""Whole training runs as users start them: `vidcycle train` against a plain reference-style loop.

    python benchmarks/train_loop_speed.py [--steps 40] [--rounds 2] [--photos 200] [--variants NAME,...]
    python benchmarks/train_loop_speed.py --list
    python benchmarks/train_loop_speed.py --phases [--steps 10]

Makes --photos synthetic 160x160 PNG photos per domain (OpenCV), then runs each
variant as its own process, in turns (round 1: every variant once, round 2:
again...), so other processes' load falls on all of them alike:

  reference-4w   the reference's train.py loop (benchmarks/reference_cyclegan.py): PIL load, bicubic
                 resize to 143, random crop 128, flip, ToTensor + Normalize, a DataLoader with the
                 reference's default --num_threads 4 workers, float32, losses read every 100 iterations
  vidcycle       `vidcycle train --recipe cyclegan128 --precision fp32 --max-steps N` (sample grids,
                 checkpoint and export as a user gets them), and variants of it: the default precision,
                 the identity term on every iteration (-idt1) or every 4th (-idt4, lazy), other workers,
                 OpenMP wait policies, no grids or checkpoints until the end

Each process gets the environment this one has plus the variant's; OMP_WAIT_POLICY
and GOMP_SPINCOUNT are removed first, so "unset" means libgomp's default (spin
about 300000 turns, then sleep). Reported per variant (median over rounds): the
whole command's wall time; "start" (launch to the 5th iteration's log line, so
imports, frame gathering, net building, the first sample grid and 5
iterations); s/it between the 5th and the last logged iteration (the steady
state; both loops log every 5 iterations); "end" (last logged iteration to exit: final checkpoint, grid, export);
the CPU seconds of the process and its loader workers (user + system; spinning OpenMP
threads count too); minor page faults; and the ratios to the first variant.
Prints the CPU flags and the load average. --phases instead runs `vidcycle train`
once in this process and times its phases (setup, sample grids, steps,
checkpoints, export) in wall and CPU seconds.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_description

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOG_EVERY = 5
DEFAULT = ["-m", "vidcycle", "train", "--recipe", "cyclegan128", "--set", f"schedule.log_every={LOG_EVERY}"]
VIDCYCLE = DEFAULT + ["--precision", "fp32"]
QUIET = ["--set", "schedule.sample_every=1000", "--set", "schedule.checkpoint_every=1000"]
VARIANTS = {  # name: (command after `python`, extra environment); "{steps}" etc. are filled in
    "reference-4w": (["{self}", "--reference-loop", "--workers", "4"], {}),
    "reference-1w": (["{self}", "--reference-loop", "--workers", "1"], {}),
    "reference-0w": (["{self}", "--reference-loop", "--workers", "0"], {}),
    "vidcycle": (VIDCYCLE, {}),
    "vidcycle-default": (DEFAULT, {}),  # the precision `auto` picks on this CPU
    # the identity term on every iteration (the paper's step) or on every 4th, weighted 4 times (lazy)
    "vidcycle-idt1": (VIDCYCLE + ["--set", "loss.identity_every=1"], {}),
    "vidcycle-idt4": (VIDCYCLE + ["--set", "loss.identity_every=4"], {}),
    "vidcycle-default-idt1": (DEFAULT + ["--set", "loss.identity_every=1"], {}),
    "vidcycle-default-idt4": (DEFAULT + ["--set", "loss.identity_every=4"], {}),
    "vidcycle-quiet": (VIDCYCLE + QUIET, {}),
    "vidcycle-quiet-noexport": (VIDCYCLE + QUIET + ["--no-export"], {}),
    "vidcycle-0w": (VIDCYCLE + ["--workers", "0"], {}),
    "vidcycle-4w": (VIDCYCLE + ["--workers", "4"], {}),
    "vidcycle-active": (VIDCYCLE, {"OMP_WAIT_POLICY": "ACTIVE"}),
    "vidcycle-spin": (VIDCYCLE, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "300000"}),
    "reference-4w-passive": (["{self}", "--reference-loop", "--workers", "4"], {"OMP_WAIT_POLICY": "PASSIVE"}),
}
DEFAULT_VARIANTS = "reference-4w,vidcycle,vidcycle-quiet"


def cpu_line() -> str:
    return f"{cpu_description()}; {os.cpu_count()} CPUs"


def make_photos(folder: Path, count: int, size: int, seed: int) -> None:
    """Smooth gradients, discs and noise: PNGs that take a realistic time to decode."""
    import cv2
    import numpy as np
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(count):
        image = np.empty((size, size, 3), np.float32)
        for channel in range(3):
            a, b, f = rng.uniform(-120, 120, 3)
            image[..., channel] = (rng.uniform(0, 255) + a * cols + b * rows
                                   + 30 * np.sin(f * 1.25 * (cols + rows)))
        for _ in range(6):
            centre = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.circle(image, centre, int(rng.integers(5, size // 4)), rng.uniform(0, 255, 3).tolist(), -1)
        image += rng.normal(0, 6, image.shape)
        cv2.imwrite(str(folder / f"photo_{i:04d}.png"), np.clip(image, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------- the reference-style loop (a child process)

def reference_loop(x: str, y: str, steps: int, workers: int, log: Path, print_freq: int = 100) -> None:
    """train.py's loop: epochs of set_input + optimize_parameters, losses read every print_freq."""
    import torch
    sys.path.insert(0, str(HERE))
    from reference_cyclegan import CycleGANModel, UnalignedDataset, make_loader
    loader = make_loader(UnalignedDataset(x, y, 143, 128), batch_size=1, num_threads=workers)
    model = CycleGANModel(n_blocks=6)
    total = 0
    with open(log, "w", encoding="utf-8") as handle:
        while total < steps:
            for data in loader:
                model.set_input(data)
                model.optimize_parameters()
                total += 1
                if total % print_freq == 0:
                    print(f"iteration {total}: " + ", ".join(f"{k} {v:.3f}" for k, v in model.current_losses().items()),
                          file=sys.stderr)
                if total % LOG_EVERY == 0:
                    handle.write(json.dumps({"iteration": total, "time": time.time()}) + "\n")
                    handle.flush()
                if total >= steps:
                    break
    del torch


# ---------------------------------------------------------------- running and timing variants

def run_variant(name: str, data: Path, work: Path, steps: int, run: int) -> dict:
    command, extra = VARIANTS[name]
    out = work / f"{name}-{run}"
    log = out / "losses.jsonl" if not name.startswith("reference") else work / f"{name}-{run}.jsonl"
    args = [a.replace("{self}", str(Path(__file__).resolve())) for a in command]
    if name.startswith("reference"):
        args += ["--x", str(data / "x"), "--y", str(data / "y"), "--steps", str(steps), "--log", str(log)]
    else:
        args += ["--x", str(data / "x"), "--y", str(data / "y"), "--max-steps", str(steps), "--out", str(out),
                 "--name", f"x{run}2y{run}", "--overwrite"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(extra)
    env["VIDCYCLE_HOME"] = str(work / "home")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    done = subprocess.run([sys.executable] + args, env=env, cwd=work, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    end = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    first, last = rows[0], rows[-1]
    per_it = (last["time"] - first["time"]) / (last["iteration"] - first["iteration"])
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"total": end - start, "start": first["time"] - start, "per_it": per_it, "end": end - last["time"],
            "cpu": cpu, "faults": after.ru_minflt - before.ru_minflt}


PHASES = (("vidcycle.training.trainer", "setup"), ("vidcycle.training.run", "fit"),  # (module, function)
          ("vidcycle.training.run", "write_samples"), ("vidcycle.training.run", "checkpoint"),
          ("vidcycle.training.cyclegan", "train_step"), ("vidcycle.training.run", "finish"),
          ("vidcycle.training.averaging", "WeightAverage.update"))
LOADER = ("vidcycle.training.run", "batches_from")  # a generator: the time spent waiting in each next()


def phases(data: Path, work: Path, steps: int) -> None:
    """One `vidcycle train` in this process, timers around each phase (PHASES: the functions the run calls
    through their modules; one that no longer exists is left out). The OpenMP policy is chosen first, as the
    CLI chooses it."""
    from vidcycle.runtime.threads import prepare  # no torch yet: the policy still takes effect
    prepare("train")
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}", flush=True)
    import importlib
    spent = {}

    def timed(owner, name):
        *classes, name = name.split(".")
        for cls in classes:
            owner = getattr(owner, cls, None)
        original = getattr(owner, name, None)
        if original is None:
            return

        def wrapper(*args, **kwargs):
            start, start_cpu = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                entry = spent.setdefault(name, [0.0, 0.0, 0])
                entry[0] += time.perf_counter() - start
                entry[1] += time.process_time() - start_cpu
                entry[2] += 1
        setattr(owner, name, wrapper)
    for module, name in PHASES:
        timed(importlib.import_module(module), name)
    loader_module = importlib.import_module(LOADER[0])
    batches = getattr(loader_module, LOADER[1])

    def waited_batches(*args, **kwargs):
        items = batches(*args, **kwargs)
        while True:
            start = time.perf_counter()
            item = next(items)
            entry = spent.setdefault("loader wait", [0.0, 0.0, 0])
            entry[0] += time.perf_counter() - start
            entry[2] += 1
            yield item
    setattr(loader_module, LOADER[1], waited_batches)
    from vidcycle.cli import cli
    os.environ["VIDCYCLE_HOME"] = str(work / "home")
    start = time.perf_counter()
    cli.main(["train", "--x", str(data / "x"), "--y", str(data / "y"), *VIDCYCLE[3:], "--max-steps", str(steps),
              "--out", str(work / "phases"), "--name", "phases2run"], standalone_mode=False)
    total = time.perf_counter() - start
    print(f"{'phase':<16} {'calls':>5} {'wall s':>8} {'cpu s':>7} {'wall s/call':>11}")
    for name, (wall, cpu, calls) in spent.items():
        print(f"{name:<16} {calls:>5} {wall:>8.2f} {cpu:>7.2f} {wall / calls:>11.3f}")
    if "fit" in spent and "train_step" in spent:
        inside = spent["train_step"][0] + spent.get("checkpoint", [0.0])[0]
        grids, _, drawn = spent.get("write_samples", [0.0, 0.0, 0])
        inside += grids * max(0, drawn - 2) / max(1, drawn)  # the first grid comes before fit, the last after
        outside = (spent["fit"][0] - inside) / spent["train_step"][2]
        print(f"per iteration in fit outside train_step, grids and checkpoints (lr, batch move, logging, "
              f"progress, loader waits, the average): {outside * 1000:.1f} ms")
    print(f"whole command {total:.1f} s (CPU seconds: this process, all its threads; not the loader workers)")


def warm_store(data: Path, home: Path) -> None:
    """Probe the photos and build vidcycle's C kernels once, untimed, as a first `vidcycle train` on a machine
    would: every timed run finds them known, as a user's later runs do. Prints what the build took (a first
    run pays it once, partly beside its setup)."""
    env = {**os.environ, "VIDCYCLE_HOME": str(home), "PYTHONPATH": str(ROOT)}
    code = ("import sys, time; from vidcycle.training.framecache import SamplingConfig, gather_frames; "
            "[gather_frames([d], SamplingConfig()) for d in sys.argv[1:]]; "
            "from pathlib import Path; from vidcycle.runtime import native; started = time.perf_counter(); "
            "built = [native.load(c.stem) for c in sorted(native.SOURCES.glob('*.c'))]; "
            "print(f'C kernels: {sum(b is not None for b in built)} of {len(built)} ready in '"
            "f'{time.perf_counter() - started:.1f} s (built once per machine; the timed runs find them)')")
    subprocess.run([sys.executable, "-c", code, str(data / "x"), str(data / "y")], env=env, check=True)


def report(results: dict, base: str) -> None:
    print(f"{'variant':<26} {'runs':>4} {'total s':>8} {'start s':>8} {'s/it':>6} {'end s':>6} {'cpu s':>6} "
          f"{'faults':>8} {'total/ref':>9} {'s/it/ref':>8}")
    ref = results.get(base)
    for name, runs in results.items():
        med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        ratios = ""
        if ref:
            ratios = (f"{med['total'] / statistics.median(r['total'] for r in ref):>8.2f}x "
                      f"{med['per_it'] / statistics.median(r['per_it'] for r in ref):>7.2f}x")
        print(f"{name:<26} {len(runs):>4} {med['total']:>8.1f} {med['start']:>8.1f} {med['per_it']:>6.2f} "
              f"{med['end']:>6.1f} {med['cpu']:>6.0f} {med['faults']:>8.0f} {ratios}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="iterations per run")
    parser.add_argument("--rounds", type=int, default=2, help="times each variant runs (in turns)")
    parser.add_argument("--photos", type=int, default=200, help="synthetic photos per domain")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated; --list shows them")
    parser.add_argument("--data", type=Path, help="reuse (or create) the photo folders here")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--phases", action="store_true",
                        help="instead: one vidcycle run in this process, wall and CPU time per phase")
    parser.add_argument("--reference-loop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--x"), parser.add_argument("--y"), parser.add_argument("--log", type=Path)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    if args.reference_loop:
        return reference_loop(args.x, args.y, args.steps, args.workers, args.log)
    if args.list:
        for name, (command, env) in VARIANTS.items():
            print(f"{name:<26} {' '.join(command[:1] if command[0] == '{self}' else command)} "
                  f"{' '.join(command[1:]) if command[0] == '{self}' else ''} {env or ''}")
        return
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; --list shows them")
    print(cpu_line())
    print(f"load average {os.getloadavg()[0]:.1f} at start; {args.steps} iterations per run, "
          + ("" if args.phases else f"{args.rounds} round(s), ") + f"{args.photos} photos per domain", flush=True)
    with tempfile.TemporaryDirectory(prefix="train-loop-") as tmp:
        work = Path(tmp)
        data = args.data or work / "data"
        for domain, seed in (("x", 1), ("y", 2)):
            if not (data / domain).is_dir():
                make_photos(data / domain, args.photos, 160, seed)
        warm_store(data, work / "home")
        if args.phases:
            return phases(data, work, args.steps)
        results = {name: [] for name in names}
        for run in range(args.rounds):
            for name in names:
                result = run_variant(name, data, work, args.steps, run)
                results[name].append(result)
                print(f"  round {run + 1} {name:<26} total {result['total']:6.1f} s, start {result['start']:5.1f} s, "
                      f"{result['per_it']:.2f} s/it, end {result['end']:5.1f} s, cpu {result['cpu']:.0f} s; "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
        report(results, names[0])
    print(f"load average {os.getloadavg()[0]:.1f} (1 min), {os.getloadavg()[1]:.1f} (5 min) at the end")


if __name__ == "__main__":
    main()
