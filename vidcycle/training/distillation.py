"""Running a distillation: setting it up, the loop (training's `fit`, with distillation's parts),
checkpoints and exact resume, sample grids, and the entry points `distill` and `resume_distill`.

The method (student, step, fidelity) is vidcycle.students; the run folder is
laid out as training's (vidcycle.runs): recipe.toml, run.json, checkpoint.pt,
losses.jsonl, loss_curves.png, and samples/iter_N.png grids whose rows are
the held-out input, the teacher's output, the student's, and their
difference (x4). At the end the student goes into the model store, its
header naming its teacher and its fidelity on the held-out frames.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vidcycle import __version__
from vidcycle.training.cyclegan import Amp, Schedule
from vidcycle.training.data import SAMPLE_COLUMNS, FrameDataset, center_batch, hold_out, make_loader, no_frames_message
from vidcycle.runtime.device import pick_device, pick_training_precision, precision_name
from vidcycle.runtime.torchrun import TorchrunEnv
from vidcycle.training.distributed import Distributed, loader_workers
from vidcycle.errors import MediaError, RecipeError, TrainingError, UsageError
from vidcycle.training.framecache import FrameSet, SamplingConfig, default_cache_dir, gather_frames
from vidcycle.media.images import read_rgb, resize_for_training
from vidcycle.models.modelfile import ModelInfo, state_hash
from vidcycle.training.recipe import DistillRecipe, recipe_from_dict, recipe_to_dict
from vidcycle.training.runs import (CHECKPOINT, SAMPLES, LossLog, create_run_dir, default_run_dir, load_checkpoint, new_record,
                   read_run, remove_partial_checkpoint, rng_state, save_checkpoint, set_rng_state)
from vidcycle.training.students import (LOSS_PANELS, FeatureMaps, TeacherTargets, build_student, check_cheaper, distill_step,
                       fidelity, student_spec, translate_frames)
from vidcycle.training.loop import LoopParts, note, fit, open_tensorboard, recipe_changes, to_device

CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "vidcycle-distill-checkpoint", 1
DIFFERENCE_GAIN = 4  # the grids' last row: |teacher - student|, 4x brighter so small errors show


@dataclass
class DistillOptions:
    """Where and how to run (flags), as opposed to what to learn (the DistillRecipe)."""

    data: list = field(default_factory=list)  # footage and photos of the teacher's input domain
    name: str | None = None          # store name of the student (a new run needs one)
    out: Path | None = None          # run folder; default runs/NAME (NAME-2, ... if taken)
    device: str = "auto"
    precision: str = "auto"          # the student's training and the teacher's targets; auto as for training
    workers: int | None = None       # data-loader processes; None: 1 on CPU
    max_steps: int | None = None     # stop when the iteration counter reaches this (still exports)
    cache_dir: Path | None = None    # frame cache; default $VIDCYCLE_HOME/frames
    export: bool = True
    overwrite: bool = False          # replace a store model of the same name made by something else


@dataclass
class DistillResult:
    run_dir: Path
    iteration: int
    total_iterations: int
    fidelity: dict                   # the student against its teacher on the held-out frames
    gmacs: tuple                     # (student, teacher) per 256x256 frame
    stored: object = None            # StoredModel of the student, when exported
    failures: list = field(default_factory=list)   # (path, reason) of skipped media


@dataclass
class HeldOut:
    """Frames distillation never trains on: full frames for fidelity, centre crops for the grids, and
    what the teacher makes of each in float32."""

    frames: list
    targets: list
    crops: torch.Tensor
    crop_targets: torch.Tensor


@dataclass
class Distiller:
    """Everything one distillation runs with, built once by `setup`; training's `fit` runs the loop."""

    recipe: DistillRecipe
    run_dir: Path
    record: dict
    options: DistillOptions
    device: torch.device
    amp: Amp
    targets: TeacherTargets         # the teacher, its weights in the run's precision, and its kept outputs
    teacher_info: ModelInfo
    student: torch.nn.Module
    features: FeatureMaps | None
    optimizer: torch.optim.Optimizer
    loader: object
    held: HeldOut
    schedule: Schedule
    log: LossLog
    dist: Distributed = field(default_factory=Distributed)  # one process
    tensorboard: object = None
    progress: object = None         # the caller's progress reporter, for notes at checkpoints
    iteration: int = 0
    saved_at: int | None = None

    @property
    def spec(self):
        return self.student.spec

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


# ---------------------------------------------------------------- before a run: the checks

