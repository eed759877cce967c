"""One scaffold for every run that learns: the flags it shares, the loop that reads top to bottom,
checkpoints and exact resume, sample grids, the loss log and export from memory.

A run differs from another only in its method (`Method`: one of the table vidcycle.training.methods,
set up by vidcycle.training.trainer, or the students of vidcycle.training.distillation): the method
owns its networks and optimisers and supplies one iteration, the rows of a sample grid, its part of
the checkpoint, its generators (for the averaged weights and their score) and the models it exports.
Everything else happens here, once.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from vidcycle.errors import ModelError, TrainingError
from vidcycle.media.charts import image_grid, write_png
from vidcycle.models.frames import batch_to_frames
from vidcycle.progress import bar
from vidcycle.runtime.allocator import keep_freed_memory
from vidcycle.runtime.device import precision_name
from vidcycle.runtime.winograd import WinogradConv2d, filters_shared
from vidcycle.training.amp import Amp
from vidcycle.training.averaging import WeightAverage
from vidcycle.training.budget import TimeBudget, format_duration
from vidcycle.training.data import set_loader_epoch
from vidcycle.training.distributed import Distributed
from vidcycle.training.recipe import defaults_of, recipe_to_dict
from vidcycle.training.run_checkpoints import checkpoint, restore, save
from vidcycle.training.run_folder import CHECKPOINT, SAMPLES, CheckpointWriting, LossLog
from vidcycle.training.schedule import Schedule

log = logging.getLogger("vidcycle")


@dataclass(kw_only=True)
class RunFlags:
    """Where and how to run (flags), as opposed to what to learn (the recipe): what every run takes."""

    name: str | None = None            # store name of what the run exports
    out: Path | None = None            # run folder; default runs/NAME (NAME-2, ... if taken)
    device: str = "auto"
    precision: str = "auto"            # auto: bf16 where it is fast (CUDA, CPUs with native bf16), else fp32/fp16
    workers: int | None = None         # data-loader processes; None: 1 on CPU, on CUDA the cores per rank (<= 8)
    max_steps: int | None = None       # stop when the iteration counter reaches this (still exports)
    time_budget: float | None = None   # seconds: fit the schedule so its decay ends here (--time)
    time_started: float | None = None  # time.monotonic() when the budget began (default: the library call)
    compile: bool = False              # torch.compile the networks of the step (measured slower on CPUs)
    cache_dir: Path | None = None      # frame cache; default $VIDCYCLE_HOME/frames
    export: bool = True
    overwrite: bool = False            # replace store models of the same name made by another run


class Method(Protocol):
    """What a kind of run brings to the scaffold."""

    label: str                         # its progress bar's name
    loss_panels: dict                  # loss-curve panel title -> loss names

    def step(self, run: Run, batch: dict, lr: float) -> dict: ...            # one iteration -> {loss: float}
    def sample_rows(self, run: Run) -> list: ...                              # [(label, NCHW batch in [-1, 1])]
    def state(self, run: Run, all_ranks: bool) -> dict: ...                   # its part of a checkpoint
    def restore(self, run: Run, state: dict) -> None: ...
    def checkpointed(self, run: Run) -> None: ...                             # after each checkpoint
    def generator_xy(self) -> torch.nn.Module: ...                            # X -> Y, unwrapped
    def generators(self) -> dict: ...                                         # name -> what it exports, unwrapped
    def score(self, run: Run) -> float | None: ...                            # higher is better; None: no measure
    def export(self, run: Run) -> list: ...                                   # StoredModels, from memory
    def summary(self, run: Run) -> str: ...


@dataclass
class Run:
    """Everything one run trains with, built once by its method's setup; `fit` is the loop that uses it."""

    method: Method
    recipe: object                     # Recipe or DistillRecipe
    run_dir: Path
    record: dict
    options: RunFlags
    dist: Distributed
    device: torch.device
    amp: Amp
    loader: object
    schedule: Schedule
    log: LossLog
    checkpoint_format: str
    checkpoint_version: int
    failures: list = field(default_factory=list)   # (path, reason) of skipped media
    tensorboard: object = None
    kid: object = None                 # a training.kid.CheckpointKid (rank 0) when KID is scored
    iteration: int = 0
    saved_at: int | None = None
    budget: TimeBudget | None = None   # with a time budget: the clock and the plan
    average: WeightAverage | None = None   # averaged generator weights (recipe optim.ema_halflife; rank 0)
    weights: str = "last"              # which weights the generators hold now: "last" or the average's label
    writing: CheckpointWriting | None = None   # the final checkpoint, while it is being written

    def settle(self) -> None:
        """Wait for a checkpoint being written (before the next, before anything changes the weights)."""
        writing, self.writing = self.writing, None
        if writing is not None:
            writing.wait()

    def close(self) -> None:
        try:
            self.settle()
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()


