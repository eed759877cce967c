"""A run's checkpoints: saving (all ranks take part, the last one written behind), restoring, and reopening
a run folder to continue it. Split from the scaffold (`training.run`), which calls these at its checkpoints
and whose `Run` each `run` here is (not imported: the scaffold imports this module)."""

from __future__ import annotations

from pathlib import Path

from vidcycle.errors import TrainingError
from vidcycle.runtime.device import precision_name
from vidcycle.training.kid import KID_PANEL
from vidcycle.training.recipe import recipe_to_dict
from vidcycle.training.run_folder import (CHECKPOINT, CheckpointWriting, load_checkpoint, read_run,
                                          remove_partial_checkpoint, save_checkpoint)
from vidcycle.version import __version__


def checkpoint(run, write_behind: bool = False) -> None:
    """Save (all ranks take part), redraw the curves, let the method report, and wait for every rank.
    `write_behind`: the file is written on another thread (`Run.settle` waits for it), for the last
    checkpoint, after which nothing trains."""
    save(run, write_behind=write_behind)
    run.saved_at = run.iteration
    if run.dist.main:
        panels = run.method.loss_panels
        if run.kid is not None:
            score = run.kid.score(run.method.generator_xy(), run.device, run.amp)
            run.log.append({"iteration": run.iteration, "kid_x1000": score})
            if run.tensorboard is not None:
                run.tensorboard.add_scalar("kid_x1000", score, run.iteration)
            panels = {**panels, **KID_PANEL}
        run.log.draw(panels, run.iteration)
        run.method.checkpointed(run)
    run.dist.barrier()


def save(run, all_ranks: bool = True, average_now: bool = True, write_behind: bool = False) -> None:
    """All ranks call this (the method may gather their states) unless all_ranks is False: then rank 0
    alone saves its own. `average_now`: the averaged weights catch up with this iteration first (as at
    every iteration an unbroken run checkpoints at too, so a resumed run goes on as it would have)."""
    run.settle()
    state = run.method.state(run, all_ranks)
    if not run.dist.main:
        return
    if run.average is not None and average_now:
        run.average.catch_up(run.iteration)  # what the checkpoint keeps is what an export would carry
    payload = {
        "format": run.checkpoint_format, "version": run.checkpoint_version, "vidcycle": __version__,
        "recipe": recipe_to_dict(run.recipe), "iteration": run.iteration, "precision": precision_name(run.amp.dtype),
        "scaler": run.amp.scaler.state_dict() if run.amp.scaler else {},
        "budget": run.budget.state() if run.budget is not None else None,
        "average": run.average.state_dict() if run.average is not None else None, **state}
    if write_behind:
        run.writing = CheckpointWriting(run.run_dir / CHECKPOINT, payload)
    else:
        save_checkpoint(run.run_dir / CHECKPOINT, payload)


def restore(run, state: dict) -> None:
    """The method's state, the scaler, the counter and the loss log as of the checkpoint."""
    run.iteration = run.saved_at = int(state["iteration"])
    if run.amp.scaler and state.get("scaler"):
        run.amp.scaler.load_state_dict(state["scaler"])
    run.method.restore(run, state)
    run.log.rewind(run.iteration, write=run.dist.main)


def reopen(run_dir, kind: str, checkpoint_format: str, newest: int, what: str) -> tuple[dict, dict]:
    """A run folder's record and checkpoint, to continue it. Raises TrainingError (another kind of run,
    no checkpoint yet, a damaged or newer one)."""
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    found = record.get("kind", "train")
    if found != kind:
        again = "vidcycle distill --resume" if found == "distill" else "vidcycle train --resume"
        raise TrainingError(f"{run_dir}: a {'distillation' if found == 'distill' else 'training'} run, not a "
                            f"{what}; continue it with {again}")
    remove_partial_checkpoint(run_dir)
    return record, load_checkpoint(run_dir / CHECKPOINT, checkpoint_format, newest, what)
