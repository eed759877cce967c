"""Tiled inference: a frame too big for the memory budget runs in overlapping tiles, and the result
equals the whole frame's.

Instance norm ties every output pixel to the whole frame: each InstanceNorm2d normalises with the
mean and variance of its input over the frame. Here every norm layer gets the whole frame's
statistics, gathered exactly, one layer at a time in the order they run: a sweep over all tiles
runs the network up to that layer (earlier layers fixed already) and accumulates the moments of its
input over each tile's core, the tile's share of the frame at that layer's resolution. A last sweep
makes the output; neighbouring tiles overlap by twice the receptive field of a sweep, and cross-fade
over 8 pixels with raised-cosine weights centred on the core boundaries.

Sweeps that all start at the frame cost O(L^2) for L norm layers (12.5 untiled forwards for the
9-block generator). vidcycle.runtime.stages splits a generator into a chain of stages, so a sweep can start
from a whole-frame activation kept at a stage boundary instead: keeping the 1/4-resolution
bottleneck between residual blocks (2 such activations at once, 4*ngf channels at 1/16 of the
pixels each) cuts that to 2.4; keeping it inside blocks too (4 at once) runs every bottleneck
convolution once, 1.04 forwards. Sweeps from a kept activation are a few convolutions deep, so their
overlap is small (16 to 32 pixels). memory.plan picks the cheapest schedule that fits the budget.

Statistics are exact because a trained generator is sensitive to them at every layer: approximate ones
(the tile's own, a downscaled frame, a sample of tiles) fell far short of the untiled output, with
visible seams. With nothing kept, the halo (overlap less the ramp, halved) is half a sweep's receptive
field, at least 32 pixels: influence fades with distance. Measured: benchmarks/README.md, "Tiles".

Assumes the generator pads frames bottom and right to a multiple of its total stride, as
ResnetGenerator does (nets.pad_to_multiple); any module whose normalisation layers are
InstanceNorm2d, each run once per forward, works (as one stage when it is not a Sequential chain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from vidcycle.models.nets import pad_to_multiple
from vidcycle.runtime.stages import Chain, analyse, reach, route_norms, run, total_stride


class _Stop(Exception):
    """Ends a forward early, once the layer whose statistics a pass gathers has seen its input."""


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
    """Per (frame, channel) variance and mean in float32, two-pass (mean, then squared deviations:
    15x faster than torch.var_mean on CPU, and exact where sum-of-squares cancels); reduced precision
    is widened a few channels at a time, so no float32 copy of the whole activation is made."""
    step = x.shape[1] if x.dtype == torch.float32 else chunk
    means, variances = [], []
    for c in range(0, x.shape[1], step):
        part = x[:, c:c + step].float()
        mean = part.mean(dim=(-2, -1), keepdim=True)
        deviation = torch.linalg.vector_norm(part - mean, 2, dim=(-2, -1))
        means.append(mean[..., 0, 0])
        variances.append(deviation.square() / (x.shape[-1] * x.shape[-2]))
    return torch.cat(variances, 1), torch.cat(means, 1)


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
        tile = min(tile, math.ceil(((length - overlap) / count + overlap) / multiple) * multiple)  # even split
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


@dataclass(frozen=True)
class _Sweep:
    """Run stages[start:stop] over all tiles, keeping the whole-frame activation at boundaries `keep`."""

    start: int
    keep: tuple[int, ...]
    stop: int


@dataclass(frozen=True)
class _Schedule:
    sweeps: list  # per norm layer, in running order: the sweep that gathers its statistics
    final: int  # the boundary the output sweep starts from
    kept_peak: int  # the most bytes of kept activations alive at once
    kept_final: int  # bytes kept during the output sweep
    cost: float  # arithmetic of all sweeps, in untiled forwards (before tile overlaps)


def _schedule(chain: Chain, frame_shape, itemsize: int, cap: int, inside_blocks: bool) -> _Schedule:
    """Before each norm layer's sweep, keep the last boundary whose whole-frame activation takes at
    most `cap` bytes (with the inputs of the residual blocks it lies inside, or only boundaries
    outside blocks), so the sweeps after it start there."""
    n, _, height, width = frame_shape

    def size(j):
        side = chain.scales[j]
        if math.log2(side) % 1:  # a padded activation: tiles would not map onto it
            return cap + 1
        return n * chain.channels[j] * round(height * side) * round(width * side) * itemsize

    def keeps(j, at, kept):
        forks = chain.open_forks(j)
        if size(j) > cap or forks and not inside_blocks:
            return None
        if any(f not in kept and (f <= at or size(f) > cap) for f in forks):
            return None
        return (*(f for f in forks if f not in kept), j)

    sweeps, at, kept, peak = [], 0, set(), 0
    for stage in chain.stage_of:
        keep = next((k for j in range(stage, at, -1) if (k := keeps(j, at, kept))), ())
        sweeps.append(_Sweep(at, keep, stage + 1))
        if keep:
            peak = max(peak, sum(size(b) for b in kept | set(keep)))
            at, kept = keep[-1], {keep[-1], *chain.open_forks(keep[-1])}
    work = sum(sum(chain.flops[s.start:s.stop]) for s in sweeps) + sum(chain.flops[at:])
    return _Schedule(sweeps, at, peak, sum(size(b) for b in kept), work / max(sum(chain.flops), 1))


def _sweep(chain: Chain, kept: dict, sweep: _Sweep, grid: _Grid, control: _NormControl, sink=None) -> dict:
    """One sweep over the tiles; `sink(i, j, box, y)` takes each finished tile. Returns the kept
    activations the next sweeps need."""
    new = {}
    control.tile = grid.size
    for i, j, box, core in grid:
        control.core = core

        def tile_of(boundary, box=box):
            scale, (top, bottom, left, right) = chain.scales[boundary], box
            return kept[boundary][..., round(top * scale):round(bottom * scale),
                                  round(left * scale):round(right * scale)]

        def visit(boundary, x, box=box, core=core):
            if boundary in sweep.keep:
                _keep_core(new, boundary, x, box, core, grid, chain.scales[boundary])

        first = tile_of(sweep.start)
        if getattr(chain.stages[sweep.start], "inplace", False):  # it would write into the kept activation
            first = first.clone()
        try:
            y = run(chain, sweep.start, sweep.stop, first, tile_of, visit)
        except _Stop:
            continue
        if sink:
            sink(i, j, box, y)
    if not sweep.keep:
        return kept
    after = sweep.keep[-1]
    return {b: t for b, t in {**kept, **new}.items() if b == after or b in chain.open_forks(after)}


def _keep_core(store: dict, boundary: int, x, box, core, grid: _Grid, scale: float):
    if boundary not in store:
        height, width = (round(v * scale) for v in (grid.rows.cuts[-1], grid.cols.cuts[-1]))
        store[boundary] = x.new_empty(*x.shape[:2], height, width)
    part = _region(x, core, grid.size)
    top, left = round((box[0] + core[0]) * scale), round((box[2] + core[2]) * scale)
    store[boundary][..., top:top + part.shape[-2], left:left + part.shape[-1]] = part


def _gather_stats(chain, padded, grid, control, schedule: _Schedule) -> dict:
    """Whole-frame statistics for every norm layer, in the order they run, one sweep each (exact,
    given halos as wide as a sweep's receptive field); returns the activations kept at the end."""
    kept = {0: padded}
    for k, sweep in enumerate(schedule.sweeps):
        control.record = k
        kept = _sweep(chain, kept, sweep, grid, control)
        control.gathered()
    return kept


def _blend(chain, kept, start, grid, control):
    out = []

    def add(i, j, box, y):
        if not out:
            out.append(torch.zeros(*y.shape[:2], grid.rows.cuts[-1], grid.cols.cuts[-1], device=y.device))
        top, bottom, left, right = box
        out[0][..., top:bottom, left:right] += y.float() * grid.weights(i, j, y.device)

    _sweep(chain, kept, _Sweep(start, (), len(chain.stages)), grid, control, add)
    return out[0].div_(grid.normaliser(out[0].device))


class TiledRunner:
    """A generator prepared for tiled inference: its stages, norm layers and receptive fields."""

    def __init__(self, generator: nn.Module, channels: int = 3):
        self.generator = generator
        self.multiple = total_stride(generator)
        param = next(generator.parameters())
        size = 8 * self.multiple
        probe = torch.rand(1, channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        self.chain = analyse(generator, probe.to(param.device, param.dtype))

    def schedule(self, frame_shape, itemsize: int, keep_bytes: int) -> _Schedule:
        """The least arithmetic with at most `keep_bytes` of whole-frame activations kept at once:
        over which boundaries may be kept (up to what size; inside residual blocks, where every
        bottleneck convolution then runs once but up to four activations are kept, or only between)."""
        padded = self.padded_shape(frame_shape)
        n, _, height, width = padded
        caps = {n * c * round(height * s) * round(width * s) * itemsize
                for c, s in zip(self.chain.channels, self.chain.scales)}
        options = [_schedule(self.chain, padded, itemsize, cap, inside)
                   for cap in sorted(caps | {0}) if cap <= keep_bytes for inside in (True, False)]
        return min((o for o in options if o.kept_peak <= keep_bytes), key=lambda o: o.cost)

    def padded_shape(self, frame_shape):
        n, c, height, width = frame_shape
        m = self.multiple
        return n, c, max(8, math.ceil(height / m) * m), max(8, math.ceil(width / m) * m)

    def overlap(self, schedule: _Schedule, ramp: int = 8) -> int:
        """Overlap between tiles: twice the widest receptive field of a sweep, plus the cross-fade.
        A field wider than 64 pixels (a sweep through the whole bottleneck, when nothing is kept)
        counts half: influence fades with distance, and half measured 56 to 72 dB (benchmarks/README.md,
        "Tiles")."""
        sweeps = [(s.start, s.stop) for s in schedule.sweeps] + [(schedule.final, len(self.chain.stages))]
        field = max(reach(self.chain.stages[a:b], 1 / self.chain.scales[a]) for a, b in sweeps)
        halo = min(field, max(32, math.ceil(field / 2)))
        return math.ceil((2 * halo + ramp) / (2 * self.multiple)) * 2 * self.multiple

    def grid(self, frame_shape, itemsize: int, tile: int, overlap: int | None, keep_bytes: int, ramp: int):
        padded = self.padded_shape(frame_shape)
        schedule = self.schedule(frame_shape, itemsize, keep_bytes)
        overlap = self.overlap(schedule, ramp) if overlap is None else overlap // self.multiple * self.multiple
        tile = max(tile // self.multiple * self.multiple, overlap + self.multiple)
        return _Grid(*padded[2:], tile, overlap, self.multiple, ramp), schedule

    def tile_size(self, frame_shape, tile: int, overlap: int) -> tuple[int, int]:
        padded = self.padded_shape(frame_shape)
        return _Grid(*padded[2:], tile, overlap, self.multiple, 0).size

    def overhead(self, frame_shape, tile: int, overlap: int) -> float:
        """Tile area over frame area: the arithmetic one sweep repeats in the overlaps."""
        padded = self.padded_shape(frame_shape)
        grid = _Grid(*padded[2:], tile, overlap, self.multiple, 0)
        return grid.count * grid.size[0] * grid.size[1] / (padded[2] * padded[3])

    def seams(self, batch: torch.Tensor, tile: int, overlap: int | None = None, keep_bytes: int = 0,
              ramp: int = 8) -> list[list[int]]:
        """Rows and columns (inside the frame) where tiles meet: core cuts and tile edges."""
        frame_shape = batch.shape
        grid, _ = self.grid(frame_shape, batch.element_size(), tile, overlap, keep_bytes, ramp)
        return [sorted({p for p in (*axis.cuts, *axis.starts, *(s + axis.tile for s in axis.starts))
                        if 0 < p < side}) for axis, side in ((grid.rows, frame_shape[2]), (grid.cols, frame_shape[3]))]

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor, tile: int, overlap: int | None = None, keep_bytes: int = 0,
                 ramp: int = 8) -> torch.Tensor:
        height, width = batch.shape[-2:]
        grid, schedule = self.grid(batch.shape, batch.element_size(), tile, overlap, keep_bytes, ramp)
        if grid.count == 1:
            return self.generator(batch)
        padded = pad_to_multiple(batch, self.multiple)
        control = _NormControl(self.chain.layers)
        with route_norms(self.chain.layers, control):
            kept = _gather_stats(self.chain, padded, grid, control, schedule)
            out = _blend(self.chain, kept, schedule.final, grid, control)
        return out[..., :height, :width].to(batch.dtype)


def run_tiled(generator: nn.Module, batch: torch.Tensor, tile: int, overlap: int | None = None,
              keep_bytes: int = 0, ramp: int = 8) -> torch.Tensor:
    """Translate a float NCHW batch in [-1, 1] in overlapping tiles of `tile` frame pixels, every
    InstanceNorm2d normalised with whole-frame statistics: equal to generator(batch).

    memory.plan chooses tile, overlap and keep_bytes for a budget.
    overlap: frame pixels shared by neighbouring tiles (default: from the receptive field).
    keep_bytes: how much memory whole-frame activations between stages may take; keeping the
    bottleneck saves most of the recomputation (module docstring).
    ramp: width of the raised-cosine cross-fade between tiles.
    Raises ModelError for a generator whose norm layers run more than once per forward.
    """
    return TiledRunner(generator, batch.shape[1])(batch, tile, overlap, keep_bytes, ramp)
