"""Tiled inference: a frame too big for memory runs in overlapping tiles, seamlessly.

(docstring table to come)
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .errors import ModelError
from .nets import pad_to_multiple


class _Stop(Exception):
    """Ends a forward early, once the layer whose statistics a pass gathers has seen its input."""


def total_stride(generator: nn.Module) -> int:
    """Frame pixels per pixel of the coarsest layer: the product of the convolution strides (at least 4)."""
    stride = 1
    for module in generator.modules():
        if isinstance(module, nn.Conv2d):
            stride *= module.stride[0]
    return max(stride, 4)


class _Moments:
    """Per-frame, per-channel mean and variance gathered piece by piece (Chan's parallel update, float64)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, None, None

    def add(self, x: torch.Tensor):
        n = x.shape[-1] * x.shape[-2]
        if n == 0:
            return
        var, mean = _var_mean(x)
        mean, m2 = mean.double(), var.double() * n
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean.float(), (self.m2 / self.count).float()


def _var_mean(x: torch.Tensor, chunk: int = 16):
    """Per (frame, channel) variance and mean in float32; reduced precision is widened a few channels
    at a time, so no float32 copy of the whole activation is made."""
    if x.dtype == torch.float32:
        return torch.var_mean(x, dim=(-2, -1), correction=0)
    parts = [torch.var_mean(x[:, c:c + chunk].float(), dim=(-2, -1), correction=0)
             for c in range(0, x.shape[1], chunk)]
    return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)


def _normalise(module: nn.InstanceNorm2d, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor):
    """Instance norm with given statistics, computed as F.instance_norm computes it (batch norm over
    the (1, N*C) view), so reduced precision gets the same float32 arithmetic."""
    n, c = x.shape[:2]
    weight = bias = None
    if module.affine:
        weight, bias = module.weight.repeat(n), module.bias.repeat(n)
    flat = x.reshape(1, n * c, *x.shape[2:])
    out = F.batch_norm(flat, mean.reshape(-1), var.reshape(-1), weight, bias, False, 0.0, module.eps)
    return out.view_as(x)


class _NormControl:
    """Stands in for every InstanceNorm2d's forward: normalises with fixed whole-frame statistics
    where known (else with the tile's own), records one layer's input moments over the current
    tile's core, and can stop the forward there."""

    def __init__(self, layers: list[nn.InstanceNorm2d]):
        self.layers = layers
        self.fixed: list = [None] * len(layers)
        self.record: int | None = None
        self.moments = _Moments()
        self.tile = (1, 1)  # the current tile's size in frame pixels
        self.core = None  # (top, bottom, left, right) of its core, in frame pixels from its corner

    def __call__(self, index: int, module: nn.InstanceNorm2d, x: torch.Tensor):
        if index == self.record:
            self.moments.add(_region(x, self.core, self.tile))
            raise _Stop
        stats = self.fixed[index]
        if stats is None:
            return F.instance_norm(x, None, None, module.weight, module.bias, True, 0.0, module.eps)
        return _normalise(module, x, *stats)

    def gathered(self):
        self.fixed[self.record] = self.moments.stats()
        self.record, self.moments = None, _Moments()


def _region(x: torch.Tensor, box, tile) -> torch.Tensor:
    """The part of activation x (of a tile `tile` frame pixels big) that covers `box` (frame pixels)."""
    if box is None:
        return x
    top, bottom, left, right = box
    sy, sx = x.shape[-2] / tile[0], x.shape[-1] / tile[1]
    return x[..., round(top * sy):round(bottom * sy), round(left * sx):round(right * sx)]


@contextmanager
def _controlled(layers, control):
    for index, module in enumerate(layers):
        module.forward = lambda x, index=index, module=module: control(index, module, x)
    try:
        yield control
    finally:
        for module in layers:
            del module.forward


