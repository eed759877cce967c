"""Planning a job: every input clip and photo (folders walked recursively) paired with the output it goes
to, beside it as NAME_MODEL.EXT or mirrored under an output folder, and the inputs that cannot be planned
(missing, or two inputs that would write one output)."""

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vidcycle.errors import UsageError
from vidcycle.files import walk_media
from vidcycle.media.video import VIDEO_SUFFIXES
from vidcycle.media.video_writer import output_suffix


@dataclass
class Task:
    src: Path
    dst: Path
    kind: str  # "video" or "image"



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
            failures.append((path, f"{path}: no such file or folder"))
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
