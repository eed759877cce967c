"""benchmarks/gpu_apply.py runs on a bare machine: network figures with torch alone, results.json always."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_apply.py"
TINY = ["--device", "cpu", "--size", "96x64", "--blocks", "1", "--ngf", "8", "--frames", "8", "--naive-frames", "4"]


def run_without_pyav(tmp_path, *args):
    """The script with `import av` failing, as on a GPU machine without PyAV."""
    code = ("import runpy, sys; sys.modules['av'] = None; "
            f"sys.argv = [{str(SCRIPT)!r}, *sys.argv[1:]]; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)


def test_network_only_needs_no_pyav_and_writes_results(tmp_path):
    result = run_without_pyav(tmp_path, "--network-only", *TINY, "--results", str(tmp_path / "results.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["stages_done"] == ["network"] and report["failed_stage"] is None
    assert report["network_fps"][str(report["default_batch"])] > 0 and report["one_frame_fp32_fps"] > 0
    assert report["limited_by"] == "network" and "limited by: network" in result.stdout


def test_a_failing_stage_is_named_in_the_results(tmp_path):
    import torch
    broken = ["--device", "cuda:7" if torch.cuda.is_available() else "cuda"]  # a device this machine lacks
    result = run_without_pyav(tmp_path, "--network-only", *TINY, *broken, "--results", str(tmp_path / "results.json"))
    assert result.returncode != 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["failed_stage"] == "network" and "DeviceError" in report["error"]


def test_without_pyav_the_pipeline_is_skipped_not_failed(tmp_path):
    result = run_without_pyav(tmp_path, *TINY, "--results", str(tmp_path / "results.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "results.json").read_text())
    assert "PyAV" in report["pipeline_skipped"] and "end_to_end_fps" not in report
