"""Distillation benchmark: is `vidcycle distill`'s student 10x cheaper than its teacher, as good, and faster?

    python benchmarks/distill.py --work runs/bench --teacher-iterations 1000   # trains the teacher first
                                                                                # (27 min on 2 quiet cores)
    python benchmarks/distill.py --work runs/bench --teacher runs/bench/home/models/teacher-summer2winter.safetensors \\
        --teacher-seconds 9000                              # reuse a teacher and its measured training time

The teacher is `vidcycle train` at the 128-px config (recipes/cyclegan128.toml:
6 blocks, ngf 64, 128-px crops) on the season samples as the demo is trained
(samples/README.md: 400 unpaired 320x180 photos per season, identity weight
4.0, photos at their own height: load size 180), for --teacher-iterations
(default 2000: 700 at constant lr, 1300 decaying, the demo's proportions).
It is distilled with the default recipe (recipes/distill.toml) on the summer
training photos, then measured, in one run:
  (a) student GMAC per 256x256 frame <= 1/10 of the teacher's (counted)
  (b) student vs teacher on --photos unseen paired scenes: PSNR >= 28 dB
  (c) student and teacher against the paired winter truth (benchmarks/quality.py's
      `vidcycle eval`): student within 0.5 dB PSNR and 0.02 SSIM of the teacher
  (d) end-to-end `vidcycle apply` frames/s of the student, --precision fp32 forced
      (bf16 beside it), on a 320x240 clip, against benchmarks/apply_speed.py's
      naive float32 per-frame loop running the teacher's network: >= 5x
  (e) distillation wall time <= 1/3 of the teacher's training time
  (f) `vidcycle eval-video` excess flicker of the student's output <= 1.10 x the teacher's
and, with --architectures, each candidate student's network-alone speed at
320x240 in fp32 and bf16 (interleaved, best of --repeats), GMAC and GMAC/s.
Every process runs with --threads torch threads (default 1: on a busy 2-core
machine two OpenMP threads wait on each other). The machine may be shared:
the load average is printed; compare ratios taken side by side, not absolutes.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the vidcycle CLI sets it; before torch loads OpenMP

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from quality import TRAIN_PHOTOS, TRAIN_SEED, TRAIN_SIZE, load_make_samples  # noqa: E402

TEACHER_FLAGS = ["--recipe", "cyclegan128", "--set", "loss.identity=4.0", "--set", "data.load_size=180",
                 "--set", "schedule.checkpoint_every=250", "--set", "schedule.sample_every=250"]
TEST_SEED, CLIP_SEED = 900_000, 950_000  # unseen: the training seeds are 1000-1799
CANDIDATES = [("resnet", 6, 64), ("resnet", 6, 16), ("resnet", 9, 16), ("resnet", 4, 24), ("resnet", 3, 32),
              ("mobile", 9, 32), ("mobile", 6, 32), ("mobile", 9, 24), ("mobile", 6, 16)]


def vidcycle(work: Path, threads: int, *args) -> float:
    """Run the vidcycle CLI in its own process with the benchmark's store; returns its wall time."""
    env = dict(os.environ, VIDCYCLE_HOME=str(work / "home"), OMP_NUM_THREADS=str(threads),
               PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "vidcycle", *map(str, args)]
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    return time.perf_counter() - start


def make_data(work: Path, photos: int) -> dict:
    samples = load_make_samples()
    paths = {"train": work / "train", "test": work / "test", "clip": work / "clip_320x240.mp4",
             "speed_clip": work / "speed_clip_320x240.mp4"}
    if not (paths["train"] / "winter").is_dir():
        samples.make_set(paths["train"], TRAIN_PHOTOS, 0, TRAIN_SEED, TRAIN_SIZE, 0, 24, paired=False, fmt="png")
    if not (paths["test"] / "winter").is_dir() or len(list((paths["test"] / "winter").iterdir())) != photos:
        samples.make_set(paths["test"], photos, 0, TEST_SEED, TRAIN_SIZE, 0, 24, paired=True, fmt="png")
    for key, seconds in (("clip", 2.0), ("speed_clip", 1.0)):
        if not paths[key].is_file():
            frames = samples.pan_frames(CLIP_SEED, "summer", (320, 240), seconds, 24)
            samples.write_clip(paths[key], frames, 24, samples.ambience(CLIP_SEED, "summer", seconds))
    return paths


