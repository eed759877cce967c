"""`vidcycle eval`: translation quality against paired ground truth, or without pairs (KID and FID
against target-domain footage), beside two baselines."""

import json
import math

import click

from vidcycle.cli.group import cli
from vidcycle.cli.options import device_option, must_exist, precision_option
from vidcycle.cli.progress import TqdmProgress


@cli.command("eval")
@click.option("--model", required=True, help="Model to score (store name, built-in name or file).")
@click.option("--x", "x_dir", required=True, type=click.Path(file_okay=False), callback=must_exist,
              help="Folder of input images (domain X).")
@click.option("--truth", "truth_dir", type=click.Path(file_okay=False), callback=must_exist,
              help="Folder of ground-truth translations, same file names as --x (a.png ~ a.jpg is fine).")
@click.option("--y", "y_dir", type=click.Path(file_okay=False), callback=must_exist,
              help="Unpaired mode: a folder of target-domain photos and/or clips; reports KID and FID of the "
                   "translations against it.")
@click.option("--features", type=click.Path(dir_okay=False),
              help="Unpaired mode: a local copy of the Inception weights (weights-inception-2015-12-05-6726825d"
                   ".pth); nothing is downloaded.  [default: the store's copy, fetched once]")
@click.option("--sheet", type=click.Path(dir_okay=False),
              help="Unpaired mode: where the contact sheet PNG goes.  [default: MODEL-sheet.png here, "
                   "never over an existing file]")
@click.option("--frames-per-clip", type=click.IntRange(min=1), default=50, show_default=True,
              help="Unpaired mode: evenly spaced frames taken from each clip.")
@click.option("--reverse-model", help="The Y->X model for the cycle error F(G(x)) vs x. "
                                      "[default: the reverse name, a2b -> b2a, if that model exists]")
@click.option("--y-train", "--y-stats", "y_train", type=click.Path(file_okay=False), callback=must_exist,
              help="Target-domain TRAINING footage (photos and/or clips) whose Lab mean/std the Reinhard "
                   "baseline matches. Without it Reinhard uses the truth images' statistics, an oracle "
                   "that flatters the baseline (the report says so).")
@device_option()
@precision_option()
@click.option("--max-memory", metavar="SIZE", help="Most the network's working memory may take, e.g. 2G; large "
                                                   "photos then run in seamless tiles.  [default: half the free RAM]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def eval_command(model, x_dir, truth_dir, y_dir, features, sheet, frames_per_clip, reverse_model, y_train, device,
                 precision, max_memory, as_json):
    """Score a model: against ground truth (PSNR, SSIM, Lab colour error), or without pairs (KID, FID).

    \b
    With --truth (paired folders, matched by file name) the table compares:
      model     the translations G(x)
      identity  the input itself, untranslated
      reinhard  global colour transfer: each image's Lab mean/std per
                channel moved to the target domain's (Reinhard et al. 2001)
    PSNR (dB, higher better), SSIM (11x11 Gaussian window, per RGB channel,
    averaged; higher better) and mean CIE76 delta E in Lab (lower better),
    each a mean over images. With a reverse model it also reports the cycle
    error F(G(x)) vs x, which needs no pairs, so it works without --truth.

    \b
      vidcycle eval --model demo-summer2winter --x test/summer --truth test/winter --y-train train/winter
      vidcycle eval --model demo-summer2winter --x my_photos/          # cycle error only
      vidcycle eval ... --json | jq .margins

    \b
    With --y (no pairs: a folder of target-domain photos and/or clips) it
    reports KID (mean and spread over 100 subsets) and FID of the translations
    against --y, and of the same two baselines (Reinhard matched to --y),
    on Inception-v3 features (torch-fidelity's port of the TensorFlow FID
    weights, fetched once into the store; --features FILE for a local copy).
    Lower is better for both; KID is unbiased, so it can be compared across
    sample sizes, FID cannot. It also writes a contact sheet PNG.
      vidcycle eval --model summer2winter --x my_summer/ --y my_winter/
    """
    if y_dir:
        if truth_dir:
            raise click.UsageError("--truth (paired) and --y (unpaired) are two modes; give one")
        return _unpaired(model, x_dir, y_dir, features, sheet, frames_per_clip, device, precision, max_memory,
                         as_json)
    from vidcycle.quality.evaluation import default_reverse_model, evaluate  # lazy: --help stays instant
    if reverse_model is None:
        reverse_model = default_reverse_model(model)
    report = evaluate(model, x_dir, truth_dir, reverse_model=reverse_model, y_train=y_train, device=device,
                      precision=precision, progress=TqdmProgress(), max_memory=max_memory)
    if report.unmatched:
        click.echo(f"vidcycle: warning: {len(report.unmatched)} file(s) in {x_dir} have no truth of the same "
                   f"name and were skipped (e.g. {report.unmatched[0]})", err=True)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else format_report(report))


