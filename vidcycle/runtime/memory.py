"""How much memory a generator's forward needs, memory budgets as text, and the batch/tile plan.

The estimate is computed, not measured: the generator runs on "meta" tensors
(shapes without data, so no arithmetic and no allocation) under a dispatch mode
that follows every aten op, keeps the set of tensors still referenced, and
takes the peak of their bytes plus the scratch each convolution kernel holds
while it runs. Convolution scratch is modelled on what the CPU kernels were
measured to allocate (torch.profiler, profile_memory=True; torch 2.14, oneDNN):
a regular convolution reorders its input and weights into blocked layouts and
writes its output blocked with channels padded to 16, then copies it out; a
transposed one holds two output-sized buffers besides its output; a float32
batch-1 input of at most 20480 values, ungrouped, kernel at most 3 wide, goes to im2col instead, with a column
buffer of C_in*k*k values per output position. On plain AVX-512 (no AVX512-BF16 or AMX) oneDNN
emulates bf16, and its transposed convolutions also hold a reordered input. Without AVX-512 (or with
oneDNN capped below it by ONEDNN_MAX_CPU_ISA), oneDNN refuses bf16 and torch's own im2col
kernels run it: a regular convolution holds the column buffer of the whole batch (none for a 1 x 1,
stride 1, unpadded one), a grouped one runs group by group and concatenates (a second output), a
transposed one holds C_out*k*k columns per input position; 13 times the native scratch on the test
generator (benchmarks/README.md, "Memory estimate"). On CUDA the same model stands in
for cuDNN's workspace (not yet checked on a GPU; the caching allocator also
rounds blocks up, so leave headroom there).

A tiled run adds what tiling.py keeps for the whole frame (the padded frame, the
float32 output being blended, kept activations) to the estimate of one tile's
forward. Against the peak torch.profiler measures on the CPU, the estimate erred
high in every case measured, never low: within 25% for ngf 16 and wider (under 1%
for whole frames), more for thinner layers (ngf 8: oneDNN blocks by 8 channels).
Measured: benchmarks/README.md, "Memory estimate".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch.func import functional_call
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from vidcycle.errors import DeviceError, UsageError
from vidcycle.runtime.device import cpu_has_fast_bf16, onednn_takes_bf16

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_IM2COL_MAX_INPUT = 20480  # PyTorch's CPU convolution uses oneDNN above this many input values (batch 1, fp32)
_CONV_OPS = {"conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d",
             "conv_transpose2d", "conv_transpose3d"}


def parse_size(text: str | int) -> int:
    """'512M', '3G', '1.5G', '2GiB' or a plain byte count -> bytes (K, M, G, T are powers of 1024).

    Raises ValueError for anything else.
    """
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"memory size {text!r} not understood; write bytes or a number with K, M, G or T, "
                         "e.g. 512M or 1.5G")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * 1024 ** " KMGT".index(unit or " "))


def parse_budget(value) -> int:
    """A memory budget (max_memory, --max-memory: bytes, or text such as '3G') as bytes. Raises UsageError."""
    try:
        budget = parse_size(value)
    except ValueError as error:
        raise UsageError(f"max_memory (--max-memory): {error}") from None
    if budget <= 0:
        raise UsageError(f"max_memory (--max-memory): {value!r} is not a positive size")
    return budget


# The default budget: a safe share of what is free now. Half of the available RAM leaves the other
# half to decoding, encoding, the frames in flight and whatever else runs; on a GPU, the caching
# allocator and cuDNN's workspaces need headroom beyond the tensors counted.
CPU_SHARE, CUDA_SHARE = 0.5, 0.8


def default_budget(device: torch.device) -> int:
    """Bytes the network may use by default on `device`: a share of the free VRAM or available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_SHARE)
    return int(available_ram() * CPU_SHARE)


def available_ram() -> int:
    """RAM available now: /proc/meminfo's MemAvailable, within the cgroup's limit where one is set."""
    available = _meminfo("MemAvailable") or _meminfo("MemFree") or 4 * 2 ** 30
    limit, used = _cgroup_value("memory.max"), _cgroup_value("memory.current")
    if limit is not None and used is not None:
        available = min(available, max(0, limit - used))
    return available


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _cgroup_value(name: str) -> int | None:
    try:
        with open(f"/sys/fs/cgroup/{name}", encoding="ascii") as handle:
            text = handle.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def quick_fit(generator: torch.nn.Module, batch: int, height: int, width: int, dtype: torch.dtype,
              budget: int) -> bool:
    """True when `batch` whole frames plainly fit `budget`, by a bound that needs no tracing: activations
    of 8 times the widest full-resolution layer's channels, plus 16, per padded pixel (the exact estimate
    measured 3.6 times ngf for the 9-block generator, 3.7 for 6 blocks ngf 16, 4.8 for ngf 8), with the
    weights and the uint8 frames in and out."""
    widest = next((m.out_channels for m in generator.modules() if isinstance(m, torch.nn.Conv2d)), 3)
    pixels = batch * (height + 8) * (width + 8)
    working = pixels * _itemsize(dtype) * (8 * widest + 16)
    return weight_bytes(generator, dtype) + working + pixels * 3 * 6 <= budget