def train_teacher(args, paths: dict) -> tuple[str, float]:
    name = "bench-teacher-summer2winter"
    constant = args.teacher_iterations * 7 // 20  # as the demo: a short constant lr, a long decay
    seconds = vidcycle(args.work, args.threads, "train", "--x", paths["train"] / "summer",
                       "--y", paths["train"] / "winter", *TEACHER_FLAGS, "--set", f"schedule.iterations={constant}",
                       "--set", f"schedule.iterations_decay={args.teacher_iterations - constant}",
                       "--name", name, "--out", args.work / "teacher-run")
    return name, seconds


def distill_student(args, paths: dict, teacher: str) -> tuple[str, float]:
    name = "bench-student"
    seconds = vidcycle(args.work, args.threads, "distill", teacher, "--data", paths["train"] / "summer",
                       "--name", name, "--out", args.work / "student-run", "--overwrite", *args.distill_flags)
    return name, seconds


# ---------------------------------------------------------------- measurements

def fidelity_on(paths: dict, teacher: str, student: str) -> dict:
    """(b): student vs teacher on the unseen test scenes, float32 both, as `vidcycle eval` scores."""
    from vidcycle.metrics import psnr, ssim
    from vidcycle.media.images import read_image
    from vidcycle.runtime.translator import load_model
    t, s = load_model(teacher, "cpu", "fp32"), load_model(student, "cpu", "fp32")
    scores = []
    for path in sorted((paths["test"] / "summer").iterdir()):
        x = read_image(path).rgb
        target, made = t.translate(x), s.translate(x)
        scores.append((psnr(made, target), ssim(made, target)))
    return {"psnr": float(np.mean([p for p, _ in scores])), "ssim": float(np.mean([q for _, q in scores])),
            "images": len(scores)}


def quality(paths: dict, model: str):
    """(c): `vidcycle eval` against the paired winter truth, Reinhard from the winter training photos."""
    from vidcycle.quality.evaluation import evaluate
    return evaluate(model, paths["test"] / "summer", paths["test"] / "winter", y_train=paths["train"] / "winter",
                    device="cpu", precision="fp32")


def apply_speed(paths: dict, work: Path, teacher: str, student: str, repeats: int) -> dict:
    """(d): end-to-end apply of the student (fp32 forced, and bf16) against the naive float32 loop of the
    teacher's network; interleaved, best of `repeats`."""
    from apply_speed import end_to_end, in_thread, naive_loop
    from vidcycle.runtime.translator import load_model
    naive_net = load_model(teacher, "cpu", "fp32").generator
    runs = {"naive teacher fp32": None, "student fp32": load_model(student, "cpu", "fp32"),
            "student bf16": load_model(student, "cpu", "bf16")}
    batch = runs["student fp32"].batch_size(320, 240)  # apply's own choice for this size
    in_thread(lambda: naive_net(torch.zeros(1, 3, 240, 320)))
    fps = {name: [] for name in runs}
    for _ in range(repeats):
        for name, translator in runs.items():
            out = work / f"speed_{name.replace(' ', '_')}.mp4"
            fps[name].append(naive_loop(naive_net, paths["speed_clip"], out) if translator is None
                             else end_to_end(translator, paths["speed_clip"], out, batch))
    return {name: max(values) for name, values in fps.items()}


def flicker(paths: dict, work: Path, teacher: str, student: str) -> dict:
    """(f): each model applies the clip (`vidcycle apply`'s code, default precision); eval-video's excess."""
    from vidcycle.apply.jobs import ApplyOptions, translate_video
    from vidcycle.quality.flicker import measure_flicker
    from vidcycle.runtime.translator import load_model
    excess = {}
    for role, model in (("teacher", teacher), ("student", student)):
        out = work / f"flicker_{role}.mp4"
        translate_video(paths["clip"], out, load_model(model, "cpu"), ApplyOptions(overwrite=True))
        excess[role] = measure_flicker(paths["clip"], out).error.excess
    return excess


