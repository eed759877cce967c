"""Running a training: setting a run up, the one loop that reads top to bottom, checkpoints and resume,
sample grids, and the entry points `train` and `resume`.

The method itself (nets, pool, schedule, the step) is vidcycle.cyclegan; the
run folder's files are vidcycle.runs; several processes, vidcycle.distributed.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vidcycle import __version__
from vidcycle.training.cyclegan import (LOSS_PANELS, Amp, ImagePool, Nets, Optimizers, Schedule, build_nets, generator_spec,  # noqa: F401
                       build_optimizers, train_step)
from vidcycle.training.data import RunData, run_data, set_loader_epoch
from vidcycle.runtime.device import pick_device, pick_training_precision, precision_name
from vidcycle.training.distributed import Distributed, init_distributed, shutdown, unwrap, wrap_ddp
from vidcycle.errors import RecipeError, TrainingError
from vidcycle.training.recipe import Recipe, recipe_from_dict, recipe_to_dict
from vidcycle.training.runs import (CHECKPOINT, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, SAMPLES, LossLog,  # noqa: F401
                   create_run_dir, default_run_dir, direction_names, load_checkpoint,
                   new_record, read_run, remove_partial_checkpoint, rng_state, run_source, save_checkpoint,
                   set_rng_state)
from vidcycle.models.modelfile import ModelInfo
from vidcycle.models.nets import build_generator
from vidcycle.models.store import StoredModel, check_store_names, put


@dataclass
class RunOptions:
    """Where and how to run (flags), as opposed to what to learn (the recipe)."""

    x_inputs: list = field(default_factory=list)
    y_inputs: list = field(default_factory=list)
    out: Path | None = None            # run folder; default runs/NAME (NAME-2, ... if taken)
    name: str | None = None            # store name of X -> Y; default from the folder names
    reverse_name: str | None = None    # store name of Y -> X; default derived from `name`
    device: str = "auto"
    precision: str = "auto"            # auto: bf16 where it is fast (CUDA, CPUs with native bf16), else fp32/fp16
    workers: int | None = None         # data-loader processes; None: 1 on CPU, on CUDA the cores per rank (<= 8)
    max_steps: int | None = None       # stop when the iteration counter reaches this (still exports)
    cache_dir: Path | None = None      # frame cache; default $VIDCYCLE_HOME/frames
    export: bool = True
    overwrite: bool = False            # replace store models of the same name made by another run


@dataclass
class TrainResult:
    run_dir: Path
    iteration: int
    total_iterations: int
    exported: list = field(default_factory=list)   # StoredModel per direction
    failures: list = field(default_factory=list)   # (path, reason) of skipped media


@dataclass
class Trainer:
    """Everything one run trains with, built once by `setup`; `fit` is the loop that uses it."""

    recipe: Recipe
    run_dir: Path
    record: dict
    options: RunOptions
    dist: Distributed
    device: torch.device
    amp: Amp
    data: RunData
    nets: Nets              # DistributedDataParallel-wrapped under torchrun
    raw: Nets               # the same nets unwrapped
    optimizers: Optimizers
    pools: dict
    schedule: Schedule
    log: LossLog
    tensorboard: object = None
    iteration: int = 0
    saved_at: int | None = None

    @property
    def loader(self):
        return self.data.loader

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


# ---------------------------------------------------------------- setting a run up

def setup(recipe: Recipe, run_dir: Path, record: dict, options: RunOptions, progress=None) -> Trainer:
    """Join the process group, gather the data, build nets, optimizers, pools and schedule.

    Raises TrainingError, RecipeError, DeviceError, MediaError.
    """
    dist, device = init_distributed(pick_device(options.device))
    dtype = pick_training_precision(options.precision, device, recipe.model.ngf)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # training crops have one size
    data = run_data(recipe, record, options.workers, device, dist, progress)
    raw = build_nets(recipe)
    for _, net in raw.items():  # NCHW: instance norm hands NCHW back, so channels_last only adds copies
        net.to(device)
    nets = Nets(*(wrap_ddp(net, device) for _, net in raw.items())) if dist.active else raw
    seed = recipe.seed * 1000 + dist.rank * 10
    pools = {"x": ImagePool(recipe.optim.pool_size, seed + 1), "y": ImagePool(recipe.optim.pool_size, seed + 2)}
    schedule = Schedule.from_recipe(recipe, len(data.loader))
    if schedule.total_iterations <= 0:
        raise RecipeError("schedule: nothing to train (epochs + epochs_decay, or iterations + "
                          "iterations_decay, is 0)")
    random.seed(recipe.seed + dist.rank)
    np.random.seed(recipe.seed + dist.rank)
    return Trainer(recipe, Path(run_dir), record, options, dist, device, Amp(device, dtype), data, nets, raw,
                   build_optimizers(raw, recipe), pools, schedule, LossLog(run_dir, record["name"]))


def open_tensorboard(trainer: Trainer) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return  # optional extra: pip install 'vidcycle[tensorboard]'
    trainer.tensorboard = SummaryWriter(str(trainer.run_dir / "tensorboard"), purge_step=trainer.iteration or None)


# ---------------------------------------------------------------- the loop

@dataclass(frozen=True)
class LoopParts:
    """What the loop does at each point, for one kind of run: `fit` is the one loop that CycleGAN
    training and distillation (vidcycle.distillation) both run."""

    step: Callable              # (run, batch, lr) -> {loss name: float}: one iteration
    write_samples: Callable     # (run): a sample grid at the current iteration
    checkpoint: Callable        # (run): save (every rank takes part) and redraw the curves
    save_interrupted: Callable  # (run): save what rank 0 has, on Ctrl-C


def fit(t: Trainer, progress=None, parts: LoopParts | None = None) -> int:
    """Train until the schedule ends or the iteration counter reaches max_steps; returns the counter.

    `t` is a Trainer, or a run with the same fields that brings its own `parts`.
    `progress` is given on rank 0 only.
    """
    parts = parts or CYCLEGAN
    plan = t.recipe.schedule
    stop = min(t.schedule.total_iterations, t.options.max_steps or t.schedule.total_iterations)
    window: dict[str, list] = {}
    if progress:
        progress.start(stop, t.iteration)
    try:
        for epoch, batch in batches_from(t.loader, t.iteration) if t.iteration < stop else ():
            lr = t.recipe.optim.lr * t.schedule.lr_factor(t.iteration)
            losses = parts.step(t, batch, lr)
            t.iteration += 1
            raise_if_not_finite(losses, t.iteration)
            for key, value in losses.items():
                window.setdefault(key, []).append(value)
            if progress:
                progress.update(1, losses)
            if t.iteration % plan.log_every == 0:
                log_losses(t, window, epoch, lr)
                window = {}
            if t.iteration % plan.sample_every == 0 and t.dist.main:
                parts.write_samples(t)
            if t.iteration % plan.checkpoint_every == 0:
                parts.checkpoint(t)
            if t.iteration >= stop:
                break
    except KeyboardInterrupt:
        if t.dist.main and t.saved_at != t.iteration:
            # Ctrl-C keeps the work done so far; --resume continues from here. No gathering:
            # the other ranks are being interrupted too and would never answer.
            parts.save_interrupted(t)
        raise
    finally:
        if progress:
            progress.close()
    if t.saved_at != t.iteration:
        parts.checkpoint(t)
    if t.dist.main and t.iteration % plan.sample_every:
        parts.write_samples(t)
    return t.iteration


def cyclegan_iteration(t: Trainer, batch: dict, lr: float) -> dict:
    t.optimizers.set_lr(lr)
    return train_step(t.nets, t.optimizers, t.pools, to_device(batch, t.device), t.recipe.loss,
                      t.amp)


def batches_from(loader, iteration: int):
    """(epoch, batch) from `iteration` on, epoch after epoch, in the order an uninterrupted run sees them."""
    epoch, offset = divmod(iteration, len(loader))
    while True:
        set_loader_epoch(loader, epoch)
        batches = iter(loader)
        for _ in range(offset):  # resuming mid-epoch: the same order, minus what was already seen
            next(batches)
        for batch in batches:
            yield epoch, batch
        epoch, offset = epoch + 1, 0


def to_device(batch: dict, device: torch.device) -> dict:
    moved = {key: batch[key].to(device, non_blocking=True)
             for key in ("x", "y", "x_next") if key in batch}
    if "has_next" in batch:
        moved["has_next"] = batch["has_next"].to(device)
    return moved


def raise_if_not_finite(losses: dict, iteration: int) -> None:
    if not all(math.isfinite(v) for v in losses.values()):
        shown = ", ".join(f"{k} {v:.3g}" for k, v in losses.items())
        raise TrainingError(f"losses became non-finite at iteration {iteration} ({shown}); resume from the last "
                            f"checkpoint with --precision fp32 or a lower optim.lr")


# ---------------------------------------------------------------- what people watch

def log_losses(t: Trainer, window: dict, epoch: int, lr: float) -> None:
    """One losses.jsonl row (and tensorboard scalars): each loss averaged over the interval."""
    if not t.dist.main:
        return
    means = {key: sum(values) / len(values) for key, values in window.items() if values}
    t.log.append({"iteration": t.iteration, "epoch": epoch, "lr": lr, "time": round(time.time(), 3), **means})
    if t.tensorboard is not None:
        for key, value in means.items():
            t.tensorboard.add_scalar(f"loss/{key}", value, t.iteration)
        t.tensorboard.add_scalar("lr", lr, t.iteration)


@torch.no_grad()
def write_samples(t: Trainer) -> None:
    """Rows real x, G(x), F(G(x)), real y, F(y), G(F(y)) on the held-out frames."""
    from vidcycle.media.charts import image_grid, write_png
    from vidcycle.models.frames import batch_to_frames
    g_xy, g_yx = unwrap(t.nets.g_xy), unwrap(t.nets.g_yx)
    real_x = t.data.held_x.to(t.device)
    real_y = t.data.held_y.to(t.device)
    with t.amp.autocast():
        fake_y = g_xy(real_x)
        rec_x = g_yx(fake_y)
        fake_x = g_yx(real_y)
        rec_y = g_xy(fake_x)
    rows = [("real x", real_x), ("G(x)", fake_y), ("F(G(x))", rec_x),
            ("real y", real_y), ("F(y)", fake_x), ("G(F(y))", rec_y)]
    grid = image_grid([(label, batch_to_frames(images).cpu().numpy()) for label, images in rows],
                      title=f"{t.record['name']}: iteration {t.iteration}")
    write_png(t.run_dir / SAMPLES / f"iter_{t.iteration:06d}.png", grid)
    if t.tensorboard is not None:
        t.tensorboard.add_image("samples", grid, t.iteration, dataformats="HWC")


# ---------------------------------------------------------------- checkpoints

def checkpoint(t: Trainer) -> None:
    """Save (all ranks take part), redraw the curves, and wait for every rank."""
    save(t)
    t.saved_at = t.iteration
    if t.dist.main:
        t.log.draw(LOSS_PANELS, t.iteration)
    t.dist.barrier()


def save(t: Trainer, all_ranks: bool = True) -> None:
    """All ranks call this (it gathers their pools and RNG states) unless all_ranks is False: then rank 0
    alone saves its own, and the other ranks restart their pools and RNGs when resumed."""
    ranks = gather_rank_states(t) if all_ranks else [rank_state(t)]
    if not t.dist.main:
        return
    save_checkpoint(t.run_dir / CHECKPOINT, {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "vidcycle": __version__,
        "recipe": recipe_to_dict(t.recipe), "iteration": t.iteration, "precision": precision_name(t.amp.dtype),
        "nets": t.nets.state_dict(), "optimizers": {"g": t.optimizers.g.state_dict(), "d": t.optimizers.d.state_dict()},
        "scaler": t.amp.scaler.state_dict() if t.amp.scaler else {}, "world": t.dist.world, "ranks": ranks})


def save_interrupted(t: Trainer) -> None:
    save(t, all_ranks=False)


CYCLEGAN = LoopParts(cyclegan_iteration, write_samples, checkpoint, save_interrupted)


def rank_state(t: Trainer) -> dict:
    """What differs between ranks: the image pools and the RNGs."""
    return {"pools": {domain: pool.state_dict() for domain, pool in t.pools.items()}, "rng": rng_state(t.device)}


def gather_rank_states(t: Trainer) -> list:
    """Every rank's rank_state on rank 0 (a collective: all ranks call it); [] on the others."""
    if not t.dist.active:
        return [rank_state(t)]
    gathered = [None] * t.dist.world if t.dist.main else None
    torch.distributed.gather_object(rank_state(t), gathered, dst=0)
    return gathered or []


