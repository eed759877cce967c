"""`vidcycle extract`: the frames training would sample from clips, written as PNG files to look at."""

import glob
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vidcycle.errors import MediaError, OutputExistsError, UsageError
from vidcycle.files import new_folder
from vidcycle.media.images import is_image_path
from vidcycle.progress import bar
from vidcycle.training.framecache import SamplingConfig, collect_media, reason, sample_clip


@dataclass
class ExtractReport:
    written: list[Path]
    failures: list[tuple[Path, str]]



def extract_frames(inputs, out_dir, sampling: SamplingConfig, overwrite: bool = False,
                   progress=None) -> ExtractReport:
    """Write the sampled frames of every video under `inputs` into `out_dir` as PNG files.

    Frames are named `<clip stem>_<frame index>.png` (the index of the frame in
    the clip), in subfolders mirroring those under each input folder. Each clip
    is written to a hidden staging folder and moved into place when complete.
    Raises OutputExistsError, before decoding anything, when frames of a clip
    are already there and `overwrite` is off (with it, they are replaced);
    MediaError when no video is found. Unreadable clips go to `failures`.
    """
    out_dir = Path(out_dir)
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    jobs = _extract_jobs(inputs, out_dir)
    if not jobs:
        raise MediaError(f"{', '.join(map(str, inputs))}: no videos found")
    clashes = [(clip, prefix) for clip, prefix in jobs if _existing_frames(prefix)]
    if clashes and not overwrite:
        clip, prefix = clashes[0]
        what = f"{prefix.parent}: already holds frames of {clip.name} ({prefix.name}_*.png)"
        raise OutputExistsError(f"{what}; pass overwrite=True to replace them",
                                cli=f"{what}; pass --overwrite to replace them")
    written: list[Path] = []
    failures: list[tuple[Path, str]] = []
    with bar(progress, "extract", len(jobs), "clip") as counter:
        for clip, prefix in jobs:
            try:
                written.extend(_extract_one(clip, prefix, sampling))
            except MediaError as error:
                failures.append((clip, reason(error, clip)))
            except OSError as error:
                raise UsageError(f"{prefix.parent}: cannot write frames ({error.strerror or error}); "
                                 f"pick another output folder (-o)") from error
            counter.update(1)
    return ExtractReport(written, failures)


def _extract_jobs(inputs: list[Path], out_dir: Path) -> list[tuple[Path, Path]]:
    """(clip, output prefix) pairs; clips whose stems clash in one folder keep their suffix in the name."""
    jobs, seen = [], set()
    for raw in inputs:
        root = raw.expanduser()
        for clip in collect_media([root]):
            if is_image_path(clip) or clip.resolve() in seen:
                continue
            seen.add(clip.resolve())
            relative = clip.parent.relative_to(root) if root.is_dir() else Path()
            jobs.append((clip, out_dir / relative, clip))
    stems: dict[tuple[Path, str], int] = {}
    for _, folder, clip in jobs:
        stems[(folder, clip.stem)] = stems.get((folder, clip.stem), 0) + 1
    result = []
    for _, folder, clip in jobs:
        name = clip.stem if stems[(folder, clip.stem)] == 1 else f"{clip.stem}_{clip.suffix.lstrip('.')}"
        result.append((clip, folder / name))
    return result


def _existing_frames(prefix: Path) -> list[Path]:
    if not prefix.parent.is_dir():
        return []
    return [p for p in prefix.parent.glob(f"{glob.escape(prefix.name)}_*.png")
            if p.stem[len(prefix.name) + 1:].isdigit()]


def _extract_one(clip: Path, prefix: Path, sampling: SamplingConfig) -> list[Path]:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    staging = new_folder(prefix.parent, ".vidcycle-extract-")
    try:
        frames = sample_clip(clip, sampling, staging, suffix=".png")
        for old in _existing_frames(prefix):
            old.unlink()
        targets = []
        for file, index in zip(frames.files, frames.indices):
            target = prefix.parent / f"{prefix.name}_{index:06d}.png"
            os.replace(staging / file, target)
            targets.append(target)
        return targets
    finally:
        shutil.rmtree(staging, ignore_errors=True)
