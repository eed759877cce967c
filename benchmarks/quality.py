"""Translation quality of summer -> winter models on a fresh paired test set from unseen seeds, and
their flicker on the sample clip: the demo's before/after table.

    python benchmarks/quality.py                       # the built-in demo-summer2winter (about 2 minutes)
    python benchmarks/quality.py -m old.safetensors -m demo-summer2winter -m teacher   # one row each
    python benchmarks/quality.py --no-flicker --json
    python benchmarks/quality.py --train               # rebuild the demo first (see samples/README.md)

Renders --photos paired summer/winter scenes from seeds no training set
uses (default 900000 on; the demo trains on seeds 1000-1799, the committed
samples are seeds 1-4), renders winter photos from the training seeds for
the Reinhard baseline's target statistics, and scores each model as
`vidcycle eval` does: PSNR, SSIM and Lab delta E against the winter truth,
beside the identity and Reinhard baselines, plus the cycle error where the
reverse model exists. Then it applies each model to samples/summer_clip.mp4
with `vidcycle apply` and measures the flicker as `vidcycle eval-video`
does: the warping error of the translation less the source's own.

--train rebuilds the demo the way samples/README.md says: the teacher from
recipes/demo-teacher.toml, then the students, winter -> summer with `vidcycle
distill`'s default recipe and summer -> winter with recipes/demo-student-s2w.toml
(about 1 h 20 min on 2 CPU cores), into an isolated store, and scores them.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from machine import cpu_description  # noqa: E402

TRAIN_SEED, TRAIN_PHOTOS, TRAIN_SIZE = 1000, 400, (320, 180)  # as samples/README.md trains the demo
CLIP = ROOT / "samples" / "summer_clip.mp4"


def load_make_samples():
    spec = importlib.util.spec_from_file_location("make_samples", ROOT / "samples" / "make_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vidcycle_command(*args) -> None:
    command = [sys.executable, "-m", "vidcycle", *map(str, args)]
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True)


def train_demo(work: Path, device: str) -> list[str]:
    """The demo rebuilt as samples/README.md says, into an isolated store under `work`; returns the model
    names to score (student, then teacher)."""
    os.environ["VIDCYCLE_HOME"] = str(work / "home")
    train = work / "train"
    vidcycle_command("train", "--x", train / "summer", "--y", train / "winter", "--recipe",
                     ROOT / "recipes" / "demo-teacher.toml", "--name", "summer2winter-teacher",
                     "--reverse-name", "winter2summer-teacher", "--out", work / "teacher", "--device", device)
    longer = ("--recipe", ROOT / "recipes" / "demo-student-s2w.toml")  # as samples/make_demo_models.sh makes it
    for student, teacher, season, changes in (("summer2winter", "summer2winter-teacher", "summer", longer),
                                              ("winter2summer", "winter2summer-teacher", "winter", ())):
        vidcycle_command("distill", teacher, "--data", train / season, "--name", student, "--out", work / student,
                         "--device", device, *changes)
    return ["summer2winter", "summer2winter-teacher"]


def flicker_excess(model: str, work: Path, device: str) -> float:
    """Warping error of the model's translation of the sample clip, less the source's own."""
    from vidcycle.quality.flicker import measure_flicker

    out = work / f"flicker-{len(list(work.glob('flicker-*')))}.mp4"
    vidcycle_command("apply", CLIP, "--model", model, "--output", out, "--device", device)
    return measure_flicker(CLIP, out).error.excess


def gmacs(model: str) -> float:
    from vidcycle.models.nets import count_gmacs
    from vidcycle.models.store import resolve_model_path
    from vidcycle.models.modelfile import read_info

    return count_gmacs(read_info(resolve_model_path(model)).spec)


def table(rows: list[dict], baselines: dict) -> str:
    lines = [f"{'model':<34}{'GMAC/256²':>10}{'PSNR dB':>9}{'SSIM':>8}{'dE76':>7}{'flicker x1e4':>14}{'cycle dB':>10}"]
    for row in rows:
        flicker = f"{row['flicker_excess'] * 1e4:.2f}" if row.get("flicker_excess") is not None else "-"
        cycle = f"{row['cycle_psnr']:.2f}" if row.get("cycle_psnr") is not None else "-"
        lines.append(f"{row['model'][-34:]:<34}{row['gmacs']:>10.2f}{row['psnr']:>9.2f}{row['ssim']:>8.3f}"
                     f"{row['delta_e']:>7.2f}{flicker:>14}{cycle:>10}")
    for name, scores in baselines.items():
        lines.append(f"{name:<34}{'':>10}{scores['psnr']:>9.2f}{scores['ssim']:>8.3f}{scores['delta_e']:>7.2f}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", action="append", help="a summer -> winter model (name or file); "
                        "repeat for more rows (default: demo-summer2winter)")
    parser.add_argument("--train", action="store_true", help="rebuild the demo first (samples/README.md)")
    parser.add_argument("--photos", type=int, default=40, help="paired test scenes (default 40)")
    parser.add_argument("--seed", type=int, default=900_000, help="first test seed (default 900000, unseen)")
    parser.add_argument("--stats-photos", type=int, default=100,
                        help="winter training photos for Reinhard's target statistics (default 100)")
    parser.add_argument("--no-flicker", action="store_true", help="skip the flicker on the sample clip")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--keep", type=Path, help="keep the generated sets here instead of a temporary folder")
    args = parser.parse_args()
    if args.seed < TRAIN_SEED + 2 * TRAIN_PHOTOS and args.seed + args.photos > TRAIN_SEED:
        parser.error(f"--seed {args.seed} overlaps the demo's training seeds {TRAIN_SEED}-{TRAIN_SEED + 2 * TRAIN_PHOTOS - 1}")

    from vidcycle.quality.evaluation import default_reverse_model, evaluate

    print(f"CPU: {cpu_description()}", file=sys.stderr)
    samples = load_make_samples()
    with tempfile.TemporaryDirectory(prefix="vidcycle-quality-") as tmp:
        work = args.keep or Path(tmp)
        started = time.perf_counter()
        samples.make_set(work / "test", args.photos, 0, args.seed, TRAIN_SIZE, 0, 24, paired=True, fmt="png")
        photos = TRAIN_PHOTOS if args.train else args.stats_photos  # the first seeds: what the demo trained on
        samples.make_set(work / "train", photos, 0, TRAIN_SEED, TRAIN_SIZE, 0, 24, paired=False, fmt="png",
                         seasons=("summer", "winter") if args.train else ("winter",))
        print(f"rendered the sets in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        models = train_demo(work, args.device) if args.train else (args.model or ["demo-summer2winter"])
        rows, baselines = [], {}
        for model in models:
            report = evaluate(model, work / "test" / "summer", work / "test" / "winter",
                              reverse_model=default_reverse_model(model), y_train=work / "train" / "winter",
                              device=args.device)
            scores = report.methods["model"]
            rows.append({"model": model, "gmacs": gmacs(model), "psnr": scores.psnr, "ssim": scores.ssim,
                         "delta_e": scores.delta_e, "cycle_psnr": report.cycle.psnr if report.cycle else None,
                         "flicker_excess": None if args.no_flicker else flicker_excess(model, work, args.device)})
            baselines = {name: s.as_dict() for name, s in report.methods.items() if name != "model"}
    if args.json:
        print(json.dumps({"cpu": cpu_description(), "test_photos": args.photos, "first_seed": args.seed,
                          "rows": rows, "baselines": baselines}, indent=2))
        return 0
    print(f"{args.photos} paired scenes from seed {args.seed}, 320x180; flicker: warping error on "
          f"{CLIP.name} less the source's own (eval-video)")
    print(table(rows, baselines))
    losing = [f"{row['model']} vs {name}" for row in rows for name, scores in baselines.items()
              if row["psnr"] <= scores["psnr"] or row["ssim"] <= scores["ssim"]]
    print("every model beats both baselines on PSNR and SSIM" if not losing
          else "NOT beating a baseline on PSNR or SSIM: " + ", ".join(losing))
    return 0 if not losing else 1


if __name__ == "__main__":
    sys.exit(main())
