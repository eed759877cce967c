"""The CLI shell: instant help, one error boundary, exit codes, python -m."""

import ast
import os
import re
import subprocess
import sys

import pytest

from conftest import run_cli
from vidcycle.cli import cli
from vidcycle.errors import MediaError, ModelError


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


MISSING_INPUT = {  # every command that reads media, the missing path in each of its input flags
    "apply": ["apply", "{gone}", "-m", "no-such-model"],
    "train --x": ["train", "--x", "{gone}", "--y", "{here}"],
    "train --y": ["train", "--x", "{here}", "--y", "{gone}"],
    "train --resume": ["train", "--resume", "{gone}"],
    "distill --data": ["distill", "no-such-model", "--data", "{gone}", "--name", "s"],
    "distill --resume": ["distill", "--resume", "{gone}"],
    "eval --x": ["eval", "--model", "no-such-model", "--x", "{gone}"],
    "eval --truth": ["eval", "--model", "no-such-model", "--x", "{here}", "--truth", "{gone}"],
    "eval --y": ["eval", "--model", "no-such-model", "--x", "{here}", "--y", "{gone}"],
    "eval --y-train": ["eval", "--model", "no-such-model", "--x", "{here}", "--truth", "{here}", "--y-train", "{gone}"],
    "eval-video": ["eval-video", "{gone}", "{here}/a.mp4"],
    "extract": ["extract", "{gone}", "-o", "{here}/frames"],
}


@pytest.mark.parametrize("args", MISSING_INPUT.values(), ids=MISSING_INPUT.keys())
def test_a_missing_input_is_one_line_and_exit_4_in_every_command_before_any_model(tmp_path, args):
    here, gone = tmp_path / "here", tmp_path / "gone"
    here.mkdir()
    (here / "a.mp4").write_bytes(b"")
    result = run_cli(*[arg.format(here=here, gone=gone) for arg in args])
    assert result.exit_code == MediaError.exit_code == 4  # not 5: no model was looked up before the inputs
    assert result.stderr.splitlines() == [f"vidcycle: error: {gone}: no such file or folder"]


def test_device_and_precision_offer_the_same_choices_in_every_command():
    seen = {}
    for name, command in cli.commands.items():
        for param in command.params:
            if param.name in ("device", "precision"):
                choices = getattr(param.type, "choices", None)
                seen.setdefault(param.name, set()).add((tuple(choices) if choices else None, param.default))
    assert seen["device"] == {(None, "auto")} and seen["precision"] == {(("auto", "fp32", "fp16", "bf16"), "auto")}
    helps = {param.help for command in cli.commands.values() for param in command.params if param.name == "device"}
    assert len(helps) == 1 and "mps" not in helps.pop()