def architectures(repeats: int) -> list:
    """Network-alone frames/s at 320x240 of each candidate, fp32 and bf16, interleaved; best of `repeats`."""
    from vidcycle.models.nets import GeneratorSpec, build_generator, count_gmacs
    nets = {}
    for kind, blocks, ngf in CANDIDATES:
        spec = GeneratorSpec(blocks, ngf, kind=kind)
        for dtype in (torch.float32, torch.bfloat16):
            nets[(spec, dtype)] = build_generator(spec).eval().to(dtype)
    x = torch.rand(1, 3, 240, 320) * 2 - 1
    best = {key: float("inf") for key in nets}
    with torch.inference_mode():
        for key, net in nets.items():
            net(x.to(key[1]))
        for _ in range(repeats):
            for key, net in nets.items():
                start = time.perf_counter()
                net(x.to(key[1]))
                best[key] = min(best[key], time.perf_counter() - start)
    rows = []
    for spec in dict.fromkeys(spec for spec, _ in nets):
        fp32, bf16 = 1 / best[(spec, torch.float32)], 1 / best[(spec, torch.bfloat16)]
        work = count_gmacs(spec, 240, 320)
        rows.append((spec.label, count_gmacs(spec), fp32, bf16, work * fp32, work * bf16))
    return rows


# ---------------------------------------------------------------- the report

