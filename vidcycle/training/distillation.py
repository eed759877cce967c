"""Distillation on the run scaffold (vidcycle.training.run): a cheaper student learns to reproduce a
teacher. Setting a run up (the checks first, then teacher, held-out frames, student and loader), the
method's parts (its step, sample grids, checkpoint state, the fidelity reported at each checkpoint
and the student it exports), and the entry points `distill` and `resume_distill`.

The student, the step and the fidelity measure are vidcycle.training.students. The run folder is
training's (vidcycle.training.run_folder); its sample grids' rows are the held-out input, the teacher's
output, the student's, and their difference (x4). The student goes into the store with its teacher
and its fidelity on the held-out frames in its header.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vidcycle.errors import MediaError, RecipeError, TrainingError, UsageError
from vidcycle.media.images import read_rgb, resize_for_training
from vidcycle.models.modelfile import ModelInfo, state_hash
from vidcycle.models.store import check_store_names, load_generator, put, resolve_model_path
from vidcycle.runtime.convolutions import prepare_faster_convolutions, use_faster_convolutions
from vidcycle.runtime.device import pick_device, pick_training_precision, precision_name
from vidcycle.runtime.torchrun import TorchrunEnv
from vidcycle.training.amp import Amp
from vidcycle.training.budget import now as budget_clock
from vidcycle.training.data import SAMPLE_COLUMNS, FrameDataset, center_batch, hold_out, make_loader, no_frames_message
from vidcycle.training.distributed import Distributed, loader_workers
from vidcycle.training.framecache import FrameSet, SamplingConfig, default_cache_dir, gather_frames
from vidcycle.training.gan import adam
from vidcycle.training.recipe import DistillRecipe, load_recipe, recipe_from_dict, recipe_to_dict, shipped_recipes
from vidcycle.training.run import Run, RunFlags, RunResult, execute, planned_iterations, recipe_changes, to_device
from vidcycle.training.run_checkpoints import reopen
from vidcycle.training.run_folder import LossLog, create_run_dir, default_run_dir, new_record, rng_state, set_rng_state
from vidcycle.training.schedule import Schedule
from vidcycle.training.students import (LOSS_PANELS, FeatureMaps, TeacherTargets, build_student, check_cheaper,
                                        distill_step, fidelity, student_spec, translate_frames)
from vidcycle.version import __version__

CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "vidcycle-distill-checkpoint", 1
DIFFERENCE_GAIN = 4  # the grids' last row: |teacher - student|, 4x brighter so small errors show
log = logging.getLogger("vidcycle")


@dataclass
class DistillOptions(RunFlags):
    """A distillation's data, with the flags every run takes (vidcycle.training.run.RunFlags); `name` is the
    student's store name, which a new run needs."""

    data: list = field(default_factory=list)  # footage and photos of the teacher's input domain


@dataclass
class DistillResult(RunResult):
    fidelity: dict = field(default_factory=dict)   # the student against its teacher on the held-out frames
    gmacs: tuple = ()                              # (student, teacher) per 256x256 frame

    @property
    def stored(self):
        """The student's StoredModel, when exported."""
        return self.exported[0] if self.exported else None


@dataclass
class HeldOut:
    """Frames distillation never trains on: full frames for fidelity, centre crops for the grids, and
    what the teacher makes of each in float32."""

    frames: list
    targets: list
    crops: torch.Tensor
    crop_targets: torch.Tensor


