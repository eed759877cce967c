"""The work folder of a long clip and its journal: what makes a segmented run survive a crash.

    .NAME.EXT.parts/journal.jsonl     the clip's identity (source, model, options), then one line per
                                      finished segment (its span, pts, end, frame count and sha256),
                                      and {"joined": true} once the output is about to appear
    .NAME.EXT.parts/lock              flock'ed by the run that writes the output; holds its pid
    .NAME.EXT.parts/00003.mp4         segment 3: the video alone, starting on a keyframe
    .NAME.EXT.parts/00003.state.npz   with --temporal, the blender's state after its last frame

Running the same job again finds the journal, checks that source, model and options are the same and
keeps the finished segments; anything not in the journal (a half-written segment) is discarded, and a
journal line that is not a whole record of a segment (cut short by a kill, damaged, foreign) is a
segment not done. The folder is hidden, so folder jobs never take its segments for inputs; a run
killed while it went leaves it "joined" (or without a journal), and the next run on that output
removes it (`remove_leftover`). vidcycle.apply.segments cuts, translates and joins the segments.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from vidcycle.errors import OutputExistsError, UsageError
from vidcycle.files import write_atomic
from vidcycle.media.video import VideoInfo
from vidcycle.media.video_writer import EncodeSettings, output_pix_fmt, resolved_settings
from vidcycle.models.modelfile import file_sha256, state_hash

JOURNAL, LOCK, FORMAT, VERSION = "journal.jsonl", "lock", "vidcycle-apply-journal", 1
SAMPLE_BYTES = 1 << 20  # the source's first and last MiB are hashed: a changed file is seen without reading it all
log = logging.getLogger("vidcycle")


def work_folder(dst) -> Path:
    """Where a clip's segments and journal wait until the output is done."""
    dst = Path(dst)
    return dst.with_name(f".{dst.name}.parts")