def _unpaired(model, x_dir, y_dir, features, sheet, frames_per_clip, device, precision, max_memory, as_json):
    from vidcycle.quality.fidelity import evaluate_unpaired  # lazy: --help stays instant
    report = evaluate_unpaired(model, [x_dir], [y_dir], features=features, sheet=sheet or _free_sheet(model),
                               device=device, precision=precision, progress=TqdmProgress(), max_memory=max_memory,
                               frames_per_clip=frames_per_clip)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else format_unpaired(report))


def _free_sheet(model: str) -> str:
    from pathlib import Path
    stem = Path(model).stem if model.endswith(".safetensors") or model.endswith(".pth") else model
    for n in range(1, 1000):
        path = Path(f"{stem}-sheet{'' if n == 1 else f'-{n}'}.png")
        if not path.exists():
            return str(path)
    raise click.UsageError("no free contact sheet name here; pass --sheet PATH")


def format_unpaired(report) -> str:
    lines = [f"{report.model}: {report.x_images} image(s) of X against {report.y_images} of Y",
             f"features: {report.features}", "",
             f"{'method':<10}{'KID x1000':>11}{'+-':>8}{'FID':>9}"]
    for name, scores in report.methods.items():
        lines.append(f"{name:<10}{scores.kid_mean * 1000:>11.2f}{scores.kid_std * 1000:>8.2f}{scores.fid:>9.2f}")
    lines.append(f"KID over 100 subsets of {report.kid_subset_size}; lower is better for both")
    if report.sheet:
        lines.append(f"contact sheet: {report.sheet}")
    return "\n".join(lines)


def format_report(report) -> str:
    lines = [f"{report.model} on {report.images} image(s) from {report.x_dir}"
             + (f", truth {report.truth_dir}" if report.truth_dir else "")]
    if report.methods:
        lines.append("")
        lines.append(f"{'method':<10}{'PSNR dB':>10}{'SSIM':>9}{'dE76':>8}")
        for name, scores in report.methods.items():
            lines.append(f"{name:<10}{_db(scores.psnr):>10}{scores.ssim:>9.4f}{scores.delta_e:>8.2f}")
        for name, margin in report.margins().items():
            lines.append(f"model vs {name}: PSNR {margin['psnr']:+.2f} dB, SSIM {margin['ssim']:+.4f}, "
                         f"dE76 {-margin['delta_e']:+.2f}")
        lines.append(f"reinhard target statistics: {report.reinhard_stats}")
    if report.cycle:
        c = report.cycle
        lines.append(f"cycle F(G(x)) vs x with {c.reverse_model}: PSNR {_db(c.psnr)} dB, SSIM {c.ssim:.4f}, "
                     f"L1 {c.l1:.2f} levels")
    else:
        lines.append("cycle error: not measured (no reverse model; pass --reverse-model NAME)")
    return "\n".join(lines)


def _db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2f}"
