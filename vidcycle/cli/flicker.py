"""`vidcycle eval-video`: how much a translated clip flickers, and whether it kept the source's structure."""

import json

import click

from vidcycle.cli.group import cli
from vidcycle.cli.options import must_exist
from vidcycle.cli.progress import TqdmProgress

SPARK = " ▁▂▃▄▅▆▇█"


@cli.command("eval-video")
@click.argument("source", type=click.Path(dir_okay=False), callback=must_exist)
@click.argument("translated", type=click.Path(dir_okay=False), callback=must_exist)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--max-side", default=360, show_default=True, type=click.IntRange(32, 4096),
              help="Analyse at this longest side (flow and error). Larger is slower; compare "
                   "numbers measured at the same size only (downscaling averages fine noise away).")
@click.option("--plot", type=click.Path(dir_okay=False), help="Also draw where and when it flickers into this PNG.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --plot file.")
def eval_video(source, translated, as_json, max_side, plot, overwrite):
    """Measure the flicker of TRANSLATED against its SOURCE clip.

    Reports the warping error of Lai et al. (ECCV 2018): optical flow and an
    occlusion mask are computed on the SOURCE frames, then translated frame
    t+1 is warped back onto frame t and the masked mean squared difference is
    taken in [0, 1] RGB, averaged over all frame pairs. The same number for the
    source itself is the floor (flow and compression error): a steady
    translation scores near it; the excess over it is the flicker. Lower it
    with `vidcycle apply --temporal` (or a model trained with
    loss.temporal) and measure again.

    Also checks that the translation kept the source's frame count,
    timestamps, size, audio, rotation and colour tags, and names any that
    differ (the exit code stays 0: read "structure_ok" in --json).

    \b
      vidcycle eval-video clip.mp4 clip_summer2winter.mp4
      vidcycle eval-video clip.mp4 clip_summer2winter.mp4 --plot flicker.png
      vidcycle eval-video clip.mp4 clip_summer2winter.mp4 --json | jq .warping_error.excess
    """
    from pathlib import Path

    from vidcycle.errors import OutputExistsError  # lazy: --help stays instant
    from vidcycle.quality.flicker import measure_flicker, write_flicker_picture  # lazy: --help stays instant

    if plot and Path(plot).exists() and not overwrite:  # before the work, not after it
        raise OutputExistsError(f"{plot}: exists; pass --overwrite to replace it")
    report = measure_flicker(source, translated, max_side=max_side, progress=TqdmProgress())
    if plot:
        write_flicker_picture(report, plot, overwrite=True)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    click.echo(_table(report))


def _table(report) -> str:
    error = report.error
    lines = [f"warping error (Lai et al. 2018), flow on the source at {error.analysis_width}x"
             f"{error.analysis_height}, {error.pairs} frame pairs; mean squared error in [0, 1] RGB"]
    if error.pairs == 0:
        lines.append("  fewer than two frames in common: nothing to measure")
    else:
        ratio = f"{error.translated / error.source:.1f}x the source" if error.source > 0 else ""
        lines += [f"  translated       {error.translated:.6f}  {ratio}",
                  f"  source (floor)   {error.source:.6f}",
                  f"  excess           {error.excess:.6f}",
                  f"  mask kept        {error.mask_kept:.1%} of pixels (the rest is occluded or on motion edges)"]
        if error.pairs >= 4 and max(error.pair_excess) > 0:
            lines.append(f"  excess over time {_sparkline(error.pair_excess)}  (peak at pair "
                         f"{max(range(error.pairs), key=error.pair_excess.__getitem__)})")
    lines.append("")
    rows = [("STRUCTURE", "SOURCE", "TRANSLATED", "")]
    rows += [(c.name, c.source, c.translated, "same" if c.same else "DIFFERS") for c in report.checks]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3] for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _sparkline(values, width: int = 60) -> str:
    """Per-pair excess error, bucketed to `width` columns (max of each bucket), scaled to the peak."""
    buckets = max(1, -(-len(values) // width))
    peaks = [max(values[i:i + buckets]) for i in range(0, len(values), buckets)]
    top = max(max(peaks), 1e-12)
    return "".join(SPARK[max(0, min(8, round(8 * p / top)))] for p in peaks)
