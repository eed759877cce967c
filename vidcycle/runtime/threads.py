"""The thread policy, in one place: how OpenMP (torch) and ONNX Runtime threads wait between parallel
regions, for the command line and the Python API alike.

Apply shares the cores with its decode and encode threads, so idle OpenMP workers must sleep
(OMP_WAIT_POLICY=PASSIVE) rather than spin and starve them. Training spins as the reference
implementation does while the machine is otherwise idle, and sleeps only when other work shares the
CPUs. ONNX Runtime never spins, for apply's reason. OpenMP reads the variable once, when torch loads
it, so `prepare` must run before torch is imported; afterwards it changes nothing. The user's own
OMP_WAIT_POLICY or GOMP_SPINCOUNT always wins. Measured: benchmarks/README.md, "OpenMP threads: spin
or sleep".
"""

import os
import sys
import time

JOBS = ("apply", "train")


def prepare(job: str) -> None:
    """Set the OpenMP wait policy for `job` ("apply" or "train") if torch is not loaded yet."""
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}; use one of {JOBS}")
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    if job == "apply" or busy_cpus() >= 0.5:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def configure_onnxruntime(options, threads: int) -> None:
    """ONNX Runtime's session threads: `threads` for each operator, one between them, none spinning."""
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")


def busy_cpus(seconds: float = 0.2) -> float:
    """CPUs' worth of work other processes do now (this one sleeps meanwhile): /proc/stat over a moment,
    else the 1-minute load average."""
    def sample():
        with open("/proc/stat", encoding="ascii") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait
    try:
        total_0, idle_0 = sample()
        time.sleep(seconds)
        total_1, idle_1 = sample()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 1.0
    span = max(1, total_1 - total_0)
    return (1 - (idle_1 - idle_0) / span) * (os.cpu_count() or 1)