def format_size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


def weight_bytes(generator: torch.nn.Module, dtype: torch.dtype) -> int:
    return sum(t.numel() for t in generator.state_dict().values()) * _itemsize(dtype)


def estimate_forward(generator: torch.nn.Module, shape, dtype: torch.dtype, device_type: str = "cpu") -> int:
    """Peak bytes of working memory of one forward of `generator` on an input of `shape` (N, C, H, W)
    in torch.inference_mode: activations and kernel scratch, input included, weights not."""
    params = {name: torch.empty_like(t, device="meta", dtype=dtype if t.is_floating_point() else t.dtype)
              for name, t in generator.state_dict(keep_vars=True).items()}
    x = torch.empty(tuple(shape), device="meta", dtype=dtype)
    cpu_bf16 = device_type == "cpu" and dtype == torch.bfloat16
    tracker = _LiveBytes(device_type, im2col_bf16=cpu_bf16 and not onednn_takes_bf16(),
                         emulated_bf16=cpu_bf16 and onednn_takes_bf16() and not cpu_has_fast_bf16())
    tracker.hold(x)
    with torch.inference_mode(), tracker:
        functional_call(generator, params, (x,), strict=False)
    return tracker.peak


_SMALL_BUFFERS = 4096  # a kernel's bias or table in float32, 128 bytes measured; a page allowed