def identity(src: Path, dst: Path, info: VideoInfo, translator, options, segment_seconds: float) -> dict:
    """What a clip's segments depend on: the source file, the model's weights, the options that change
    pixels or encoding (after defaults are resolved, so that naming a default is the same job), and how the
    network runs (precision and engine change pixels too)."""
    stat = src.stat()
    model = translator.info.content_hash or state_hash(translator.generator.state_dict())
    settings = resolved_settings(options.encode, dst.suffix)
    width = info.width * (2 if options.side_by_side else 1)
    return {"source": {"path": str(src.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                       "sample": _sample_hash(src, stat.st_size)},
            "model": model,
            "options": {"codec": settings.codec, "crf": settings.crf, "preset": settings.preset,
                        "pix_fmt": output_pix_fmt(settings, width, info.height, info.pix_fmt, dst),
                        "side_by_side": options.side_by_side, "temporal": options.temporal, "start": options.start,
                        "duration": options.duration, "container": dst.suffix.lower(),
                        "engine": translator.engine_name, "precision": translator.precision,
                        "device": translator.device.type, "segment_seconds": segment_seconds}}


def _sample_hash(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(SAMPLE_BYTES))
        handle.seek(max(0, size - SAMPLE_BYTES))
        digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def difference(then: dict, now: dict) -> str | None:
    """What differs between a journal's identity and this job's, in words; None when they agree."""
    version = then.get("version")
    if type(version) is not int:
        return "its journal is damaged (no format version)"
    if version > VERSION:
        return f"its journal is from a newer vidcycle (journal format {version}, this one reads {VERSION})"
    if then.get("source") != now["source"]:
        return "the source file changed since (size, date or content)"
    if then.get("model") != now["model"]:
        return f"it was made with another model (content hash {str(then.get('model'))[:12]}, now {now['model'][:12]})"
    before = _with_defaults(then.get("options"))
    changed = [f"{key} {before.get(key)!r} then, {value!r} now" for key, value in now["options"].items()
               if before.get(key) != value and not (key == "pix_fmt" and key not in before)]
    return f"it was made with other options ({'; '.join(changed)})" if changed else None


def _with_defaults(options) -> dict:
    """A journal's options with the encoder defaults filled in (journals before 2026-12 wrote None for them)."""
    if not isinstance(options, dict):
        return {}
    suffix = options.get("container")
    if not isinstance(suffix, str) or not all(isinstance(options.get(key), (str, int, type(None)))
                                              for key in ("codec", "crf", "preset")):
        return options
    settings = resolved_settings(EncodeSettings(options.get("codec"), options.get("crf"), options.get("preset")),
                                 suffix)
    return {**options, "codec": settings.codec, "crf": settings.crf, "preset": settings.preset}


@dataclass
class Journal:
    """The work folder's record: the clip's identity, then one line per finished segment. While open, it
    holds the work folder's lock (None for the torchrun processes that join a run another one opened)."""

    folder: Path
    done: dict = field(default_factory=dict)  # segment index -> its journal line
    lock: int | None = None  # the descriptor flock holds

    @classmethod
    def open(cls, folder: Path, now: dict, overwrite: bool, dst: Path, count: int, tidy: bool = True) -> Journal:
        """The journal of an unfinished run of this same job, or a new one. `count`: how many segments the
        clip has. `tidy`: take the lock and remove what the journal does not list (False for the processes
        that join a run another one opened). Raises OutputExistsError when another vidcycle holds the work
        folder, or an unfinished run of another job is there and `overwrite` is not set."""
        for path in (folder, folder / LOCK) if overwrite else ():
            if path.is_symlink() or path.exists() and not (path.is_dir() if path == folder else path.is_file()):
                _remove(path)  # not what vidcycle makes there: --overwrite clears whatever is in the way
        lock = _lock(folder, dst) if tidy else None
        try:
            return cls._open(folder, now, overwrite, dst, count, tidy, lock)
        except BaseException:
            if lock is not None:
                os.close(lock)
            raise

    @classmethod
    def _open(cls, folder, now, overwrite, dst, count, tidy, lock) -> Journal:
        path = folder / JOURNAL
        if path.exists() or path.is_symlink():
            header, lines, problem = _read(path)
            problem = problem or difference(header, now)
            if problem is None:
                return cls(folder, _kept(folder, lines, count, tidy), lock)
            if not overwrite:
                said = f"{dst}: an unfinished run in {folder} cannot be continued: {problem}; pass "
                raise OutputExistsError(f"{said}overwrite=True to start afresh",
                                        cli=f"{said}--overwrite to start afresh")
            log.warning("%s: starting afresh: %s", dst, problem)
        folder.mkdir(parents=True, exist_ok=True)
        _clear(folder)
        # Whole or absent: a kill right after the folder appeared must leave nothing that looks damaged.
        write_atomic(path, json.dumps({"format": FORMAT, "version": VERSION, **now}) + "\n", durable=True)
        return cls(folder, {}, lock)

    def record(self, line: dict) -> None:
        _append(self.folder / JOURNAL, line)
        self.done[line["segment"]] = line

    def mark_joined(self) -> None:
        """The output is about to appear: a run killed from here on leaves a folder the next run removes."""
        with naming(self.folder):
            _append(self.folder / JOURNAL, {"joined": True})

    def frames(self) -> int:
        return sum(line["frames"] for line in self.done.values())

    def reread(self, count: int) -> None:
        """Take in the segments other processes recorded since this one opened the journal."""
        header, lines, problem = _read(self.folder / JOURNAL)
        if problem is None:
            self.done = _kept(self.folder, lines, count, tidy=True)

    def close(self) -> None:
        """Let go of the work folder's lock (a killed process lets go of it too)."""
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None


def _lock(folder: Path, dst: Path) -> int:
    """Hold the work folder's lock file for this process; its pid goes in it, for the message another run
    gives. flock dies with its holder, so a killed run leaves no stale lock. Raises OutputExistsError when
    another process holds it."""
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)  # never write through a link
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(descriptor)
            raise OutputExistsError(f"{dst}: another vidcycle (pid {holder}) is writing this output (work folder "
                                    f"{folder}); wait for it to finish, or stop it and run again") from None
        except BaseException:
            os.close(descriptor)
            raise
        try:
            current = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
            return descriptor
        os.close(descriptor)  # the run that held it finished and removed the folder meanwhile: take a new one


