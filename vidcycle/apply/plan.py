"""Planning a job: every input clip and photo (folders walked recursively) paired with the output it goes
to, beside it as NAME_MODEL.EXT or mirrored under an output folder, and the inputs that cannot be planned
(two inputs that would write one output, a header declaring too many pixels).

Planning needs neither torch nor the model, so what would refuse a whole job (a missing input, an existing
output) or an input (a decompression bomb, from its header) is found in a moment, before either loads.
"""

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from vidcycle.apply.limits import DEFAULT_MAX_PIXELS
from vidcycle.errors import MediaError, OutputExistsError, PartialFailure, UsageError
from vidcycle.files import require_existing, walk_media
from vidcycle.media.video import VIDEO_SUFFIXES, declared_size
from vidcycle.media.video_writer import EncodeSettings, LostPackets, output_suffix
from vidcycle.runtime.torchrun import TorchrunEnv

log = logging.getLogger("vidcycle")
_MODEL_SUFFIXES = (".safetensors", ".pth", ".pt")


@dataclass(frozen=True)
class ApplyOptions:
    """How to run a job; every field has the default the CLI shows."""

    batch_size: int | None = None  # None: what the memory plan allows (CPU: 1 in torch fp32, else 4; up to 32 on CUDA)
    codec: str | None = None  # None: libx264 (libvpx-vp9 for .webm)
    crf: int | None = None
    preset: str | None = None
    chroma: str = "420"  # "444" or "source"; 4:2:0 plays everywhere (video_writer.EncodeSettings)
    start: float | None = None  # seconds
    duration: float | None = None  # seconds
    max_frames: int | None = None
    side_by_side: bool = False
    temporal: float = 0.0  # TemporalBlender strength; 0: off
    image_format: str | None = None  # "png", "jpg", ...; None: keep the input's
    overwrite: bool = False
    skip_existing: bool = False
    engine: str = "auto"  # torch, onnxruntime, or the one measured faster here (engines.pick_engine)
    max_memory: int | str | None = None  # network working memory, bytes or "3G"; None: a safe share of what is free
    max_pixels: int = DEFAULT_MAX_PIXELS  # inputs declaring more are refused before decoding

    @property
    def encode(self) -> EncodeSettings:
        return EncodeSettings(self.codec, self.crf, self.preset, self.chroma)


@dataclass
class JobResult:
    outputs: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    total: int = 0
    exit_codes: list[int] = field(default_factory=list)  # per failure: its error's kind
    lost_packets: list[tuple[Path, LostPackets]] = field(default_factory=list)  # per input, as VideoResult's

    def raise_for_failures(self):
        """Raises OutputExistsError when every failure was an output in the way, else PartialFailure, with a
        summary line, when any input failed."""
        if not self.failures:
            return
        summary = (f"{len(self.failures)} of {self.total} inputs failed (each named above); "
                   f"{len(self.outputs)} converted, {len(self.skipped)} skipped")
        if len(self.exit_codes) == len(self.failures) and set(self.exit_codes) == {OutputExistsError.exit_code}:
            raise OutputExistsError(summary)
        raise PartialFailure(summary)

    def fail(self, src: Path, message: str, exit_code: int = PartialFailure.exit_code):
        self.failures.append((src, message))
        self.exit_codes.append(exit_code)


@dataclass
class Task:
    src: Path
    dst: Path
    kind: str  # "video" or "image"


@dataclass
class JobPlan:
    """A job's tasks and the inputs refused while planning, (path, message) each."""

    tasks: list[Task]
    refused: list[tuple[Path, str]]


def refuse_all(planned: JobPlan, reporter=None) -> JobResult:
    """The result of a job whose every input was refused while planning: each reported, nothing loaded.
    `reporter`: a vidcycle.apply.jobs.Reporter, or None."""
    result = JobResult(total=len(planned.refused))
    for src, message in planned.refused:
        failed(result, reporter, src, message)
    return result


def failed(result: JobResult, reporter, src: Path, message: str, exit_code: int = MediaError.exit_code):
    """An input failed: into the result, the log and the reporter (if any)."""
    result.fail(src, message, exit_code)
    log.error("%s", message)
    if reporter is not None:
        reporter.input_failed(src, message)


def output_tag(model) -> str:
    """What outputs are named after (NAME_TAG.EXT): a model file's stem, or the store name as given; the
    same as the loaded model's name, known without loading it."""
    text = str(getattr(model, "name", model))
    return Path(text).stem if text.endswith(_MODEL_SUFFIXES) or os.sep in text else text


def plan_job(inputs, model_tag: str, output=None, options: ApplyOptions = ApplyOptions()) -> JobPlan:
    """Plan a job before anything heavy loads. Raises MediaError when an input does not exist,
    OutputExistsError when outputs exist (unless options.overwrite or options.skip_existing), UsageError
    for an -o that cannot hold the job. Inputs whose header declares more than options.max_pixels are
    refused here, each in `refused`; an unreadable header is left for the run to report. Under torchrun,
    existing outputs are refused input by input as each process reaches them."""
    for item in inputs:
        require_existing(item)
    tasks, refused = plan_tasks(inputs, model_tag, output, options.image_format)
    # Under torchrun the processes plan at different moments, while others already write: each then refuses
    # an existing output of its own share as that input's failure instead.
    _remove_leftovers(tasks)
    if not (options.overwrite or options.skip_existing or TorchrunEnv.read().active):
        _refuse_existing([task.dst for task in tasks if task.dst.exists()])
    kept = []
    for task in tasks:
        try:
            size = _declared(task)
        except MediaError:
            size = (0, 0)  # a header that does not read: the run names what is wrong
        try:
            check_pixels(task.src, *size, options.max_pixels)
        except MediaError as error:
            refused.append((task.src, str(error)))
            continue
        kept.append(task)
    return JobPlan(kept, refused)