def restore(t: Trainer, state: dict) -> None:
    """Nets, optimizers, scaler, this rank's pools and RNGs, and the loss log as of the checkpoint."""
    for name, net in t.raw.items():
        net.load_state_dict(state["nets"][name])
    t.optimizers.g.load_state_dict(state["optimizers"]["g"])
    t.optimizers.d.load_state_dict(state["optimizers"]["d"])
    if t.amp.scaler and state.get("scaler"):
        t.amp.scaler.load_state_dict(state["scaler"])
    t.iteration = t.saved_at = int(state["iteration"])
    ranks = state["ranks"] if "ranks" in state else [{"pools": state["pools"], "rng": state["rng"]}]
    if state.get("world", 1) == t.dist.world and t.dist.rank < len(ranks):
        for domain, pool in t.pools.items():
            pool.load_state_dict(ranks[t.dist.rank]["pools"][domain], t.device)
        set_rng_state(ranks[t.dist.rank]["rng"], t.device)
    else:
        # A different number of processes, or a rank whose state was not saved (Ctrl-C under
        # torchrun): restart its pools and RNG from the seed, the rank and the iteration.
        for n, pool in enumerate(t.pools.values()):
            pool.rng.manual_seed(t.recipe.seed * 1000 + t.dist.rank * 10 + n + t.iteration)
        torch.manual_seed(t.recipe.seed + t.dist.rank + t.iteration)
    t.log.rewind(t.iteration, write=t.dist.main)


