"""Training from two unpaired collections on the run scaffold (vidcycle.training.run): setting a run up
with the recipe's method, built by its builder (CycleGAN's in training.cyclegan, CUT's and FastCUT's in
training.contrastive, another's given to `register_method` with its record), and the entry points
`train`, `resume` and `export_run` for every method the recipe can name.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vidcycle.errors import RecipeError, TrainingError
from vidcycle.models.store import StoredModel, check_store_names, put
from vidcycle.quality.fidelity import InceptionFeatures, find_weights
from vidcycle.runtime.convolutions import prepare_faster_convolutions, use_faster_convolutions
from vidcycle.runtime.device import pick_device, pick_training_precision
from vidcycle.runtime.torchrun import TorchrunEnv
from vidcycle.training import contrastive, cyclegan
from vidcycle.training.amp import Amp
from vidcycle.training.averaging import average_label
from vidcycle.training.budget import now as budget_clock
from vidcycle.training.compiling import compiled_nets
from vidcycle.training.data import run_data
from vidcycle.training.distributed import init_distributed, shutdown
from vidcycle.training.exports import directions, exported_names
from vidcycle.training.kid import KID_FRAMES, CheckpointKid
from vidcycle.training.methods import MethodRecord, method_record, register
from vidcycle.training.recipe import Recipe, load_recipe, recipe_from_dict, shipped_recipes
from vidcycle.training.run import Run, RunFlags, RunResult, execute
from vidcycle.training.run_checkpoints import reopen
from vidcycle.training.run_folder import (CHECKPOINT, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, LossLog,
                                          create_run_dir, default_run_dir, direction_names, load_checkpoint,
                                          new_record, read_run, run_source)
from vidcycle.training.schedule import Schedule
from vidcycle.version import __version__

log = logging.getLogger("vidcycle")
BUDGET_RECIPE = "cyclegan128-budget"  # what bought most in 40 CPU-minutes (benchmarks/README.md)

# Each method's builder, by its name in the table of methods: (recipe, RunData, device, Distributed) -> a
# training.run.Method on this process
BUILDERS: dict[str, Callable] = {"cyclegan": cyclegan.build, "cut": contrastive.build, "fastcut": contrastive.build}


def register_method(record: MethodRecord, build: Callable) -> MethodRecord:
    """Add a training method in one call (or replace one of the same name): its record to the table that
    recipes, exports and the command line read, and its builder to the runs'. Returns the record."""
    BUILDERS[record.name] = build
    return register(record)


def build_method(recipe: Recipe, data, device: torch.device, dist):
    """The recipe's method on this process, built by its builder. Raises TrainingError for a method in the
    table that nobody gave a builder."""
    try:
        build = BUILDERS[recipe.method]
    except KeyError:
        raise TrainingError(f"method {recipe.method} has a record but no builder: add it with "
                            "vidcycle.training.trainer.register_method(record, build)") from None
    return build(recipe, data, device, dist)


@dataclass
class RunOptions(RunFlags):
    """A run's two collections (any method of the table), with the flags every run takes (training.run.RunFlags)."""

    x_inputs: list = field(default_factory=list)
    y_inputs: list = field(default_factory=list)
    reverse_name: str | None = None    # store name of Y -> X; default derived from `name` (X -> Y)
    kid: bool = False                  # score KID of G on held-out frames at each checkpoint
    features: Path | None = None       # the Inception weights for it; default the store's (fetched once)


# The finding both --time lines cite
BUDGET_FINDING = ("on our paired benchmark (+1.0 dB over cyclegan128 fitted by hand, half its flicker; "
                  "benchmarks/README.md)")


