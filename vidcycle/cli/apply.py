"""`vidcycle apply`: translate clips, photos, folders and shell pipelines with a model."""

import os
import signal
import sys

import click

from vidcycle.apply.limits import DEFAULT_MAX_PIXELS, MAX_TEMPORAL_STRENGTH, RECOMMENDED_TEMPORAL_STRENGTH
from vidcycle.cli.group import cli
from vidcycle.cli.options import device_option, precision_option
from vidcycle.cli.progress import new_bar
from vidcycle.runtime.engines import engine_names


class TableChoice(click.Choice):
    """A choice among a table's names, read when the flag is (not when the command is defined), so an
    engine registered later is offered too."""

    def __init__(self, names):
        super().__init__(())
        self.names = names

    @property
    def choices(self):
        return tuple(self.names())

    @choices.setter
    def choices(self, _):
        pass


@cli.command(context_settings={"max_content_width": 100})
@click.argument("inputs", nargs=-1, required=True)
@click.option("-m", "--model", required=True, help="Store name, built-in name or model file path.")
@click.option("-o", "--output", help="Output file (one input) or folder (mirrors the input tree); "
                                     "'-' with input '-' streams one image.  [default: beside each input, "
                                     "named NAME_MODEL.EXT]")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--skip-existing", is_flag=True, help="Leave existing outputs alone (resume a folder job).")
@click.option("--format", "image_format", type=click.Choice(["png", "jpg", "webp", "bmp", "tiff"]),
              help="Photo output format.  [default: the input's]")
@click.option("--codec", help="Video encoder: libx264, libx265, libvpx-vp9, libsvtav1...  "
                              "[default: libx264; libvpx-vp9 for .webm]")
@click.option("--crf", type=click.IntRange(0, 63), help="Encoder quality, lower is better.  "
                                                       "[default: 17 for libx264, visually lossless]")
@click.option("--preset", help="Encoder speed preset.  [default: fast]")
@click.option("--chroma", type=click.Choice(["420", "444", "source"]), default="420", show_default=True,
              help="Colour resolution of the output video. 420 plays everywhere: browsers, phones and most "
                   "hardware decoders refuse 4:4:4 H.264. 444 keeps full colour detail for editing; source is "
                   "444 for RGB and 4:4:4 sources, else 420. Odd frame sizes are 4:4:4 in H.264/H.265 whatever "
                   "is asked.")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Frames per forward pass.  [default: what --max-memory allows: on CPU 1 in torch fp32, else 4 "
                   "(measured fastest); up to 32 on CUDA]")
@click.option("--max-memory", metavar="SIZE",
              help="The most the network's working memory (activations, batches, frames in flight) may take, "
                   "e.g. 3G or 512M; torch itself comes on top. Batches shrink, then frames run in seamless "
                   "tiles, to stay under it.  [default: half the free RAM; on CUDA 80% of the free GPU memory]")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse inputs whose header declares more pixels per frame, before decoding anything "
                   "(a 30000x30000 PNG of 1 MB would otherwise take 23 GB).")
@click.option("--engine", type=TableChoice(engine_names), default="auto", show_default=True,
              help="What runs the network. auto: torch on CUDA and in bf16; ONNX Runtime for float32 on the "
                   "CPU (installed with vidcycle), as measured faster there.")
@device_option()
@precision_option()
@click.option("--start", type=click.FloatRange(min=0), help="Begin this many seconds into each clip.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Seconds of each clip to convert.")
@click.option("--max-frames", type=click.IntRange(min=1), help="Convert at most this many frames of each clip.")
@click.option("--side-by-side", is_flag=True, help="Write input and output next to each other, for review.")
@click.option("--temporal", type=click.FloatRange(0, MAX_TEMPORAL_STRENGTH), default=0.0, is_flag=False,
              flag_value=RECOMMENDED_TEMPORAL_STRENGTH, show_default=True, metavar="[STRENGTH]",
              help="Flicker reduction: blend in the previous output along the source's motion where it is "
                   f"visible in both frames. Alone it means {RECOMMENDED_TEMPORAL_STRENGTH:g}, which removes "
                   "most flicker while staying close to the per-frame output; 0 is off, higher holds stiller "
                   "and lags more behind motion.")