# ---------------------------------------------------------------- entry points

def recipe_changes(recipe) -> dict:
    """`section.key: value` for every value that differs from its kind's defaults (the paper's, for
    a CycleGAN recipe)."""
    def flat(data, prefix=""):
        for key, value in data.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value
    defaults = dict(flat(recipe_to_dict(type(recipe)())))
    return {key: value for key, value in flat(recipe_to_dict(recipe)) if defaults.get(key) != value}


def train(recipe: Recipe, options: RunOptions, progress=None) -> TrainResult:
    """Start a new run: create the run folder, train, checkpoint, export both directions.

    `progress` (optional): start(total, initial), update(n, losses), note(text),
    close(), and frames(label) -> a start/update/close counter for frame
    gathering. Raises TrainingError, MediaError, RecipeError, DeviceError,
    OutputExistsError (run folder or store names taken).
    """
    if not options.x_inputs or not options.y_inputs:
        raise TrainingError("training needs both --x and --y inputs")
    names = direction_names(options.name, options.reverse_name, options.x_inputs, options.y_inputs)
    run_dir = Path(options.out) if options.out else default_run_dir(names["name"])
    if options.export:
        check_store_names((names["name"], names["reverse_name"]), run_source(run_dir), options.overwrite)
    record = new_record(names, {"x_inputs": options.x_inputs, "y_inputs": options.y_inputs}, options.cache_dir,
                        __version__)
    create_run_dir(run_dir, recipe, record)
    return _run(recipe, run_dir, record, options, progress, state=None)