def cpu_facts() -> str:
    flags = set()
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
        for line in handle:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    shown = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if flag in flags]
    return (f"CPU flags: {' '.join(shown)}; {os.cpu_count()} cores; torch threads {torch.get_num_threads()}; "
            f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(facts: dict) -> bool:
    checks = []
    g = facts["gmacs"]
    checks.append(g["student"] <= g["teacher"] / 10)
    print(f"(a) GMAC per 256x256 frame: student {g['student']:.2f} ({facts['student_arch']}), teacher "
          f"{g['teacher']:.2f}: 1/{g['teacher'] / g['student']:.1f}  (target <= 1/10: {verdict(checks[-1])})")
    b = facts["fidelity"]
    checks.append(b["psnr"] >= 28)
    print(f"(b) student vs teacher on {b['images']} unseen scenes: PSNR {b['psnr']:.2f} dB, SSIM {b['ssim']:.4f}"
          f"  (target PSNR >= 28: {verdict(checks[-1])}); in the student's header: {facts['header_fidelity']}")
    t, s = facts["quality"]["teacher"], facts["quality"]["student"]
    checks.append(s["psnr"] >= t["psnr"] - 0.5 and s["ssim"] >= t["ssim"] - 0.02)
    print("(c) against the paired winter truth (PSNR dB, SSIM, dE76):")
    for name, scores in (("teacher", t), ("student", s), ("identity", facts["quality"]["identity"]),
                         ("reinhard", facts["quality"]["reinhard"])):
        print(f"      {name:<9}{scores['psnr']:>8.2f}{scores['ssim']:>9.4f}{scores['delta_e']:>8.2f}")
    print(f"    student - teacher: PSNR {s['psnr'] - t['psnr']:+.2f} dB, SSIM {s['ssim'] - t['ssim']:+.4f}  "
          f"(target within 0.5 dB and 0.02: {verdict(checks[-1])})")
    d = facts["apply_fps"]
    ratio = d["student fp32"] / d["naive teacher fp32"]
    checks.append(ratio >= 5)
    print(f"(d) 320x240 clip, frames/s: naive fp32 loop with the teacher's network {d['naive teacher fp32']:.2f}, "
          f"student via apply fp32 {d['student fp32']:.2f} ({ratio:.1f}x, target >= 5: {verdict(checks[-1])}), "
          f"bf16 {d['student bf16']:.2f} ({d['student bf16'] / d['naive teacher fp32']:.1f}x)")
    e = facts["seconds"]
    checks.append(e["distill"] <= e["teacher"] / 3)
    print(f"(e) wall time: teacher training {e['teacher']:.0f} s, distillation {e['distill']:.0f} s = "
          f"{e['distill'] / e['teacher']:.2f} of it  (target <= 1/3: {verdict(checks[-1])})")
    f = facts["flicker"]
    checks.append(f["student"] <= 1.10 * f["teacher"])
    print(f"(f) eval-video excess flicker: teacher {f['teacher']:.6f}, student {f['student']:.6f} = "
          f"{f['student'] / f['teacher']:.2f}x  (target <= 1.10: {verdict(checks[-1])})")
    return all(checks)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-distill", help="data, runs, store")
    parser.add_argument("--teacher", help="an already trained teacher (name in --work's store, or a file)")
    parser.add_argument("--teacher-seconds", type=float, help="its training wall time, for (e)")
    parser.add_argument("--teacher-iterations", type=int, default=2000,
                        help="when training the teacher here: 35%% at constant lr, then a linear decay")
    parser.add_argument("--student", help="an already distilled student (skip distilling; needs --distill-seconds)")
    parser.add_argument("--distill-seconds", type=float, help="the student's distillation wall time, for (e)")
    parser.add_argument("--distill-flags", nargs=argparse.REMAINDER, default=[],
                        help="extra `vidcycle distill` flags, last on the line (e.g. --set student.ngf=24)")
    parser.add_argument("--photos", type=int, default=40, help="unseen paired test scenes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="speed runs, interleaved; best kept")
    parser.add_argument("--architectures", action="store_true", help="also time the candidate students")
    args = parser.parse_args()
    if args.teacher and args.teacher_seconds is None:
        parser.error("--teacher needs --teacher-seconds (its training wall time) for (e)")
    if args.student and args.distill_seconds is None:
        parser.error("--student needs --distill-seconds for (e)")
    torch.set_num_threads(args.threads)
    os.environ["VIDCYCLE_HOME"] = str(args.work / "home")
    print(cpu_facts(), flush=True)
    paths = make_data(args.work, args.photos)
    teacher, teacher_seconds = (args.teacher, args.teacher_seconds) if args.teacher else train_teacher(args, paths)
    student, distill_seconds = ((args.student, args.distill_seconds) if args.student
                                else distill_student(args, paths, teacher))
    print(cpu_facts(), flush=True)
    facts = measure(args, paths, teacher, student, {"teacher": teacher_seconds, "distill": distill_seconds})
    if args.architectures:
        print_architectures(architectures(args.repeats * 2))
    print(cpu_facts())
    return 0 if report(facts) else 1


def measure(args, paths: dict, teacher: str, student: str, seconds: dict) -> dict:
    from vidcycle.runtime.translator import load_model
    t_info, s_info = load_model(teacher, "cpu", "fp32").info, load_model(student, "cpu", "fp32").info
    reports = {role: quality(paths, model) for role, model in (("teacher", teacher), ("student", student))}
    methods = {name: scores.as_dict() for name, scores in reports["teacher"].methods.items()}
    facts = {"gmacs": {"teacher": t_info.gmacs, "student": s_info.gmacs}, "student_arch": s_info.architecture,
             "fidelity": fidelity_on(paths, teacher, student), "header_fidelity": s_info.fidelity,
             "quality": {"teacher": methods["model"], "student": reports["student"].methods["model"].as_dict(),
                         "identity": methods["identity"], "reinhard": methods["reinhard"]},
             "apply_fps": apply_speed(paths, args.work, teacher, student, args.repeats),
             "seconds": seconds, "flicker": flicker(paths, args.work, teacher, student)}
    (args.work / "distill_benchmark.json").write_text(json.dumps(facts, indent=2, default=str))
    return facts


def print_architectures(rows: list) -> None:
    print("\nCandidate students, network alone at 320x240 (best of runs, interleaved):")
    print(f"{'architecture':<30}{'GMAC/256²':>10}{'fps fp32':>10}{'fps bf16':>10}{'GMAC/s fp32':>13}"
          f"{'GMAC/s bf16':>13}")
    for label, gmacs, fp32, bf16, rate32, rate16 in rows:
        print(f"{label:<30}{gmacs:>10.2f}{fp32:>10.2f}{bf16:>10.2f}{rate32:>13.1f}{rate16:>13.1f}")


if __name__ == "__main__":
    sys.exit(main())