@dataclass
class RunResult:
    run_dir: Path
    iteration: int
    total_iterations: int
    exported: list = field(default_factory=list)   # StoredModel of each exported model
    failures: list = field(default_factory=list)   # (path, reason) of skipped media
    budget: dict | None = None                     # with a time budget: seconds, spent, plan


# ---------------------------------------------------------------- the loop

def fit(run: Run, progress=None) -> int:
    """Train until the schedule ends, the iteration counter reaches max_steps or the time budget is spent;
    returns the counter.

    `progress` (a vidcycle.progress.Progress, rank 0 only) counts iterations, with the losses as status.
    """
    with bar(progress, run.method.label, stop_at(run), "it", run.iteration) as counter:
        _loop(run, counter)
    if run.saved_at != run.iteration:
        with timed(run, "checkpoint"):
            checkpoint(run, write_behind=True)  # written while `finish` draws the last grid and exports
    return run.iteration


def stop_at(run: Run) -> int | None:
    """The iteration the run ends at: the schedule's end or max_steps, or a budget's plan (None until the
    budget has timed the step)."""
    if run.budget is not None:
        return run.budget.plan.total if run.budget.plan else run.options.max_steps
    return min(run.schedule.total_iterations, run.options.max_steps or run.schedule.total_iterations)


def _loop(run: Run, counter) -> None:
    plan = run.recipe.schedule
    window: dict[str, list] = {}
    stop = stop_at(run)
    if run.budget is not None:
        run.budget.begin_loop()
    try:
        for epoch, batch in batches_from(run.loader, run.iteration) if stop is None or run.iteration < stop else ():
            lr = run.recipe.optim.lr * run.schedule.lr_factor(run.iteration)
            with filters_shared():  # a generator that runs twice in the step transforms its 3x3 weights once
                losses = run.method.step(run, batch, lr)
            run.iteration += 1
            raise_if_not_finite(losses, run.iteration)
            if run.average is not None:
                run.average.update(run.iteration)
            for key, value in losses.items():
                window.setdefault(key, []).append(value)
            counter.update(1, **losses)
            stop = follow_budget(run, counter, stop)
            if run.iteration % plan.log_every == 0:
                log_losses(run, window, epoch, lr)
                window = {}
            ended = stop is not None and run.iteration >= stop
            out_of_time = not ended and run.budget is not None and run.budget.time_is_up()
            last = ended or out_of_time   # the last grid comes from `finish`, of the weights it exports
            if run.iteration % plan.sample_every == 0 and run.dist.main and not last:
                with timed(run, "sample"):
                    write_samples(run)
            if run.iteration % plan.checkpoint_every == 0:
                with timed(run, "checkpoint"):
                    checkpoint(run, write_behind=last)
            if not last and run.budget is not None and run.budget.time_is_up():  # the grid or checkpoint took it
                out_of_time = last = True
            if out_of_time:
                log.info("time is up at iteration %d of %d planned: stopping here", run.iteration, stop)
            if last:
                break
    except KeyboardInterrupt:
        if run.dist.main and run.saved_at != run.iteration:
            # Ctrl-C keeps the work done so far; --resume continues from here, as an unbroken run would
            # (the average as last updated). No gathering: the other ranks are being interrupted too and
            # would never answer.
            save(run, all_ranks=False, average_now=False)
        raise


def follow_budget(run: Run, counter, stop: int | None) -> int | None:
    """With a time budget: time the iteration, and adopt a new plan (schedule, end, bar) when it comes."""
    if run.budget is None:
        return stop
    plan = run.budget.iteration_done(run.iteration)
    if plan is None:
        return stop
    run.schedule = Schedule.from_plan(plan)
    counter.set_total(plan.total)
    return plan.total


def timed(run: Run, kind: str):
    """A context that counts what it runs as `kind` of the run's overheads, when it has a budget."""
    return run.budget.overhead(kind) if run.budget is not None else nullcontext()


