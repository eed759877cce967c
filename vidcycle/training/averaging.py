"""Averaged generator weights: an exponential moving average kept beside each generator during a run.

GANs oscillate: the last iterate is wherever the game stood when the run stopped. An exponential
moving average of the generator's weights (Yazici et al., "The Unusual Effectiveness of Averaging in
GAN Training", ICLR 2019; StyleGAN's and BigGAN's G_ema) is a better and steadier generator for the
cost of one copy of its weights. The half-life is in iterations and ramps up with the run (at most
`rampup` of the iterations done, StyleGAN2-ADA's rule), so an early export is not the average of
noise. The average takes in every `EVERY`th iterate, weighted for the iterations since the last (the
update reads and writes two copies of the weights with cold caches: 2% of an AVX2 iteration when made
every time), and catches up with the last iterate whenever it is read (a checkpoint, an export), so
what is read is the same as with updates every iteration to within a sampled iterate. Which weights
a run exports is the recipe's `optim.ema_halflife` (0: the last iterate); the default is the measured
choice (benchmarks/README.md, "Averaged weights").
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

EVERY = 4  # iterations between updates (benchmarks/README.md, "What an iteration pays outside the step")


def average_label(halflife: float, rampup: float) -> str:
    """What a model header says of averaged weights."""
    return f"average (half-life {halflife:g} iterations, ramp-up {rampup:g})"


class WeightAverage:
    """The averages of `nets` (name -> module, unwrapped), updated every `every`th optimiser step."""

    def __init__(self, nets: dict[str, nn.Module], halflife: float, rampup: float, every: int = EVERY):
        self.nets, self.halflife, self.rampup, self.every = nets, halflife, rampup, every
        self.updates = 0
        self.updated_at = 0  # the iteration the average last took in
        self.live = {name: list(net.state_dict().values()) for name, net in nets.items()}  # views of the weights
        self.shadow = {name: {key: value.detach().clone() for key, value in net.state_dict().items()}
                       for name, net in nets.items()}

    def beta(self, iteration: int) -> float:
        """How much of the average stays at this update: 0.5 per half-life."""
        life = min(self.halflife, self.rampup * iteration) if self.rampup > 0 else self.halflife
        return 0.5 ** (1.0 / max(life, 1e-3))

    def update(self, iteration: int) -> None:
        """After the optimiser step that made `iteration`: take it in if `every` iterations have passed."""
        if iteration - self.updated_at >= self.every:
            self.catch_up(iteration)

    @torch.no_grad()
    def catch_up(self, iteration: int) -> None:
        """Take in the weights as they are now, as the iterate of `iteration`, weighted for every iteration
        since the last update (nothing when there are none)."""
        if iteration <= self.updated_at:
            return
        weight = 1.0 - self.beta(iteration) ** (iteration - self.updated_at)
        self.updates += 1
        self.updated_at = iteration
        for name, live in self.live.items():
            shadow = list(self.shadow[name].values())
            floats = [(a, b) for a, b in zip(shadow, live) if a.is_floating_point()]
            if floats:
                torch._foreach_lerp_([a for a, _ in floats], [b for _, b in floats], weight)
            for a, b in zip(shadow, live):
                if not a.is_floating_point():
                    a.copy_(b)

    @contextmanager
    def swapped_in(self):
        """The averaged weights in the live networks for the duration (the last sample grid, an export, a
        measurement). By reference, not by copy: the live tensors are left as they are, so a checkpoint being
        written from them meanwhile (CheckpointWriting) still holds the last iterate."""
        kept = []
        try:
            for name, net in self.nets.items():
                for key, tensor in net.state_dict(keep_vars=True).items():
                    kept.append((tensor, tensor.data))
                    tensor.data = self.shadow[name][key]
            yield
        finally:
            for tensor, data in reversed(kept):   # a tensor met twice gets its own back last
                tensor.data = data

    def label(self) -> str:
        return average_label(self.halflife, self.rampup)

    def state_dict(self) -> dict:
        return {"halflife": self.halflife, "rampup": self.rampup, "updates": self.updates,
                "updated_at": self.updated_at,
                "nets": {name: {key: value.clone() for key, value in shadow.items()}
                         for name, shadow in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.updated_at = int(state.get("updated_at", state["updates"]))  # before EVERY: one a step
        for name, shadow in self.shadow.items():
            for key, value in shadow.items():
                value.copy_(state["nets"][name][key])
