"""Small C kernels shipped as source, built at run time by the machine's C compiler and loaded with ctypes.

A build takes under a second and is kept (in the store's `kernels/` folder, named by a hash of the
source, the flags and the compiler), so a machine pays it once. The kernels run their loops on OpenMP's
threads: built with -fopenmp, they link the libgomp that torch has already loaded, so they share its
threads and its thread count. `load_soon` starts a build on another thread, so the compiler runs while the
caller goes on (a run gathers its data and builds its networks meanwhile); `load` then waits for it.
`call` runs a kernel with its tensors' addresses and torch's thread count.
Where there is no compiler, or the build fails, `load` says so in one logged line and returns None, and
the caller runs its torch operations instead: nothing needs them. `VIDCYCLE_NATIVE_KERNELS=0` turns them
off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from vidcycle.errors import first_line
from vidcycle.models.store import store_home

log = logging.getLogger("vidcycle")

SOURCES = Path(__file__).parent
BUILD_SECONDS = 120
_loaded: dict[str, ctypes.CDLL | None] = {}
_told_no_compiler: list[str] = []      # the source whose build said there is no compiler, once a process
_lock = threading.Lock()


def enabled() -> bool:
    return os.environ.get("VIDCYCLE_NATIVE_KERNELS", "1") != "0"


def c_compiler() -> str | None:
    """$CC, else cc, gcc or clang, or None."""
    wanted = os.environ.get("CC")
    candidates = [wanted] if wanted else ["cc", "gcc", "clang"]
    return next((found for name in candidates if (found := shutil.which(name))), None)


def build_flags() -> list[str]:
    """Optimised, position-independent, OpenMP; AVX2 and FMA where torch runs this CPU with them (fixed
    flags, not -march=native, so a kept build also runs on another CPU of the same kind)."""
    flags = ["-O3", "-fPIC", "-shared", "-fopenmp"]
    if platform.machine() in ("x86_64", "AMD64") and torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        flags += ["-mavx2", "-mfma"]
    return flags


def load(name: str, signatures: dict[str, list] | None = None) -> ctypes.CDLL | None:
    """The kernels of `vidcycle/runtime/<name>.c`, built on first use; None (after one logged line) where
    they cannot be built or are turned off. `signatures` (function name -> its ctypes argument types; each
    returns void) are given to the library the first time a caller passes them."""
    library = _loaded[name] if name in _loaded else _load_locked(name)   # no lock once known: every layer asks
    if library is not None and signatures and not hasattr(library, "typed"):
        for function, argtypes in signatures.items():
            getattr(library, function).argtypes = argtypes
            getattr(library, function).restype = None
        library.typed = True
    return library


def _load_locked(name: str) -> ctypes.CDLL | None:
    with _lock:
        if name not in _loaded:
            _loaded[name] = _build_and_load(name) if enabled() else None
        return _loaded[name]


def call(function, *arguments) -> None:
    """A kernel called with its tensors' addresses (a view's is where it starts; None is NULL) and torch's
    thread count, which the kernel's OpenMP region would not otherwise follow."""
    function(*(ctypes.c_void_p(value.data_ptr()) if isinstance(value, torch.Tensor) else value
               for value in arguments), torch.get_num_threads())


def load_soon(name: str) -> None:
    """Start `load(name)` on another thread, unless it is known already or turned off: on a 2-core CPU the
    compiler takes the core the caller leaves idle. A later `load` waits for it (it holds the lock)."""
    if name not in _loaded and enabled():
        threading.Thread(target=load, args=(name,), name=f"build {name}.c").start()


def _build_and_load(name: str) -> ctypes.CDLL | None:
    compiler = c_compiler()
    if compiler is None:
        if not _told_no_compiler:     # one line a process, however many sources wanted building
            _told_no_compiler.append(name)
            log.info("no C compiler (cc, gcc, clang or $CC) to build vidcycle's C kernels (%s.c and the "
                     "others): torch operations run instead, a few percent slower", name)
        return None
    source = SOURCES / f"{name}.c"
    flags = build_flags()
    key = hashlib.sha256(source.read_bytes() + " ".join([os.path.realpath(compiler), *flags]).encode())
    target = store_home() / "kernels" / f"{name}-{key.hexdigest()[:16]}.so"
    try:
        if not target.exists():
            _build(compiler, flags, source, target)
            for older in target.parent.glob(f"{name}-*.so"):   # other sources' or flags' builds
                if older != target:
                    older.unlink(missing_ok=True)
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("could not build %s.c (%s): torch operations run instead, a few percent slower", name,
                    first_line(error))
        return None


def _build(compiler: str, flags: list[str], source: Path, target: Path) -> None:
    """Compile into a temporary file beside `target`, then rename it into place: a kept build is whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".so")
    os.close(handle)
    try:
        done = subprocess.run([compiler, *flags, "-o", partial, str(source)], capture_output=True, text=True,
                              timeout=BUILD_SECONDS, check=False)
        if done.returncode != 0:
            raise subprocess.SubprocessError(done.stderr.strip() or f"{compiler} exited with {done.returncode}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