def _remove_leftovers(tasks: list[Task]) -> None:
    """A work folder a run killed after its join left beside its complete output goes, whatever this job
    then does with that output (refuses it, skips it or replaces it)."""
    left = [task.dst for task in tasks
            if task.kind == "video" and task.dst.is_file() and (task.dst.parent / f".{task.dst.name}.parts").is_dir()]
    if left:
        from vidcycle.apply.journal import remove_leftover  # lazy: it loads the media stack; only leftovers need it
        for dst in left:
            remove_leftover(dst)


def _declared(task: Task) -> tuple[int, int]:
    if task.kind == "image":
        from vidcycle.media.images import image_size  # lazy: OpenCV loads for photo jobs only
        return image_size(task.src)
    return declared_size(task.src)


def _refuse_existing(existing: list[Path]):
    if not existing:
        return
    if len(existing) == 1:
        what, them = f"{existing[0]}: exists", "it"
    else:
        what, them = f"{existing[0]} and {len(existing) - 1} more outputs exist", "them"
    raise OutputExistsError(f"{what}; pass overwrite=True to replace {them} or skip_existing=True to keep {them}",
                            cli=f"{what}; pass --overwrite to replace {them} or --skip-existing to keep {them}")


def check_pixels(name, width: int, height: int, max_pixels: int) -> None:
    """Refuse, before decoding, a frame above the pixel limit. Raises MediaError naming the size and the limit."""
    pixels = width * height
    if pixels > max_pixels:
        raise MediaError(f"{name}: {width}x{height} is {pixels / 1e6:.0f} MP, above the {max_pixels / 1e6:.0f} MP "
                         f"limit; refused before decoding (raise max_pixels, --max-pixels, if this is intended)")


def plan_tasks(inputs, model_tag: str, output=None, image_format: str | None = None):
    """Every (input, output) pair of a job, and the inputs that cannot be planned (missing, clashing)."""
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(model_tag)).stem) or "translated"
    output = Path(output) if output is not None else None
    from vidcycle.media.images import (  # OpenCV loads only for jobs, not for translate_video
        IMAGE_SUFFIXES,
        format_suffix,
    )
    image_suffix = format_suffix(image_format) if image_format else None
    found, failures = _expand(inputs, output, tag)
    single_file = output is not None and len(found) == 1 and found[0][1] is None and _names_a_file(output)
    if output is not None and not single_file and not output.is_dir() and \
            output.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
        raise UsageError(f"-o {output} names a file, but the job has {len(found)} inputs or a folder; "
                         f"give a folder instead")
    tasks, claimed = [], {}
    for src, root in found:
        kind = "image" if src.suffix.lower() in IMAGE_SUFFIXES else "video"
        suffix = (image_suffix or src.suffix.lower()) if kind == "image" else output_suffix(src)
        if single_file:
            dst = output
        elif output is None:
            dst = src.with_name(f"{src.stem}_{tag}{suffix}")
        else:
            dst = (output / (src.relative_to(root) if root else _tree_path(src))).with_suffix(suffix)
        key = os.path.abspath(dst)
        if key == os.path.abspath(src):
            failures.append((src, f"{src}: output would overwrite the input; choose another -o"))
        elif key in claimed:
            failures.append((src, f"{src}: output {dst} is also the output of {claimed[key]}; use separate -o folders"))
        else:
            claimed[key] = src
            tasks.append(Task(src, dst, kind))
    return tasks, failures


def _names_a_file(output: Path) -> bool:
    return not output.is_dir() and not str(output).endswith(("/", os.sep)) and bool(output.suffix)


def _tree_path(src: Path) -> Path:
    """Where a file named directly goes under -o: its relative path when below the cwd, else its name."""
    if not src.is_absolute() and ".." not in src.parts:
        return src
    try:
        return src.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return Path(src.name)


def _expand(inputs, output: Path | None, tag: str):
    found: list[tuple[Path, Path | None]] = []
    failures: list[tuple[Path, str]] = []
    seen = set()
    from vidcycle.media.images import IMAGE_SUFFIXES  # lazy: OpenCV loads for photo jobs only
    skip = _skip_rule(output, tag)
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            candidates = [(src, path) for src in walk_media(path, IMAGE_SUFFIXES | VIDEO_SUFFIXES, skip)]
        elif path.is_file():
            candidates = [(path, None)]
        else:
            require_existing(path)
            failures.append((path, f"{path}: neither a file nor a folder"))
            continue
        for src, root in candidates:
            if os.path.abspath(src) not in seen:
                seen.add(os.path.abspath(src))
                found.append((src, root))
    return found, failures


def _skip_rule(output: Path | None, tag: str):
    """In folders: the output folder, and, when writing beside the inputs, earlier outputs of this model."""
    skip_dir = os.path.abspath(output) if output is not None else None

    def skip(path: Path) -> bool:
        if skip_dir is not None:
            return os.path.abspath(path) == skip_dir
        return path.stem.endswith(f"_{tag}") and not path.is_dir()
    return skip


# ---------------------------------------------------------------- outputs