def test_recipe_help_lists_every_shipped_recipe_of_its_kind_without_loading_torch():
    from vidcycle.training.recipe import shipped_recipe_methods
    methods = shipped_recipe_methods()
    assert methods["demo-teacher"] == "cyclegan" and methods["distill"] == "distill"
    code = ("import sys; from vidcycle.cli import cli; sys.argv = ['vidcycle', sys.argv[1], '--help']\n"
            "try:\n    cli()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported by --help'\n")
    for command in ("train", "distill"):
        result = subprocess.run([sys.executable, "-c", code, command], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        helped = " ".join(result.stdout.split()).replace("- ", "-")  # undo click's wrapping
        listed = set(re.findall(r"[\w-]+", helped.split("--recipe FILE|NAME", 1)[1].split("--set", 1)[0]))
        for name, method in methods.items():
            assert (name in listed) == ((method == "distill") == (command == "distill")), (command, name, listed)


def test_an_unknown_recipe_lists_the_recipes_of_the_right_kind(tmp_path):
    (tmp_path / "x").mkdir()
    wrong = run_cli("train", "--x", tmp_path / "x", "--y", tmp_path / "x", "--recipe", "distill-tiny")
    assert wrong.exit_code == 3
    assert "distill-tiny is a distillation recipe" in wrong.stderr and "demo-teacher" in wrong.stderr
    listed = wrong.stderr.split("shipped training recipes:")[1]
    assert "distill" not in listed
    other = run_cli("distill", "demo-summer2winter", "--data", tmp_path / "x", "--name", "s", "--recipe", "nope")
    assert other.exit_code == 3 and other.stderr.split("shipped distillation recipes:")[1].split() == [
        "demo-student-s2w,", "distill,", "distill-tiny"]


def progress_commands(tmp_path, model):
    from conftest import write_clip, write_noisy_images
    clip = write_clip(tmp_path / "clip.mp4", frames=12, size=(48, 32))
    x = write_noisy_images(tmp_path / "x", 3, (60, 160, 60))
    y = write_noisy_images(tmp_path / "y", 3, (220, 220, 240), seed=1)
    return {
        "apply": ["apply", clip, "-m", model, "-o", tmp_path / "out.mp4", "--batch-size", "2"],
        "train": ["train", "--x", x, "--y", y, "--recipe", "tiny", "--workers", "0", "--precision", "fp32",
                  "--max-steps", "3", "--no-export", "--out", tmp_path / "run"],
        "extract": ["extract", clip, "-o", tmp_path / "frames"],
    }


@pytest.mark.parametrize("command", ["apply", "train", "extract"])
def test_progress_in_a_log_is_plain_lines(tmp_path, tiny_model_file, command):
    """stderr to a file, as a batch job or nohup has it: progress lines, never a carriage return (a terminal
    keeps its tqdm bars). VIDCYCLE_PROGRESS_SECONDS=0 asks for a line at every step, so a tiny job shows some."""
    args = [str(arg) for arg in progress_commands(tmp_path, str(tiny_model_file))[command]]
    log = tmp_path / "stderr.log"
    with open(log, "wb") as stderr:
        done = subprocess.run([sys.executable, "-m", "vidcycle", *args], stdout=subprocess.DEVNULL, stderr=stderr,
                              env={**os.environ, "VIDCYCLE_PROGRESS_SECONDS": "0"}, timeout=240)
    text = log.read_bytes().decode()
    assert done.returncode == 0, text
    assert "\r" not in text and "\x1b" not in text
    counts = [line for line in text.splitlines() if re.search(r": \d+(/\d+)? (frames|iterations|clips)", line)]
    assert len(counts) >= 2, text
    assert any(re.search(r"(fps|it/s|clips/s)", line) for line in counts), text


def test_a_finished_command_leaves_at_once_with_everything_said_and_done(tmp_path):
    """`vidcycle` skips the interpreter's teardown, not what it would wait for: its code, the exit handlers,
    threads still running, and every byte written to stdout and stderr."""
    code = ("import atexit, sys, threading, time\n"
            "from vidcycle.cli import leave\n"
            f"done = {str(tmp_path)!r}\n"
            "atexit.register(lambda: open(done + '/handler', 'w').write('ran'))\n"
            "threading.Thread(target=lambda: (time.sleep(0.3), open(done + '/thread', 'w').write('ran'))).start()\n"
            "sys.stdout.write('x' * 200000)\n"
            "sys.stderr.write('last words')\n"
            "leave(3)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert result.stdout == "x" * 200000 and result.stderr == "last words"
    assert (tmp_path / "handler").read_text() == "ran" and (tmp_path / "thread").read_text() == "ran"


def test_the_command_keeps_its_exit_codes_and_output(tmp_path):
    listed = subprocess.run([sys.executable, "-m", "vidcycle", "models", "list"], capture_output=True, text=True,
                            env={**os.environ, "VIDCYCLE_HOME": str(tmp_path)}, timeout=120)
    assert listed.returncode == 0 and "demo-summer2winter" in listed.stdout, listed.stderr
    missing = subprocess.run([sys.executable, "-m", "vidcycle", "apply", str(tmp_path / "none.mp4"), "-m", "demo"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 4
    assert missing.stderr.startswith("vidcycle: error:") and missing.stderr.count("\n") == 1
    asked = subprocess.run([sys.executable, "-m", "vidcycle", "--version"], capture_output=True, text=True)
    assert asked.returncode == 0 and "vidcycle" in asked.stdout


def test_main_called_in_a_process_ends_with_system_exit_and_leaves_the_process_alone(monkeypatch, capsys):
    """A notebook or script calling `main` gets click's SystemExit back; only the executable skips teardown."""
    from vidcycle.cli import main
    monkeypatch.setattr(sys, "argv", ["vidcycle", "--version"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0 and "vidcycle" in capsys.readouterr().out