def run_recipe(path: Path | None, overrides: dict, options: RunOptions) -> Recipe:
    """The recipe a new run trains with: the file at `path` with `overrides`; with no file, the paper's,
    except for a CycleGAN run under a time budget on a CPU, which takes cyclegan128-budget, what bought
    most in 40 CPU-minutes (said in one line). Raises RecipeError, DeviceError."""
    if path is None and options.time_budget is not None and overrides.get("method", "cyclegan") == "cyclegan" \
            and pick_device(options.device).type == "cpu":
        if TorchrunEnv.read().main:  # one line for the run, not one per process
            log.info("--time on a CPU with no --recipe: training %s, what bought most in 40 CPU-minutes %s; "
                     "--recipe cyclegan keeps the paper's settings", BUDGET_RECIPE, BUDGET_FINDING)
        path = shipped_recipes()[BUDGET_RECIPE]
    return load_recipe(path, overrides)


def name_budget_recipe(recipe: Recipe) -> None:
    """Under --time on a CPU, the paper's own CycleGAN recipe, when asked for, is kept, and one line names
    the recipe that bought most in 40 minutes."""
    if recipe.name == Recipe.name and recipe.method == "cyclegan":
        log.info("--time on a CPU: --recipe %s bought most in 40 minutes %s; this run keeps the paper's recipe",
                 BUDGET_RECIPE, BUDGET_FINDING)


def setup(recipe: Recipe, run_dir: Path, record: dict, options: RunOptions, progress=None, weights=None) -> Run:
    """Join the process group, gather the data, build the recipe's method and the schedule; with
    `weights` (Inception's), the KID scorer on frames held out for it.

    Raises TrainingError, RecipeError, DeviceError, MediaError.
    """
    dist, device = init_distributed(pick_device(options.device))
    dtype = pick_training_precision(options.precision, device, recipe.model.ngf)
    prepare_faster_convolutions(device, dtype)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # training crops have one size
    data = run_data(recipe, record, options.workers, device, dist, progress, KID_FRAMES if weights else 0)
    chosen = method_record(recipe.method)
    method = build_method(recipe, data, device, dist)
    if options.time_budget is not None and device.type == "cpu" and dist.main:
        name_budget_recipe(recipe)
    for generator in method.generators().values():  # the same networks: Winograd's 3x3, tap products
        use_faster_convolutions(generator, device, dtype, layers_read=chosen.reads_layers)
    if options.compile and chosen.compiled:
        example = data.held_x[:1].to(device)
        method.nets = compiled_nets(method.nets, chosen.compiled, example, Amp(device, dtype), options.time_budget)
    schedule = Schedule.from_recipe(recipe, len(data.loader))
    if schedule.total_iterations <= 0:
        raise RecipeError("schedule: nothing to train (epochs + epochs_decay, or iterations + "
                          "iterations_decay, is 0)")
    random.seed(recipe.seed + dist.rank)
    np.random.seed(recipe.seed + dist.rank)
    run = Run(method, recipe, Path(run_dir), record, options, dist, device, Amp(device, dtype), data.loader,
              schedule, LossLog(run_dir, record["name"]), CHECKPOINT_FORMAT, CHECKPOINT_VERSION, data.failures)
    if weights is not None and dist.main:
        run.kid = CheckpointKid(weights, data.kid_x, data.kid_y, device)
    return run


# ---------------------------------------------------------------- entry points

def train(recipe: Recipe, options: RunOptions, progress=None) -> RunResult:
    """Start a new run: create the run folder, train, checkpoint, export both directions.

    `progress` (optional): a vidcycle.progress.Progress, whose bars count the frames gathered and the
    iterations (with the losses as status); what the run has to say goes to the "vidcycle" logger.
    Raises TrainingError, MediaError, RecipeError, DeviceError,
    OutputExistsError (run folder or store names taken).
    """
    if not options.x_inputs or not options.y_inputs:
        raise TrainingError("training needs both x_inputs and y_inputs (--x and --y)")
    if recipe.one_sided and options.reverse_name:
        raise TrainingError(f"method {recipe.method} learns X -> Y only; --reverse-name names nothing "
                            f"(train with method cyclegan for both directions)")
    names = direction_names(options.name, options.reverse_name, options.x_inputs, options.y_inputs)
    run_dir = Path(options.out) if options.out else default_run_dir(names["name"])
    if options.export:
        check_store_names(exported_names(recipe, names), run_source(run_dir), options.overwrite)
    weights = kid_weights(options, progress)
    record = new_record(names, {"x_inputs": options.x_inputs, "y_inputs": options.y_inputs}, options.cache_dir,
                        __version__)
    create_run_dir(run_dir, recipe, record)
    return _run(recipe, run_dir, record, options, progress, None, weights)


