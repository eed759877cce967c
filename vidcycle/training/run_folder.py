"""The run folder: what a training run writes, and reads back to continue.

    RUN_DIR/recipe.toml        the resolved recipe
    RUN_DIR/run.json           inputs, names, frame cache (so --resume needs nothing else)
    RUN_DIR/checkpoint.pt      latest checkpoint (atomic, fsynced; loads with weights_only=True)
    RUN_DIR/losses.jsonl       one line per log interval, losses averaged over it
    RUN_DIR/loss_curves.png    the same as curves
    RUN_DIR/samples/iter_NNNNNN.png   sample grids on held-out frames
    RUN_DIR/tensorboard/       when tensorboard is installed

Rank 0 alone writes here under torchrun.
"""

import json
import random
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from vidcycle.errors import OutputExistsError, TrainingError, UsageError
from vidcycle.files import atomic_path, read_json_lines, remove_partials, write_atomic
from vidcycle.media.charts import loss_chart, write_png
from vidcycle.models.names import pair_names
from vidcycle.runtime.torchrun import TorchrunEnv
from vidcycle.training.recipe import Recipe, recipe_to_toml

CHECKPOINT, RUN_FILE, RECIPE_FILE = "checkpoint.pt", "run.json", "recipe.toml"
LOSS_LOG, CURVES, SAMPLES = "losses.jsonl", "loss_curves.png", "samples"
# Version 2: pools and RNG states per rank ("ranks"), so a torchrun run resumes exactly on every rank.
CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "vidcycle-checkpoint", 2


# ---------------------------------------------------------------- the folder and its record

def default_run_dir(name: str) -> Path:
    """runs/NAME in the current folder, or runs/NAME-2, -3, ... when taken: never reuse a run folder."""
    base = Path("runs") / name
    candidate, n = base, 1
    # Under torchrun every rank computes this; only rank 0 creates it, so no renumbering there.
    while candidate.exists() and not TorchrunEnv.read().active:
        n += 1
        candidate = base.with_name(f"{name}-{n}")
    return candidate


