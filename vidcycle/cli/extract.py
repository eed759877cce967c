"""`vidcycle extract`: write the frames training would sample from clips, to inspect and curate a set."""

import click

from vidcycle.cli.group import cli
from vidcycle.cli.options import must_exist
from vidcycle.cli.progress import TqdmProgress


@cli.command()
@click.argument("inputs", nargs=-1, required=True, callback=must_exist, metavar="CLIP_OR_DIR...")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Folder for the PNG frames (created; subfolders of input folders are mirrored).")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Frames taken per second of footage (by timestamp).")
@click.option("--every-nth", type=click.IntRange(min=1), default=None,
              help="Take every Nth decoded frame instead (default: every frame).")
@click.option("--max-frames-per-clip", type=click.IntRange(min=0), default=500, show_default=True,
              help="Cap per clip, spread evenly over the whole clip (0: no cap).")
@click.option("--dedup-threshold", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Skip frames whose mean absolute difference to the last kept frame is below this "
                   "(0-255 scale; 0 keeps near-duplicates).")
@click.option("--max-side", type=click.IntRange(min=0), default=0,
              help="Downscale frames whose shorter side is larger than this many pixels (0: full size).")
@click.option("--overwrite", is_flag=True, help="Replace frames of the same clip from an earlier extract.")
def extract(inputs, output, fps, every_nth, max_frames_per_clip, dedup_threshold, max_side, overwrite):
    """Write the frames training would sample from CLIP_OR_DIR... as PNG files.

    The sampling is the one `vidcycle train` uses (the recipe's data.fps,
    data.every_nth, data.max_frames_per_clip and data.dedup_threshold), so a
    curated folder of frames can be passed to `train --x/--y` as it is.
    Frames are named <clip stem>_<frame index>.png; images in the inputs are
    skipped. Unreadable clips are reported on stderr, one line each, and make
    the exit status 9; the output folder is printed on stdout.

    \b
      vidcycle extract summer_clips/ -o summer_frames/ --fps 1
      vidcycle extract clip.mp4 -o frames/ --every-nth 10 --max-frames-per-clip 100
    """
    from vidcycle.training.extract import extract_frames  # lazy: --help stays instant
    from vidcycle.training.framecache import SamplingConfig  # lazy: --help stays instant
    from vidcycle.errors import PartialFailure  # lazy: --help stays instant

    if fps is not None and every_nth is not None:
        raise click.UsageError("use either --fps or --every-nth, not both")
    sampling = SamplingConfig(fps=fps or 0.0, every_nth=every_nth or 1, max_frames_per_clip=max_frames_per_clip,
                              dedup_threshold=dedup_threshold, max_side=max_side)
    report = extract_frames(inputs, output, sampling, overwrite=overwrite, progress=TqdmProgress())
    for path, reason in report.failures:
        click.echo(f"vidcycle: {path}: {reason}", err=True)
    click.echo(f"{len(report.written)} frames in {output}", err=True)
    if report.written:
        click.echo(output)
    if report.failures:
        raise PartialFailure(f"{len(report.failures)} clip(s) could not be read; the other frames are in {output}")
