"""Averaged generator weights: an exponential moving average kept beside each generator during a run.

GANs oscillate: the last iterate is wherever the game stood when the run stopped. An exponential
moving average of the generator's weights (Yazici et al., "The Unusual Effectiveness of Averaging in
GAN Training", ICLR 2019; StyleGAN's and BigGAN's G_ema) is a better and steadier generator for the
cost of one copy of its weights. The half-life is in iterations and ramps up with the run (at most
`rampup` of the iterations done, StyleGAN2-ADA's rule), so an early export is not the average of
noise. Which weights a run exports is the recipe's `optim.ema_halflife` (0: the last iterate); the
default is the measured choice (benchmarks/README.md, "Averaged weights").
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def average_label(halflife: float, rampup: float) -> str:
    """What a model header says of averaged weights."""
    return f"average (half-life {halflife:g} iterations, ramp-up {rampup:g})"


class WeightAverage:
    """The averages of `nets` (name -> module, unwrapped), updated after every optimiser step."""

    def __init__(self, nets: dict[str, nn.Module], halflife: float, rampup: float):
        self.nets, self.halflife, self.rampup = nets, halflife, rampup
        self.updates = 0
        self.live = {name: list(net.state_dict().values()) for name, net in nets.items()}  # views of the weights
        self.shadow = {name: {key: value.detach().clone() for key, value in net.state_dict().items()}
                       for name, net in nets.items()}

    def beta(self, iteration: int) -> float:
        """How much of the average stays at this update: 0.5 per half-life."""
        life = min(self.halflife, self.rampup * iteration) if self.rampup > 0 else self.halflife
        return 0.5 ** (1.0 / max(life, 1e-3))

    @torch.no_grad()
    def update(self, iteration: int) -> None:
        weight = 1.0 - self.beta(iteration)
        self.updates += 1
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
        """The averaged weights in the live networks for the duration (an export, a measurement)."""
        kept = {name: {key: value.detach().clone() for key, value in net.state_dict().items()}
                for name, net in self.nets.items()}
        try:
            for name, net in self.nets.items():
                net.load_state_dict(self.shadow[name])
            yield
        finally:
            for name, net in self.nets.items():
                net.load_state_dict(kept[name])

    def label(self) -> str:
        return average_label(self.halflife, self.rampup)

    def state_dict(self) -> dict:
        return {"halflife": self.halflife, "rampup": self.rampup, "updates": self.updates,
                "nets": {name: {key: value.clone() for key, value in shadow.items()}
                         for name, shadow in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for name, shadow in self.shadow.items():
            for key, value in shadow.items():
                value.copy_(state["nets"][name][key])