@dataclass
class Distillation:
    """The method's parts: the teacher (its weights in the run's precision, and its kept outputs), the
    student, the optional feature maps, the optimiser and the held-out frames."""

    targets: TeacherTargets
    teacher_info: ModelInfo
    student: torch.nn.Module
    features: FeatureMaps | None
    optimizer: torch.optim.Optimizer
    held: HeldOut
    frames: FrameSet
    label: str = "distill"
    loss_panels: dict = field(default_factory=lambda: LOSS_PANELS)
    measured: tuple | None = None   # ((iteration, weights), fidelity) of the last measurement
    exported_fidelity: dict | None = None   # of the weights it exported
    # the stability term's camera motions: the method's own generator, kept in checkpoints, so a resumed
    # run draws what an unbroken one would (a loader starting an epoch draws on torch's global one)
    motions: torch.Generator = field(default_factory=torch.Generator)

    @property
    def spec(self):
        return self.student.spec

    def step(self, run: Run, batch: dict, lr: float) -> dict:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return distill_step(self.student, self.targets, self.features, self.optimizer, to_device(batch, run.device),
                            run.recipe.loss, run.amp, self.motions)

    def sample_rows(self, run: Run) -> list:
        """Rows: held-out input, teacher, student, |teacher - student| x DIFFERENCE_GAIN."""
        student = self.student.eval()
        made = student(self.held.crops)
        student.train()
        difference = ((made - self.held.crop_targets).abs() * DIFFERENCE_GAIN - 1).clamp(-1, 1)
        return [("input", self.held.crops), ("teacher", self.held.crop_targets), ("student", made),
                (f"|diff| x{DIFFERENCE_GAIN}", difference)]

    def state(self, run: Run, all_ranks: bool) -> dict:
        return {"student": self.student.state_dict(),
                "features": self.features.state_dict() if self.features is not None else {},
                "optimizer": self.optimizer.state_dict(), "rng": rng_state(run.device),
                "motions": self.motions.get_state(), "teacher_hash": run.record["teacher_hash"]}

    def restore(self, run: Run, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        if self.features is not None:
            self.features.load_state_dict(state["features"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], run.device)
        if "motions" in state:  # checkpoints from before the stability term have none
            self.motions.set_state(state["motions"])

    def generator_xy(self) -> torch.nn.Module:
        return self.student

    def generators(self) -> dict:
        return {"student": self.student}

    def score(self, run: Run) -> float | None:
        return self.fidelity(run)["psnr"]

    def checkpointed(self, run: Run) -> None:
        now = self.fidelity(run)
        log.info("iteration %d: student vs teacher on %d held-out frames: PSNR %.2f dB, SSIM %.4f", run.iteration,
                 now["frames"], now["psnr"], now["ssim"])

    def fidelity(self, run: Run) -> dict:
        """The student against its teacher on the held-out frames, measured once per iteration."""
        key = (run.iteration, run.weights)
        if self.measured is None or self.measured[0] != key:
            self.measured = (key, fidelity(self.student, self.held.frames, self.held.targets, run.device))
        return self.measured[1]

    def export(self, run: Run) -> list:
        """The student into the store, its header naming the teacher and the fidelity it reached."""
        check_store_names((run.record["name"],), run_source(run.run_dir), run.options.overwrite)
        info = ModelInfo(spec=self.spec, from_domain=self.teacher_info.from_domain,
                         to_domain=self.teacher_info.to_domain, train_size=run.recipe.data.crop_size,
                         recipe=recipe_to_dict(run.recipe), source=run_source(run.run_dir),
                         teacher={"name": run.record["teacher_name"], "content_hash": run.record["teacher_hash"]},
                         fidelity={**self.fidelity(run), "held_out": True, "precision": "fp32"},
                         method=self.teacher_info.method, weights=run.weights)
        self.exported_fidelity = info.fidelity
        return [put(run.record["name"], self.student, info)]

    def summary(self, run: Run) -> str:
        cost, teacher_cost = check_cheaper(self.spec, self.teacher_info.spec)
        return (f"frames: {len(self.frames)} ({len(self.held.frames)} held out); {len(run.loader)} iterations per "
                f"epoch, {planned_iterations(run)}; student {self.spec.label}, {cost:.2f} GMAC per "
                f"256x256 frame, {teacher_cost / cost:.1f}x cheaper than the teacher ({teacher_cost:.2f}); "
                f"{run.device.type} {precision_name(run.amp.dtype)}; changed from the defaults: "
                + (", ".join(f"{k}={v}" for k, v in recipe_changes(run.recipe).items()) or "nothing"))


# ---------------------------------------------------------------- before a run: the checks

def gather_data(recipe: DistillRecipe, inputs, cache_dir, progress=None) -> FrameSet:
    """The frames of `inputs` through the frame cache, sampled as the recipe's data section says.

    Raises MediaError when there are fewer than two usable frames (one to learn from, one held out).
    """
    frames = gather_frames(inputs, SamplingConfig.from_data_config(recipe.data), cache_dir, progress)
    if not frames.items:
        raise MediaError(no_frames_message("data (--data)", frames))
    needed = recipe.optim.batch_size + 1
    if len(frames) - held_count(recipe, len(frames)) < recipe.optim.batch_size:
        raise MediaError(f"data (--data) {', '.join(map(str, frames.inputs))}: {len(frames)} usable frame(s); "
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


def load_teacher(name_or_path):
    """The teacher (float32, on the CPU), its info and its file. Raises ModelError (unknown or unreadable)."""
    path = resolve_model_path(name_or_path)
    generator, info = load_generator(path)
    return generator, info, path


# ---------------------------------------------------------------- setting a run up

def setup(recipe: DistillRecipe, run_dir: Path, record: dict, options: DistillOptions, frames: FrameSet,
          progress=None) -> Run:
    """Load the teacher, split off the held-out frames, build the student, its optimizer and loader.

    Raises TrainingError (the teacher changed since the run began), ModelError, RecipeError, DeviceError.
    """
    device = pick_device(options.device)
    if options.compile:
        log.info("--compile: distillation trains its student without compiling (only train's networks compile)")
    teacher, teacher_info, _ = load_teacher(record["teacher_path"])
    teacher = teacher.to(device)
    found = state_hash(teacher.state_dict())
    if found != record["teacher_hash"]:
        raise TrainingError(f"{record['teacher_path']}: the teacher changed since this run began (content "
                            f"hash {found[:12]}, the run's {record['teacher_hash'][:12]})")
    spec = student_spec(recipe, teacher_info.spec)
    # Not training's narrow-net rule (float32 below ngf 32, measured on 64-px single-crop CycleGAN steps):
    # a student's 4 x 128-px step runs faster in bf16 where the CPU has it (benchmarks/README.md,
    # "Layouts and the distillation precision").
    dtype = pick_training_precision(options.precision, device)
    prepare_faster_convolutions(device, dtype)
    train_frames, held_items = hold_out(frames, held_count(recipe, len(frames)), lend=False)
    log.info("teacher %s: targets for %d held-out frames", record["teacher"], len(held_items))
    held = held_out(teacher, held_items, recipe.data, device)
    teacher_net = teacher.to(dtype)  # after the float32 targets: training targets in the run's precision
    use_faster_convolutions(teacher_net, device, dtype)
    student = build_student(spec, recipe.seed).to(device)
    use_faster_convolutions(student, device, dtype)
    features = FeatureMaps(student, teacher_net).to(device) if recipe.loss.features > 0 else None
    parameters = list(student.parameters()) + (list(features.parameters()) if features is not None else [])
    optimizer = adam(parameters, recipe.optim)
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
    method = Distillation(TeacherTargets(teacher_net, keep=recipe.views > 0), teacher_info, student, features,
                          optimizer, held, frames, motions=torch.Generator().manual_seed(recipe.seed))
    return Run(method, recipe, Path(run_dir), record, options, Distributed(), device, Amp(device, dtype), loader,
               schedule, LossLog(run_dir, record["name"]), CHECKPOINT_FORMAT, CHECKPOINT_VERSION, frames.failures)


def held_out(teacher: torch.nn.Module, items, data, device: torch.device) -> HeldOut:
    """The held-out frames at the load size (whole, as apply sees frames), their grid crops, and the
    teacher's float32 output on each."""
    frames = [resize_for_training(read_rgb(item.path), data.load_size, data.keep_aspect) for item in items]
    crops = center_batch(items[:SAMPLE_COLUMNS], data).to(device)
    with torch.no_grad():
        crop_targets = teacher(crops)
    return HeldOut(frames, translate_frames(teacher, frames, device), crops, crop_targets)


# ---------------------------------------------------------------- entry points

def default_recipe() -> DistillRecipe:
    """recipes/distill.toml."""
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
    refuse_torchrun()
    recipe = recipe or default_recipe()
    if not options.name:
        raise UsageError("distillation needs a store name for the student (name, --name)")
    pick_device(options.device)
    generator, info, path = load_teacher(teacher)
    student_spec(recipe, info.spec)
    run_dir = Path(options.out) if options.out else default_run_dir(options.name)
    if options.export:
        check_store_names((options.name,), run_source(run_dir), options.overwrite)
    frames = gather_data(recipe, options.data, options.cache_dir or default_cache_dir(), progress)
    record = new_record({"name": options.name, "kind": "distill"}, {"data": options.data}, options.cache_dir,
                        __version__)
    record.update(teacher=str(teacher), teacher_name=path.stem, teacher_path=str(path.resolve()),
                  teacher_hash=state_hash(generator.state_dict()))
    create_run_dir(run_dir, recipe, record)
    return _run(recipe, run_dir, record, options, frames, progress, state=None)


def resume_distill(run_dir, options: DistillOptions, progress=None) -> DistillResult:
    """Continue a distillation from RUN_DIR/checkpoint.pt with its own recipe, teacher and data.

    Raises TrainingError (not a distillation run, no checkpoint, the teacher changed), MediaError.
    """
    refuse_torchrun()
    run_dir = Path(run_dir)
    record, state = reopen(run_dir, "distill", CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "distillation")
    recipe = recipe_from_dict(state["recipe"], source=f"{run_dir}/checkpoint.pt recipe", kind=DistillRecipe)
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
    started = options.time_started or budget_clock()
    run = setup(recipe, run_dir, record, options, frames, progress)
    done = execute(run, state, progress, started)
    return DistillResult(**vars(done), fidelity=run.method.exported_fidelity or run.method.fidelity(run),
                         gmacs=check_cheaper(run.method.spec, run.method.teacher_info.spec))
