"""The CLI shell: instant help, one error boundary, exit codes, python -m."""

import ast
import subprocess
import sys

from conftest import run_cli
from vidcycle.errors import ModelError


def test_help_does_not_import_torch():
    code = ("import sys; from vidcycle.cli import cli; "
            "sys.argv=['vidcycle','--help']\n"
            "try:\n    cli()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
            "assert 'av' not in sys.modules and 'cv2' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "vidcycle" in result.stdout


def test_python_dash_m_and_models_help():
    result = subprocess.run([sys.executable, "-m", "vidcycle", "models", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "import" in result.stdout and "pull" in result.stdout


def test_user_error_is_one_line_with_exit_code_and_debug_shows_traceback(tmp_path, monkeypatch):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"definitely not a checkpoint")
    result = run_cli("models", "import", str(bad), "--name", "x")
    assert result.exit_code == 5
    assert result.output.count("\n") == 1 and result.output.startswith("vidcycle: error:")
    monkeypatch.setenv("VIDCYCLE_DEBUG", "1")
    debug = run_cli("models", "import", str(bad), "--name", "x")
    assert isinstance(debug.exception, ModelError)  # re-raised with its traceback, not turned into a line


def test_api_works_without_a_store():
    result = subprocess.run([sys.executable, "-c", "import vidcycle; print(vidcycle.available_models())"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    assert {"demo-summer2winter", "demo-winter2summer"} <= set(ast.literal_eval(result.stdout))
