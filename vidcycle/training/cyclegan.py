"""The paper's method: the four networks, the history pool, one CycleGAN step in the paper's order, the
method's parts on the run scaffold (sample grids, checkpoint state, both exported directions) and its
builder (its record in the table of methods is training.methods.CYCLEGAN).

Zhu et al. 2017 (shared docs, cyclegan.md) with the reference implementation's
defaults. G is `g_xy` (X -> Y), F is `g_yx`; `d_y` judges Y, `d_x` judges X. Beyond
the paper, and off unless a recipe sets them: a temporal term on consecutive video
frames, and a stability term (each generator asked to move with its input under a
small random camera motion, after Eilertsen et al. 2019), which photos can teach.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from vidcycle.models.nets import build_generator
from vidcycle.models.store import StoredModel
from vidcycle.training.amp import Amp
from vidcycle.training.data import RunData
from vidcycle.training.distributed import gather_object, unwrap, wrap_ddp
from vidcycle.training.exports import count_networks, export_states
from vidcycle.training.gan import Optimizers, adam, discriminator, generator_spec, pads_keep_dtype, set_requires_grad
from vidcycle.training.losses import (cycle_loss, gan_loss, identity_loss, move, moved_output_loss, random_motions,
                                      temporal_loss)
from vidcycle.training.recipe import MOTION_MARGIN, Recipe
from vidcycle.training.run import Run, run_facts, to_device
from vidcycle.training.run_folder import rng_state, set_rng_state

DISCRIMINATOR_LOSSES = ("d_x", "d_y")
LOSS_NAMES = ("g_xy", "g_yx", "cycle_x", "cycle_y", "idt_x", "idt_y", "temporal", "stability", *DISCRIMINATOR_LOSSES)
# The loss-curve panels: the generators' weighted terms, and the discriminators'.
LOSS_PANELS = {"generators (weighted terms)": LOSS_NAMES[:-len(DISCRIMINATOR_LOSSES)],
               "discriminators": DISCRIMINATOR_LOSSES}


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
    return Nets(g_xy=pads_keep_dtype(build_generator(spec)), g_yx=pads_keep_dtype(build_generator(spec)),
                d_x=discriminator(recipe), d_y=discriminator(recipe))


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
            image = image.unsqueeze(0).to(torch.float32, copy=True)  # its own storage, not its whole batch's
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


def build_optimizers(nets: Nets, recipe: Recipe) -> Optimizers:
    g_params = list(unwrap(nets.g_xy).parameters()) + list(unwrap(nets.g_yx).parameters())
    d_params = list(unwrap(nets.d_x).parameters()) + list(unwrap(nets.d_y).parameters())
    return Optimizers(g=adam(g_params, recipe.optim), d=adam(d_params, recipe.optim))


# ---------------------------------------------------------------- the step

def identity_weight(loss, iteration: int) -> float:
    """The identity term's weight at this iteration: lambda_idt * lambda on every `identity_every`-th
    iteration, times identity_every, and 0 between (lazy, as StyleGAN2 spaces its regularisers)."""
    every = loss.identity_every
    return loss.identity * loss.cycle * every if iteration % every == 0 else 0.0


def passes(net: nn.Module, *inputs: torch.Tensor | None) -> list[torch.Tensor | None]:
    """`net` on each input (None gives None), as one batched call where their shapes agree.

    Every norm in these networks is instance norm, which keeps each image to itself, so the batch is
    the separate passes, and one bigger call keeps more of the cores busy (benchmarks/README, "One
    call for the passes that share a network").
    """
    present = [tensor for tensor in inputs if tensor is not None]
    if len({tuple(tensor.shape[1:]) for tensor in present}) > 1:
        outputs = iter([net(tensor) for tensor in present])
    else:
        outputs = iter(net(torch.cat(present)).split([len(tensor) for tensor in present]))
    return [None if tensor is None else next(outputs) for tensor in inputs]


def stability_motions(real_x: torch.Tensor, real_y: torch.Tensor,
                      generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The stability term's camera motions: sampling grids for each crop of x, then of y."""
    motions = [random_motions(real.shape[0], real.shape[2], real.shape[3], generator) for real in (real_x, real_y)]
    return motions[0].to(real_x.device), motions[1].to(real_y.device)


def train_step(nets: Nets, optimizers: Optimizers, pools: dict, batch: dict, loss, amp: Amp,
               iteration: int = 0, motions: torch.Generator | None = None) -> dict:
    """One CycleGAN iteration in the paper's order; returns each weighted loss as a float.

    `loss` is the recipe's LossConfig. The generators are updated first with
    the discriminators frozen, then D_X and D_Y on real images and on fakes
    drawn from their history pools, each with its loss halved. The identity
    term runs on the iterations (counted from 0) that `loss.identity_every` divides. `motions` draws the
    stability term's camera motions (loss.stability > 0), one for each crop of x and of y.
    """
    g_xy, g_yx, d_x, d_y = nets.g_xy, nets.g_yx, nets.d_x, nets.d_y
    real_x, real_y = batch["x"], batch["y"]
    mode, lam, lam_idt = loss.gan_mode, loss.cycle, identity_weight(loss, iteration)
    zero = real_x.new_zeros(())

    # Generators. The discriminators only judge here: frozen, and called unwrapped so a
    # frozen net takes no part in DDP's gradient sync.
    set_requires_grad((unwrap(d_x), unwrap(d_y)), False)
    optimizers.g.zero_grad(set_to_none=True)
    temporal = loss.temporal > 0 and "x_next" in batch
    motion_x, motion_y = stability_motions(real_x, real_y, motions) if loss.stability > 0 else (None, None)
    with amp.autocast():
        fake_y, idt_y, fake_y_next, moved_fake_y = passes(   # G(x), G(y), G(x_{t+1}), G(M(x))
            g_xy, real_x, real_y if lam_idt > 0 else None, batch["x_next"] if temporal else None,
            None if motion_x is None else move(real_x, motion_x))
        fake_x, idt_x, moved_fake_x = passes(                # F(y), F(x), F(M(y))
            g_yx, real_y, real_x if lam_idt > 0 else None, None if motion_y is None else move(real_y, motion_y))
        rec_x = g_yx(fake_y)                                    # F(G(x))
        rec_y = g_xy(fake_x)                                    # G(F(y))
        loss_g_xy = gan_loss(unwrap(d_y)(fake_y), True, mode)   # G fools D_Y
        loss_g_yx = gan_loss(unwrap(d_x)(fake_x), True, mode)   # F fools D_X
        loss_cycle_x = cycle_loss(rec_x, real_x) * lam          # ||F(G(x)) - x||_1
        loss_cycle_y = cycle_loss(rec_y, real_y) * lam          # ||G(F(y)) - y||_1
        loss_idt_x = loss_idt_y = zero
        if lam_idt > 0:                                         # G(y) should stay y, F(x) should stay x
            loss_idt_y = identity_loss(idt_y, real_y) * lam_idt
            loss_idt_x = identity_loss(idt_x, real_x) * lam_idt
        loss_temporal = zero
        if temporal:
            loss_temporal = temporal_loss(fake_y, fake_y_next, real_x, batch["x_next"],
                                          batch["has_next"]) * loss.temporal
        loss_stability = zero
        if motion_x is not None:                                # ||G(M(x)) - M(G(x))|| + ||F(M(y)) - M(F(y))||
            loss_stability = (moved_output_loss(moved_fake_y, fake_y, motion_x, MOTION_MARGIN)
                              + moved_output_loss(moved_fake_x, fake_x, motion_y, MOTION_MARGIN)) * loss.stability
        loss_g = (loss_g_xy + loss_g_yx + loss_cycle_x + loss_cycle_y + loss_idt_x + loss_idt_y
                  + loss_temporal + loss_stability)
    amp.backward_step(loss_g, optimizers.g)

    # Discriminators, on real images and on pooled fakes: 0.5 * (real + fake) each.
    set_requires_grad((unwrap(d_x), unwrap(d_y)), True)
    optimizers.d.zero_grad(set_to_none=True)
    pooled_fake_y = pools["y"].query(fake_y)
    pooled_fake_x = pools["x"].query(fake_x)
    with amp.autocast():
        real_score_y, fake_score_y = passes(d_y, real_y, pooled_fake_y)
        real_score_x, fake_score_x = passes(d_x, real_x, pooled_fake_x)
        loss_d_y = 0.5 * (gan_loss(real_score_y, True, mode) + gan_loss(fake_score_y, False, mode))
        loss_d_x = 0.5 * (gan_loss(real_score_x, True, mode) + gan_loss(fake_score_x, False, mode))
    amp.backward_step(loss_d_x + loss_d_y, optimizers.d)
    amp.end_step()

    values = torch.stack([loss_g_xy, loss_g_yx, loss_cycle_x, loss_cycle_y, loss_idt_x, loss_idt_y,
                          loss_temporal, loss_stability, loss_d_x, loss_d_y]).detach().float().tolist()
    return dict(zip(LOSS_NAMES, values))


# ---------------------------------------------------------------- the method

@dataclass
class CycleGAN:
    """The method's parts: the four networks (DDP-wrapped under torchrun, and unwrapped), their optimisers,
    the history pools and the held-out frames of the grids."""

    data: RunData
    nets: Nets
    raw: Nets
    optimizers: Optimizers
    pools: dict
    # the stability term's camera motions: this rank's own generator, kept with its pools in checkpoints,
    # so a resumed run draws what an unbroken one would
    motions: torch.Generator
    label: str = "train"
    loss_panels: dict = field(default_factory=lambda: LOSS_PANELS)

    def step(self, run: Run, batch: dict, lr: float) -> dict:
        self.optimizers.set_lr(lr)
        return train_step(self.nets, self.optimizers, self.pools, to_device(batch, run.device), run.recipe.loss,
                          run.amp, run.iteration, self.motions)

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
                "rng": rng_state(run.device), "motions": self.motions.get_state()}
        ranks = gather_object(mine, run.dist) if all_ranks else [mine]
        return {"nets": self.nets.state_dict(), "optimizers": self.optimizers.state_dict(),
                "world": run.dist.world, "ranks": ranks}

    def restore(self, run: Run, state: dict) -> None:
        for name, net in self.raw.items():
            net.load_state_dict(state["nets"][name])
        self.optimizers.load_state_dict(state["optimizers"])
        ranks = state["ranks"] if "ranks" in state else [{"pools": state["pools"], "rng": state["rng"]}]
        rank = run.dist.rank
        if state.get("world", 1) == run.dist.world and rank < len(ranks):
            for domain, pool in self.pools.items():
                pool.load_state_dict(ranks[rank]["pools"][domain], run.device)
            set_rng_state(ranks[rank]["rng"], run.device)
            if "motions" in ranks[rank]:  # checkpoints from before the stability term have none
                self.motions.set_state(ranks[rank]["motions"])
            return
        # A different number of processes, or a rank whose state was not saved (Ctrl-C under
        # torchrun): restart its pools and RNG from the seed, the rank and the iteration.
        for n, pool in enumerate(self.pools.values()):
            pool.rng.manual_seed(run.recipe.seed * 1000 + rank * 10 + n + run.iteration)
        self.motions.manual_seed(run.recipe.seed * 1000 + rank * 10 + MOTIONS_STREAM + run.iteration)
        torch.manual_seed(run.recipe.seed + rank + run.iteration)

    def checkpointed(self, run: Run) -> None:
        pass

    def generator_xy(self) -> nn.Module:
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


MOTIONS_STREAM = 3  # the motions' seed beside the pools' (seed * 1000 + rank * 10 + 1 and + 2)


def build(recipe: Recipe, data: RunData, device: torch.device, dist) -> CycleGAN:
    """The method on this process: its networks on the device (DDP-wrapped under torchrun), optimisers and
    this rank's history pools and motions."""
    raw = build_nets(recipe)
    for _, net in raw.items():  # NCHW: instance norm hands NCHW back, so channels_last only adds copies
        net.to(device)
    nets = Nets(*(wrap_ddp(net, device) for _, net in raw.items())) if dist.active else raw
    seed = recipe.seed * 1000 + dist.rank * 10
    pools = {"x": ImagePool(recipe.optim.pool_size, seed + 1), "y": ImagePool(recipe.optim.pool_size, seed + 2)}
    motions = torch.Generator().manual_seed(seed + MOTIONS_STREAM)
    return CycleGAN(data, nets, raw, build_optimizers(raw, recipe), pools, motions)

