"""The generator seen as a chain of stages, for tiled inference (vidcycle.runtime.tiling).

Where a generator is computed by one nn.Sequential (ResnetGenerator is), its children are the
stages, and residual blocks x + S(x) are opened up into S's children and a join that adds x back;
both are checked on a probe input, and a generator that is neither runs as a single stage. The
chain records what tiling needs: the order its InstanceNorm2d layers run in, each boundary's
resolution and channels, and each stage's arithmetic.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from vidcycle.errors import ModelError


def total_stride(generator: nn.Module) -> int:
    """Frame pixels per pixel of the coarsest layer: the product of the convolution strides (at least 4)."""
    stride = 1
    for module in generator.modules():
        if isinstance(module, nn.Conv2d):
            stride *= module.stride[0]
    return max(stride, 4)


@contextmanager
def route_norms(layers, control):
    """Route each layer's forward to control(index, layer, x) inside the block (nestable)."""
    before = [module.__dict__.get("forward") for module in layers]
    for index, module in enumerate(layers):
        module.forward = lambda x, index=index, module=module: control(index, module, x)
    try:
        yield control
    finally:
        for module, forward in zip(layers, before):
            if forward is None:
                del module.forward
            else:
                module.forward = forward


class Join:
    """A stage that adds the activation at boundary `fork`: the end of a residual block x + S(x)."""

    def __init__(self, fork: int):
        self.fork = fork


@dataclass
class Chain:
    """The generator as stages run one after another (boundary j: the activation before stage j);
    a kept boundary's activation for the whole frame lets later sweeps start there."""

    stages: list  # modules and Join markers
    layers: list  # InstanceNorm2d modules in the order they run
    stage_of: list  # the stage each norm layer runs in
    scales: list  # per boundary: resolution relative to the frame
    channels: list  # per boundary
    flops: list  # per stage, on the probe

    def open_forks(self, boundary: int) -> list[int]:
        """Inputs of the residual blocks that `boundary` lies inside (needed to finish them)."""
        if not hasattr(self, "_open"):
            joins = [(s.fork, j) for j, s in enumerate(self.stages) if isinstance(s, Join)]
            self._open = [[f for f, j in joins if f < b <= j] for b in range(len(self.stages) + 1)]
        return self._open[boundary]


def run(chain: Chain, start: int, stop: int, x, fork_tile=None, visit=None):
    """stages[start:stop] on x; a join whose block began before `start` adds fork_tile(fork);
    visit(boundary, activation) sees each boundary passed."""
    held = {}
    for j in range(start, stop):
        if visit:
            visit(j, x)
        stage = chain.stages[j]
        if isinstance(stage, Join):
            x = x + (held[stage.fork] if stage.fork in held else fork_tile(stage.fork))
        else:
            held[j] = x
            x = stage(x)
        held = {f: t for f, t in held.items() if f in chain.open_forks(j + 1)}
    if visit:
        visit(stop, x)
    return x


def analyse(generator: nn.Module, probe: torch.Tensor) -> Chain:
    """Split the generator at the children of the nn.Sequential that computes it, residual blocks
    x + S(x) opened up into S's children, where that reproduces the generator's output on `probe`;
    otherwise the whole generator is one stage."""
    norms = [m for m in generator.modules() if isinstance(m, nn.InstanceNorm2d)]
    with torch.inference_mode():
        expected = generator(probe)
        for seq in (m for m in generator.modules() if isinstance(m, nn.Sequential)):
            if {id(n) for n in norms} <= {id(m) for m in seq.modules()}:
                try:
                    chain, out = _trace(_flatten(list(seq), probe), norms, probe)
                except RuntimeError:  # not the whole computation: shapes do not fit on their own
                    continue
                if _close(out, expected):
                    return chain
        return _trace([generator], norms, probe)[0]


def _flatten(stages: list, x: torch.Tensor) -> list:
    flat = []
    for stage in stages:
        y = stage(x.clone())
        inner = [c for c in stage.children() if isinstance(c, nn.Sequential)]
        if len(inner) == 1 and _close(x + inner[0](x.clone()), y):
            flat += [*inner[0], Join(len(flat))]
        else:
            flat.append(stage)
        x = y
    return flat


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4))


def _trace(stages, norms, probe):
    """The chain of `stages` with its norm layers in running order, and its output on `probe`."""
    chain = Chain(stages, [], [], [], [], [])
    current = [0]

    def seen(index, module, x):
        if any(module is m for m in chain.layers):
            raise ModelError("an InstanceNorm2d layer runs twice in one forward; tiling needs each once")
        chain.layers.append(module)
        chain.stage_of.append(current[0])
        return F.instance_norm(x, None, None, module.weight, module.bias, True, 0.0, module.eps)

    def visit(boundary, x):
        if boundary:
            chain.flops.append(counter.get_total_flops() - sum(chain.flops))
        current[0] = boundary
        chain.scales.append(x.shape[-1] / probe.shape[-1])
        chain.channels.append(x.shape[1])

    with route_norms(norms, seen), FlopCounterMode(display=False) as counter:
        out = run(chain, 0, len(stages), probe, visit=visit)
    return chain, out


def reach(modules, jump: float = 1.0) -> int:
    """Receptive-field radius, in frame pixels, of the convolutions among `modules`, taken in
    registration order (other resampling is not seen), starting where one activation pixel spans
    `jump` frame pixels."""
    radius = 0.0
    for module in (m for m in modules if isinstance(m, nn.Module)):
        for conv in (m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))):
            if isinstance(conv, nn.ConvTranspose2d):
                jump /= conv.stride[0]
            radius += (conv.kernel_size[0] - 1) / 2 * conv.dilation[0] * jump
            if isinstance(conv, nn.Conv2d):
                jump *= conv.stride[0]
    return math.ceil(radius)
