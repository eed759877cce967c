"""Applying a model to clips, photos and folders: the Python API behind `vidcycle apply`.

A clip goes through the three-stage stream of vidcycle.apply.pipeline (decode,
network, encode in parallel, memory flat in the clip's length); a photo
through the translator once, its depth, alpha and metadata kept.

The job runner takes any mix of clips, photos and folders, plans every
output first (vidcycle.apply.plan), then converts each into a temporary file
renamed into place when complete; a long clip in journaled segments
(vidcycle.apply.segments). A bad input is reported and the job goes on;
`JobResult.raise_for_failures()` turns failures into PartialFailure. Under
torchrun each process takes its share of the inputs and its own GPU, and the
processes share each long clip's segments.
"""

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vidcycle.apply.pipeline import stream_clip
from vidcycle.apply.plan import (  # noqa: F401  (ApplyOptions, JobResult, DEFAULT_MAX_PIXELS: part of this API)
    DEFAULT_MAX_PIXELS,
    ApplyOptions,
    JobPlan,
    JobResult,
    Task,
    check_pixels,
    failed,
    output_tag,
    plan_job,
    refuse_all,
)
from vidcycle.apply.journal import remove_leftover
from vidcycle.apply.segments import Clip, is_segmented, join, open_clip, translate_segments
from vidcycle.errors import MediaError, OutputExistsError, VidcycleError, user_message
from vidcycle.files import atomic_path, remove_partials, write_atomic
from vidcycle.media.video import (
    DecodeStats,
    VideoReader,
    declared_size,
    probe,
)
from vidcycle.media.video_writer import LostPackets, VideoWriter
from vidcycle.runtime.memory import available_ram, format_size
from vidcycle.runtime.torchrun import TorchrunEnv
from vidcycle.runtime.translator import Translator, load_model

log = logging.getLogger("vidcycle")
# A decoded photo at its most: 16-bit RGBA from the decoder, its 8-bit RGB copy and the translation.
DECODE_BYTES_PER_PIXEL = 8 + 3 + 3


class Reporter:
    """Progress of a job and its outcomes as they happen; the default does nothing. The CLI passes one
    that draws tqdm bars and prints each output path. Messages for the user (warnings, failures) go to the
    "vidcycle" logger instead."""

    def job_started(self, total_inputs: int): ...
    def job_planned(self, frames: dict): ...  # input path -> frames this process will translate (a photo: 1)
    def clip_started(self, src: Path, total_frames: int | None): ...
    def frames_skipped(self, count: int): ...  # done by an earlier, interrupted run of the same job
    def frames_done(self, count: int): ...
    def clip_finished(self): ...
    def output_written(self, src: Path | None, dst: Path | None): ...
    def input_skipped(self, src: Path, dst: Path, reason: str): ...
    def input_failed(self, src: Path, message: str): ...


# Transfer characteristics (ITU-T H.273) of HDR video: models are trained on SDR frames.
_HDR_TRANSFERS = {16: "PQ", 18: "HLG"}


@dataclass
class VideoResult:
    src: Path
    dst: Path
    frames: int
    damaged_packets: int = 0
    expected_frames: int = 0  # what the header listed (0: unknown)
    lost_packets: list[LostPackets] = field(default_factory=list)  # copied packets the container left out


# ---------------------------------------------------------------- one clip


def translate_video(src, dst, model, options: ApplyOptions = ApplyOptions(), reporter: Reporter | None = None,
                    device="auto", precision="auto") -> VideoResult:
    """Translate every frame of clip `src` into a new clip `dst` with the same timing, size, colour and audio.

    `model` is a Translator or a model name or path. A clip longer than one segment
    (vidcycle.apply.segments) is written in segments that a later call continues after a
    crash. Raises MediaError (unreadable input, encoder failure), OutputExistsError (also
    for an unfinished run of another job in the work folder), ModelError, DeviceError.
    """
    src, dst = Path(src), Path(dst)
    translator = _translator(model, device, precision, options)
    reporter = reporter or Reporter()
    remove_leftover(dst)
    _check_output(src, dst, options.overwrite)
    check_frame_size(src, *declared_size(src), options.max_pixels)
    info = probe(src)
    if info.color_tags[2] in _HDR_TRANSFERS:
        log.warning("%s: HDR source (%s): the model sees its signal as if it were SDR, so colours may come out "
                    "off; the output is tagged HDR like it", src, _HDR_TRANSFERS[info.color_tags[2]])
    if is_segmented(info, options):
        with open_clip(src, dst, info, translator, options) as clip:
            return _translate_in_segments(clip, translator, reporter)
    stats = DecodeStats()
    reader = VideoReader(src, info, options.start, options.duration, options.max_frames, stats)
    try:
        width = info.width * (2 if options.side_by_side else 1)
        remove_partials(dst)
        with atomic_path(dst) as tmp:
            writer = VideoWriter(tmp, reader, width, info.height, options.encode, dst.suffix)
            for line in writer.dropped:
                log.warning("%s: %s", src, line)
            reporter.clip_started(src, _expected_frames(info, options))
            try:
                stream_clip(reader, writer, translator, options, reporter)
            except BaseException:
                writer.abort()
                raise
            finally:
                reporter.clip_finished()
            if stats.frames == 0:
                writer.abort()
                raise MediaError(f"{src}: no frames in the chosen window (start, --start, beyond the end?)")
            writer.close()
    finally:
        reader.close()
    _report_lost(src, writer.lost_packets)
    return VideoResult(src, dst, stats.frames, stats.damaged_packets, info.frames, writer.lost_packets)


