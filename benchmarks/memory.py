"""Memory benchmark: peak RSS of `vidcycle apply` on inputs too big for a naive run, under --max-memory.

    python benchmarks/memory.py [--model demo-summer2winter] [--only a,b,c,d]

Each conversion is a fresh `vidcycle apply` process; its peak RSS is the kernel's high-water mark
(VmHWM from /proc/PID/status, polled every 50 ms and written by the child itself as it exits),
torch itself included. Not ru_maxrss from wait4: Linux carries the pre-exec image's peak into
it, and subprocess vforks, so a child's ru_maxrss is at least this benchmark's own peak. Cases:

  (a) an 8000x6000 (48 MP) photo with --max-memory 3G: peak RSS at most 4 GiB
  (b) a 3840x2160 clip of 30 frames with --max-memory 2G
  (c) a 1536x1536 photo untiled and with --max-memory 256M: PSNR between the two outputs (>= 40 dB) and
      the seam measure (mean |step| across each tile border over the mean |step| in the 32 columns or rows
      beside it, tiled beside untiled: the excess must stay within 10%)
  (d) a PNG whose header declares 30000x30000 (under 1 MB): refused in under 5 s wall, start-up included,
      peak RSS under 1 GiB, one line on stderr
"""

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GIB = 2 ** 30


def cpu_flags() -> str:
    """The CPU, its speed flags and whether bf16 runs natively or emulated (benchmarks/machine.py)."""
    from benchmarks.machine import cpu_description  # here: ROOT is on sys.path only once the module has run
    return cpu_description()


# The child writes its own VmHWM as it exits (atexit runs on sys.exit and on errors), so a peak in the
# last moments is not missed between two polls.
HWM_AT_EXIT = ("import atexit, os, runpy, sys\n"
               "def hwm():\n"
               "    with open('/proc/self/status') as status, open(os.environ['HWM_FILE'], 'w') as out:\n"
               "        out.write(next(line for line in status if line.startswith('VmHWM:')).split()[1])\n"
               "atexit.register(hwm)\n"
               "sys.argv = ['vidcycle', *sys.argv[1:]]\n"
               "runpy.run_module('vidcycle', run_name='__main__')\n")


