"""The one-sided methods, CUT and FastCUT (Park et al. 2020), on the run scaffold: one generator
G: X -> Y, one discriminator D_Y, and a projection head for PatchNCE instead of CycleGAN's inverse
generator, second discriminator and cycle loss.

Their code's order and defaults: D_Y first, on the current fakes (no history pool) and real y, loss
halved; then G and the head together on the GAN loss plus PatchNCE between x and G(x) and, for CUT,
between y and G(y) (the two averaged). FastCUT flips half the batches before G and compares the
flipped-back features. G and D are initialised as CycleGAN's are (normal, 0.02); the head as CUT's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from vidcycle.models.nets import build_generator, require_resnet_layers
from vidcycle.models.store import StoredModel
from vidcycle.training.amp import Amp
from vidcycle.training.data import RunData
from vidcycle.training.distributed import gather_object, unwrap, wrap_ddp
from vidcycle.training.exports import count_networks, export_states
from vidcycle.training.gan import Optimizers, adam, discriminator, generator_spec, pads_keep_dtype, set_requires_grad
from vidcycle.training.losses import gan_loss, temporal_loss
from vidcycle.training.patchnce import FeatureGenerator, ProjectionHead, layer_channels, patch_nce_loss
from vidcycle.training.recipe import Recipe
from vidcycle.training.run import Run, run_facts, to_device
from vidcycle.training.run_folder import rng_state, set_rng_state

LOSS_NAMES = ("g_gan", "nce_x", "nce_y", "temporal", "d_y")
LOSS_PANELS = {"generator (weighted terms)": LOSS_NAMES[:4], "discriminator": LOSS_NAMES[4:]}


@dataclass
class ContrastiveNets:
    g: nn.Module       # FeatureGenerator: G, and its encoder's features
    d_y: nn.Module
    head: nn.Module    # ProjectionHead

    def items(self):
        return (("g_xy", self.g), ("d_y", self.d_y), ("head", self.head))

    def state_dict(self) -> dict:
        """Checkpoint keys: the generator's own (so it exports as CycleGAN's g_xy does), D_Y, the head."""
        return {"g_xy": unwrap(self.g).generator.state_dict(), "d_y": unwrap(self.d_y).state_dict(),
                "head": unwrap(self.head).state_dict()}

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.g).generator.load_state_dict(state["g_xy"])
        unwrap(self.d_y).load_state_dict(state["d_y"])
        unwrap(self.head).load_state_dict(state["head"])


def build_contrastive_nets(recipe: Recipe) -> ContrastiveNets:
    """G, D_Y and the head, initialised from the recipe's seed."""
    torch.manual_seed(recipe.seed)
    spec = generator_spec(recipe)
    require_resnet_layers(spec, "PatchNCE (nce.layers)")  # its layer indices are the ResNet layer list's
    generator = pads_keep_dtype(build_generator(spec))
    return ContrastiveNets(g=FeatureGenerator(generator), d_y=discriminator(recipe),
                           head=ProjectionHead(layer_channels(recipe.model.ngf, recipe.nce.layers),
                                               recipe.nce.head_width))


def build_contrastive_optimizers(nets: ContrastiveNets, recipe: Recipe) -> Optimizers:
    """Adam for G and the head together (CUT steps two Adams of the same settings after one backward:
    the same updates), and Adam for D_Y."""
    generator = list(unwrap(nets.g).parameters()) + list(unwrap(nets.head).parameters())
    return Optimizers(g=adam(generator, recipe.optim), d=adam(unwrap(nets.d_y).parameters(), recipe.optim))


def nce_term(nets: ContrastiveNets, source: torch.Tensor, output: torch.Tensor, nce, flipped: bool,
             rng: torch.Generator) -> torch.Tensor:
    """PatchNCE between a batch of inputs and what G made of them, weighted, averaged over layers.

    The input's features (the keys) carry no gradient, as in CUT's loss, so they are computed
    without one. When G was given the inputs flipped, the output's features are flipped back.
    """
    with torch.no_grad():
        keys, positions = nets.head(nets.g(source, nce.layers), nce.patches, generator=rng)
    features = nets.g(output, nce.layers)
    if flipped:
        features = [torch.flip(feature, [3]) for feature in features]
    queries, _ = nets.head(features, nce.patches, positions)
    total = sum(patch_nce_loss(q, k, source.shape[0], nce.temperature).mean() for q, k in zip(queries, keys))
    return total * nce.weight / len(keys)


