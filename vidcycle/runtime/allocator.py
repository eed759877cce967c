"""The C allocator for training: keep freed memory mapped in the process instead of handing it back.

A training step frees and allocates the same activations again every iteration. glibc's malloc serves
big blocks by mmap, unmaps them when freed and trims its heap's top, so every step faults its pages in
again: 36-87 thousand minor page faults in each step of the 128-px CycleGAN on a 2-core Xeon held to
AVX2, and its step ran 0.94-0.96x the time without them (benchmarks/README.md, "Freed memory kept").
With mmap off, big blocks come from the heap and stay there for the next step (after a few steps to
settle), and the heap is trimmed only when over 2 GiB of its top is free: the process keeps its peak,
which training reaches every step anyway. The setting is the process's: in a notebook it outlasts the run.
"""

from __future__ import annotations

import ctypes
import platform
import sys

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int: trim only past 2 GiB of free heap


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep what this process frees for its next allocations: no mmap'd blocks,
    no trimming. Returns whether it took (False off Linux's glibc: macOS, Windows, musl keep their own
    allocators' ways)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
