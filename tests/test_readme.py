"""README.md is the front door: its Python example runs as written, and its commands exist."""

import re
import subprocess
import sys
from pathlib import Path

from conftest import run_cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_python_example_runs(tmp_path):
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "demo-summer2winter" in result.stdout


def test_every_command_line_shown_names_a_real_command():
    shown = set(re.findall(r"^vidcycle ([a-z-]+)(?: ([a-z]+))?", README, re.M))
    assert shown
    for command, sub in shown:
        args = [command, sub] if command == "models" and sub else [command]
        result = run_cli(*args, "--help")
        assert result.exit_code == 0, (args, result.output)


def test_front_door_commands_are_the_ones_the_tests_and_ci_run():
    from test_front_door import FRONT_DOOR
    assert f"pip install -e . && {FRONT_DOOR}" in README
    assert "pip install -e '.[test,web]' && pytest" in README
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "pip install -q -e '.[test,web]'" in ci and "\npytest\n" in ci
