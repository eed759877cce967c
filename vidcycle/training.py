"""The training loop: the paper's step, its pools and schedule, checkpoints and resume, what people
watch (loss log, curves, sample grids), DistributedDataParallel, and export to the model store.

Method: Zhu et al. 2017 (shared docs, cyclegan.md) with the reference
implementation's defaults. G is `g_xy` (X -> Y), F is `g_yx`; `d_y` judges Y,
`d_x` judges X. A run folder holds everything needed to continue:

    RUN_DIR/recipe.toml        the resolved recipe
    RUN_DIR/run.json           inputs, names, held-out frames (so --resume needs nothing else)
    RUN_DIR/checkpoint.pt      latest checkpoint (atomic; loads with weights_only=True)
    RUN_DIR/losses.jsonl       one line per log interval, losses averaged over it
    RUN_DIR/loss_curves.png    the same as curves
    RUN_DIR/samples/iter_NNNNNN.png   real x, G(x), F(G(x)), real y, F(y), G(F(y)) on held-out frames
    RUN_DIR/tensorboard/       when tensorboard is installed
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .device import pick_device, pick_precision, precision_name
from .errors import ModelError, OutputExistsError, RecipeError, TrainingError
from .losses import cycle_loss, gan_loss, identity_loss, temporal_loss
from .nets import GeneratorSpec, NLayerDiscriminator, build_generator, init_weights
from .recipe import Recipe, recipe_from_dict, recipe_to_dict, recipe_to_toml

CHECKPOINT, RUN_FILE, RECIPE_FILE = "checkpoint.pt", "run.json", "recipe.toml"
LOSS_LOG, CURVES, SAMPLES = "losses.jsonl", "loss_curves.png", "samples"
# Version 2: pools and RNG states per rank ("ranks"), so a torchrun run resumes exactly on every rank.
CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "vidcycle-checkpoint", 2
SAMPLE_COLUMNS = 4
GENERATOR_LOSSES = ("g_xy", "g_yx", "cycle_x", "cycle_y", "idt_x", "idt_y", "temporal")
DISCRIMINATOR_LOSSES = ("d_x", "d_y")


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
    workers: int | None = None         # data-loader processes; None: 1 on CPU, up to 8 on CUDA
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


# ---------------------------------------------------------------- networks and their helpers

@dataclass
class Nets:
    g_xy: nn.Module
    g_yx: nn.Module
    d_x: nn.Module
    d_y: nn.Module

    def state_dict(self) -> dict:
        return {name: unwrap(net).state_dict() for name, net in self.items()}

    def items(self):
        return (("g_xy", self.g_xy), ("g_yx", self.g_yx), ("d_x", self.d_x), ("d_y", self.d_y))


def build_nets(recipe: Recipe) -> Nets:
    """The four networks, initialised N(0, 0.02) from the recipe's seed."""
    torch.manual_seed(recipe.seed)
    spec = generator_spec(recipe)
    model = recipe.model
    return Nets(g_xy=_pads_keep_dtype(build_generator(spec)), g_yx=_pads_keep_dtype(build_generator(spec)),
                d_x=init_weights(NLayerDiscriminator(3, model.ndf, model.d_layers)),
                d_y=init_weights(NLayerDiscriminator(3, model.ndf, model.d_layers)))


class _ReflectionPadKeepDtype(nn.ReflectionPad2d):
    """ReflectionPad2d that pads in its input's dtype under autocast.

    CPU autocast lists reflection padding as a float32 op, so every pad in a
    bf16 generator cast the activation up and the next convolution cast it back
    down: four full-size copies per residual block. Padding is exact in any
    dtype, so nothing is lost by skipping them. No parameters: state dicts are
    unchanged.
    """

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x)


def _pads_keep_dtype(net: nn.Module) -> nn.Module:
    for name, child in net.named_children():
        if type(child) is nn.ReflectionPad2d:
            setattr(net, name, _ReflectionPadKeepDtype(child.padding))
        else:
            _pads_keep_dtype(child)
    return net


def generator_spec(recipe: Recipe) -> GeneratorSpec:
    return GeneratorSpec(n_blocks=recipe.model.n_blocks, ngf=recipe.model.ngf)


def unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def set_requires_grad(nets, flag: bool) -> None:
    for net in nets:
        for parameter in net.parameters():
            parameter.requires_grad_(flag)


