"""Files on disk: the one atomic writer, and the one walker that finds media under the inputs.

Every file vidcycle writes goes through `atomic_path`: a temporary file beside
the destination, renamed onto it only when complete, so a reader or a killed
run never sees half a file. Files get the mode any program gives (0666 minus
the umask) instead of tempfile's private 0600, so a web server, a share or a
teammate can read what vidcycle made.

`walk_media` is the one rule for finding inputs: folders are searched
recursively in sorted order, hidden files and folders (ours are temporaries)
are skipped, symbolic links are followed, and a folder reached twice through
links is walked once (no loops).
"""

import glob
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path

from vidcycle.errors import MediaError

PARTIAL = ".partial"  # temporaries are ".<stem>.<token>.partial<suffix>": the suffix tells muxers the format


@contextmanager
def scratch_path(near):
    """Yield a fresh hidden path beside `near` (same folder, same suffix), removed when the block ends."""
    near = Path(near)
    near.parent.mkdir(parents=True, exist_ok=True)
    tmp = near.with_name(f".{near.stem}.{secrets.token_hex(4)}{PARTIAL}{near.suffix}")
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(dst, durable: bool = False):
    """Yield a fresh temporary path beside `dst`; rename it onto `dst` when the block completes.

    Whatever writes the path (open, PyAV, safetensors, torch.save) creates it
    with the umask's mode. `durable` fsyncs the file and its folder, for what
    must survive a power cut (checkpoints, models). On any exception the
    temporary is removed and `dst` is left as it was; an OS error that names
    no file, or the temporary, is raised again naming `dst`.
    """
    dst = Path(dst)
    with scratch_path(dst) as tmp:
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~current_umask())  # some writers (safetensors) make private files
            if durable:
                _fsync(tmp)
            os.replace(tmp, dst)
            if durable:
                _fsync(dst.parent)
        except OSError as error:
            if error.filename not in (None, str(tmp)):
                raise
            raise OSError(error.errno, error.strerror, str(dst)) from error


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(dst, data: bytes | str, durable: bool = False) -> None:
    """Write bytes or UTF-8 text to `dst` through atomic_path."""
    with atomic_path(dst, durable) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)


def remove_partials(dst) -> None:
    """Temporaries of `dst` left by a run that was killed (SIGKILL cannot clean up)."""
    dst = Path(dst)
    pattern = f".{glob.escape(dst.stem)}.*{PARTIAL}{glob.escape(dst.suffix)}"
    for stale in dst.parent.glob(pattern):
        stale.unlink(missing_ok=True)


def new_folder(parent, prefix: str) -> Path:
    """A new, uniquely named folder in `parent` with the umask's mode (mkdtemp's would be 0700)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        folder = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # some file systems refuse to open folders: nothing more to do there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def walk_media(folder, suffixes, skip=None, recursive: bool = True):
    """Files under `folder` whose suffix (lower case) is in `suffixes`, sorted, each once.

    Hidden files and folders are skipped; links are followed, but a folder
    already walked (the same device and inode) is not entered again.
    `skip(path) -> bool`, if given, prunes folders and drops files.
    """
    seen: set[tuple[int, int]] = set()
    yield from _walk(Path(folder), {s.lower() for s in suffixes}, skip, seen, recursive)


def _walk(folder: Path, suffixes: set, skip, seen: set, recursive: bool):
    try:
        identity = folder.stat()
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return  # unreadable folder: nothing to find there
    key = (identity.st_dev, identity.st_ino)
    if key in seen:
        return
    seen.add(key)
    folders = []
    for entry in entries:  # a folder's own files first, then its subfolders (as os.walk goes)
        path = Path(entry.path)
        if entry.name.startswith(".") or (skip is not None and skip(path)):
            continue
        try:
            if entry.is_dir():
                if recursive:
                    folders.append(path)
            elif entry.is_file() and path.suffix.lower() in suffixes:
                yield path
        except OSError:
            continue
    for path in folders:
        yield from _walk(path, suffixes, skip, seen, recursive)


def require_existing(path) -> Path:
    """`path` as a Path when something is there. Raises MediaError, the one answer every command gives for
    an input that does not exist (exit 4)."""
    found = Path(path).expanduser()
    if not found.exists():
        raise MediaError(f"{path}: no such file or folder")
    return found


def read_json_lines(path) -> list:
    """The values of a JSON-lines file (a loss log) up to its first line that does not parse: a line cut
    short by a kill, after which nothing is trusted. A missing file has none."""
    path = Path(path)
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
    return rows
