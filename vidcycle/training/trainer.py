"""Training from two unpaired collections on the run scaffold (vidcycle.training.run): setting a run up,
CycleGAN's parts as a method (its step, sample grids, checkpoint state, both exported directions), and
the entry points `train`, `resume` and `export_run` for every method the recipe can name.

CycleGAN's networks and step in the paper's order are vidcycle.training.cyclegan; the one-sided
methods (CUT, FastCUT) are vidcycle.training.contrastive.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vidcycle.version import __version__
from vidcycle.errors import RecipeError, TrainingError
from vidcycle.models.store import StoredModel, check_store_names, put
from vidcycle.runtime.device import pick_device, pick_training_precision
from vidcycle.training.amp import Amp
from vidcycle.training.budget import now as budget_clock
from vidcycle.training.compiling import compiled_nets
from vidcycle.training.averaging import average_label
from vidcycle.training.contrastive import (Contrastive, ContrastiveNets, build_contrastive_nets,
                                           build_contrastive_optimizers, sampling_seed)
from vidcycle.training.cyclegan import (LOSS_PANELS, ImagePool, Nets, Optimizers, build_nets, build_optimizers,
                                        generator_spec, train_step)
from vidcycle.training.data import RunData, run_data
from vidcycle.training.distributed import gather_object, init_distributed, shutdown, unwrap, wrap_ddp
from vidcycle.quality.fidelity import InceptionFeatures, find_weights
from vidcycle.training.kid import KID_FRAMES, CheckpointKid
from vidcycle.training.exports import count_networks, directions, export_states, exported_names
from vidcycle.training.recipe import Recipe, recipe_from_dict
from vidcycle.training.run import Run, RunFlags, RunResult, execute, reopen, run_facts, to_device
from vidcycle.training.runs import (CHECKPOINT, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, LossLog, create_run_dir,
                                    default_run_dir, direction_names, load_checkpoint, new_record, read_run,
                                    rng_state, run_source, set_rng_state)
from vidcycle.training.schedule import Schedule


@dataclass
class RunOptions(RunFlags):
    """A CycleGAN run's inputs, with the flags every run takes (vidcycle.training.run.RunFlags)."""

    x_inputs: list = field(default_factory=list)
    y_inputs: list = field(default_factory=list)
    reverse_name: str | None = None    # store name of Y -> X; default derived from `name` (X -> Y)
    kid: bool = False                  # score KID of G on held-out frames at each checkpoint
    features: Path | None = None       # the Inception weights for it; default the store's (fetched once)


@dataclass
class CycleGAN:
    """The method's parts: the four networks (DDP-wrapped under torchrun, and unwrapped), their optimisers,
    the history pools and the held-out frames of the grids."""

    data: RunData
    nets: Nets
    raw: Nets
    optimizers: Optimizers
    pools: dict
    label: str = "train"
    loss_panels: dict = field(default_factory=lambda: LOSS_PANELS)

    def step(self, run: Run, batch: dict, lr: float) -> dict:
        self.optimizers.set_lr(lr)
        return train_step(self.nets, self.optimizers, self.pools, to_device(batch, run.device), run.recipe.loss,
                          run.amp)

    def sample_rows(self, run: Run) -> list:
        """Rows real x, G(x), F(G(x)), real y, F(y), G(F(y)) on the held-out frames."""
        g_xy, g_yx = unwrap(self.nets.g_xy), unwrap(self.nets.g_yx)
        real_x, real_y = self.data.held_x.to(run.device), self.data.held_y.to(run.device)
        with run.amp.autocast():
            fake_y = g_xy(real_x)
            rec_x = g_yx(fake_y)
            fake_x = g_yx(real_y)
            rec_y = g_xy(fake_x)
        return [("real x", real_x), ("G(x)", fake_y), ("F(G(x))", rec_x),
                ("real y", real_y), ("F(y)", fake_x), ("G(F(y))", rec_y)]

    def state(self, run: Run, all_ranks: bool) -> dict:
        """Nets and optimisers, and each rank's pools and RNGs (gathered: a collective, unless all_ranks
        is False, when rank 0 keeps its own and the others restart theirs on resume)."""
        mine = {"pools": {domain: pool.state_dict() for domain, pool in self.pools.items()},
                "rng": rng_state(run.device)}
        ranks = gather_object(mine, run.dist) if all_ranks else [mine]
        return {"nets": self.nets.state_dict(),
                "optimizers": {"g": self.optimizers.g.state_dict(), "d": self.optimizers.d.state_dict()},
                "world": run.dist.world, "ranks": ranks}

    def restore(self, run: Run, state: dict) -> None:
        for name, net in self.raw.items():
            net.load_state_dict(state["nets"][name])
        self.optimizers.g.load_state_dict(state["optimizers"]["g"])
        self.optimizers.d.load_state_dict(state["optimizers"]["d"])
        ranks = state["ranks"] if "ranks" in state else [{"pools": state["pools"], "rng": state["rng"]}]
        rank = run.dist.rank
        if state.get("world", 1) == run.dist.world and rank < len(ranks):
            for domain, pool in self.pools.items():
                pool.load_state_dict(ranks[rank]["pools"][domain], run.device)
            set_rng_state(ranks[rank]["rng"], run.device)
            return
        # A different number of processes, or a rank whose state was not saved (Ctrl-C under
        # torchrun): restart its pools and RNG from the seed, the rank and the iteration.
        for n, pool in enumerate(self.pools.values()):
            pool.rng.manual_seed(run.recipe.seed * 1000 + rank * 10 + n + run.iteration)
        torch.manual_seed(run.recipe.seed + rank + run.iteration)

    def checkpointed(self, run: Run) -> None:
        pass

    def generator_xy(self) -> torch.nn.Module:
        return self.raw.g_xy

    def generators(self) -> dict:
        return {"g_xy": self.raw.g_xy, "g_yx": self.raw.g_yx}

    def score(self, run: Run) -> float | None:
        return None  # no truth to measure a translation against

    def export(self, run: Run) -> list[StoredModel]:
        """Both directions into the store, from the networks in memory."""
        return export_states(run, {key: net.state_dict() for key, net in self.raw.items()})

    def summary(self, run: Run) -> str:
        named = [("G", self.raw.g_xy), ("F", self.raw.g_yx), ("D_X", self.raw.d_x), ("D_Y", self.raw.d_y)]
        return f"cyclegan: {count_networks(named, generator_spec(run.recipe))}\n{run_facts(run, self.data.counts)}"