@dataclass(frozen=True)
class _Axis:
    """Tiles along one side: where each starts and where the cores between them are cut."""

    starts: tuple[int, ...]
    cuts: tuple[int, ...]  # the core of tile i is [cuts[i], cuts[i + 1])
    tile: int
    ramp: int

    @classmethod
    def plan(cls, length: int, tile: int, overlap: int, multiple: int, ramp: int) -> "_Axis":
        if tile >= length:
            return cls((0,), (0, length), length, 0)
        count = math.ceil((length - overlap) / (tile - overlap))
        starts = tuple(min(i * (tile - overlap), length - tile) for i in range(count))
        middles = [(start + starts[i] + tile) // 2 for i, start in enumerate(starts[1:])]
        return cls(starts, (0, *(m // multiple * multiple for m in middles), length), tile, ramp)

    def weights(self, i: int, device) -> torch.Tensor:
        """Raised-cosine ramps `ramp` wide centred on the core cuts: 1 inside the core, 0 beyond."""
        position = torch.arange(self.starts[i], self.starts[i] + self.tile, device=device) + 0.5
        weight = torch.ones(self.tile, device=device)
        width = max(self.ramp, 1)
        if i > 0:
            weight *= _ramp((position - self.cuts[i]) / width + 0.5)
        if i + 1 < len(self.starts):
            weight *= 1 - _ramp((position - self.cuts[i + 1]) / width + 0.5)
        return weight

    def total(self, device) -> torch.Tensor:
        total = torch.zeros(self.starts[-1] + self.tile, device=device)
        for i, start in enumerate(self.starts):
            total[start:start + self.tile] += self.weights(i, device)
        return total


def _ramp(t: torch.Tensor) -> torch.Tensor:
    return torch.sin(t.clamp(0, 1) * (math.pi / 2)).square()


class _Grid:
    """Overlapping tiles over a padded frame, in frame pixels."""

    def __init__(self, height: int, width: int, tile: int, overlap: int, multiple: int, ramp: int):
        self.rows = _Axis.plan(height, tile, overlap, multiple, ramp)
        self.cols = _Axis.plan(width, tile, overlap, multiple, ramp)
        self.size = (self.rows.tile, self.cols.tile)

    def __iter__(self):
        """(row, column, box of the tile, box of its core relative to the tile) for every tile."""
        th, tw = self.size
        for i, top in enumerate(self.rows.starts):
            for j, left in enumerate(self.cols.starts):
                core = (self.rows.cuts[i] - top, self.rows.cuts[i + 1] - top,
                        self.cols.cuts[j] - left, self.cols.cuts[j + 1] - left)
                yield i, j, (top, top + th, left, left + tw), core

    @property
    def count(self) -> int:
        return len(self.rows.starts) * len(self.cols.starts)

    def weights(self, i, j, device) -> torch.Tensor:
        return self.rows.weights(i, device)[:, None] * self.cols.weights(j, device)[None, :]

    def normaliser(self, device) -> torch.Tensor:
        return self.rows.total(device)[:, None] * self.cols.total(device)[None, :]


@dataclass
class _Chain:
    """The generator as stages run one after another; the activation between two stages (a boundary)
    can be stored for the whole frame so later passes start there instead of at the frame."""

    stages: list
    layers: list  # InstanceNorm2d modules in the order they run
    stage_of: list  # stage index of each norm layer
    scales: list  # per boundary (before stage j; len(stages) + 1): resolution relative to the frame
    channels: list  # per boundary


def _run(stages, x):
    for stage in stages:
        x = stage(x)
    return x


def _chain(generator: nn.Module, probe: torch.Tensor) -> _Chain:
    """Split the generator at the children of the nn.Sequential that computes it, where one does
    (checked on `probe`); otherwise one stage. Also finds the order norm layers run in."""
    norms = [m for m in generator.modules() if isinstance(m, nn.InstanceNorm2d)]
    stages = [generator]
    with torch.inference_mode():
        expected = generator(probe)
        for seq in (m for m in generator.modules() if isinstance(m, nn.Sequential)):
            contains = {id(m) for m in seq.modules()}
            if all(id(n) in contains for n in norms) and _close(_run(seq, probe), expected):
                stages = list(seq)
                break
        return _trace(stages, norms, probe)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4))


def _trace(stages, norms, probe) -> _Chain:
    order, stage_of = [], []
    current = [0]

    def seen(index, module, x):
        if any(module is m for m in order):
            raise ModelError("an InstanceNorm2d layer runs twice in one forward; tiling needs each once")
        order.append(module)
        stage_of.append(current[0])
        return F.instance_norm(x, None, None, module.weight, module.bias, True, 0.0, module.eps)

    scales, channels, x = [1.0], [probe.shape[1]], probe
    with _controlled(norms, seen):
        for j, stage in enumerate(stages):
            current[0] = j
            x = stage(x)
            scales.append(x.shape[-1] / probe.shape[-1])
            channels.append(x.shape[1])
    return _Chain(stages, order, stage_of, scales, channels)


def _sweep(chain: _Chain, source, start: int, stop: int, grid: _Grid, control: _NormControl, sink=None):
    """Run stages[start:stop] on every tile of `source`, the whole-frame activation at boundary `start`;
    `sink(i, j, box, core, y)` takes each tile's result (none when the control stops the forward)."""
    scale = chain.scales[start]
    control.tile = grid.size
    for i, j, box, core in grid:
        control.core = core
        top, bottom, left, right = (round(v * scale) for v in box)
        try:
            y = _run(chain.stages[start:stop], source[..., top:bottom, left:right])
        except _Stop:
            continue
        sink(i, j, box, core, y)


def _store(chain, source, start, stop, grid, control):
    """The whole-frame activation at boundary `stop`, assembled from the tiles' cores."""
    scale, target = chain.scales[stop], []

    def keep(i, j, box, core, y):
        if not target:
            height, width = (round(v * scale) for v in (grid.rows.cuts[-1], grid.cols.cuts[-1]))
            target.append(y.new_empty(*y.shape[:2], height, width))
        top, left = box[0] + core[0], box[2] + core[2]
        part = _region(y, core, grid.size)
        target[0][..., round(top * scale):round(top * scale) + part.shape[-2],
                  round(left * scale):round(left * scale) + part.shape[-1]] = part

    _sweep(chain, source, start, stop, grid, control, keep)
    return target[0]


def _stored_boundaries(chain: _Chain, frame_shape, itemsize: int, limit: int) -> list[int]:
    """Boundaries whose whole-frame activation (at most `limit` bytes) is kept: before each norm layer's
    stage, the last one that fits since the previous stored one."""
    n, _, height, width = frame_shape

    def fits(j):
        side = chain.scales[j]
        if math.log2(side) % 1:  # a padded activation: tiles would not map onto it
            return False
        return n * chain.channels[j] * round(height * side) * round(width * side) * itemsize <= limit

    stored, at = [], 0
    for stage in chain.stage_of:
        ahead = [j for j in range(at + 1, stage + 1) if fits(j)]
        if ahead:
            stored.append(ahead[-1])
            at = ahead[-1]
    return stored


def _gather_stats(chain, padded, grid, control, stored):
    """Whole-frame statistics for every norm layer, in the order they run: for each, one sweep from
    the latest stored boundary up to that layer (exact, given halos as wide as the receptive field)."""
    source, at = padded, 0
    for k, stage in enumerate(chain.stage_of):
        ahead = [j for j in stored if at < j <= stage]
        if ahead:
            source, at = _store(chain, source, at, ahead[-1], grid, control), ahead[-1]
        control.record = k
        _sweep(chain, source, at, stage + 1, grid, control)
        control.gathered()
    return source, at


def _blend(chain, source, start, grid, control):
    out = []

    def add(i, j, box, core, y):
        if not out:
            out.append(torch.zeros(*y.shape[:2], grid.rows.cuts[-1], grid.cols.cuts[-1], device=y.device))
        top, bottom, left, right = box
        out[0][..., top:bottom, left:right] += y.float() * grid.weights(i, j, y.device)

    _sweep(chain, source, start, len(chain.stages), grid, control, add)
    return out[0].div_(grid.normaliser(out[0].device))


def reach(modules, jump: float = 1.0) -> int:
    """Receptive-field radius, in frame pixels, of convolutions run in registration order, starting
    where one activation pixel spans `jump` frame pixels."""
    radius = 0.0
    for module in modules:
        for conv in (m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))):
            if isinstance(conv, nn.ConvTranspose2d):
                jump /= conv.stride[0]
            radius += (conv.kernel_size[0] - 1) / 2 * conv.dilation[0] * jump
            if isinstance(conv, nn.Conv2d):
                jump *= conv.stride[0]
    return math.ceil(radius)


