"""A training process keeps the memory it frees for its next step instead of faulting it in again."""

import platform
import subprocess
import sys
import textwrap

import pytest

from conftest import TINY, run_cli, write_noisy_images

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="the setting is glibc's malloc's")

# Two 40 MiB tensors allocated and freed 16 times, as a step's activations are, and the minor page
# faults of the last 4 times: glibc maps blocks over 32 MiB afresh each time by default (20480 pages a
# time); kept, they come from the heap, which needed up to 6 times to settle when measured.
PAGES = 2 * 40 * 2**20 // 4096
FAULTS_OF_REUSE = textwrap.dedent("""
    import resource, torch
    def reuse_faults():
        for time in range(16):
            if time == 12:
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            activations = [torch.ones(10 * 2**20) for _ in range(2)]
            del activations
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
""")


def child(body: str) -> int:
    done = subprocess.run([sys.executable, "-c", FAULTS_OF_REUSE + textwrap.dedent(body)], capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.strip().splitlines()[-1])


def test_keeping_freed_memory_ends_the_page_faults_of_reuse():
    assert child("print(reuse_faults())") > 4 * PAGES * 0.9
    assert child("""
        from vidcycle.runtime.allocator import keep_freed_memory
        assert keep_freed_memory()
        print(reuse_faults())
    """) < 4 * PAGES * 0.1


@pytest.mark.parametrize("command", ["train", "distill"])
def test_every_training_run_asks_to_keep_freed_memory(tmp_path, monkeypatch, tiny_model_file, command):
    """The step's side of it: each run (train and distill share the scaffold) asks at its start. Recorded,
    not done, so this test process keeps glibc's defaults."""
    from vidcycle.training import run as run_module
    asked = []
    monkeypatch.setattr(run_module, "keep_freed_memory", lambda: asked.append(True))
    x = write_noisy_images(tmp_path / "summer", 3, (60, 160, 60))
    y = write_noisy_images(tmp_path / "winter", 3, (220, 220, 240), seed=1)
    if command == "train":
        result = run_cli("train", "--x", x, "--y", y, *TINY, "--max-steps", 1, "--out", tmp_path / "run")
    else:
        result = run_cli("distill", tiny_model_file, "--data", x, "--name", "fast", "--recipe", "distill-tiny",
                         "--workers", 0, "--precision", "fp32", "--max-steps", 1, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert asked == [True]
