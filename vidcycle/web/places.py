"""The folders the web app may touch, and the one check every path and name from the page goes through.

The app reads and writes only inside its roots (`--root`, repeatable), the model store, its work folder
and its runs folder. A path from the page is refused when it has a `..` part, or when, with its symlinks
resolved, it lies outside every root; an absolute path is accepted only inside a root.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vidcycle.errors import UsageError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class Places:
    roots: tuple[Path, ...]   # resolved; what the page may read from (and start runs on)
    work: Path                # the app's own folder: uploads, tasks and their outputs
    runs: Path                # training and distillation run folders

    @classmethod
    def make(cls, roots, work, runs=None) -> "Places":
        """Resolve and create the folders. Raises UsageError for a root that is not a folder."""
        resolved = []
        for root in roots:
            path = Path(root).expanduser()
            if not path.is_dir():
                raise UsageError(f"{root}: --root must be an existing folder")
            resolved.append(path.resolve())
        work = Path(work).expanduser()
        runs = Path(runs).expanduser() if runs else work / "runs"
        for folder in (work, runs):
            folder.mkdir(parents=True, exist_ok=True)
        return cls(tuple(resolved), work.resolve(), runs.resolve())

    def in_root(self, text: str, root: str | None = None) -> Path:
        """A path typed on the page: relative to `root` (one of the roots; default the first), or absolute
        inside a root. Raises UsageError when it has a `..` part, is empty of roots, or leaves them."""
        if not self.roots:
            raise UsageError("no folders on this server are open to the page; start it with --root DIR")
        text = (text or "").strip()
        if any(part == ".." for part in Path(text).parts):
            raise UsageError(f"{text}: '..' is refused; give a path inside a root ({self.root_list()})")
        base = self.roots[0] if not root else Path(root).resolve()
        if base not in self.roots:
            raise UsageError(f"{root}: not one of this server's roots ({self.root_list()})")
        path = Path(text) if os.path.isabs(text) else base / text
        real = path.resolve()
        if not any(real == r or r in real.parents for r in self.roots):
            why = "a symlink that leads" if os.path.realpath(path) != os.path.abspath(path) else "a path"
            raise UsageError(f"{text}: {why} outside the roots is refused ({self.root_list()})")
        if not real.exists():
            raise UsageError(f"{text}: not found under {base}")
        return real

    def inside_own(self, path) -> Path:
        """A path the app made itself (work or runs folder), checked again before it is read or served.
        Raises UsageError."""
        real = Path(path).resolve()
        if not any(real == own or own in real.parents for own in (self.work, self.runs)):
            raise UsageError(f"{path}: outside this server's work and runs folders; refused")
        return real

    def root_list(self) -> str:
        return ", ".join(str(r) for r in self.roots) or "none"


def check_name(name: str, what: str = "name") -> str:
    """A name for a run, a model or a file: letters, digits, '_', '.', '-'; no '..', no separators.
    Raises UsageError."""
    name = (name or "").strip()
    if ".." in name or not _NAME.match(name):
        raise UsageError(f"{name or '(empty)'}: a {what} is letters, digits, '_', '.' and '-', starting with a "
                         f"letter or digit, without '..' or '/'")
    return name