class ImagePool:
    """The history of generated images a discriminator is trained on (Shrivastava et al., as in the paper).

    Until `size` images are stored, each query stores and returns the new image;
    then each new image is, with probability 0.5, swapped for a random stored
    one (which is returned) or returned as is. Size 0 returns the input.
    """

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach()
        if self.size == 0:
            return images
        out = []
        for image in images:
            image = image.unsqueeze(0).float()
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif torch.rand(1, generator=self.rng).item() > 0.5:
                slot = int(torch.randint(0, self.size, (1,), generator=self.rng))
                out.append(self.images[slot].clone())
                self.images[slot] = image
            else:
                out.append(image)
        return torch.cat(out).to(images.dtype)

    def state_dict(self) -> dict:
        stored = torch.cat(self.images).cpu() if self.images else torch.zeros(0)
        return {"images": stored, "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict, device) -> None:
        stored = state["images"]
        self.images = [image.unsqueeze(0).to(device) for image in stored] if stored.numel() else []
        self.rng.set_state(state["rng"])


@dataclass(frozen=True)
class Schedule:
    """lr constant for `constant` units, then linear decay over `decay` units (the reference's rule).

    A unit is an epoch (the paper: 100 + 100) or, when the recipe sets
    iterations, one iteration. factor(unit) = 1 - max(0, unit + 1 - constant) /
    (decay + 1), so the last unit trains at lr / (decay + 1).
    """

    constant: int
    decay: int
    per_unit: int  # iterations per unit (batches per epoch, or 1)

    @classmethod
    def from_recipe(cls, recipe: Recipe, iterations_per_epoch: int) -> "Schedule":
        plan = recipe.schedule
        if plan.iterations or plan.iterations_decay:
            return cls(plan.iterations, plan.iterations_decay, 1)
        return cls(plan.epochs, plan.epochs_decay, iterations_per_epoch)

    @property
    def total_iterations(self) -> int:
        return (self.constant + self.decay) * self.per_unit

    def lr_factor(self, iteration: int) -> float:
        unit = iteration // self.per_unit
        return 1.0 - max(0, unit + 1 - self.constant) / float(self.decay + 1)


class Amp:
    """Precision of a step: autocast to bf16/fp16 (fp16 with a grad scaler), or plain float32."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)

    def end_step(self) -> None:
        if self.scaler is not None:
            self.scaler.update()


@dataclass
class Optimizers:
    g: torch.optim.Optimizer
    d: torch.optim.Optimizer

    def set_lr(self, lr: float) -> None:
        for optimizer in (self.g, self.d):
            for group in optimizer.param_groups:
                group["lr"] = lr


def build_optimizers(nets: Nets, recipe: Recipe) -> Optimizers:
    betas = (recipe.optim.beta1, recipe.optim.beta2)
    g_params = list(unwrap(nets.g_xy).parameters()) + list(unwrap(nets.g_yx).parameters())
    d_params = list(unwrap(nets.d_x).parameters()) + list(unwrap(nets.d_y).parameters())
    return Optimizers(g=torch.optim.Adam(g_params, lr=recipe.optim.lr, betas=betas),
                      d=torch.optim.Adam(d_params, lr=recipe.optim.lr, betas=betas))


# ---------------------------------------------------------------- the step

def train_step(nets: Nets, optimizers: Optimizers, pools: dict, batch: dict, loss, amp: Amp) -> dict:
    """One CycleGAN iteration in the paper's order; returns each weighted loss as a float.

    `loss` is the recipe's LossConfig. The generators are updated first with
    the discriminators frozen, then D_X and D_Y on real images and on fakes
    drawn from their history pools, each with its loss halved.
    """
    g_xy, g_yx, d_x, d_y = nets.g_xy, nets.g_yx, nets.d_x, nets.d_y
    real_x, real_y = batch["x"], batch["y"]
    mode, lam, lam_idt = loss.gan_mode, loss.cycle, loss.identity * loss.cycle
    zero = real_x.new_zeros(())

    # Generators. The discriminators only judge here: frozen, and called unwrapped so a
    # frozen net takes no part in DDP's gradient sync.
    set_requires_grad((unwrap(d_x), unwrap(d_y)), False)
    optimizers.g.zero_grad(set_to_none=True)
    with amp.autocast():
        fake_y = g_xy(real_x)                                   # G(x)
        rec_x = g_yx(fake_y)                                    # F(G(x))
        fake_x = g_yx(real_y)                                   # F(y)
        rec_y = g_xy(fake_x)                                    # G(F(y))
        loss_g_xy = gan_loss(unwrap(d_y)(fake_y), True, mode)   # G fools D_Y
        loss_g_yx = gan_loss(unwrap(d_x)(fake_x), True, mode)   # F fools D_X
        loss_cycle_x = cycle_loss(rec_x, real_x) * lam          # ||F(G(x)) - x||_1
        loss_cycle_y = cycle_loss(rec_y, real_y) * lam          # ||G(F(y)) - y||_1
        loss_idt_x = loss_idt_y = zero
        if lam_idt > 0:
            idt_y = g_xy(real_y)                                # G(y) should stay y
            idt_x = g_yx(real_x)                                # F(x) should stay x
            loss_idt_y = identity_loss(idt_y, real_y) * lam_idt
            loss_idt_x = identity_loss(idt_x, real_x) * lam_idt
        loss_temporal = zero
        if loss.temporal > 0 and "x_next" in batch:
            fake_y_next = g_xy(batch["x_next"])                 # G(x_{t+1})
            loss_temporal = temporal_loss(fake_y, fake_y_next, real_x, batch["x_next"],
                                          batch["has_next"]) * loss.temporal
        loss_g = (loss_g_xy + loss_g_yx + loss_cycle_x + loss_cycle_y + loss_idt_x + loss_idt_y
                  + loss_temporal)
    amp.backward_step(loss_g, optimizers.g)

    # Discriminators, on real images and on pooled fakes: 0.5 * (real + fake) each.
    set_requires_grad((unwrap(d_x), unwrap(d_y)), True)
    optimizers.d.zero_grad(set_to_none=True)
    pooled_fake_y = pools["y"].query(fake_y)
    pooled_fake_x = pools["x"].query(fake_x)
    with amp.autocast():
        loss_d_y = 0.5 * (gan_loss(d_y(real_y), True, mode) + gan_loss(d_y(pooled_fake_y), False, mode))
        loss_d_x = 0.5 * (gan_loss(d_x(real_x), True, mode) + gan_loss(d_x(pooled_fake_x), False, mode))
    amp.backward_step(loss_d_x + loss_d_y, optimizers.d)
    amp.end_step()

    names = ("g_xy", "g_yx", "cycle_x", "cycle_y", "idt_x", "idt_y", "temporal", "d_x", "d_y")
    values = torch.stack([loss_g_xy, loss_g_yx, loss_cycle_x, loss_cycle_y, loss_idt_x, loss_idt_y,
                          loss_temporal, loss_d_x, loss_d_y]).detach().float().tolist()
    return dict(zip(names, values))


# ---------------------------------------------------------------- precision and distribution

NARROW_NGF = 32  # below this width, CPU bf16 loses: casts, per-op overhead and slow small bf16 kernels


def training_precision(spec: str, device: torch.device, recipe: Recipe | None = None) -> torch.dtype:
    """auto: bf16 on CUDA where supported (no loss scaling to tune), fp16 with a scaler on older GPUs;
    on CPU bf16 where the CPU has native bf16, except for generators narrower than 32 filters, which
    train faster in float32 (benchmarks/train_speed.py, fp32 vs bf16: tiny 0.029 vs 0.039 s/it at one
    thread; cpu-small 0.31 vs 1.10 at two threads, where oneDNN's bf16 weight-gradient kernel for its
    64-channel 16x16 convolutions takes ~11 ms against 0.4 at one thread; the 128-px ngf-64 net 4.8 vs
    3.6 at two threads)."""
    if (spec or "auto") == "auto" and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if (spec or "auto") == "auto" and recipe is not None and recipe.model.ngf < NARROW_NGF:
        return torch.float32
    return pick_precision(spec, device)


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


def init_distributed(device_spec: str) -> tuple[Distributed, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): join the process group, one GPU per process via LOCAL_RANK.

    gloo on CPU, nccl on CUDA. Raises DeviceError for a device this machine lacks.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), pick_device(device_spec)
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_spec)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cpu":
        # Processes on one machine share its cores.
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    return Distributed(rank, world, local_rank), device


def wrap_ddp(nets: Nets, device: torch.device) -> Nets:
    """Each net in its own DistributedDataParallel. Every parameter of a net gets a gradient in the
    backward where it is trained (the frozen discriminators are called unwrapped), so no
    find_unused_parameters; a generator used several times per step accumulates before its hook fires."""
    ids = [device.index] if device.type == "cuda" else None
    wrap = lambda net: nn.parallel.DistributedDataParallel(net, device_ids=ids)  # the nets have no buffers
    return Nets(*(wrap(net) for _, net in nets.items()))


# ---------------------------------------------------------------- checkpoints

def rng_state() -> dict:
    """Every RNG the run touches, as tensors and plain numbers (loadable with weights_only=True)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": int(version), "state": torch.tensor(python_state, dtype=torch.int64),
                        "gauss": python_gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["gauss"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"].tolist()), python_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: never half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: Path) -> dict:
    """Load with weights_only=True (tensors and plain containers only). Raises TrainingError."""
    if not path.is_file():
        raise TrainingError(f"{path.parent}: no checkpoint yet (the run stopped before its first one); "
                            f"start it again")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file; all mean the same here
        raise TrainingError(f"{path}: checkpoint is unreadable ({type(error).__name__}: "
                            f"{str(error).splitlines()[0] if str(error) else ''})") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not a vidcycle training checkpoint")
    if state.get("version", 0) > CHECKPOINT_VERSION:
        raise TrainingError(f"{path}: checkpoint format {state['version']} is newer than this vidcycle reads")
    return state


# ---------------------------------------------------------------- the run folder

def default_run_dir(name: str) -> Path:
    """runs/NAME in the current folder, or runs/NAME-2, -3, ... when taken: never reuse a run folder."""
    base = Path("runs") / name
    candidate, n = base, 1
    # Under torchrun every rank computes this; only rank 0 creates it, so no renumbering there.
    while candidate.exists() and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        n += 1
        candidate = base.with_name(f"{name}-{n}")
    return candidate


def direction_names(name: str | None, reverse_name: str | None, x_inputs, y_inputs) -> dict:
    """Store names and domain names of the two directions.

    "a2b" gives a2b and b2a, with domains a and b. A name without a usable '2'
    gives NAME and NAME-reverse, with the domains named after the first input
    folders (or files). No name: "<x folder>2<y folder>".
    """
    x_domain, y_domain = _domain_name(x_inputs, "x"), _domain_name(y_inputs, "y")
    if not name:
        name = f"{x_domain}2{y_domain}"
    match = re.fullmatch(r"(.+?)2(.+)", name)
    if match:
        x_domain, y_domain = match.group(1), match.group(2)
    reverse = reverse_name or (f"{y_domain}2{x_domain}" if match else f"{name}-reverse")
    return {"name": name, "reverse_name": reverse, "x_domain": x_domain, "y_domain": y_domain}


def _domain_name(inputs, fallback: str) -> str:
    if not inputs:
        return fallback
    path = Path(inputs[0]).expanduser().resolve()
    stem = path.name if path.is_dir() else path.stem
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-")
    return clean or fallback


def read_run(run_dir: Path) -> dict:
    """The run's record (run.json). Raises TrainingError when the folder is not a vidcycle run."""
    try:
        return json.loads((Path(run_dir) / RUN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise TrainingError(f"{run_dir}: not a vidcycle run folder (no {RUN_FILE})") from error
    except (OSError, ValueError) as error:
        raise TrainingError(f"{run_dir}/{RUN_FILE}: unreadable ({error})") from error


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_store_names(names: dict, run_dir: Path, overwrite: bool) -> None:
    """Refuse, before any training, to replace a store model that another run or import made."""
    from .modelfile import read_info
    from .store import stored_path
    for key in ("name", "reverse_name"):
        path = stored_path(names[key])
        if not path.exists() or overwrite:
            continue
        try:
            source = read_info(path).source
        except ModelError:
            source = ""
        if source != _export_source(run_dir):
            raise OutputExistsError(f"model '{names[key]}' already exists in {path.parent}; choose another "
                                    f"--name, or pass --overwrite to replace it")


def _export_source(run_dir: Path) -> str:
    return f"trained: {Path(run_dir).resolve()}"


# ---------------------------------------------------------------- the trainer

class Trainer:
    """Owns one run: data, nets, optimizers, pools, schedule, and what gets written to the run folder."""

    def __init__(self, recipe: Recipe, run_dir: Path, record: dict, options: RunOptions, progress=None):
        self.recipe, self.run_dir, self.record, self.options = recipe, Path(run_dir), record, options
        self.progress = progress
        self.dist, self.device = init_distributed(options.device)
        self.dtype = training_precision(options.precision, self.device, recipe)
        self.amp = Amp(self.device, self.dtype)
        # channels_last suits cuDNN's tensor cores; on the CPU, oneDNN's bf16 convolutions measured no
        # faster with it (benchmarks/train_speed.py), and instance norm hands back NCHW anyway.
        self.memory_format = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.iteration = 0
        self.saved_at = None
        self.window: dict[str, list[float]] = {}
        self.history: list[dict] = []
        self.tensorboard = None
        self.failures: list = []

    # -- setup

    def setup(self) -> None:
        self._build_data()
        nets = build_nets(self.recipe)
        for _, net in nets.items():
            net.to(self.device, memory_format=self.memory_format)
        self.raw = nets
        self.nets = wrap_ddp(nets, self.device) if self.dist.active else nets
        self.optimizers = build_optimizers(nets, self.recipe)
        seed = self.recipe.seed * 1000 + self.dist.rank * 10
        self.pools = {"x": ImagePool(self.recipe.optim.pool_size, seed + 1),
                      "y": ImagePool(self.recipe.optim.pool_size, seed + 2)}
        self.schedule = Schedule.from_recipe(self.recipe, len(self.loader))
        if self.schedule.total_iterations <= 0:
            raise RecipeError("schedule: nothing to train (epochs + epochs_decay, or iterations + "
                              "iterations_decay, is 0)")
        random.seed(self.recipe.seed + self.dist.rank)
        np.random.seed(self.recipe.seed + self.dist.rank)

    def _build_data(self) -> None:
        from .data import SamplingConfig, UnpairedDataset, default_cache_dir, gather_frames, make_loader, \
            raise_if_empty
        data = self.recipe.data
        # The temporal loss needs each frame's true successor, which rate or cap sampling may skip.
        sampling = replace(SamplingConfig.from_data_config(data), partners=self.recipe.loss.temporal > 0)
        cache_dir = Path(self.record.get("cache_dir") or default_cache_dir())
        sets = {}
        # Rank 0 fills the frame cache first; the other ranks then only read it.
        for turn in (True, False):
            if self.dist.main == turn:
                for domain in ("x", "y"):
                    bar = self.progress.frames(f"frames {domain}") if self.progress and self.dist.main else None
                    sets[domain] = gather_frames(self.record[f"{domain}_inputs"], sampling, cache_dir, bar)
            self.dist.barrier()
        raise_if_empty(sets["x"], sets["y"])
        self.failures = sets["x"].failures + sets["y"].failures
        train_x, held_x = _hold_out(sets["x"], SAMPLE_COLUMNS)
        train_y, held_y = _hold_out(sets["y"], SAMPLE_COLUMNS)
        self.held_x = _center_batch(held_x, data)
        self.held_y = _center_batch(held_y, data)
        self.dataset = UnpairedDataset(train_x, train_y, data.load_size, data.crop_size, data.flip,
                                       seed=self.recipe.seed, temporal=self.recipe.loss.temporal > 0,
                                       keep_aspect=data.keep_aspect)
        workers = self.options.workers
        if workers is None:
            workers = 1 if self.device.type == "cpu" else min(8, os.cpu_count() or 1)
        self.loader = make_loader(self.dataset, self.recipe.optim.batch_size, workers, shuffle=True,
                                  distributed=self.dist.active, seed=self.recipe.seed)
        self.frame_counts = {"x": len(sets["x"]), "y": len(sets["y"])}

    def open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return  # optional extra: pip install 'vidcycle[tensorboard]'
        self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.iteration or None)

    # -- checkpoints

    def rank_state(self) -> dict:
        """What differs between ranks: the image pools and the RNGs."""
        return {"pools": {domain: pool.state_dict() for domain, pool in self.pools.items()}, "rng": rng_state()}

    def gather_rank_states(self) -> list:
        """Every rank's rank_state on rank 0 (a collective: all ranks call it); [] on the others."""
        if not self.dist.active:
            return [self.rank_state()]
        gathered = [None] * self.dist.world if self.dist.main else None
        torch.distributed.gather_object(self.rank_state(), gathered, dst=0)
        return gathered or []

    def checkpoint_state(self, ranks: list) -> dict:
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "vidcycle": __version__,
                "recipe": recipe_to_dict(self.recipe), "iteration": self.iteration,
                "precision": precision_name(self.dtype), "nets": self.nets.state_dict(),
                "optimizers": {"g": self.optimizers.g.state_dict(), "d": self.optimizers.d.state_dict()},
                "scaler": self.amp.scaler.state_dict() if self.amp.scaler else {},
                "world": self.dist.world, "ranks": ranks}

    def save(self, all_ranks: bool = True) -> None:
        """All ranks call this (it gathers their states) unless all_ranks is False: then rank 0 alone
        saves its own, and the other ranks restart their pools and RNGs when resumed."""
        ranks = self.gather_rank_states() if all_ranks else [self.rank_state()]
        if self.dist.main:
            save_checkpoint(self.run_dir / CHECKPOINT, self.checkpoint_state(ranks))

    def restore(self, state: dict) -> None:
        for name, net in self.raw.items():
            net.load_state_dict(state["nets"][name])
        self.optimizers.g.load_state_dict(state["optimizers"]["g"])
        self.optimizers.d.load_state_dict(state["optimizers"]["d"])
        if self.amp.scaler and state.get("scaler"):
            self.amp.scaler.load_state_dict(state["scaler"])
        self.iteration = self.saved_at = int(state["iteration"])
        ranks = state["ranks"] if "ranks" in state else [{"pools": state["pools"], "rng": state["rng"]}]
        same_world = state.get("world", 1) == self.dist.world
        if same_world and self.dist.rank < len(ranks):
            for domain, pool in self.pools.items():
                pool.load_state_dict(ranks[self.dist.rank]["pools"][domain], self.device)
            set_rng_state(ranks[self.dist.rank]["rng"])
        else:
            # A different number of processes, or a rank whose state was not saved (Ctrl-C under
            # torchrun): restart its pools and RNG from the seed, the rank and the iteration.
            for n, pool in enumerate(self.pools.values()):
                pool.rng.manual_seed(self.recipe.seed * 1000 + self.dist.rank * 10 + n + self.iteration)
            torch.manual_seed(self.recipe.seed + self.dist.rank + self.iteration)
        self.history = [row for row in _read_log(self.run_dir / LOSS_LOG) if row["iteration"] <= self.iteration]
        if self.dist.main:
            # Lines logged after the checkpoint belong to iterations that will run again.
            _write_text(self.run_dir / LOSS_LOG, "".join(json.dumps(row) + "\n" for row in self.history))

    # -- the loop

    def fit(self) -> int:
        """Train until the schedule ends or the iteration counter reaches max_steps; returns the counter."""
        from .data import set_loader_epoch
        total = self.schedule.total_iterations
        stop = min(total, self.options.max_steps) if self.options.max_steps else total
        per_epoch = len(self.loader)
        if self.progress and self.dist.main:
            self.progress.start(stop, self.iteration)
        try:
            while self.iteration < stop:
                epoch, offset = divmod(self.iteration, per_epoch)
                set_loader_epoch(self.loader, epoch)
                batches = iter(self.loader)
                for _ in range(offset):  # resuming mid-epoch: the same order, minus what was already seen
                    next(batches)
                for batch in batches:
                    if self.iteration >= stop:
                        break
                    self._one_step(batch, epoch)
                    if self.iteration % self.recipe.schedule.checkpoint_every == 0:
                        self._checkpoint()
        except KeyboardInterrupt:
            if self.dist.main and self.saved_at != self.iteration:
                # Ctrl-C keeps the work done so far; --resume continues from here. No gathering:
                # the other ranks are being interrupted too and would never answer.
                self.save(all_ranks=False)
            raise
        finally:
            if self.progress and self.dist.main:
                self.progress.close()
        if self.saved_at != self.iteration:
            self._checkpoint()
        if self.dist.main and self.iteration % self.recipe.schedule.sample_every:
            self.write_samples()
        return self.iteration

    def _one_step(self, batch: dict, epoch: int) -> None:
        lr = self.recipe.optim.lr * self.schedule.lr_factor(self.iteration)
        self.optimizers.set_lr(lr)
        batch = self._to_device(batch)
        losses = train_step(self.nets, self.optimizers, self.pools, batch, self.recipe.loss, self.amp)
        self.iteration += 1
        if not all(math.isfinite(v) for v in losses.values()):
            raise TrainingError(f"losses became non-finite at iteration {self.iteration} ({_fmt(losses)}); "
                                f"resume from the last checkpoint with --precision fp32 or a lower optim.lr")
        for key, value in losses.items():
            self.window.setdefault(key, []).append(value)
        if self.progress and self.dist.main:
            self.progress.update(1, losses)
        if self.iteration % self.recipe.schedule.log_every == 0:
            self._log(epoch, lr)
        if self.iteration % self.recipe.schedule.sample_every == 0 and self.dist.main:
            self.write_samples()

    def _to_device(self, batch: dict) -> dict:
        moved = {}
        for key in ("x", "y", "x_next"):
            if key in batch:
                moved[key] = batch[key].to(self.device, non_blocking=True,
                                           memory_format=self.memory_format)
        if "has_next" in batch:
            moved["has_next"] = batch["has_next"].to(self.device)
        return moved

    def _checkpoint(self) -> None:
        self.save()
        self.saved_at = self.iteration
        if self.dist.main:
            self.write_curves()
        self.dist.barrier()

    # -- what people watch

    def _log(self, epoch: int, lr: float) -> None:
        means = {key: sum(values) / len(values) for key, values in self.window.items() if values}
        self.window = {}
        if not self.dist.main:
            return
        row = {"iteration": self.iteration, "epoch": epoch, "lr": lr, "time": round(time.time(), 3), **means}
        self.history.append(row)
        with open(self.run_dir / LOSS_LOG, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.tensorboard is not None:
            for key, value in means.items():
                self.tensorboard.add_scalar(f"loss/{key}", value, self.iteration)
            self.tensorboard.add_scalar("lr", lr, self.iteration)

    def write_curves(self) -> None:
        from .charts import loss_chart, write_png
        steps = [row["iteration"] for row in self.history]
        panels = []
        for title, keys in (("generators (weighted terms)", GENERATOR_LOSSES),
                            ("discriminators", DISCRIMINATOR_LOSSES)):
            series = {key: [row.get(key, float("nan")) for row in self.history] for key in keys
                      if any(row.get(key) for row in self.history)}
            panels.append((title, series))
        title = f"{self.record['name']}: losses at iteration {self.iteration}"
        write_png(self.run_dir / CURVES, loss_chart(steps, panels, title=title))

    @torch.no_grad()
    def write_samples(self) -> None:
        """Rows real x, G(x), F(G(x)), real y, F(y), G(F(y)) on the held-out frames."""
        from .charts import image_grid, write_png
        from .translator import batch_to_frames
        g_xy, g_yx = unwrap(self.nets.g_xy), unwrap(self.nets.g_yx)
        real_x = self.held_x.to(self.device, memory_format=self.memory_format)
        real_y = self.held_y.to(self.device, memory_format=self.memory_format)
        with self.amp.autocast():
            fake_y = g_xy(real_x)
            rec_x = g_yx(fake_y)
            fake_x = g_yx(real_y)
            rec_y = g_xy(fake_x)
        rows = [("real x", real_x), ("G(x)", fake_y), ("F(G(x))", rec_x),
                ("real y", real_y), ("F(y)", fake_x), ("G(F(y))", rec_y)]
        grid = image_grid([(label, batch_to_frames(images).cpu().numpy()) for label, images in rows],
                          title=f"{self.record['name']}: iteration {self.iteration}")
        write_png(self.run_dir / SAMPLES / f"iter_{self.iteration:06d}.png", grid)
        if self.tensorboard is not None:
            self.tensorboard.add_image("samples", grid, self.iteration, dataformats="HWC")

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _hold_out(frames, count: int):
    """Frames for the sample grids, as a float NCHW batch, and the set left for training.

    With at least 5x `count` frames, `count` evenly spaced ones are taken out of
    training so the grids show unseen frames; smaller sets lend their first ones.
    """
    items = list(frames.items)
    if len(items) >= 5 * count:
        picks = sorted(set(np.linspace(0, len(items) - 1, count).round().astype(int).tolist()))
        held = [items[i] for i in picks]
        frames = replace(frames, items=[item for i, item in enumerate(items) if i not in set(picks)])
    else:
        held = items[:count]
    return frames, held


def _center_batch(items, data) -> torch.Tensor:
    """Resize as training does and take the centre crop: the training view without randomness."""
    from .data import read_rgb, resize_for_training
    from .translator import frames_to_batch
    crops, size = [], data.crop_size
    for item in items:
        rgb = resize_for_training(read_rgb(item.path), data.load_size, data.keep_aspect)
        top, left = (rgb.shape[0] - size) // 2, (rgb.shape[1] - size) // 2
        crops.append(rgb[top:top + size, left:left + size])
    return frames_to_batch(torch.from_numpy(np.stack(crops)), torch.float32).contiguous()


def _read_log(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                break  # a line cut short by a kill: everything after it is gone too
    return rows


def _fmt(losses: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in losses.items())


# ---------------------------------------------------------------- entry points

def recipe_changes(recipe: Recipe) -> dict:
    """`section.key: value` for every value that differs from the paper's defaults."""
    def flat(data, prefix=""):
        for key, value in data.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value
    defaults = dict(flat(recipe_to_dict(Recipe())))
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
        check_store_names(names, run_dir, options.overwrite)
    record = {**names, "x_inputs": [str(Path(p).expanduser().resolve()) for p in options.x_inputs],
              "y_inputs": [str(Path(p).expanduser().resolve()) for p in options.y_inputs],
              "cache_dir": str(options.cache_dir) if options.cache_dir else None,
              "vidcycle": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _create_run_dir(run_dir, recipe, record)
    trainer = Trainer(recipe, run_dir, record, options, progress)
    return _run(trainer, state=None)


def resume(run_dir, options: RunOptions, progress=None) -> TrainResult:
    """Continue a run from RUN_DIR/checkpoint.pt with its own recipe and inputs. Raises TrainingError."""
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        for leftover in run_dir.glob(f".{CHECKPOINT}.*.part"):  # a save cut short by a kill
            leftover.unlink()
    state = load_checkpoint(run_dir / CHECKPOINT)
    recipe = recipe_from_dict(state["recipe"], source=f"{run_dir / CHECKPOINT} recipe")
    if options.name or options.reverse_name:
        record.update(direction_names(options.name or record["name"], options.reverse_name,
                                      record["x_inputs"], record["y_inputs"]))
    if options.export:
        check_store_names(record, run_dir, options.overwrite)
    if options.precision == "auto" and state.get("precision"):
        options = replace(options, precision=state["precision"])
    trainer = Trainer(recipe, run_dir, record, options, progress)
    return _run(trainer, state)


def _create_run_dir(run_dir: Path, recipe: Recipe, record: dict) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise OutputExistsError(f"{run_dir}: run folder exists and is not empty; continue it with "
                                f"--resume {run_dir}, or pick another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_text(run_dir / RECIPE_FILE, recipe_to_toml(recipe))
    _write_text(run_dir / RUN_FILE, json.dumps(record, indent=2) + "\n")


def _run(trainer: Trainer, state: dict | None) -> TrainResult:
    try:
        trainer.setup()
        if state is not None:
            trainer.restore(state)
            _note(trainer, f"resumed {trainer.run_dir} at iteration {trainer.iteration}")
        if trainer.dist.main:
            trainer.open_tensorboard()
        _note(trainer, f"frames: x {trainer.frame_counts['x']}, y {trainer.frame_counts['y']}; "
                       f"{len(trainer.loader)} iterations per epoch, {trainer.schedule.total_iterations} in all; "
                       f"{trainer.device.type} {precision_name(trainer.dtype)}"
                       + (f", {trainer.dist.world} processes" if trainer.dist.active else ""))
        for path, reason in trainer.failures:
            _note(trainer, f"skipped {path}: {reason}")
        if state is None and trainer.dist.main:
            trainer.write_samples()  # iteration 0: what the untrained nets make, for comparison
        iteration = trainer.fit()
        exported = []
        if trainer.options.export and trainer.dist.main:
            record = trainer.record
            exported = export_run(trainer.run_dir, record["name"], record["reverse_name"],
                                  overwrite=trainer.options.overwrite)
        trainer.dist.barrier()
        return TrainResult(trainer.run_dir, iteration, trainer.schedule.total_iterations, exported,
                           trainer.failures)
    finally:
        trainer.close()
        if trainer.dist.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _note(trainer: Trainer, text: str) -> None:
    if trainer.progress and trainer.dist.main:
        trainer.progress.note(text)


# ---------------------------------------------------------------- export

def export_run(run_dir, name: str | None = None, reverse_name: str | None = None,
               overwrite: bool = False) -> list:
    """Write both generators of RUN_DIR's checkpoint into the model store; returns the StoredModels.

    Names come from `name` ("a2b" -> a2b and b2a) or from the run's record.
    A store model of the same name is replaced only when this run made it or
    `overwrite` is set. Raises TrainingError, OutputExistsError, ModelError.
    """
    from .modelfile import ModelInfo, save_model
    from .store import StoredModel, stored_path
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    names = direction_names(name, reverse_name, record["x_inputs"], record["y_inputs"]) if name else record
    check_store_names(names, run_dir, overwrite)
    state = load_checkpoint(run_dir / CHECKPOINT)
    recipe = recipe_from_dict(state["recipe"], source=f"{run_dir / CHECKPOINT} recipe")
    spec = generator_spec(recipe)
    exported = []
    for key, net_name, source, target in (("name", "g_xy", "x_domain", "y_domain"),
                                          ("reverse_name", "g_yx", "y_domain", "x_domain")):
        generator = build_generator(spec, init=False)
        generator.load_state_dict(state["nets"][net_name])
        info = ModelInfo(spec=spec, from_domain=names[source], to_domain=names[target],
                         train_size=recipe.data.crop_size, recipe=state["recipe"],
                         source=_export_source(run_dir))
        path = stored_path(names[key])
        info = save_model(path, generator, info)
        exported.append(StoredModel(names[key], path, info, "store"))
    return exported