def resume(run_dir, options: RunOptions, progress=None) -> TrainResult:
    """Continue a run from RUN_DIR/checkpoint.pt with its own recipe and inputs. Raises TrainingError."""
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    remove_partial_checkpoint(run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT)
    recipe = recipe_from_dict(state["recipe"], source=f"{run_dir / CHECKPOINT} recipe")
    if options.name or options.reverse_name:
        record.update(direction_names(options.name or record["name"], options.reverse_name,
                                      record["x_inputs"], record["y_inputs"]))
    if options.export:
        check_store_names((record["name"], record["reverse_name"]), run_source(run_dir), options.overwrite)
    if options.precision == "auto" and state.get("precision"):
        options = replace(options, precision=state["precision"])
    return _run(recipe, run_dir, record, options, progress, state)


def _run(recipe: Recipe, run_dir: Path, record: dict, options: RunOptions, progress, state) -> TrainResult:
    trainer = None
    try:
        trainer = setup(recipe, run_dir, record, options, progress)
        shown = progress if trainer.dist.main else None
        if state is not None:
            restore(trainer, state)
            note(shown, f"resumed {run_dir} at iteration {trainer.iteration}")
        if trainer.dist.main:
            open_tensorboard(trainer)
        note(shown, _summary(trainer))
        for path, reason in trainer.data.failures:
            note(shown, f"skipped {path}: {reason}")
        if state is None and trainer.dist.main:
            write_samples(trainer)  # iteration 0: what the untrained nets make, for comparison
        iteration = fit(trainer, shown)
        exported = []
        if options.export and trainer.dist.main:
            exported = export_run(run_dir, record["name"], record["reverse_name"], overwrite=options.overwrite)
        trainer.dist.barrier()
        return TrainResult(run_dir, iteration, trainer.schedule.total_iterations, exported, trainer.data.failures)
    finally:
        if trainer is not None:
            trainer.close()
            shutdown(trainer.dist)


def _summary(t: Trainer) -> str:
    return (f"frames: x {t.data.counts['x']}, y {t.data.counts['y']}; {len(t.loader)} iterations per epoch, "
            f"{t.schedule.total_iterations} in all; {t.device.type} {precision_name(t.amp.dtype)}"
            + (f", {t.dist.world} processes" if t.dist.active else ""))


def note(progress, text: str) -> None:
    if progress:
        progress.note(text)


def export_run(run_dir, name: str | None = None, reverse_name: str | None = None,
               overwrite: bool = False) -> list[StoredModel]:
    """Write both generators of RUN_DIR's checkpoint into the model store; returns the StoredModels.

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
    check_store_names((names["name"], names["reverse_name"]), run_source(run_dir), overwrite)
    state = load_checkpoint(run_dir / CHECKPOINT)
    recipe = recipe_from_dict(state["recipe"], source=f"{run_dir / CHECKPOINT} recipe")
    spec = generator_spec(recipe)
    exported = []
    for key, net_name, source, target in (("name", "g_xy", "x_domain", "y_domain"),
                                          ("reverse_name", "g_yx", "y_domain", "x_domain")):
        generator = build_generator(spec, init=False)
        generator.load_state_dict(state["nets"][net_name])
        info = ModelInfo(spec=spec, from_domain=names[source], to_domain=names[target],
                         train_size=recipe.data.crop_size, recipe=state["recipe"], source=run_source(run_dir))
        exported.append(put(names[key], generator, info))
    return exported
