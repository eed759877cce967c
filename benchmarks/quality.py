"""Translation quality of the demo model on a fresh paired test set from unseen seeds.

    python benchmarks/quality.py                 # the built-in demo-summer2winter (about 1 minute)
    python benchmarks/quality.py --train         # train from recipes/demo.toml first (about 20 min on 2 cores)
    python benchmarks/quality.py --json

Renders --photos paired summer/winter scenes from seeds no training set
uses (default 900000 on; the demo trains on seeds 1000-1799, the committed
samples are seeds 1-4), renders winter photos from the training seeds for
the Reinhard baseline's target statistics, and prints `vidcycle eval`'s
table: the model vs identity vs Reinhard on PSNR, SSIM and Lab delta E,
plus the cycle-reconstruction error through the reverse model.
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
TRAIN_SEED, TRAIN_PHOTOS, TRAIN_SIZE = 1000, 400, (320, 180)  # as samples/README.md trains the demo


def load_make_samples():
    spec = importlib.util.spec_from_file_location("make_samples", ROOT / "samples" / "make_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_demo(work: Path, device: str) -> tuple[str, str]:
    """Train the demo pair from recipes/demo.toml into an isolated store under `work`; returns the names."""
    os.environ["VIDCYCLE_HOME"] = str(work / "home")
    command = [sys.executable, "-m", "vidcycle", "train", "--x", str(work / "train" / "summer"),
               "--y", str(work / "train" / "winter"), "--recipe", str(ROOT / "recipes" / "demo.toml"),
               "--name", "bench-summer2winter", "--out", str(work / "run"), "--device", device]
    print("$ " + " ".join(command), file=sys.stderr)
    subprocess.run(command, check=True)
    return "bench-summer2winter", "bench-winter2summer"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help="train the demo pair from recipes/demo.toml first")
    parser.add_argument("--photos", type=int, default=40, help="paired test scenes (default 40)")
    parser.add_argument("--seed", type=int, default=900_000, help="first test seed (default 900000, unseen)")
    parser.add_argument("--stats-photos", type=int, default=100,
                        help="winter training photos for Reinhard's target statistics (default 100)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--keep", type=Path, help="keep the generated sets here instead of a temporary folder")
    args = parser.parse_args()
    if args.seed < TRAIN_SEED + 2 * TRAIN_PHOTOS and args.seed + args.photos > TRAIN_SEED:
        parser.error(f"--seed {args.seed} overlaps the demo's training seeds {TRAIN_SEED}-{TRAIN_SEED + 2 * TRAIN_PHOTOS - 1}")

    from vidcycle.cli.evaluate import format_report
    from vidcycle.quality.evaluation import evaluate

    samples = load_make_samples()
    with tempfile.TemporaryDirectory(prefix="vidcycle-quality-") as tmp:
        work = args.keep or Path(tmp)
        started = time.perf_counter()
        samples.make_set(work / "test", args.photos, 0, args.seed, TRAIN_SIZE, 0, 24, paired=True, fmt="png")
        if args.train:
            samples.make_set(work / "train", TRAIN_PHOTOS, 0, TRAIN_SEED, TRAIN_SIZE, 0, 24, paired=False, fmt="png")
            stats_dir = work / "train" / "winter"
        else:  # the first winter training seeds, re-rendered: the same pictures the demo was trained on
            samples.make_set(work / "train", args.stats_photos, 0, TRAIN_SEED, TRAIN_SIZE, 0, 24, paired=False,
                             fmt="png", seasons=("winter",))
            stats_dir = work / "train" / "winter"
        print(f"rendered the sets in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        model, reverse = train_demo(work, args.device) if args.train else ("demo-summer2winter", "demo-winter2summer")
        report = evaluate(model, work / "test" / "summer", work / "test" / "winter", reverse_model=reverse,
                          y_train=stats_dir, device=args.device)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    print(format_report(report))
    losing = [f"{name} on {metric}" for name, margin in report.margins().items()
              for metric in ("psnr", "ssim") if margin[metric] <= 0]
    print("the model beats both baselines on PSNR and SSIM" if not losing
          else "the model does NOT beat: " + ", ".join(losing))
    return 0 if not losing else 1


if __name__ == "__main__":
    sys.exit(main())
