"""The plan of the package holds: imports point one way, inference never loads training, and the public
API (names, CLI commands and options) is what users were promised."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import vidcycle
from vidcycle.cli import cli

PACKAGE = Path(vidcycle.__file__).parent
# Lowest first: a module may import from its own layer or below, never above.
LAYERS = [
    {"vidcycle.errors", "vidcycle.files", "vidcycle.metrics", "vidcycle.progress", "vidcycle.version"},
    {"vidcycle.media"},
    {"vidcycle.models"},
    {"vidcycle.runtime"},
    {"vidcycle.apply", "vidcycle.quality"},
    {"vidcycle.training"},
    {"vidcycle.web"},  # the web app: a view over apply, training and the store, as the CLI is
    {"vidcycle.cli", "vidcycle.__main__", "vidcycle"},  # the package's face loads the API lazily
]


def layer_of(module: str) -> int:
    for depth in (2, 1):
        prefix = ".".join(module.split(".")[:depth])
        for index, layer in enumerate(LAYERS):
            if prefix in layer:
                return index
    raise AssertionError(f"{module} belongs to no layer")


# The reason an import inside a function gives, on its own line: a comment of three words or more,
# e.g. "# lazy: --help stays instant".
REASON = re.compile(r"#\s*\S+(\s+\S+){2,}")


def package_imports():
    """(importer, imported, line, inside a function, reason given) for every import of a vidcycle module."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        source = path.read_text().splitlines()
        tree = ast.parse("\n".join(source))
        local = {id(node) for function in ast.walk(tree) if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for node in ast.walk(function)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not node.level, f"{path}:{node.lineno}: relative import"
                names = [f"{node.module}.{alias.name}" if (PACKAGE.parent / node.module.replace(".", "/") /
                                                             f"{alias.name}.py").exists() else node.module
                         for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            reason = bool(REASON.search(source[node.lineno - 1]))
            found += [(module, name, node.lineno, id(node) in local, reason)
                      for name in names if name.split(".")[0] == "vidcycle"]
    return found


def test_no_import_runs_back_up_a_layer():
    upward = [(a, b, line) for a, b, line, _, _ in package_imports() if layer_of(b) > layer_of(a)]
    assert not upward


def test_no_import_loop_among_modules():
    graph: dict[str, set] = {}
    for importer, imported, _, inside, _ in package_imports():
        if not inside and imported != "vidcycle":
            graph.setdefault(importer, set()).add(imported)

    def visit(module, trail):
        assert module not in trail, " -> ".join([*trail, module])
        for target in graph.get(module, ()):
            visit(target, [*trail, module])
    for module in graph:
        visit(module, [])


def test_an_import_inside_a_function_says_why_on_its_own_line():
    silent = [(a, b, line) for a, b, line, inside, reason in package_imports() if inside and not reason]
    assert not silent


def test_the_reason_check_takes_a_reason_and_nothing_less():
    assert REASON.search("    from x import y  # lazy: --help stays instant")
    assert REASON.search("    from x import (  # OpenCV loads only for jobs")
    assert not REASON.search("    from x import y  #")
    assert not REASON.search("    from x import y  # lazy")


def test_applying_a_model_loads_no_training_and_joins_no_process_group(tmp_path, tiny_model_file):
    """torch itself imports torch.distributed, so the check is on our modules and on the process group."""
    from conftest import write_clip
    clip = write_clip(tmp_path / "clip.mp4", frames=4)
    script = f"""
import sys, torch
import vidcycle
model = vidcycle.load_model({str(tiny_model_file)!r}, device="cpu")
vidcycle.translate_video({str(clip)!r}, {str(tmp_path / "out.mp4")!r}, model)
loaded = sorted(m for m in sys.modules if m.startswith(("vidcycle.training", "vidcycle.quality", "vidcycle.cli")))
print(loaded, torch.distributed.is_initialized())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["[]", "False"], done.stdout + done.stderr
    assert (tmp_path / "out.mp4").stat().st_size > 0


def test_the_public_names_are_those_promised():
    assert sorted(vidcycle.__all__) == sorted([
        "__version__", "load_model", "Translator", "available_models", "list_models", "load_recipe", "Recipe",
        "translate_video", "translate_image", "translate_folder", "ApplyOptions", "train", "RunOptions", "distill",
        "DistillOptions", "DistillRecipe", "evaluate", "evaluate_unpaired", "measure_flicker",
        # the error kinds, each with its exit code
        "VidcycleError", "UsageError", "RecipeError", "MediaError", "ModelError", "DownloadError", "FeaturesMissing",
        "DeviceError", "OutputExistsError", "PartialFailure", "TrainingError"])
    for name in vidcycle.__all__:
        assert getattr(vidcycle, name) is not None
    for function in ("train", "distill", "evaluate", "load_model", "translate_video"):
        assert callable(getattr(vidcycle, function)), function  # no subpackage shadows a public function


def test_the_commands_and_their_options_are_those_promised():
    found = {}
    for name, command in cli.commands.items():
        for sub, leaf in (getattr(command, "commands", None) or {None: command}).items():
            found[" ".join(filter(None, (name, sub)))] = sorted(o for p in leaf.params for o in p.opts)
    run = ["--cache-dir", "--device", "--max-steps", "--no-export", "--out", "--overwrite", "--precision", "--resume",
           "--compile", "--set", "--time", "--workers"]
    assert found == {
        "apply": ["--batch-size", "--chroma", "--codec", "--crf", "--device", "--duration", "--engine", "--format",
                  "--max-frames", "--max-memory", "--max-pixels", "--model", "--output", "--overwrite", "--precision",
                  "--preset", "--side-by-side", "--skip-existing", "--start", "--temporal", "-m", "-o", "inputs"],
        "distill": sorted(run + ["--data", "--name", "--recipe", "teacher"]),
        "eval": ["--device", "--features", "--frames-per-clip", "--json", "--max-memory", "--model", "--precision",
                 "--reverse-model", "--sheet", "--truth", "--x", "--y",
                 "--y-stats", "--y-train"],
        "eval-video": ["--json", "--max-side", "--overwrite", "--plot", "source", "translated"],
        "extract": ["--dedup-threshold", "--every-nth", "--fps", "--max-frames-per-clip", "--max-side", "--output",
                    "--overwrite", "-o", "inputs"],
        "models export": ["--name", "--overwrite", "--reverse-name", "run_dir"],
        "models export-onnx": ["--fp16", "--opset", "--output", "--overwrite", "-o", "name"],
        "models import": ["--from", "--name", "--overwrite", "--to", "checkpoint"],
        "models info": ["--json", "name"],
        "models list": ["--json"],
        "models pull": ["--overwrite", "name"],
        "serve": ["--device", "--host", "--max-upload", "--password", "--port", "--root", "--runs", "--work"],
        "train": sorted(run + ["--batch-size", "--crop-size", "--features", "--iterations", "--kid", "--lr", "--name",
                               "--recipe", "--reverse-name", "--seed", "--x", "--y"]),
    }


def test_the_three_job_functions_take_their_arguments_in_one_order():
    import inspect
    for function in (vidcycle.translate_video, vidcycle.translate_folder, vidcycle.translate_inputs
                     if hasattr(vidcycle, "translate_inputs") else None):
        if function is None:
            continue
        assert list(inspect.signature(function).parameters)[1:3] in (["dst", "model"], ["output", "model"])
    from vidcycle.apply.jobs import translate_inputs
    assert list(inspect.signature(translate_inputs).parameters)[:3] == ["inputs", "output", "model"]
    assert inspect.signature(vidcycle.load_model).parameters["engine"].default == vidcycle.ApplyOptions().engine