def resume(run_dir, options: RunOptions, progress=None) -> RunResult:
    """Continue a run from RUN_DIR/checkpoint.pt with its own recipe and inputs. Raises TrainingError."""
    run_dir = Path(run_dir)
    record, state = reopen(run_dir, "train", CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "training")
    recipe = recipe_from_dict(state["recipe"], source=f"{run_dir / CHECKPOINT} recipe")
    if options.name or options.reverse_name:
        record.update(direction_names(options.name or record["name"], options.reverse_name,
                                      record["x_inputs"], record["y_inputs"]))
    if options.export:
        check_store_names(exported_names(recipe, record), run_source(run_dir), options.overwrite)
    if options.precision == "auto" and state.get("precision"):
        options = replace(options, precision=state["precision"])
    return _run(recipe, run_dir, record, options, progress, state, kid_weights(options, progress))


def kid_weights(options: RunOptions, progress=None) -> Path | None:
    """The Inception weights when KID is asked for, found or fetched and test-loaded before anything else
    happens, so a wrong file stops the run before its folder exists (CheckpointKid loads them again on
    the run's device: a few seconds, once per run). Raises FeaturesMissing, MediaError, ModelError."""
    if not options.kid:
        return None
    weights = find_weights(options.features, progress=progress)[0]
    InceptionFeatures(weights)
    return weights


def _run(recipe: Recipe, run_dir: Path, record: dict, options: RunOptions, progress, state,
         weights=None) -> RunResult:
    run = None
    started = options.time_started or budget_clock()
    try:
        run = setup(recipe, run_dir, record, options, progress, weights)
        return execute(run, state, progress, started)
    finally:
        if run is not None:
            shutdown(run.dist)


def export_run(run_dir, name: str | None = None, reverse_name: str | None = None,
               overwrite: bool = False) -> list[StoredModel]:
    """Write the generators of RUN_DIR's checkpoint into the model store (both directions, or X -> Y of a
    one-sided method); returns the StoredModels.

    Names come from `name` ("a2b" -> a2b and b2a) or from the run's record.
    A store model of the same name is replaced only when this run made it or
    `overwrite` is set. Raises TrainingError, OutputExistsError, ModelError.
    """
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    if record.get("kind") == "distill":
        raise TrainingError(f"{run_dir}: a distillation run; its student goes into the store when it ends "
                            f"(vidcycle distill --resume {run_dir} finishes and exports it)")
    names = direction_names(name, reverse_name, record["x_inputs"], record["y_inputs"]) if name else record
    state = load_checkpoint(run_dir / CHECKPOINT)
    recipe = recipe_from_dict(state["recipe"], source=f"{run_dir / CHECKPOINT} recipe")
    check_store_names(exported_names(recipe, names), run_source(run_dir), overwrite)
    nets, weights = checkpoint_generators(state)
    return [put(name, generator, info)
            for name, generator, info in directions(recipe, nets, names, run_source(run_dir), weights)]


def checkpoint_generators(state: dict) -> tuple[dict, str]:
    """A checkpoint's networks with its averaged generators in place of the last iterate when it has them,
    as the run would have exported them, and which weights those are."""
    average = state.get("average")
    if not average:
        return state["nets"], "last"
    return {**state["nets"], **average["nets"]}, average_label(average["halflife"], average["rampup"])