def run_apply(args: list, timeout: float = 3600) -> dict:
    """`vidcycle apply ARGS` in a child process: wall seconds, exit code, stderr, peak RSS."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log, tempfile.NamedTemporaryFile("r") as hwm_file:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HWM_FILE": hwm_file.name}
        child = subprocess.Popen([sys.executable, "-c", HWM_AT_EXIT, "apply", *map(str, args)], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=log, env=env)
        hwm = 0
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)  # reaped here, so ru_maxrss is the child's
            if pid:
                break
            hwm = max(hwm, _vm_hwm(child.pid))
            if time.perf_counter() - start > timeout:
                child.kill()
            time.sleep(0.05)
        child.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        stderr = log.read().decode(errors="replace")
        at_exit = int(hwm_file.read() or 0) * 1024  # empty if the child was killed
    return {"wall": time.perf_counter() - start, "code": child.returncode, "stderr": stderr,
            "peak": max(hwm, at_exit)}


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def landscape(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth scene with texture: structure at several scales, so a trained model has something to do."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 220, (max(2, height // 64), max(2, width // 64), 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    fine = cv2.resize(rng.normal(0, 18, (max(2, height // 4), max(2, width // 4), 3)).astype(np.float32),
                      (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(image + fine, 0, 255).astype(np.uint8)


def case_a(model: str, work: Path) -> None:
    photo = work / "photo_48mp.jpg"
    cv2.imwrite(str(photo), landscape(6000, 8000), [cv2.IMWRITE_JPEG_QUALITY, 92])
    result = run_apply([photo, "-m", model, "--max-memory", "3G", "-o", work / "a_out.jpg"])
    _line("a", "8000x6000 photo, --max-memory 3G", result, limit=4 * GIB)


def case_b(model: str, work: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from clips import write_sliding_clip
    texture = landscape(2160, 3840 + 4 * 30)
    clip = write_sliding_clip(work / "clip_4k.mp4", texture, 30, 3840, step=4, crf=20)
    result = run_apply([clip, "-m", model, "--max-memory", "2G", "-o", work / "b_out.mp4"])
    _line("b", "3840x2160 clip, 30 frames, --max-memory 2G", result)


def case_c(model: str, work: Path) -> None:
    from vidcycle.metrics import psnr
    photo = work / "photo_1536.png"
    cv2.imwrite(str(photo), landscape(1536, 1536, seed=3)[..., ::-1])
    whole = run_apply([photo, "-m", model, "-o", work / "c_whole.png"])
    tiled = run_apply([photo, "-m", model, "--max-memory", "256M", "-o", work / "c_tiled.png"])
    _line("c", "1536x1536 photo, untiled", whole)
    _line("c", "1536x1536 photo, --max-memory 256M", tiled)
    a = cv2.imread(str(work / "c_tiled.png")).astype(np.float64)
    b = cv2.imread(str(work / "c_whole.png")).astype(np.float64)
    db = psnr(a, b)
    rows, cols = _seams(model, photo)
    excess = max(_seam_excess(a, b, cols), _seam_excess(a.transpose(1, 0, 2), b.transpose(1, 0, 2), rows))
    print(f"    PSNR tiled vs untiled {db:.1f} dB (target >= 40: {'met' if db >= 40 else 'NOT met'}); "
          f"{len(rows)} row and {len(cols)} column borders; worst seam excess over the untiled output "
          f"{100 * excess:.1f}% (target <= 10%: {'met' if excess <= 0.10 else 'NOT met'})", flush=True)


def _seams(model: str, photo: Path):
    import torch

    import vidcycle
    from vidcycle.models.frames import frames_to_batch
    translator = vidcycle.load_model(model, device="cpu", max_memory="256M", engine="torch")
    chosen = translator.plan(1536, 1536)
    batch = frames_to_batch(torch.zeros(1, 1536, 1536, 3, dtype=torch.uint8), translator.dtype)
    print(f"    plan under 256M: {chosen}")
    if chosen.tile is None:
        return [], []
    return translator.tiler.seams(batch, chosen.tile, chosen.overlap, chosen.keep_bytes)


def _seam_excess(tiled: np.ndarray, whole: np.ndarray, borders) -> float:
    """The largest difference, tiled minus untiled, of (step across a border / steps beside it)."""
    def ratios(image):
        steps = np.abs(np.diff(image, axis=1)).mean(axis=(0, 2))
        out = []
        for border in borders:
            beside = [c for c in range(border - 17, border + 16) if 0 <= c < len(steps) and c + 1 not in borders]
            out.append(steps[border - 1] / max(1e-9, steps[beside].mean()))
        return np.array(out)
    return float(np.max(np.abs(ratios(tiled) - ratios(whole)))) if borders else 0.0


def case_d(model: str, work: Path) -> None:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(b"\0" * (30001 * 64), 9)  # a few rows' worth: the header is what matters
    bomb = work / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    result = run_apply([bomb, "-m", model, "-o", work / "d_out.png"])
    lines = [line for line in result["stderr"].splitlines() if "30000x30000" in line]
    _line("d", f"30000x30000 PNG header, {bomb.stat().st_size / 1e6:.2f} MB on disk", result, limit=GIB)
    print(f"    wall {result['wall']:.2f} s (target < 5: {'met' if result['wall'] < 5 else 'NOT met'}); "
          f"exit {result['code']}; stderr lines naming it: {len(lines)}: {lines[0] if lines else '(none)'}")


def _line(case: str, what: str, result: dict, limit: int | None = None) -> None:
    verdict = ""
    if limit is not None:
        verdict = f" (target <= {limit / GIB:.0f} GiB: {'met' if result['peak'] <= limit else 'NOT met'})"
    print(f"({case}) {what}: exit {result['code']}, {result['wall']:.1f} s, peak RSS "
          f"{result['peak'] / GIB:.2f} GiB{verdict}", flush=True)
    if result["code"] not in (0, 9):
        print(result["stderr"][-2000:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo-summer2winter")
    parser.add_argument("--only", default="a,b,c,d")
    args = parser.parse_args()
    print(f"CPU flags: {cpu_flags()}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; "
          f"model {args.model}", flush=True)
    cases = {"a": case_a, "b": case_b, "c": case_c, "d": case_d}
    with tempfile.TemporaryDirectory(prefix="vidcycle_memory_") as tmp:
        for name in args.only.split(","):
            cases[name](args.model, Path(tmp))


if __name__ == "__main__":
    main()
