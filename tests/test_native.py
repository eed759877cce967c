"""C kernels built at run time: built once and kept, and where there is no compiler or the build fails,
one logged line and the torch operations instead."""

import logging
import subprocess
import threading

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, run_cli, write_noisy_images
from vidcycle.models.store import store_home
from vidcycle.runtime import native, winograd


@pytest.fixture
def fresh(monkeypatch):
    """Nothing built or loaded yet in this process, as in a new one."""
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_told_no_compiler", [])


def needs_compiler():
    if native.c_compiler() is None:
        pytest.skip("no C compiler on this machine")


def kept_builds():
    folder = store_home() / "kernels"
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def test_a_build_is_kept_and_not_repeated(fresh, monkeypatch):
    needs_compiler()
    assert native.load("winograd_kernels") is not None
    built = kept_builds()
    assert len(built) == 1 and built[0].startswith("winograd_kernels-") and built[0].endswith(".so")
    monkeypatch.setattr(native, "_loaded", {})          # a new process: the kept build is loaded, not rebuilt
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: pytest.fail("built again"))
    assert native.load("winograd_kernels") is not None
    assert kept_builds() == built


def test_a_changed_source_is_built_again_and_replaces_the_old_build(fresh, monkeypatch, tmp_path):
    needs_compiler()
    assert native.load("winograd_kernels") is not None
    old = kept_builds()
    changed = tmp_path / "winograd_kernels.c"
    changed.write_text((native.SOURCES / "winograd_kernels.c").read_text() + "\n/* a new version */\n")
    monkeypatch.setattr(native, "SOURCES", tmp_path)
    monkeypatch.setattr(native, "_loaded", {})
    assert native.load("winograd_kernels") is not None
    new = kept_builds()
    assert len(new) == 1 and new != old


def test_a_build_started_early_runs_on_another_thread_and_load_waits_for_it(fresh, monkeypatch):
    """A run's setup starts the build, then gathers its data; the first convolution's `load` waits for it."""
    needs_compiler()
    builders, compile_for_real = [], subprocess.run

    def counted(*args, **kwargs):
        builders.append(threading.current_thread())
        return compile_for_real(*args, **kwargs)

    monkeypatch.setattr(subprocess, "run", counted)
    native.load_soon("winograd_kernels")
    native.load_soon("winograd_kernels")            # asked again while it builds: still one build
    library = native.load("winograd_kernels")
    assert library is not None and winograd.fused_transforms() is library
    assert len(builders) == 1 and builders[0] is not threading.main_thread()
    assert len(kept_builds()) == 1
    native.load_soon("winograd_kernels")            # known now: nothing started
    assert len(builders) == 1


def convolution_still_right():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 10, 14, generator=generator, requires_grad=True)
    weight = torch.randn(8, 8, 3, 3, generator=generator)
    got, expected = winograd.winograd_conv3x3(x, weight), F.conv2d(x, weight)
    return float((got - expected).norm() / expected.norm()) < 1e-5


def test_no_compiler_is_one_line_and_torch_operations(fresh, monkeypatch, caplog):
    monkeypatch.setenv("CC", "no-such-compiler")
    with caplog.at_level(logging.INFO, logger="vidcycle"):
        assert native.load("winograd_kernels") is None
        assert winograd.fused_transforms() is None
        assert convolution_still_right()
    assert [record.getMessage() for record in caplog.records] == [
        "no C compiler (cc, gcc, clang or $CC) to build vidcycle's C kernels (winograd_kernels.c and the others): "
        "torch operations run instead, a few percent slower"]
    assert kept_builds() == []


def test_a_failing_build_is_one_line_and_leaves_nothing(fresh, monkeypatch, caplog, tmp_path):
    failing = tmp_path / "broken-cc"
    failing.write_text("#!/bin/sh\necho 'broken-cc: fatal error: no space left' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CC", str(failing))
    with caplog.at_level(logging.INFO, logger="vidcycle"):
        assert native.load("winograd_kernels") is None
        assert native.load("winograd_kernels") is None      # tried once a process
        assert convolution_still_right()
    assert [record.getMessage() for record in caplog.records] == [
        "could not build winograd_kernels.c (broken-cc: fatal error: no space left): torch operations run "
        "instead, a few percent slower"]
    assert [record.levelname for record in caplog.records] == ["WARNING"]
    assert kept_builds() == []                                # no partial file left behind


def test_they_can_be_turned_off(fresh, monkeypatch, caplog):
    monkeypatch.setenv("VIDCYCLE_NATIVE_KERNELS", "0")
    with caplog.at_level(logging.INFO, logger="vidcycle"):
        assert native.load("winograd_kernels") is None
    assert caplog.records == [] and kept_builds() == []


def test_a_training_run_without_a_compiler_says_so_once_and_trains(fresh, monkeypatch, tmp_path):
    """An AVX2 CPU (Winograd's convolutions on) with no C compiler: one line at the start, the same run."""
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setattr(winograd, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    x = write_noisy_images(tmp_path / "summer", 3, (60, 160, 60))
    y = write_noisy_images(tmp_path / "winter", 3, (220, 220, 240), seed=1)
    result = run_cli("train", "--x", x, "--y", y, *TINY, "--no-export", "--max-steps", 2, "--set", "model.ngf=64",
                     "--set", "schedule.log_every=1",
                     "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert result.output.count("no C compiler") == 1
    assert "cpu fp32 (Winograd's 3x3 convolutions)" in result.output
    assert (tmp_path / "run" / "losses.jsonl").read_text().count("\n") == 2
