"""Long clips in segments (vidcycle.apply.segments): what segmenting costs, what a crash costs, what a second
process brings, and the join's memory.

    python benchmarks/resume.py [--minutes 5] [--fps 8] [--size 320x240] [--model demo-summer2winter]

On one generated clip (a texture sliding sideways, with an AAC tone) and the demo model, through
`vidcycle apply` as users run it:
  (a) the normal run with segments against the same run in one piece (segments switched off), alternated
      twice in one process; target: within 2%;
  (b) a run killed with SIGKILL at about 60% of its segments, then the same command again: the second run's
      time against an uninterrupted run's; target: at most 45%;
  (c) the clip under torchrun with 2 processes (one thread each) against 1 process (two threads), and the peak
      RSS of a process that only joins finished segments, beside the largest segment's size.
The machine may be shared: it prints the CPU and the load; compare the ratios.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `vidcycle apply` sets it, before torch loads OpenMP
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402

from clips import write_sliding_clip  # noqa: E402
from machine import cpu_description  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--model", default="demo-summer2winter")
    parser.add_argument("--work", type=Path, help="folder for the clip and outputs (default: a temporary one)")
    args = parser.parse_args()
    print(cpu_description(), f"; load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        clip = make_clip(work / "long.mp4", args)
        whole = uninterrupted_against_one_piece(clip, work, args.model)
        after_a_crash(clip, work, args.model, whole)
        two_processes(clip, work, args.model, whole)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


def make_clip(path: Path, args) -> Path:
    width, height = (int(v) for v in args.size.split("x"))
    frames = int(args.minutes * 60 * args.fps)
    texture = np.random.default_rng(0).integers(0, 255, (height, width * 4, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(texture[::8, ::8], 8, axis=0), 8, axis=1)[:height]
    write_sliding_clip(path, texture, frames, width, step=2, fps=args.fps)
    print(f"clip: {frames} frames of {args.size} at {args.fps} fps ({args.minutes:g} min), with audio", flush=True)
    return path


def apply(clip: Path, out: Path, model: str, *extra) -> list[str]:
    return [sys.executable, "-m", "vidcycle", "apply", str(clip), "-m", model, "-o", str(out), "--overwrite", *extra]


def patched(setup: str, command: list[str]) -> list[str]:
    """`command` (a `python -m vidcycle ...` line) run after the Python lines `setup`."""
    code = f"import sys\n{setup}\nfrom vidcycle.cli import main\nsys.argv[1:] = sys.argv[2:]\nmain()"
    return [sys.executable, "-c", code, "vidcycle", *command[3:]]


def timed(command: list[str], env=None) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def uninterrupted_against_one_piece(clip: Path, work: Path, model: str) -> float:
    """(a) each variant twice, alternated; one piece by setting the segment length beyond the clip."""
    one_piece = "import vidcycle.apply.segments as segments; segments.SEGMENT_SECONDS = 10 ** 9"
    times = {"segments": [], "one piece": []}
    for _ in range(2):
        times["segments"].append(timed(apply(clip, work / "segments.mp4", model)))
        times["one piece"].append(timed(patched(one_piece, apply(clip, work / "one.mp4", model))))
    best = {name: min(values) for name, values in times.items()}
    print(f"(a) uninterrupted run: with segments {fmt(times['segments'])}, in one piece {fmt(times['one piece'])}; "
          f"best {best['segments']:.1f} s vs {best['one piece']:.1f} s = {best['segments'] / best['one piece']:.3f}x "
          f"(target within 2%)", flush=True)
    return best["segments"]


def after_a_crash(clip: Path, work: Path, model: str, whole: float) -> None:
    """(b) SIGKILL once 60% of the segments are in the journal, then the same command again."""
    out = work / "crash.mp4"
    folder = out.with_name(f".{out.name}.parts")
    total = segment_count(clip)
    job = subprocess.Popen(apply(clip, out, model), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while job.poll() is None:
        journal = folder / "journal.jsonl"
        if journal.exists() and len(journal.read_text().splitlines()) - 1 >= round(0.6 * total):
            job.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    job.wait()
    done = len((folder / "journal.jsonl").read_text().splitlines()) - 1
    again = timed(apply(clip, out, model))
    print(f"(b) killed with {done} of {total} segments done; the second run took {again:.1f} s = "
          f"{again / whole:.2f} of an uninterrupted run ({whole:.1f} s; target <= 0.45)", flush=True)


def segment_count(clip: Path) -> int:
    from vidcycle.apply.segments import SEGMENT_SECONDS
    from vidcycle.media.video import probe
    return int(np.ceil(probe(clip).duration / SEGMENT_SECONDS))


def two_processes(clip: Path, work: Path, model: str, whole: float) -> None:
    """(c) torchrun with two processes of one thread each against one process of two threads; the join's RSS."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    split = timed([*torchrun, "-m", "vidcycle", *apply(clip, work / "split.mp4", model)[3:]], env=env)
    print(f"(c) two processes: {split:.1f} s against one process {whole:.1f} s = {whole / split:.2f}x faster",
          flush=True)
    join_rss(clip, work, model)


def join_rss(clip: Path, work: Path, model: str) -> None:
    """Peak RSS of a process that joins finished segments, with and without the join."""
    out = work / "join.mp4"
    stop = "import vidcycle.apply.jobs as jobs\ndef stop(clip): raise SystemExit(0)\njobs.join = stop"
    report = "import atexit, resource\natexit.register(lambda: print(resource.getrusage(resource.RUSAGE_SELF)" \
             ".ru_maxrss, file=sys.stderr))"
    subprocess.run(patched(stop, apply(clip, out, model)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = out.with_name(f".{out.name}.parts")
    largest = max(path.stat().st_size for path in folder.glob("*.mp4"))
    rss = {}
    for name, setup in (("load and plan only", f"{report}\n{stop}"), ("join", report)):
        done = subprocess.run(patched(setup, apply(clip, out, model)), capture_output=True, text=True)
        rss[name] = int(done.stderr.strip().splitlines()[-1]) / 1024
    print(f"    join: peak RSS {rss['join']:.0f} MiB against {rss['load and plan only']:.0f} MiB for the same process "
          f"without the join; largest segment {largest / 2 ** 20:.1f} MiB", flush=True)


def fmt(values) -> str:
    return ", ".join(f"{v:.1f} s" for v in values)


if __name__ == "__main__":
    main()