class TiledRunner:
    """A generator prepared for tiled inference: its stages, norm layers and receptive fields."""

    def __init__(self, generator: nn.Module, channels: int = 3):
        self.generator = generator
        self.multiple = total_stride(generator)
        param = next(generator.parameters())
        size = 8 * self.multiple
        probe = torch.rand(1, channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        self.chain = _chain(generator, probe.to(param.device, param.dtype))

    def stored(self, frame_shape, itemsize: int, store_bytes: int) -> list[int]:
        return _stored_boundaries(self.chain, self.padded_shape(frame_shape), itemsize, store_bytes)

    def padded_shape(self, frame_shape):
        n, c, height, width = frame_shape
        m = self.multiple
        return n, c, max(8, math.ceil(height / m) * m), max(8, math.ceil(width / m) * m)

    def overlap(self, stored: list[int], ramp: int = 8) -> int:
        """Overlap between tiles: twice the widest receptive field of a sweep, plus the cross-fade.
        With no stored boundary the sweep is the whole network, whose theoretical field is far wider
        than what matters: half of it measured above 50 dB (module docstring)."""
        bounds = [0, *stored, len(self.chain.stages)]
        halo = max(reach(self.chain.stages[a:b], 1 / self.chain.scales[a]) for a, b in zip(bounds, bounds[1:]))
        if not stored:
            halo = math.ceil(halo / 2)
        return math.ceil((2 * halo + ramp) / (2 * self.multiple)) * 2 * self.multiple

    def grid(self, frame_shape, itemsize: int, tile: int, overlap: int | None, store_bytes: int, ramp: int):
        padded = self.padded_shape(frame_shape)
        stored = _stored_boundaries(self.chain, padded, itemsize, store_bytes)
        overlap = self.overlap(stored, ramp) if overlap is None else overlap // self.multiple * self.multiple
        tile = max(tile // self.multiple * self.multiple, overlap + self.multiple)
        return _Grid(*padded[2:], tile, overlap, self.multiple, ramp), stored

    def seams(self, batch: torch.Tensor, tile: int, overlap: int | None = None, store_bytes: int = 0,
              ramp: int = 8) -> list[list[int]]:
        """Rows and columns (inside the frame) where tiles meet: core cuts and tile edges."""
        frame_shape = batch.shape
        grid, _ = self.grid(frame_shape, batch.element_size(), tile, overlap, store_bytes, ramp)
        return [sorted({p for p in (*axis.cuts, *axis.starts, *(s + axis.tile for s in axis.starts))
                        if 0 < p < side}) for axis, side in ((grid.rows, frame_shape[2]), (grid.cols, frame_shape[3]))]

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor, tile: int, overlap: int | None = None, store_bytes: int = 0,
                 ramp: int = 8) -> torch.Tensor:
        height, width = batch.shape[-2:]
        grid, stored = self.grid(batch.shape, batch.element_size(), tile, overlap, store_bytes, ramp)
        if grid.count == 1:
            return self.generator(batch)
        padded = pad_to_multiple(batch, self.multiple)
        control = _NormControl(self.chain.layers)
        with _controlled(self.chain.layers, control):
            source, at = _gather_stats(self.chain, padded, grid, control, stored)
            out = _blend(self.chain, source, at, grid, control)
        return out[..., :height, :width].to(batch.dtype)


def run_tiled(generator: nn.Module, batch: torch.Tensor, tile: int, overlap: int | None = None,
              store_bytes: int = 0, ramp: int = 8) -> torch.Tensor:
    """Translate a float NCHW batch in [-1, 1] in overlapping tiles of `tile` frame pixels, every
    InstanceNorm2d normalised with whole-frame statistics: equal to generator(batch).

    overlap: frame pixels shared by neighbouring tiles (default: from the receptive field).
    store_bytes: the most one kept whole-frame activation between two stages may take; keeping
    the bottleneck saves most of the recomputation (module docstring).
    ramp: width of the raised-cosine cross-fade between tiles.
    Raises ModelError for a generator whose norm layers run more than once per forward.
    """
    return TiledRunner(generator, batch.shape[1])(batch, tile, overlap, store_bytes, ramp)