def _translate_in_segments(clip: Clip, translator: Translator, reporter: Reporter,
                           segments: range | None = None, join_after: bool = True) -> VideoResult | None:
    reporter.clip_started(clip.src, _expected_frames(clip.info, clip.options))
    try:
        if clip.journal.done:
            reporter.frames_skipped(clip.journal.frames())
        translate_segments(clip, translator, reporter, segments if segments is not None else range(len(clip.spans)))
    finally:
        reporter.clip_finished()
    if not join_after:
        return None
    joined = join(clip)
    _report_lost(clip.src, joined.lost_packets)
    damaged = sum(line.get("damaged_packets", 0) for line in clip.journal.done.values())
    return VideoResult(clip.src, clip.dst, joined.frames, damaged, clip.info.frames, joined.lost_packets)


def _report_lost(src: Path, lost: list[LostPackets]) -> None:
    for item in lost:
        log.warning("%s: %s", src, item)


def _expected_frames(info, options: ApplyOptions) -> int | None:
    total = info.frames or None
    if total and (options.start or options.duration) and info.duration:
        seconds = min(options.duration or info.duration, max(0.0, info.duration - (options.start or 0)))
        total = int(round(seconds * float(info.rate)))
    if options.max_frames is not None:
        total = min(total, options.max_frames) if total else options.max_frames
    return total


# ---------------------------------------------------------------- one image


def translate_picture(picture, translator: Translator, side_by_side: bool = False):
    """A decoded photo (images.Picture) -> its translation as a Picture, alpha and depth kept for encoding."""
    from vidcycle.media.images import Picture  # lazy: OpenCV loads for photo jobs only
    output = translator.translate(picture.rgb)
    alpha = picture.alpha
    if side_by_side:
        output = np.concatenate([picture.rgb, output], axis=1)
        alpha = None if alpha is None else np.concatenate([alpha, alpha], axis=1)
    return Picture(rgb=output, alpha=alpha, depth=picture.depth, suffix=picture.suffix,
                   metadata=picture.metadata)


def translate_image(src, dst, model, options: ApplyOptions = ApplyOptions(), device="auto",
                    precision="auto") -> Path:
    """Translate one photo file into `dst` (format from dst's suffix). Raises MediaError, OutputExistsError."""
    src, dst = Path(src), Path(dst)
    translator = _translator(model, device, precision, options)
    _check_output(src, dst, options.overwrite)
    from vidcycle.media.images import encode_image, image_size, read_image  # lazy: OpenCV loads for photo jobs only
    check_frame_size(src, *image_size(src), options.max_pixels)
    result = translate_picture(read_image(src), translator, options.side_by_side)
    remove_partials(dst)
    write_atomic(dst, encode_image(result.rgb, result, dst.suffix))
    return dst


def translate_image_bytes(data: bytes, model, image_format: str | None = None, side_by_side: bool = False,
                          device="auto", precision="auto", options: ApplyOptions = ApplyOptions()) -> bytes:
    """Image bytes in, translated image bytes out (the input's format unless `image_format`): one picture in
    memory, so nothing to count and no bar."""
    translator = _translator(model, device, precision, options)
    log.info("%s", translator.describe())
    from vidcycle.media.images import (  # lazy: OpenCV loads for photo jobs only
        decode_image,
        encode_image,
        format_suffix,
        image_size,
    )
    check_frame_size("stdin", *image_size(data), options.max_pixels)
    picture = decode_image(data, "stdin")
    result = translate_picture(picture, translator, side_by_side)
    return encode_image(result.rgb, result, format_suffix(image_format) if image_format else picture.suffix)


# ---------------------------------------------------------------- jobs