def setup(recipe: Recipe, run_dir: Path, record: dict, options: RunOptions, progress=None, weights=None) -> Run:
    """Join the process group, gather the data, build nets, optimizers, pools and schedule; with
    `weights` (Inception's), the KID scorer on frames held out for it.

    Raises TrainingError, RecipeError, DeviceError, MediaError.
    """
    dist, device = init_distributed(pick_device(options.device))
    dtype = pick_training_precision(options.precision, device, recipe.model.ngf)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # training crops have one size
    data = run_data(recipe, record, options.workers, device, dist, progress, KID_FRAMES if weights else 0)
    method = (one_sided(recipe, data, device, dist) if recipe.one_sided else cyclegan(recipe, data, device, dist))
    if options.compile:
        example = data.held_x[:1].to(device)
        trained = ("g", "d_y") if recipe.one_sided else ("g_xy", "g_yx", "d_x", "d_y")
        method.nets = compiled_nets(method.nets, trained, example, Amp(device, dtype), options.time_budget)
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


def cyclegan(recipe: Recipe, data: RunData, device: torch.device, dist) -> CycleGAN:
    raw = build_nets(recipe)
    for _, net in raw.items():  # NCHW: instance norm hands NCHW back, so channels_last only adds copies
        net.to(device)
    nets = Nets(*(wrap_ddp(net, device) for _, net in raw.items())) if dist.active else raw
    seed = recipe.seed * 1000 + dist.rank * 10
    pools = {"x": ImagePool(recipe.optim.pool_size, seed + 1), "y": ImagePool(recipe.optim.pool_size, seed + 2)}
    return CycleGAN(data, nets, raw, build_optimizers(raw, recipe), pools)


def one_sided(recipe: Recipe, data: RunData, device: torch.device, dist) -> Contrastive:
    raw = build_contrastive_nets(recipe)
    for _, net in raw.items():
        net.to(device)
    nets = ContrastiveNets(*(wrap_ddp(net, device) for _, net in raw.items())) if dist.active else raw
    rng = torch.Generator().manual_seed(sampling_seed(recipe.seed, dist.rank))
    return Contrastive(data, nets, raw, build_contrastive_optimizers(raw, recipe), rng)


# ---------------------------------------------------------------- entry points

def train(recipe: Recipe, options: RunOptions, progress=None) -> RunResult:
    """Start a new run: create the run folder, train, checkpoint, export both directions.

    `progress` (optional): start(total, initial), update(n, losses), close() for the
    iterations, and frames(label) -> a start/update/close counter for frame
    gathering; what the run has to say goes to the "vidcycle" logger.
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