def contrastive_step(nets: ContrastiveNets, optimizers: Optimizers, batch: dict, recipe: Recipe, amp: Amp,
                     rng: torch.Generator) -> dict:
    """One CUT / FastCUT iteration; returns each weighted loss as a float. `rng` (a CPU generator) draws
    the flips and the patch positions: the method's own, so what else draws on torch's RNG (a data
    loader starting an epoch) cannot shift them, and a resumed run draws what an unbroken one would."""
    nce, mode = recipe.nce, recipe.loss.gan_mode
    real_x, real_y = batch["x"], batch["y"]
    identity = nce.identity and nce.weight > 0
    flipped = nce.flip_equivariance and bool(torch.rand((), generator=rng) < 0.5)  # FastCUT: half the batches mirrored
    real = torch.cat([real_x, real_y]) if identity else real_x
    if flipped:
        real = torch.flip(real, [3])
    with amp.autocast():
        fake = nets.g(real)
    fake_y, same_y = fake[:len(real_x)], fake[len(real_x):]

    set_requires_grad((unwrap(nets.d_y),), True)
    optimizers.d.zero_grad(set_to_none=True)
    with amp.autocast():
        loss_d = 0.5 * (gan_loss(nets.d_y(fake_y.detach()), False, mode) + gan_loss(nets.d_y(real_y), True, mode))
    amp.backward_step(loss_d, optimizers.d)

    # G and the head; D_Y only judges: frozen and called unwrapped, out of DDP's gradient sync.
    set_requires_grad((unwrap(nets.d_y),), False)
    optimizers.g.zero_grad(set_to_none=True)
    zero = real_x.new_zeros(())
    with amp.autocast():
        loss_gan = gan_loss(unwrap(nets.d_y)(fake_y), True, mode)
        loss_nce_x = nce_term(nets, real_x, fake_y, nce, flipped, rng) if nce.weight > 0 else zero
        loss_nce_y = nce_term(nets, real_y, same_y, nce, flipped, rng) if identity else zero
        loss_temporal = zero
        if recipe.loss.temporal > 0 and "x_next" in batch:
            x, x_next = (torch.flip(t, [3]) for t in (real_x, batch["x_next"])) if flipped else (real_x, batch["x_next"])
            loss_temporal = temporal_loss(fake_y, nets.g(x_next), x, x_next, batch["has_next"]) * recipe.loss.temporal
        loss_g = loss_gan + ((loss_nce_x + loss_nce_y) * 0.5 if identity else loss_nce_x) + loss_temporal
    amp.backward_step(loss_g, optimizers.g)
    amp.end_step()
    values = torch.stack([loss_gan, loss_nce_x, loss_nce_y, loss_temporal, loss_d]).detach().float().tolist()
    return dict(zip(LOSS_NAMES, values))


def sampling_seed(seed: int, rank: int) -> int:
    return seed * 1000 + rank * 10 + 3


@dataclass
class Contrastive:
    """CUT or FastCUT as a method of the scaffold: its networks (DDP-wrapped under torchrun, and
    unwrapped), optimisers and held-out frames."""

    data: RunData
    nets: ContrastiveNets
    raw: ContrastiveNets
    optimizers: Optimizers
    rng: torch.Generator               # flips and patch positions (this rank's)
    label: str = "train"
    loss_panels: dict = field(default_factory=lambda: LOSS_PANELS)

    def step(self, run: Run, batch: dict, lr: float) -> dict:
        self.optimizers.set_lr(lr)
        return contrastive_step(self.nets, self.optimizers, to_device(batch, run.device), run.recipe, run.amp,
                                self.rng)

    def sample_rows(self, run: Run) -> list:
        """Rows real x, G(x), real y, G(y): the last shows what G does to what is already Y (little,
        when it learned the domain rather than a filter)."""
        generator = self.raw.g.generator
        real_x, real_y = self.data.held_x.to(run.device), self.data.held_y.to(run.device)
        with run.amp.autocast():
            return [("real x", real_x), ("G(x)", generator(real_x)), ("real y", real_y), ("G(y)", generator(real_y))]

    def state(self, run: Run, all_ranks: bool) -> dict:
        mine = {"rng": rng_state(run.device), "sampling": self.rng.get_state()}
        ranks = gather_object(mine, run.dist) if all_ranks else [mine]
        return {"nets": self.raw.state_dict(), "optimizers": self.optimizers.state_dict(),
                "world": run.dist.world, "ranks": ranks}

    def restore(self, run: Run, state: dict) -> None:
        self.raw.load_state_dict(state["nets"])
        self.optimizers.load_state_dict(state["optimizers"])
        ranks, rank = state["ranks"], run.dist.rank
        if state.get("world", 1) == run.dist.world and rank < len(ranks):
            set_rng_state(ranks[rank]["rng"], run.device)
            self.rng.set_state(ranks[rank]["sampling"])
        else:  # another number of processes, or a rank Ctrl-C did not save: reseed from the iteration
            torch.manual_seed(run.recipe.seed + rank + run.iteration)
            self.rng.manual_seed(sampling_seed(run.recipe.seed, rank) + run.iteration)

    def checkpointed(self, run: Run) -> None:
        pass

    def generator_xy(self) -> nn.Module:
        return self.raw.g.generator

    def generators(self) -> dict:
        return {"g_xy": self.raw.g.generator}

    def score(self, run: Run) -> float | None:
        return None  # no truth to measure a translation against

    def export(self, run: Run) -> list[StoredModel]:
        """X -> Y into the store, from memory; the head stays in the checkpoint."""
        return export_states(run, self.raw.state_dict())

    def summary(self, run: Run) -> str:
        named = [("G", self.raw.g.generator), ("D_Y", self.raw.d_y), ("projection head", self.raw.head)]
        return (f"{run.recipe.method}, X -> Y only: {count_networks(named, generator_spec(run.recipe))}\n"
                f"{run_facts(run, self.data.counts)}")


def build(recipe: Recipe, data: RunData, device: torch.device, dist) -> Contrastive:
    """The method on this process: G, D_Y and the head on the device (DDP-wrapped under torchrun), their
    optimisers and this rank's sampling generator."""
    raw = build_contrastive_nets(recipe)
    for _, net in raw.items():
        net.to(device)
    nets = ContrastiveNets(*(wrap_ddp(net, device) for _, net in raw.items())) if dist.active else raw
    rng = torch.Generator().manual_seed(sampling_seed(recipe.seed, dist.rank))
    return Contrastive(data, nets, raw, build_contrastive_optimizers(raw, recipe), rng)