def gather_data(recipe: DistillRecipe, inputs, cache_dir, progress=None) -> FrameSet:
    """The frames of `inputs` through the frame cache, sampled as the recipe's data section says.

    Raises MediaError when there are fewer than two usable frames (one to learn from, one held out).
    """
    bar = progress.frames("frames") if progress else None
    frames = gather_frames(inputs, SamplingConfig.from_data_config(recipe.data), cache_dir, bar)
    if not frames.items:
        raise MediaError(no_frames_message("--data", frames))
    needed = recipe.optim.batch_size + 1
    if len(frames) - held_count(recipe, len(frames)) < recipe.optim.batch_size:
        raise MediaError(f"--data {', '.join(map(str, frames.inputs))}: {len(frames)} usable frame(s); "
                         f"distillation needs at least {needed}: a batch of {recipe.optim.batch_size} to learn "
                         f"from and one held out to measure fidelity on")
    return frames


def held_count(recipe: DistillRecipe, frames: int) -> int:
    """Frames held out of `frames`: the recipe's number, but at most a fifth of them (at least one)."""
    return max(1, min(recipe.held_out, frames // 5))


def refuse_torchrun() -> None:
    """Distillation runs in one process: under torchrun every rank would write the same run folder."""
    if TorchrunEnv.read().active:
        raise UsageError("vidcycle distill runs in one process; start it without torchrun")


def load_teacher(name_or_path, device: torch.device):
    """The teacher as a float32 Translator, and its file. Raises ModelError (unknown or unreadable)."""
    from vidcycle.models.store import resolve_model_path
    from vidcycle.runtime.translator import load_model
    path = resolve_model_path(name_or_path)
    return load_model(path, device, "fp32"), path


# ---------------------------------------------------------------- setting a run up

def setup(recipe: DistillRecipe, run_dir: Path, record: dict, options: DistillOptions, frames: FrameSet,
          progress=None) -> Distiller:
    """Load the teacher, split off the held-out frames, build the student, its optimizer and loader.

    Raises TrainingError (the teacher changed since the run began), ModelError, RecipeError, DeviceError.
    """
    device = pick_device(options.device)
    teacher, _ = load_teacher(record["teacher_path"], device)
    found = state_hash(teacher.generator.state_dict())
    if found != record["teacher_hash"]:
        raise TrainingError(f"{record['teacher_path']}: the teacher changed since this run began (content "
                            f"hash {found[:12]}, the run's {record['teacher_hash'][:12]})")
    spec = student_spec(recipe, teacher.info.spec)
    # Not training's narrow-net rule (float32 below ngf 32, measured on 64-px single-crop CycleGAN steps):
    # here bf16, where native, ran the 6-block ngf-16 student's step (4 x 128 px) in 0.11 s against 0.17,
    # the teacher's targets 2.1x faster, and 150 iterations in 63 s against 105.
    dtype = pick_training_precision(options.precision, device)
    train_frames, held_items = hold_out(frames, held_count(recipe, len(frames)), lend=False)
    note(progress, f"teacher {record['teacher']}: targets for {len(held_items)} held-out frames")
    held = held_out(teacher.generator, held_items, recipe.data, device)
    teacher_net = teacher.generator.to(dtype)  # after the float32 targets: training targets in the run's precision
    student = build_student(spec, recipe.seed).to(device)
    features = FeatureMaps(student, teacher_net).to(device) if recipe.loss.features > 0 else None
    parameters = list(student.parameters()) + (list(features.parameters()) if features is not None else [])
    optimizer = torch.optim.Adam(parameters, lr=recipe.optim.lr, betas=(recipe.optim.beta1, recipe.optim.beta2))
    data = recipe.data
    dataset = FrameDataset(train_frames, data.load_size, data.crop_size, data.flip, recipe.seed, data.keep_aspect,
                           recipe.views)
    loader = make_loader(dataset, recipe.optim.batch_size, loader_workers(options.workers, device, TorchrunEnv()),
                         shuffle=True, seed=recipe.seed)
    schedule = Schedule.from_recipe(recipe, len(loader))
    if schedule.total_iterations <= 0:
        raise RecipeError("schedule: nothing to distil (iterations + iterations_decay, or epochs + "
                          "epochs_decay, is 0)")
    random.seed(recipe.seed)
    np.random.seed(recipe.seed)
    return Distiller(recipe, Path(run_dir), record, options, device, Amp(device, dtype),
                     TeacherTargets(teacher_net, keep=recipe.views > 0), teacher.info, student, features, optimizer,
                     loader, held, schedule, LossLog(run_dir, record["name"]))


def held_out(teacher: torch.nn.Module, items, data, device: torch.device) -> HeldOut:
    """The held-out frames at the load size (whole, as apply sees frames), their grid crops, and the
    teacher's float32 output on each."""
    frames = [resize_for_training(read_rgb(item.path), data.load_size, data.keep_aspect) for item in items]
    crops = center_batch(items[:SAMPLE_COLUMNS], data).to(device)
    with torch.no_grad():
        crop_targets = teacher(crops)
    return HeldOut(frames, translate_frames(teacher, frames, device), crops, crop_targets)


# ---------------------------------------------------------------- the loop's parts

def distill_iteration(d: Distiller, batch: dict, lr: float) -> dict:
    for group in d.optimizer.param_groups:
        group["lr"] = lr
    return distill_step(d.student, d.targets, d.features, d.optimizer,
                        {**batch, **to_device(batch, d.device)}, d.recipe.loss, d.amp)


@torch.no_grad()
def write_samples(d: Distiller) -> None:
    """Rows: held-out input, teacher, student, |teacher - student| x DIFFERENCE_GAIN."""
    from vidcycle.media.charts import image_grid, write_png
    from vidcycle.models.frames import batch_to_frames
    student = d.student.eval()
    made = student(d.held.crops)
    student.train()
    difference = ((made - d.held.crop_targets).abs() * DIFFERENCE_GAIN - 1).clamp(-1, 1)
    rows = [("input", d.held.crops), ("teacher", d.held.crop_targets), ("student", made),
            (f"|diff| x{DIFFERENCE_GAIN}", difference)]
    grid = image_grid([(label, batch_to_frames(images).cpu().numpy()) for label, images in rows],
                      title=f"{d.record['name']}: iteration {d.iteration}")
    write_png(d.run_dir / SAMPLES / f"iter_{d.iteration:06d}.png", grid)


def checkpoint(d: Distiller) -> None:
    """Save, redraw the curves, and say how faithful the student is now."""
    save(d)
    d.saved_at = d.iteration
    d.log.draw(LOSS_PANELS, d.iteration)
    now = fidelity(d.student, d.held.frames, d.held.targets, d.device)
    note(d.progress, f"iteration {d.iteration}: student vs teacher on {now['frames']} held-out frames: "
                              f"PSNR {now['psnr']:.2f} dB, SSIM {now['ssim']:.4f}")


def save(d: Distiller) -> None:
    save_checkpoint(d.run_dir / CHECKPOINT, {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "vidcycle": __version__,
        "recipe": recipe_to_dict(d.recipe), "iteration": d.iteration, "precision": precision_name(d.amp.dtype),
        "student": d.student.state_dict(),
        "features": d.features.state_dict() if d.features is not None else {},
        "optimizer": d.optimizer.state_dict(), "scaler": d.amp.scaler.state_dict() if d.amp.scaler else {},
        "rng": rng_state(d.device), "teacher_hash": d.record["teacher_hash"]})


def restore(d: Distiller, state: dict) -> None:
    """Student, feature maps, optimizer, scaler, RNGs and the loss log as of the checkpoint."""
    d.student.load_state_dict(state["student"])
    if d.features is not None:
        d.features.load_state_dict(state["features"])
    d.optimizer.load_state_dict(state["optimizer"])
    if d.amp.scaler and state.get("scaler"):
        d.amp.scaler.load_state_dict(state["scaler"])
    d.iteration = d.saved_at = int(state["iteration"])
    set_rng_state(state["rng"], d.device)
    d.log.rewind(d.iteration, write=True)


DISTILLATION = LoopParts(distill_iteration, write_samples, checkpoint, save)


# ---------------------------------------------------------------- entry points

def default_recipe() -> DistillRecipe:
    """recipes/distill.toml."""
    from vidcycle.training.recipe import load_recipe, shipped_recipes
    return load_recipe(shipped_recipes()["distill"], kind=DistillRecipe)


def distill(teacher, options: DistillOptions, recipe: DistillRecipe | None = None, progress=None) -> DistillResult:
    """Distil `teacher` (a store name, a built-in name or a model file) into a cheaper student.

    The student learns to reproduce the teacher's output on crops of `options.data`
    (footage and photos of the teacher's input domain) and goes into the store as
    `options.name`. Every check comes before anything is written: the teacher
    (ModelError), the student's cost against the teacher's (RecipeError), the
    store name (OutputExistsError), the data (MediaError). `progress` as for
    vidcycle.train. Also raises TrainingError, DeviceError.
    """
    from vidcycle.models.store import check_store_names
    refuse_torchrun()
    recipe = recipe or default_recipe()
    if not options.name:
        raise UsageError("distillation needs a store name for the student (--name)")
    loaded, path = load_teacher(teacher, pick_device(options.device))
    student_spec(recipe, loaded.info.spec)
    run_dir = Path(options.out) if options.out else default_run_dir(options.name)
    if options.export:
        check_store_names((options.name,), run_source(run_dir), options.overwrite)
    frames = gather_data(recipe, options.data, options.cache_dir or default_cache_dir(), progress)
    record = new_record({"name": options.name, "kind": "distill"}, {"data": options.data}, options.cache_dir,
                        __version__)
    record.update(teacher=str(teacher), teacher_name=loaded.name, teacher_path=str(path.resolve()),
                  teacher_hash=state_hash(loaded.generator.state_dict()))
    create_run_dir(run_dir, recipe, record)
    return _run(recipe, run_dir, record, options, frames, progress, state=None)


def resume_distill(run_dir, options: DistillOptions, progress=None) -> DistillResult:
    """Continue a distillation from RUN_DIR/checkpoint.pt with its own recipe, teacher and data.

    Raises TrainingError (not a distillation run, no checkpoint, the teacher changed), MediaError.
    """
    from vidcycle.models.store import check_store_names
    refuse_torchrun()
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    if record.get("kind") != "distill":
        raise TrainingError(f"{run_dir}: a training run, not a distillation; continue it with vidcycle train "
                            f"--resume")
    remove_partial_checkpoint(run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "distillation")
    recipe = recipe_from_dict(state["recipe"], source=f"{run_dir / CHECKPOINT} recipe", kind=DistillRecipe)
    record["name"] = options.name or record["name"]
    if options.export:
        check_store_names((record["name"],), run_source(run_dir), options.overwrite)
    if options.precision == "auto" and state.get("precision"):
        options = replace(options, precision=state["precision"])
    frames = gather_data(recipe, record["data"], record.get("cache_dir") or default_cache_dir(), progress)
    return _run(recipe, run_dir, record, options, frames, progress, state)


def run_source(run_dir) -> str:
    """What a student distilled in this run records as its source."""
    return f"distilled: {Path(run_dir).resolve()}"


def _run(recipe, run_dir: Path, record: dict, options: DistillOptions, frames: FrameSet, progress,
         state) -> DistillResult:
    d = None
    try:
        d = setup(recipe, run_dir, record, options, frames, progress)
        d.progress = progress
        if state is not None:
            restore(d, state)
            note(progress, f"resumed {run_dir} at iteration {d.iteration}")
        open_tensorboard(d)
        note(progress, _summary(d, frames))
        for path, reason in frames.failures:
            note(progress, f"skipped {path}: {reason}")
        if state is None:
            write_samples(d)  # iteration 0: the untrained student beside its teacher
        iteration = fit(d, progress, DISTILLATION)
        final = fidelity(d.student, d.held.frames, d.held.targets, d.device)
        stored = export(d, final) if options.export else None
        return DistillResult(run_dir, iteration, d.schedule.total_iterations, final,
                             check_cheaper(d.spec, d.teacher_info.spec), stored, frames.failures)
    finally:
        if d is not None:
            d.close()


def export(d: Distiller, final: dict):
    """Put the student into the store, its header naming the teacher and the fidelity it reached."""
    from vidcycle.models.store import check_store_names, put
    check_store_names((d.record["name"],), run_source(d.run_dir), d.options.overwrite)
    info = ModelInfo(spec=d.spec, from_domain=d.teacher_info.from_domain, to_domain=d.teacher_info.to_domain,
                     train_size=d.recipe.data.crop_size, recipe=recipe_to_dict(d.recipe),
                     source=run_source(d.run_dir),
                     teacher={"name": d.record["teacher_name"], "content_hash": d.record["teacher_hash"]},
                     fidelity={**final, "held_out": True, "precision": "fp32"})
    return put(d.record["name"], d.student, info)


def _summary(d: Distiller, frames: FrameSet) -> str:
    cost, teacher_cost = check_cheaper(d.spec, d.teacher_info.spec)
    return (f"frames: {len(frames)} ({len(d.held.frames)} held out); {len(d.loader)} iterations per epoch, "
            f"{d.schedule.total_iterations} in all; student {d.spec.label}, {cost:.2f} GMAC per 256x256 frame, "
            f"{teacher_cost / cost:.1f}x cheaper than the teacher ({teacher_cost:.2f}); {d.device.type} "
            f"{precision_name(d.amp.dtype)}; changed from the defaults: "
            + (", ".join(f"{k}={v}" for k, v in recipe_changes(d.recipe).items()) or "nothing"))