def _read(path: Path) -> tuple[dict | None, list, str | None]:
    """(header, the lines after it, None), or (None, [], what is wrong) when the file is no journal of ours.
    A line that is not JSON (cut short by a kill, damaged) stays in the list as None: not a record."""
    if not path.is_file():
        return None, [], f"its journal {path} is not a file"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None, [], f"its journal {path} is unreadable (not text)"
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except (ValueError, RecursionError):  # RecursionError: nested past what json reads
            lines.append(None)
    if not lines or not isinstance(lines[0], dict) or lines[0].get("format") != FORMAT:
        return None, [], f"its journal {path} is unreadable (not a vidcycle journal)"
    return lines[0], lines[1:], None


def _segment(line, count: int) -> int | None:
    """The segment a journal line records, or None for anything that is not a whole record of one."""
    if not isinstance(line, dict):
        return None
    k, hashes, state = line.get("segment"), line.get("hashes"), line.get("state")
    if type(k) is not int or not 0 <= k < count or line.get("file") != f"{k:05d}.mp4" or not isinstance(hashes, dict):
        return None
    if state is not None and state != f"{k:05d}.state.npz":
        return None
    if type(line.get("frames")) is not int or line["frames"] < 0 or type(line.get("damaged_packets", 0)) is not int:
        return None
    if line.get("end") is not None and type(line["end"]) is not int:
        return None
    if not _pts_range(line.get("pts")) or (line.get("pts") and not _is_fraction(line.get("time_base"))):
        return None
    names = [line["file"], *([state] if state else [])]
    return k if all(isinstance(hashes.get(name), str) for name in names) else None


def _is_fraction(text) -> bool:
    try:
        return isinstance(text, str) and Fraction(text) > 0
    except (ValueError, ZeroDivisionError):
        return False


def _pts_range(value) -> bool:
    return isinstance(value, list) and len(value) in (0, 2) and all(type(pts) is int for pts in value)


def _kept(folder: Path, lines: list, count: int, tidy: bool = True) -> dict:
    """The recorded segments whose files are whole; with `tidy`, everything else in the folder goes."""
    kept = {}
    for line in lines:
        k = _segment(line, count)
        if k is not None and all(_intact(folder / name, line["hashes"][name])
                                 for name in (line["file"], line.get("state")) if name):
            kept[k] = line
    wanted = {JOURNAL, LOCK} | {name for line in kept.values() for name in (line["file"], line.get("state")) if name}
    for path in folder.iterdir() if tidy else ():
        if path.name not in wanted:
            _remove(path)
    return kept


def _intact(path: Path, sha256: str) -> bool:
    return path.is_file() and file_sha256(path) == sha256


def _append(path: Path, line: dict) -> None:
    """One line, durable before anything relies on it: one write (atomic in O_APPEND), then fsync."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.write(descriptor, (json.dumps(line) + "\n").encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _clear(folder: Path) -> None:
    """Everything in the work folder but its lock (a new run starts here)."""
    for path in folder.iterdir():
        if path.name != LOCK:
            _remove(path)


def _joined(folder: Path) -> bool:
    """Whether the work folder is what a run left after its output was complete: its journal says it was
    joined, or is gone (the folder was being removed)."""
    path = folder / JOURNAL
    if not path.exists():
        return True
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("joined") is True:
            return True
    return False


def remove_leftover(dst) -> None:
    """Remove the work folder that a run killed after its join left beside its complete output (whatever this
    run then does with that output), unless another vidcycle holds it. What cannot be removed is named in a
    warning; the job goes on."""
    dst = Path(dst)
    folder = work_folder(dst)
    if not dst.is_file() or folder.is_symlink() or not folder.is_dir() or not _joined(folder):
        return
    try:
        descriptor = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as error:
        log.warning("%s: cannot remove %s, left by an earlier run after the output was complete (%s)", dst, folder,
                    error.strerror)
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        shutil.rmtree(folder)
        log.info("%s: removed %s, left by an earlier run after the output was complete", dst, folder)
    except BlockingIOError:
        pass  # another vidcycle is writing this output again (--overwrite): the folder is its own
    except OSError as error:
        log.warning("%s: cannot remove %s, left by an earlier run after the output was complete (%s)", dst, folder,
                    error.strerror)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def naming(folder: Path):
    """An OS error in the work folder names the path that failed, not the clip (the caller names that)."""
    try:
        yield
    except OSError as error:
        where = error.filename or folder
        raise UsageError(f"{where}: {error.strerror or error} (in the work folder of a long clip)") from error
