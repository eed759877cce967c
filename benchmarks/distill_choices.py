"""How recipes/distill.toml's choices were made: students and losses distilled from one teacher, side by side.

    python benchmarks/distill_choices.py --work runs/bench --teacher teacher-summer2winter \\
        [--iterations 600] [--views 2] [--only resnet-6x16 mobile-9x32 ...]

Each variant is `vidcycle distill` of the teacher on benchmarks/distill.py's
summer training photos with the default recipe changed only as the variant
says, for --iterations (half constant, half decaying), then scored on the
unseen paired test scenes: PSNR and SSIM against the teacher (float32 both)
and against the winter truth, its wall time, and its network-alone frames/s at
320x240 in fp32 and bf16 (interleaved with the others, best of --repeats).
Short runs rank the variants; they are not the final numbers (benchmarks/distill.py).
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from distill import cpu_facts, fidelity_on, make_data, quality, vidcycle  # noqa: E402

ARCHITECTURES = {"resnet-6x16": ("resnet", 6, 16), "resnet-9x16": ("resnet", 9, 16), "resnet-3x24": ("resnet", 3, 24),
                 "mobile-9x32": ("mobile", 9, 32), "mobile-9x24": ("mobile", 9, 24)}
LOSSES = {"l1": {"loss.ssim": 0}, "l1-ssim": {}, "l1-ssim-features": {"loss.features": 1}}


def variants(selected) -> dict:
    """Name -> recipe overrides. Architectures with the default loss; losses on the default student."""
    found = {name: {"student.kind": kind, "student.n_blocks": blocks, "student.ngf": ngf}
             for name, (kind, blocks, ngf) in ARCHITECTURES.items()}
    found.update(LOSSES)
    return {name: found[name] for name in (selected or found)}


def distil(args, paths, name: str, overrides: dict) -> float:
    flags = [f"--set=schedule.iterations={args.iterations // 2}",
             f"--set=schedule.iterations_decay={args.iterations - args.iterations // 2}", f"--set=views={args.views}",
             *(f"--set={key}={value}" for key, value in overrides.items())]
    return vidcycle(args.work, args.threads, "distill", args.teacher, "--data", paths["train"] / "summer",
                    "--name", f"choice-{name}", "--out", args.work / "choices" / name, "--overwrite", *flags)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-distill")
    parser.add_argument("--teacher", required=True, help="a trained teacher in --work's store, or a file")
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--views", type=int, default=1, help="0 for feature distillation (it needs the teacher "
                                                              "on every crop)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--only", nargs="*", help=f"variants: {', '.join([*ARCHITECTURES, *LOSSES])}")
    args = parser.parse_args()
    import os
    import torch
    torch.set_num_threads(args.threads)
    os.environ["VIDCYCLE_HOME"] = str(args.work / "home")
    print(cpu_facts(), flush=True)
    paths = make_data(args.work, args.photos)
    results = {}
    for name, overrides in variants(args.only).items():
        seconds = distil(args, paths, name, overrides)
        student = f"choice-{name}"
        truth = quality(paths, student).methods["model"]
        results[name] = {"seconds": seconds, "vs_teacher": fidelity_on(paths, args.teacher, student),
                         "vs_truth": truth.as_dict()}
        print(name, json.dumps(results[name]), flush=True)
    speeds = speed(args, list(results))
    print(cpu_facts())
    table(results, speeds, quality(paths, args.teacher).methods["model"])
    (args.work / "distill_choices.json").write_text(json.dumps({"results": results, "speeds": speeds}, indent=2))


def speed(args, names) -> dict:
    """Network-alone frames/s at 320x240 of each student, fp32 and bf16, interleaved."""
    import torch
    from vidcycle.runtime.translator import load_model
    nets = {(name, p): load_model(f"choice-{name}", "cpu", p).generator for name in names for p in ("fp32", "bf16")}
    x = torch.rand(1, 3, 240, 320) * 2 - 1
    best = {key: float("inf") for key in nets}
    with torch.inference_mode():
        for key, net in nets.items():
            net(x.to(next(net.parameters()).dtype))
        for _ in range(args.repeats):
            for key, net in nets.items():
                start = time.perf_counter()
                net(x.to(next(net.parameters()).dtype))
                best[key] = min(best[key], time.perf_counter() - start)
    return {name: {p: 1 / best[(name, p)] for p in ("fp32", "bf16")} for name in names}


def table(results: dict, speeds: dict, teacher) -> None:
    from vidcycle.runtime.translator import load_model
    print(f"\nteacher vs truth: PSNR {teacher.psnr:.2f} dB, SSIM {teacher.ssim:.4f}")
    print(f"{'variant':<20}{'GMAC/256²':>10}{'vs T PSNR':>10}{'vs T SSIM':>10}{'truth PSNR':>11}{'truth SSIM':>11}"
          f"{'fps fp32':>9}{'fps bf16':>9}{'wall s':>8}")
    for name, r in results.items():
        gmacs = load_model(f"choice-{name}", "cpu", "fp32").info.gmacs
        fps = speeds[name]
        print(f"{name:<20}{gmacs:>10.2f}{r['vs_teacher']['psnr']:>10.2f}{r['vs_teacher']['ssim']:>10.4f}"
              f"{r['vs_truth']['psnr']:>11.2f}{r['vs_truth']['ssim']:>11.4f}{fps['fp32']:>9.2f}{fps['bf16']:>9.2f}"
              f"{r['seconds']:>8.0f}")


if __name__ == "__main__":
    main()