def translate_folder(folder, output, model, options: ApplyOptions = ApplyOptions(),
                     reporter: Reporter | None = None, device="auto", precision="auto") -> JobResult:
    """Translate every clip and photo under `folder` into the same tree under `output`."""
    return translate_inputs([folder], output, model, options, reporter, device, precision)


def translate_inputs(inputs, output, model, options: ApplyOptions = ApplyOptions(),
                     reporter: Reporter | None = None, device="auto", precision="auto",
                     planned: JobPlan | None = None) -> JobResult:
    """Translate any mix of clip files, photo files and folders (recursive).

    With `output` None, each result goes beside its input as NAME_MODEL.EXT. With
    one file input, `output` may name the output file; otherwise it is a
    folder that mirrors the input tree. Under torchrun (RANK, WORLD_SIZE,
    LOCAL_RANK) this process takes inputs i with i % WORLD_SIZE == RANK of
    the sorted plan and GPU LOCAL_RANK. Bad inputs are reported and skipped;
    the result lists them. `planned`: this job's plan_job(...), when the caller has made it already.
    Before any work, and before the model loads: raises MediaError (an input does not exist),
    OutputExistsError (an output exists; see overwrite and skip_existing), then ModelError/DeviceError.
    """
    reporter = reporter or Reporter()
    planned = planned or plan_job(inputs, output_tag(model), output, options)
    if not planned.tasks:  # every input refused from its header: nothing needs the model
        return refuse_all(planned, reporter)
    env = TorchrunEnv.read()
    rank, world = env.rank, env.world
    if world > 1 and (device == "cuda" or device == "auto" and torch.cuda.is_available()):
        device = f"cuda:{env.local_rank}"  # one GPU per process; an explicit cuda:N is left as given
    translator = _translator(model, device, precision, options)
    log.info("%s", translator.describe())
    tasks, failures = list(planned.tasks), list(planned.refused)
    shared = []
    if world > 1:
        shared, tasks = _share_out(tasks, options, env)
        failures = [f for i, f in enumerate(sorted(failures, key=lambda f: str(f[0]))) if i % world == rank]
    result = JobResult(total=len(tasks) + len(failures) + (len(shared) if env.main else 0))
    for src, message in failures:
        failed(result, reporter, src, message)
    reporter.job_started(len(tasks) + (len(shared) if env.main else 0))
    reporter.job_planned(_planned_frames(tasks, shared, options, env))
    if shared:
        gather, leave = _process_group()
        for task, info in shared:
            _run_shared(task, info, translator, options, reporter, result, env, gather)
        gather(None)  # every process waits for the last join before the group goes
        leave()
    for task in tasks:
        _run_task(task, translator, options, reporter, result)
    return result


def _planned_frames(tasks: list[Task], shared: list, options: ApplyOptions, env: TorchrunEnv) -> dict:
    """Frames each input will bring (header counts, which may lie; unknown: 0), for the job's progress."""
    planned = {}
    for task in tasks:
        try:
            planned[task.src] = 1 if task.kind == "image" else _expected_frames(probe(task.src), options) or 0
        except MediaError:
            planned[task.src] = 0  # reported when its turn comes
    for task, info in shared:
        planned[task.src] = (_expected_frames(info, options) or 0) // env.world
    return planned


def _share_out(tasks: list[Task], options: ApplyOptions, env: TorchrunEnv):
    """Under torchrun: clips long enough for segments, and without --temporal (whose state runs from one
    segment to the next), are shared by every process segment by segment; the other inputs go round the
    processes whole. Returns ([(task, VideoInfo)] for all, [task] for this process)."""
    shared, whole = [], []
    for task in sorted(tasks, key=lambda t: str(t.src)):
        info = _shareable(task, options)
        if info is not None:
            shared.append((task, info))
        else:
            whole.append(task)
    return shared, [task for i, task in enumerate(whole) if i % env.world == env.rank]


def _shareable(task: Task, options: ApplyOptions):
    if task.kind != "video" or options.temporal or (task.dst.exists() and options.skip_existing):
        return None
    try:
        info = probe(task.src)
    except MediaError:
        return None  # reported when the process that takes it whole opens it
    return info if is_segmented(info, options) else None