def start_budget(run: Run, state: dict | None, started: float | None) -> None:
    """With --time, or a checkpoint that has a budget: the clock, the plan so far, and the schedule it
    implies (full learning rate until the first plan)."""
    saved = (state or {}).get("budget")
    seconds = run.options.time_budget
    if seconds is None and not saved:
        return
    every = (run.recipe.schedule.sample_every, run.recipe.schedule.checkpoint_every)
    if saved and seconds is None:
        run.budget = TimeBudget.from_state(saved, run.options.max_steps, started, every=every)
    else:
        recipe_schedule = Schedule.from_recipe(run.recipe, len(run.loader))
        share = recipe_schedule.constant / (recipe_schedule.constant + recipe_schedule.decay)
        spent = saved["spent"] if saved else 0.0
        run.budget = TimeBudget(seconds, share, run.options.max_steps, spent, started=started, every=every)
    plan = run.budget.plan
    run.schedule = Schedule.from_plan(plan) if plan else Schedule(2 ** 62, 0, 1)
    run.budget.refuse_if_spent()


def start_average(run: Run, state: dict | None) -> None:
    """Averaged generator weights when the recipe asks for them (rank 0 alone exports): from the
    checkpoint's, or from the generators as they are."""
    optim = run.recipe.optim
    if optim.ema_halflife <= 0 or not run.dist.main:
        return
    run.average = WeightAverage(run.method.generators(), optim.ema_halflife, optim.ema_rampup)
    if (state or {}).get("average"):
        run.average.load_state_dict(state["average"])


def finish(run: Run) -> list:
    """Rank 0, after the last iteration: the last sample grid, then the export (unless --no-export), both of
    the weights the run exports: the average when there is one, unless the method can measure its
    generators and the last iterate measures better. The last checkpoint may still be being written: the
    average goes in by reference (`swapped_in`), so that checkpoint keeps the last iterate."""
    if run.average is None or not average_measures_better(run):
        return grid_and_export(run)
    with run.average.swapped_in():
        run.weights = run.average.label()
        try:
            return grid_and_export(run)
        finally:
            run.weights = "last"


def average_measures_better(run: Run) -> bool:
    """Whether the averaged weights (caught up with the last iteration) are the ones to export: yes unless
    the method measures them worse than the last iterate."""
    run.average.catch_up(run.iteration)
    last = run.method.score(run)
    if last is None:
        return True
    with run.average.swapped_in():
        run.weights = run.average.label()
        try:
            averaged = run.method.score(run)
        finally:
            run.weights = "last"
    if averaged >= last:
        return True
    log.info("the averaged weights measured worse than the last iterate (%.3f against %.3f): exporting the "
             "last", averaged, last)
    return False


def grid_and_export(run: Run) -> list:
    with timed(run, "sample"):
        write_samples(run)
    if not run.options.export:
        return []
    with timed(run, "export"), export_errors_said(run):
        return run.method.export(run)


def planned_iterations(run: Run) -> str:
    """'1,240 in all', or for a budget not yet planned: 'as many as fit in 45 min'."""
    if run.budget is not None and run.budget.plan is None:
        return f"as many as fit in {format_duration(run.budget.seconds)}"
    return f"{run.schedule.total_iterations} in all"


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
    """The batch with its images (and the temporal pairing flag) on the device; other keys as they are."""
    moved = {key: batch[key].to(device, non_blocking=True) for key in ("x", "y", "x_next") if key in batch}
    if "has_next" in batch:
        moved["has_next"] = batch["has_next"].to(device)
    return {**batch, **moved}


def raise_if_not_finite(losses: dict, iteration: int) -> None:
    if not all(math.isfinite(v) for v in losses.values()):
        shown = ", ".join(f"{k} {v:.3g}" for k, v in losses.items())
        raise TrainingError(f"losses became non-finite at iteration {iteration} ({shown}); resume from the last "
                            f"checkpoint with precision fp32 (--precision fp32) or a lower optim.lr")


# ---------------------------------------------------------------- what people watch

def log_losses(run: Run, window: dict, epoch: int, lr: float) -> None:
    """One losses.jsonl row (and tensorboard scalars): each loss averaged over the interval."""
    if not run.dist.main:
        return
    means = {key: sum(values) / len(values) for key, values in window.items() if values}
    end = stop_at(run)  # where the run is planned to end (a --time plan moves it): the web page's runs table
    run.log.append({"iteration": run.iteration, "epoch": epoch, "lr": lr, "time": round(time.time(), 3),
                    **({"end": end} if end is not None else {}), **means})
    if run.tensorboard is not None:
        for key, value in means.items():
            run.tensorboard.add_scalar(f"loss/{key}", value, run.iteration)
        run.tensorboard.add_scalar("lr", lr, run.iteration)