class _LiveBytes(TorchDispatchMode):
    """Follows tensor lifetimes op by op; peak = bytes alive + the running op's kernel scratch."""

    def __init__(self, device_type: str, im2col_bf16: bool = False, emulated_bf16: bool = False):
        super().__init__()
        self.device_type = device_type
        self.im2col_bf16 = im2col_bf16      # torch's own bf16 kernels (no AVX-512)
        self.emulated_bf16 = emulated_bf16  # oneDNN's bf16 on AVX-512 without bf16 instructions
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def hold(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        ref = StorageWeakRef(storage)
        self.live.setdefault(ref.cdata, (ref, storage.nbytes()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.live = {key: item for key, item in self.live.items() if not item[0].expired()}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self.hold(tensor)
        scratch = self._conv_scratch(func, args, out) if func.overloadpacket.__name__ in _CONV_OPS else 0
        self.peak = max(self.peak, sum(size for _, size in self.live.values()) + scratch)
        return out

    def _conv_scratch(self, func, args, out) -> int:
        x, weight = args[0], args[1]
        transposed = "transpose" in func.overloadpacket.__name__ or (
            func.overloadpacket.__name__ in ("convolution", "_convolution") and bool(args[6]))
        out_bytes, w_bytes = out.nbytes, weight.nbytes
        if self.im2col_bf16:
            return _im2col_scratch(x, weight, out, transposed, stride=args[3] if len(args) > 3 else 1,
                                   padding=args[4] if len(args) > 4 else 0)
        if transposed:  # oneDNN's emulated bf16 also reorders the input and keeps small buffers (measured)
            return 2 * out_bytes + w_bytes + (x.nbytes + _SMALL_BUFFERS if self.emulated_bf16 else 0)
        padded_out = out_bytes * (16 * math.ceil(out.shape[1] / 16)) // out.shape[1]
        scratch = x.nbytes + w_bytes + padded_out
        if (self.device_type == "cpu" and x.dtype == torch.float32 and x.shape[0] == 1
                and x.numel() <= _IM2COL_MAX_INPUT and weight.shape[1] == x.shape[1] and min(weight.shape[2:]) <= 3):
            columns = out.numel() // out.shape[1] * weight[0].numel() * x.element_size()
            scratch = max(scratch, columns)
        return scratch


def _im2col_scratch(x, weight, out, transposed: bool, stride, padding) -> int:
    """Scratch of torch's own CPU convolutions (slow_conv2d, slow_conv_transpose2d), which run bf16
    where oneDNN cannot: their column buffers, and a grouped convolution's per-group outputs."""
    kernel = math.prod(weight.shape[2:])
    if transposed:  # columns: C_out*k*k per input position
        return x.shape[0] * out.shape[1] * kernel * math.prod(x.shape[2:]) * x.element_size()
    positions = out.numel() // out.shape[1]
    columns = positions * weight.shape[1] * kernel * x.element_size()
    if weight.shape[1] != x.shape[1]:  # grouped
        return out.nbytes + columns // x.shape[0]
    pointwise = kernel == 1 and all(s == 1 for s in _pair(stride)) and not any(_pair(padding))
    return 0 if pointwise else columns


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def bottleneck_bytes(runner, frame_shape, dtype: torch.dtype) -> int:
    """Bytes of the smallest activation between stages that a tiled run can keep for the whole frame
    (the 1/4-resolution bottleneck for ResnetGenerator; 0 when the generator is one stage)."""
    n, _, height, width = runner.padded_shape(frame_shape)
    chain = runner.chain
    usable = [n * chain.channels[j] * round(height * s) * round(width * s) * _itemsize(dtype)
              for j, s in enumerate(chain.scales[:max(chain.stage_of, default=0) + 1]) if j and not math.log2(s) % 1]
    return min(usable, default=0)


def estimate_run(runner, frame_shape, dtype: torch.dtype, device_type: str = "cpu", tile: int | None = None,
                 overlap: int = 0, keep_bytes: int = 0) -> int:
    """Peak bytes while translating a float batch of `frame_shape` (N, C, H, W): weights, the batch
    itself, and the working memory of runner.generator(batch), or of runner(batch, tile, ...) when tiled."""
    generator = runner.generator
    weights = weight_bytes(generator, dtype)
    if tile is None:
        return weights + estimate_forward(generator, frame_shape, dtype, device_type)
    n, c, height, width = padded = runner.padded_shape(frame_shape)
    itemsize = _itemsize(dtype)
    schedule = runner.schedule(frame_shape, itemsize, keep_bytes)
    th, tw = runner.tile_size(frame_shape, tile, overlap)
    working = estimate_forward(generator, (n, c, th, tw), dtype, device_type)
    out_channels = runner.chain.channels[-1]
    accumulator = n * out_channels * height * width * 4
    blending = n * out_channels * th * tw * 4 * 3 + (th + tw) * 8
    frames = math.prod(frame_shape) * itemsize + (math.prod(padded) * itemsize if padded != tuple(frame_shape) else 0)
    result = n * out_channels * frame_shape[2] * frame_shape[3] * itemsize if itemsize != 4 else 0
    stats_phase = schedule.kept_peak + working
    output_phase = schedule.kept_final + accumulator + working + blending + result
    return weights + frames + max(stats_phase, output_phase)


@dataclass(frozen=True)
class Plan:
    """How to run frames of one size under a memory budget."""

    batch: int  # frames per forward
    tile: int | None  # tile side in frame pixels; None: whole frames
    overlap: int = 0
    keep_bytes: int = 0  # memory for whole-frame activations kept between sweeps (tiled runs)
    estimate: int = 0  # computed peak bytes of the plan
    compute: float = 1.0  # arithmetic relative to untiled forwards of the same frames


def plan(budget: int, frame_size: tuple[int, int], runner, dtype: torch.dtype, device_type: str = "cpu",
         max_batch: int = 8, max_tile: int | None = None) -> Plan:
    """The largest batch of whole frames that fits `budget` bytes; else tiles (batch 1): of the ways
    to keep whole-frame bottleneck activations (none, between residual blocks, inside them too),
    the one with the least computation at the largest tile that fits.

    Counts weights, the uint8 frames and their float batch, and the working memory.
    `max_tile` caps the tile side (CUDA's 32-bit indexing). Raises DeviceError when not even small
    tiles fit.
    """
    height, width = frame_size
    channels = runner.chain.channels[0]
    shape, itemsize = (1, channels, height, width), _itemsize(dtype)

    def total(batch, **tiled):
        io = batch * channels * height * width * (2 + 4)  # uint8 frames in and out, float32 rounding
        return io + estimate_run(runner, (batch, channels, height, width), dtype, device_type, **tiled)

    batch = _largest(total, budget, 1, max_batch, 1) if max_tile is None else None
    if batch:
        return Plan(batch, None, estimate=total(batch))
    best, stream = None, bottleneck_bytes(runner, shape, dtype)
    for keep_bytes in (0, 2 * stream, 4 * stream):
        schedule = runner.schedule(shape, itemsize, keep_bytes)
        overlap = runner.overlap(schedule)

        def cost(tile):
            return total(1, tile=tile, overlap=overlap, keep_bytes=keep_bytes)

        largest = min(max(runner.padded_shape(shape)[2:]), max_tile or math.inf)
        tile = _largest(cost, budget, 2 * overlap, largest, runner.multiple)
        if tile:
            compute = schedule.cost * runner.overhead(shape, tile, overlap)
            if best is None or compute < best.compute:
                best = Plan(1, tile, overlap, keep_bytes, cost(tile), compute)
    if best:
        return best
    overlap = runner.overlap(runner.schedule(shape, itemsize, 0))
    need = total(1, tile=2 * overlap, overlap=overlap)
    raise DeviceError(f"memory budget {format_size(budget)} is too small for {width}x{height} frames with this "
                      f"model: even {2 * overlap}-pixel tiles need {format_size(need)}; allow at least that much")


def _largest(cost, budget: int, low: int, high: int, step: int) -> int | None:
    """The largest multiple of `step` in [low, high] with cost(value) <= budget (cost grows with value)."""
    low, high = math.ceil(low / step), max(high // step, math.ceil(low / step))
    if cost(low * step) > budget:
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if cost(middle * step) <= budget:
            low = middle
        else:
            high = middle - 1
    return low * step


def measure_peak(fn, device: torch.device | str = "cpu"):
    """Run fn() and return (its result, the peak bytes of tensors it allocated beyond those alive
    before). CUDA: the caching allocator's peak statistic. CPU: the allocation events torch.profiler
    records with profile_memory=True (every CPU tensor allocation and free, in order)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
    current = peak = 0
    for _, size in sorted(events, key=lambda e: e[0]):
        current += size
        peak = max(peak, current)
    return result, peak