def create_run_dir(run_dir: Path, recipe: Recipe, record: dict) -> None:
    """Make the run folder with its recipe and record (rank 0). Raises OutputExistsError, UsageError."""
    if not TorchrunEnv.read().main:
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise OutputExistsError(f"{run_dir}: run folder exists and is not empty; continue it with "
                                f"--resume {run_dir} (vidcycle.training.trainer.resume), or pick another run folder "
                                f"(out, --out)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / RECIPE_FILE, recipe_to_toml(recipe))
        write_atomic(run_dir / RUN_FILE, json.dumps(record, indent=2) + "\n")
    except OSError as error:
        raise UsageError(f"{run_dir}: cannot write the run folder ({error.strerror or error}); "
                         f"pick another run folder (out, --out)") from error


def new_record(names: dict, inputs: dict, cache_dir, version: str) -> dict:
    """run.json: the store names, the inputs as absolute paths, the frame cache, when and by what."""
    record = {**names, **{key: [str(Path(p).expanduser().resolve()) for p in paths] for key, paths in inputs.items()}}
    return {**record, "cache_dir": str(cache_dir) if cache_dir else None, "vidcycle": version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def read_run(run_dir) -> dict:
    """The run's record (run.json). Raises TrainingError when the folder is not a vidcycle run."""
    try:
        return json.loads((Path(run_dir) / RUN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise TrainingError(f"{run_dir}: not a vidcycle run folder (no {RUN_FILE})") from error
    except (OSError, ValueError) as error:
        raise TrainingError(f"{run_dir}/{RUN_FILE}: unreadable ({error})") from error


def run_source(run_dir) -> str:
    """What models exported from this run record as their source."""
    return f"trained: {Path(run_dir).resolve()}"


def direction_names(name: str | None, reverse_name: str | None, x_inputs, y_inputs) -> dict:
    """Store and domain names of a run's two directions (the x2y rule: vidcycle.models.names.pair_names),
    with the domains named after the first input folders (or files) unless the name spells them."""
    return pair_names(name, reverse_name, domain_name(x_inputs, "x"), domain_name(y_inputs, "y"))


def domain_name(inputs, fallback: str) -> str:
    if not inputs:
        return fallback
    path = Path(inputs[0]).expanduser().resolve()
    stem = path.name if path.is_dir() else path.stem
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-")
    return clean or fallback


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save, atomically and durably: never half a checkpoint, not even after a power cut. A write that
    fails raises OSError naming `path` (atomic_path names it). Through a Python file: torch's writer, given the
    path, said only "unexpected pos 576 vs 534" on a full disk; given a file, it may hide the file's OSError
    under its own RuntimeError, raised again here."""
    with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as file, _zip_records_without_crc32():
        try:
            torch.save(state, file)
        except RuntimeError as error:
            if isinstance(error.__context__, OSError):
                raise error.__context__ from error
            raise


@contextmanager
def _zip_records_without_crc32():
    """torch.load never checks the CRC32 that torch.save computes for each record (a checkpoint with a byte
    flipped loaded without a word), so it is only cost: 0.19 s of CPU a 320 MB checkpoint on a 2-core VM,
    beside the last sample grid. The atomic, fsynced write is what keeps a checkpoint whole."""
    try:
        from torch.utils.serialization import config
    except ImportError:           # a torch without the setting computes them, as before
        yield
        return
    before = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        yield
    finally:
        config.save.compute_crc32 = before


class CheckpointWriting:
    """save_checkpoint on another thread, for a state nothing changes until `wait` returns: torch.save lets
    go of the GIL while it writes, and a first write of 300 MB into fresh page cache took 1-2.5 s on a
    2-core VM, time the caller spends drawing the last sample grid instead."""

    def __init__(self, path: Path, state: dict):
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._write, args=(path, state), name="vidcycle-checkpoint")
        self.thread.start()

    def _write(self, path: Path, state: dict) -> None:
        try:
            save_checkpoint(path, state)
        except BaseException as error:  # raised again in the caller's thread, by wait()
            self.error = error

    def wait(self) -> None:
        """Until the checkpoint is in place; raises what the writing raised."""
        self.thread.join()
        if self.error is not None:
            raise self.error


def load_checkpoint(path: Path, fmt: str = CHECKPOINT_FORMAT, newest: int = CHECKPOINT_VERSION,
                    what: str = "training") -> dict:
    """Load with weights_only=True (tensors and plain containers only). It must be a `what` checkpoint:
    format `fmt`, version at most `newest`. Raises TrainingError."""
    if not path.is_file():
        raise TrainingError(f"{path.parent}: no checkpoint yet (the run stopped before its first one); "
                            f"start it again")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file; all mean the same here
        raise TrainingError(f"{path}: checkpoint is unreadable ({type(error).__name__}: "
                            f"{str(error).splitlines()[0] if str(error) else ''})") from error
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise TrainingError(f"{path}: not a vidcycle {what} checkpoint")
    if state.get("version", 0) > newest:
        raise TrainingError(f"{path}: checkpoint format {state['version']} is newer than this vidcycle reads")
    return state


def remove_partial_checkpoint(run_dir: Path) -> None:
    """A save cut short by a kill leaves a temporary beside the checkpoint (rank 0 tidies it)."""
    if TorchrunEnv.read().main:
        remove_partials(Path(run_dir) / CHECKPOINT)


def rng_state(device: torch.device) -> dict:
    """Every RNG the run touches, as tensors and plain numbers (loadable with weights_only=True).

    Of the GPUs, only the training device's: a run resumed where fewer GPUs are
    visible must still find its own.
    """
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": int(version), "state": torch.tensor(python_state, dtype=torch.int64),
                        "gauss": python_gauss}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["gauss"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"].tolist()), python_state["gauss"]))
    cuda = state.get("cuda")
    if device.type == "cuda" and isinstance(cuda, torch.Tensor):
        torch.cuda.set_rng_state(cuda, device)  # older checkpoints held a list of every GPU's: not reused


# ---------------------------------------------------------------- the loss log

class LossLog:
    """losses.jsonl and loss_curves.png: one row per log interval, each loss averaged over it."""

    def __init__(self, run_dir: Path, title: str):
        self.path, self.curves, self.title = Path(run_dir) / LOSS_LOG, Path(run_dir) / CURVES, title
        self.rows: list[dict] = []

    def append(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def rewind(self, iteration: int, write: bool) -> None:
        """Keep the rows up to `iteration` (a resumed checkpoint's): later ones will be logged again."""
        self.rows = [row for row in read_json_lines(self.path) if row["iteration"] <= iteration]
        if write:
            write_atomic(self.path, "".join(json.dumps(row) + "\n" for row in self.rows))

    def draw(self, panels: dict, iteration: int) -> None:
        """The curves: one panel per (title: loss keys), up to `iteration`; each panel over the rows that
        have its keys (losses every log interval, a score at checkpoints)."""
        drawn = []
        for title, keys in panels.items():
            rows = [row for row in self.rows if any(key in row for key in keys)]
            series = {key: [row.get(key, float("nan")) for row in rows] for key in keys
                      if any(row.get(key) for row in rows)}
            drawn.append((title, series, [row["iteration"] for row in rows]))
        write_png(self.curves, loss_chart([], drawn, title=f"{self.title}: losses at iteration {iteration}"))