def apply(inputs, model, output, overwrite, skip_existing, image_format, codec, crf, preset, chroma, batch_size,
          max_memory, max_pixels, engine, device, precision, start, duration, max_frames, side_by_side, temporal):
    """Translate clips, photos and folders with a model.

    INPUTS are any mix of video files, image files and folders (searched
    recursively). Clips keep their frame count and timestamps, size (odd
    sizes too: H.264 is then written 4:4:4), audio (copied; re-encoded only
    where the container refuses the codec), subtitles, colour tags, rotation,
    title and date; photos keep their format, bit depth, alpha, orientation,
    colour profile and EXIF. Each finished output path is printed on stdout,
    one per line, and nothing else goes there; progress and errors go to
    stderr. Every output is written to a temporary file and renamed when
    complete. Before anything loads, an input that does not exist stops the
    job (exit 4), and so does an output that exists (exit 8; --overwrite or
    --skip-existing). A bad input is reported in one line and the job goes
    on; the exit code is then 9.

    \b
    Examples:
      vidcycle apply holiday.mp4 -m summer2winter            # -> holiday_summer2winter.mp4
      vidcycle apply clips/ photos/ -m style_monet -o out/   # mirrors both trees
      vidcycle apply clip.mov -m horse2zebra --start 60 --duration 5 --side-by-side -o try.mov
      find photos -name '*.jpg' | vidcycle apply - -m style_monet -o out/ | xargs ls -l
      vidcycle apply - -o - -m style_monet --format png < photo.jpg > monet.png
      vidcycle apply panorama.tif -m summer2winter --max-memory 2G    # tiles as needed

    \b
    '-' as an input reads newline-separated paths from stdin. With '-o -' it
    instead reads ONE image's bytes from stdin and writes the translated image
    to stdout (the input's format unless --format).

    \b
    Many GPUs or nodes: run under torchrun; each process takes every
    WORLD_SIZE-th input of the sorted list (from RANK) and GPU LOCAL_RANK:
      torchrun --nproc-per-node 8 -m vidcycle apply clips/ -m summer2winter -o out/
    """
    from vidcycle.runtime.threads import prepare  # lazy: --help stays instant
    prepare("apply")
    # The plan needs no torch: a missing input, an existing output or an image bomb is refused before torch
    # and the model load (seconds and hundreds of MB).
    from vidcycle.apply.plan import ApplyOptions, output_tag, plan_job, refuse_all  # lazy: --help stays instant
    from vidcycle.errors import VidcycleError  # lazy: --help stays instant

    signal.signal(signal.SIGTERM, _interrupt)  # a terminated job cleans its temporary files like Ctrl-C
    if overwrite and skip_existing:
        raise click.UsageError("--overwrite and --skip-existing exclude each other")
    options = ApplyOptions(batch_size=batch_size, codec=codec, crf=crf, preset=preset, chroma=chroma, start=start,
                           duration=duration, max_frames=max_frames, side_by_side=side_by_side, temporal=temporal,
                           image_format=image_format, overwrite=overwrite, skip_existing=skip_existing,
                           engine=engine, max_memory=max_memory, max_pixels=max_pixels)
    if output == "-":
        if list(inputs) != ["-"]:
            raise click.UsageError("-o - streams one image from stdin: use it with the single input '-'")
        from vidcycle.apply.jobs import translate_image_bytes  # lazy: torch loads only with work to do
        data = sys.stdin.buffer.read()
        sys.stdout.buffer.write(translate_image_bytes(data, model, image_format, side_by_side, device, precision,
                                                      options))
        sys.stdout.buffer.flush()
        return
    reporter = _BarReporter()
    paths = _with_stdin_paths(inputs)
    planned = plan_job(paths, output_tag(model), output, options)
    try:
        if planned.tasks:
            from vidcycle.apply.jobs import translate_inputs  # lazy: torch loads only when there is work
            result = translate_inputs(paths, output, model, options, reporter, device, precision, planned)
        else:
            result = refuse_all(planned, reporter)
    except VidcycleError:
        reporter.close()
        raise
    reporter.close()
    result.raise_for_failures()  # its message is the summary line when anything failed
    click.echo(f"vidcycle: {len(result.outputs)} converted, {len(result.skipped)} skipped", err=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _with_stdin_paths(inputs) -> list[str]:
    paths = []
    for item in inputs:
        if item != "-":
            paths.append(item)
            continue
        for line in sys.stdin.buffer.read().split(b"\n"):
            line = line.rstrip(b"\r")
            if line.strip():
                paths.append(os.fsdecode(line))
    return paths


class _BarReporter:
    """tqdm bars on stderr (plain lines in a log: cli.progress.new_bar): one for the job, in frames (a photo
    counts one), and one per clip, each with its rate and time left; output paths on stdout as they are made."""

    def __init__(self):
        self.job = self.clip = self.current = None
        self.inputs = 0
        self.planned: dict = {}
        self.counted: dict = {}

    def job_started(self, total_inputs):
        self.inputs = total_inputs

    def job_planned(self, frames):
        self.planned = dict(frames)
        if self.inputs > 1:
            self.job = new_bar("job", sum(self.planned.values()), "frame", position=0)

    def clip_started(self, src, total_frames):
        self.current = src
        self.clip = new_bar(_short(src), total_frames, "frame", position=1 if self.job else 0,
                            leave=self.job is None)

    def frames_skipped(self, count):
        """Frames an earlier run of this job finished: counted, but not in the rate or the time left."""
        self.counted[self.current] = self.counted.get(self.current, 0) + count
        for bar in (self.clip, self.job):
            if bar is not None:
                bar.initial = bar.n = bar.last_print_n = bar.n + count
                bar.refresh()

    def frames_done(self, count):
        self.counted[self.current] = self.counted.get(self.current, 0) + count
        for bar in (self.clip, self.job):
            if bar is not None:
                bar.update(count)

    def clip_finished(self):
        if self.clip is not None:
            self.clip.close()
            self.clip = None

    def output_written(self, src, dst):
        click.echo(str(dst))
        sys.stdout.flush()
        self._settle(src, done=True)

    def input_skipped(self, src, dst, reason):
        self._settle(src, done=False)

    def input_failed(self, src, message):
        self._settle(src, done=False)

    def close(self):
        self.clip_finished()
        if self.job is not None:
            self.job.close()
            self.job = None

    def _settle(self, src, done: bool):
        """An input is over: the job's total takes what it really brought (headers may lie), or drops what
        it will not bring."""
        if self.job is None:
            return
        counted = self.counted.get(src, 0)
        if done and not counted:  # a photo
            self.job.update(1)
            counted = 1
        self.job.total += counted - self.planned.get(src, counted)
        self.job.refresh()


def _short(path) -> str:
    name = os.path.basename(str(path))
    return name if len(name) <= 30 else name[:27] + "..."
