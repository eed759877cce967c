"""What every adversarial method shares: the generator a recipe describes, its padding kept in the
autocast dtype, freezing a network while another learns, and the pair of optimisers (generator side,
discriminator side) whose learning rate the schedule sets; their Adam is every training run's, the
students' too."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vidcycle.models.nets import GeneratorSpec, NLayerDiscriminator, init_weights
from vidcycle.training.adam import FusedAdam, fused_kernel_available
from vidcycle.training.recipe import Recipe


def generator_spec(recipe: Recipe) -> GeneratorSpec:
    return GeneratorSpec(n_blocks=recipe.model.n_blocks, ngf=recipe.model.ngf)


def discriminator(recipe: Recipe) -> nn.Module:
    """The recipe's PatchGAN, initialised N(0, 0.02)."""
    return init_weights(NLayerDiscriminator(3, recipe.model.ndf, recipe.model.d_layers))


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


def pads_keep_dtype(net: nn.Module) -> nn.Module:
    for name, child in net.named_children():
        if type(child) is nn.ReflectionPad2d:
            setattr(net, name, _ReflectionPadKeepDtype(child.padding))
        else:
            pads_keep_dtype(child)
    return net


# torch's fused Adam: one pass over each tensor per step where it has the kernel. Its default on the CPU
# is a loop of whole-tensor operations per parameter: in the 128-px step the two optimisers took 40 ms
# against 14 fused under AVX2, and the bf16 step ran 0.95x (benchmarks/README.md, "Fused Adam").
FUSED_ADAM_DEVICES = ("cpu", "cuda")


def adam(parameters, optim):
    """Adam with the recipe's learning rate and betas (`optim` is its OptimConfig): the same update as
    torch's default, fused where the parameters' device has the kernel; on the CPU without torch.optim
    around the kernel (`adam.FusedAdam`: a second less of a run's start)."""
    parameters = list(parameters)
    betas = (optim.beta1, optim.beta2)
    if parameters and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in parameters) \
            and fused_kernel_available():
        return FusedAdam(parameters, lr=optim.lr, betas=betas)
    fused = all(p.device.type in FUSED_ADAM_DEVICES and p.is_floating_point() for p in parameters)
    return torch.optim.Adam(parameters, lr=optim.lr, betas=betas, fused=fused or None)


def set_requires_grad(nets, flag: bool) -> None:
    for net in nets:
        for parameter in net.parameters():
            parameter.requires_grad_(flag)


@dataclass
class Optimizers:
    g: torch.optim.Optimizer
    d: torch.optim.Optimizer

    def set_lr(self, lr: float) -> None:
        for optimizer in (self.g, self.d):
            for group in optimizer.param_groups:
                group["lr"] = lr

    def state_dict(self) -> dict:
        return {"g": self.g.state_dict(), "d": self.d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.g.load_state_dict(state["g"])
        self.d.load_state_dict(state["d"])