@torch.no_grad()
def write_samples(run: Run) -> None:
    """samples/iter_N.png: the method's rows on held-out frames."""
    with filters_shared():
        rows = [(label, batch_to_frames(images).cpu().numpy()) for label, images in run.method.sample_rows(run)]
    weights = "" if run.weights == "last" else ", averaged weights"
    grid = image_grid(rows, title=f"{run.record['name']}: iteration {run.iteration}{weights}")
    write_png(run.run_dir / SAMPLES / f"iter_{run.iteration:06d}.png", grid)
    if run.tensorboard is not None:
        run.tensorboard.add_image("samples", grid, run.iteration, dataformats="HWC")


def open_tensorboard(run: Run) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional extra: pip install 'vidcycle[tensorboard]'
    except ImportError:
        return
    run.tensorboard = SummaryWriter(str(run.run_dir / "tensorboard"), purge_step=run.iteration or None)


# ---------------------------------------------------------------- a whole run

def execute(run: Run, state: dict | None, progress=None, started: float | None = None) -> RunResult:
    """Restore if resuming, train to the end, checkpoint, export from memory (rank 0). `started`: when the
    run began (time.monotonic()), for a time budget that counts the start too."""
    keep_freed_memory()  # each step reuses the last one's memory instead of faulting it in again
    with system_errors_said(run):
        try:
            return _execute(run, state, progress, started)
        finally:
            run.close()


@contextmanager
def system_errors_said(run: Run):
    """An OS error (a full disk, a folder taken away) ends the run in one line that says how to go on."""
    try:
        yield
    except OSError as error:
        command = "distill" if run.record.get("kind") == "distill" else "train"
        go_on = (f"continue it from its last checkpoint with vidcycle {command} --resume {run.run_dir}"
                 if (run.run_dir / CHECKPOINT).is_file()
                 else f"start it again (it has no checkpoint yet: remove {run.run_dir} first)")
        raise TrainingError(f"{error.filename or run.run_dir}: {error.strerror or error}; the run stopped at "
                            f"iteration {run.iteration}: mend that and {go_on}") from error


@contextmanager
def export_errors_said(run: Run):
    """A model the store cannot take: the run itself is done and checkpointed, and can be exported again."""
    try:
        yield
    except ModelError as error:
        raise TrainingError(f"{error}; the run is done and checkpointed at iteration {run.iteration}: mend that "
                            f"and export it with vidcycle models export {run.run_dir}") from error


def _execute(run: Run, state: dict | None, progress, started: float | None) -> RunResult:
    """`execute` inside its run: restore, the first grid, the iterations, the export."""
    shown = progress if run.dist.main else None
    if state is not None:
        restore(run, state)
    start_budget(run, state, started)
    start_average(run, state)
    if state is not None and run.dist.main:  # one line for the run, not one per process
        log.info("continuing: iteration %d of %s already done (%s)", run.iteration,
                 stop_at(run) or "as many as fit", run.run_dir)
    if run.dist.main:
        open_tensorboard(run)
        log.info("%s", run.method.summary(run))
    for path, reason in run.failures:
        log.warning("skipped %s: %s", path, reason)
    if state is None and run.dist.main:
        with timed(run, "sample"):
            write_samples(run)  # iteration 0: what the untrained networks make, for comparison
    iteration = fit(run, shown)
    exported = finish(run) if run.dist.main else []
    run.dist.barrier()
    total = stop_at(run) if run.budget is not None else run.schedule.total_iterations
    return RunResult(run.run_dir, iteration, total or iteration, exported, run.failures,
                     run.budget.state() if run.budget is not None else None)


def run_facts(run: Run, counts: dict) -> str:
    """The summary line every two-collection method shares: frames, iterations, device and precision."""
    winograd = any(isinstance(module, WinogradConv2d) for net in run.method.generators().values()
                   for module in net.modules())
    return (f"frames: x {counts['x']}, y {counts['y']}; {len(run.loader)} iterations per epoch, "
            f"{planned_iterations(run)}; {run.device.type} {precision_name(run.amp.dtype)}"
            + (" (Winograd's 3x3 convolutions)" if winograd else "")
            + (f", {run.dist.world} processes" if run.dist.active else ""))


def recipe_changes(recipe) -> dict:
    """`section.key: value` for every value that differs from its kind's and method's defaults (the
    papers')."""
    def flat(data, prefix=""):
        for key, value in data.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value
    defaults = dict(flat(recipe_to_dict(defaults_of(recipe))))
    return {key: value for key, value in flat(recipe_to_dict(recipe)) if defaults.get(key) != value}