def _run_shared(task: Task, info, translator: Translator, options: ApplyOptions, reporter: Reporter,
                result: JobResult, env: TorchrunEnv, gather):
    """This process's segments of a shared clip; process 0 opens its journal first and joins it last.
    `gather(value)` -> every process's value (a collective)."""

    def attempt(step):
        try:
            return step(), None
        except (VidcycleError, OSError) as error:
            return None, _failure_message(task, error)

    def my_segments():
        opened = clip or _open_shared(task, info, translator, options, tidy=False)
        _translate_in_segments(opened, translator, reporter, range(env.rank, len(opened.spans), env.world),
                               join_after=False)

    def join_all():
        _check_output(task.src, task.dst, options.overwrite)
        clip.journal.reread(len(clip.spans))  # the other processes' segments
        result.lost_packets.extend((task.src, item) for item in join(clip).lost_packets)

    # Process 0 holds the work folder's lock from opening to joining; the others write beside it unlocked.
    clip, error = attempt(lambda: _open_shared(task, info, translator, options, tidy=True)) if env.main \
        else (None, None)
    try:
        errors = [e for e in gather(error) if e]
        if not errors:
            errors = [e for e in gather(attempt(my_segments)[1]) if e]
        if not env.main:
            return
        if not errors:
            error = attempt(join_all)[1]
            errors = [error] if error else []
    finally:
        if clip is not None:
            clip.close()
    if errors:
        failed(result, reporter, task.src, errors[0], VidcycleError.exit_code)
        return
    result.outputs.append(task.dst)
    reporter.output_written(task.src, task.dst)


def _open_shared(task: Task, info, translator: Translator, options: ApplyOptions, tidy: bool) -> Clip:
    _check_output(task.src, task.dst, options.overwrite)
    return open_clip(task.src, task.dst, info, translator, options, tidy)


def _process_group():
    """(gather, leave): `gather(value)` -> every process's value (gloo), and `leave()`, which ends the group
    if this call began it (a caller's own group is left alone)."""
    import torch.distributed as dist  # only under torchrun: a one-process job never joins a group
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("gloo")

    def gather(value):
        values = [None] * dist.get_world_size()
        dist.all_gather_object(values, value)
        return values

    def leave():
        if joined:
            dist.destroy_process_group()
    return gather, leave


def _failure_message(task: Task, error: Exception) -> str:
    message = user_message(error) if isinstance(error, VidcycleError) else str(getattr(error, "strerror", None)
                                                                                or error)
    return message if str(task.src) in message else f"{task.src}: {message}"


def _run_task(task: Task, translator: Translator, options: ApplyOptions, reporter: Reporter, result: JobResult):
    if task.kind == "video":
        remove_leftover(task.dst)
    if task.dst.exists() and options.skip_existing:
        result.skipped.append(task.src)
        reporter.input_skipped(task.src, task.dst, "output exists")
        return
    try:
        if task.kind == "video":
            done = translate_video(task.src, task.dst, translator, options, reporter)
            _report_damage(done, reporter, options)
            result.lost_packets += [(task.src, item) for item in done.lost_packets]
        else:
            translate_image(task.src, task.dst, translator, options)
    except (VidcycleError, OSError) as error:
        message = _failure_message(task, error)  # a failure deep in a stage may not know which input it was
        failed(result, reporter, task.src, message, getattr(error, "exit_code", MediaError.exit_code))
        return
    result.outputs.append(task.dst)
    reporter.output_written(task.src, task.dst)


def _report_damage(done: VideoResult, reporter: Reporter, options: ApplyOptions):
    if done.damaged_packets:
        log.warning("%s: skipped %d damaged packet(s); %d frames written", done.src, done.damaged_packets, done.frames)
    windowed = options.start or options.duration or options.max_frames is not None
    if not windowed and done.expected_frames and done.frames < done.expected_frames:
        log.warning("%s: decoded %d of the %d frames its header lists (truncated file?)", done.src, done.frames,
                    done.expected_frames)


def _check_output(src: Path, dst: Path, overwrite: bool):
    if os.path.abspath(src) == os.path.abspath(dst):
        raise OutputExistsError(f"{src}: output would overwrite the input; choose another output")
    if dst.exists() and not overwrite:
        raise OutputExistsError(f"{dst}: exists; pass overwrite=True to replace it",
                                cli=f"{dst}: exists; pass --overwrite to replace it or --skip-existing to keep it")


def _translator(model, device, precision, options: ApplyOptions) -> Translator:
    if isinstance(model, Translator):
        return model
    return load_model(model, device, precision, max_memory=options.max_memory, engine=options.engine)


def check_frame_size(name, width: int, height: int, max_pixels: int) -> None:
    """Refuse, before decoding, a frame above the pixel limit or one whose decode could not fit in RAM.

    Raises MediaError naming the size and the limit.
    """
    check_pixels(name, width, height, max_pixels)
    decode = width * height * DECODE_BYTES_PER_PIXEL
    if decode > available_ram():
        raise MediaError(f"{name}: {width}x{height} would need {format_size(decode)} to decode, more than the "
                         f"{format_size(available_ram())} of RAM available; refused before decoding")
