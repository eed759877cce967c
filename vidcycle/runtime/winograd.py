"""3 x 3 convolutions by Winograd's minimal filtering, F(4x4, 3x3) (Lavin and Gray, "Fast Algorithms for
Convolutional Neural Networks", CVPR 2016), for float32 on the CPU.

The same convolution with 4x fewer multiply-adds: each 6 x 6 input tile and each filter are taken to a
6 x 6 transform domain, where the convolution is 36 matrix products over the channels, and each product's
4 x 4 output tile comes back by a third transform. Without native bf16 a CPU's float32 convolution runs
near its peak already, so fewer multiply-adds is the one lever left (benchmarks/README.md,
"Winograd's convolutions"). Its rounding error, about 3e-6 of the output's norm in float32, is far below
bf16's. Without autograd (translating frames, a teacher's targets, sample grids) each image runs in bands
of tile rows whose transform-domain tiles stay in cache: a whole 640 x 360 frame's would not, and ran no
faster than torch's convolution. The transforms, each fused with the layout change around it, run as C
kernels (`winograd_kernels.c`) for float32 CPU tensors where the machine's compiler builds them, as torch
operations otherwise (the same arithmetic in another order; the 128-px step about 6% slower held to AVX2,
benchmarks/README.md). Everything else (other kernels and strides, bf16, CUDA, whose cuDNN has its own)
runs torch's convolution, so a converted network is the same network: the same parameters under the same
names.
"""

from __future__ import annotations

import ctypes
import math
import threading
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from vidcycle.runtime import native
from vidcycle.runtime.device import cpu_vendor

TILE = 4                      # output tile side: m in F(m x m, 3 x 3)
SPAN = TILE + 2               # input tile side
BAND_TILE_CHANNELS = 128 * 256  # tiles x channels a band without autograd: 4.7 MB in the transform domain

# Lavin and Gray's F(4, 3) at the points 0, 1, -1, 2, -2 and infinity: B^T (6 x 6) takes an input tile to
# the transform domain, G (6 x 3) a filter, A^T (4 x 6) the product back to an output tile
_B_T = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
        (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_A_T = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))


def _two_sided(matrix) -> torch.Tensor:
    """M (x) M, so that M t M^T of a tile t is one product with the flattened tile, in float32."""
    m = torch.tensor(matrix, dtype=torch.float64)
    return torch.kron(m, m).float()


INPUT_TRANSFORM = _two_sided(_B_T)     # 36 x 36
FILTER_TRANSFORM = _two_sided(_G)      # 36 x 9
OUTPUT_TRANSFORM = _two_sided(_A_T)    # 16 x 36


class _InputTiles(torch.autograd.Function):
    """(N, C, 4 th + 2, 4 tw + 2) -> the overlapping 6 x 6 tiles as (36, N th tw C); the backward adds the
    overlaps back (faster than unfold's own backward)."""

    @staticmethod
    def forward(ctx, x):
        ctx.input_shape = x.shape
        tiles = x.unfold(2, SPAN, TILE).unfold(3, SPAN, TILE)           # N, C, th, tw, 6, 6
        return tiles.permute(4, 5, 0, 2, 3, 1).reshape(SPAN * SPAN, -1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        """Each tile's gradient added back where the tile came from: along the rows of tiles first, then
        down their columns, each a copy of the 4 unshared places and two strided additions of the 2 shared
        (half the time of 20 strided additions of single places)."""
        n, c, height, width = ctx.input_shape
        rows, cols = (height - 2) // TILE, (width - 2) // TILE
        tiles = grad.view(SPAN, SPAN, n, rows, cols, c).permute(0, 2, 5, 3, 4, 1)    # i, N, C, th, tw, j
        across = grad.new_zeros(SPAN, n, c, rows, width)
        across[..., :cols * TILE].view(SPAN, n, c, rows, cols, TILE).copy_(tiles[..., :TILE])
        for j in range(TILE, SPAN):
            across[..., j:j + cols * TILE:TILE] += tiles[..., j]
        across = across.permute(1, 2, 3, 0, 4)                                          # N, C, th, i, W
        out = grad.new_zeros(ctx.input_shape)
        out[:, :, :rows * TILE].view(n, c, rows, TILE, width).copy_(across[:, :, :, :TILE])
        for i in range(TILE, SPAN):
            out[:, :, i:i + rows * TILE:TILE] += across[:, :, :, i]
        return out


def transformed_filters(weight: torch.Tensor) -> torch.Tensor:
    """A 3 x 3 weight (F, C, 3, 3) in the transform domain, as the 36 (C, F) matrices of the products."""
    if _kernels_for(weight) is not None:
        return _FusedFilters.apply(weight.contiguous())
    filters, channels = weight.shape[:2]
    kernels = FILTER_TRANSFORM @ weight.reshape(filters, channels, 9).permute(2, 1, 0).reshape(9, -1)
    return kernels.view(SPAN * SPAN, channels, filters)


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """conv2d(x, weight, bias) for a 3 x 3 weight, stride 1, no padding, float32: any input size (the
    bottom and right are padded to whole tiles and the output cropped back)."""
    return convolve_transformed(x, transformed_filters(weight), bias)


def convolve_transformed(x: torch.Tensor, kernels: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`winograd_conv3x3` with its weight already in the transform domain (`transformed_filters`)."""
    n, channels, height, width = x.shape
    out_h, out_w = height - 2, width - 2
    rows, cols = -(-out_h // TILE), -(-out_w // TILE)
    if (rows * TILE, cols * TILE) != (out_h, out_w):
        x = F.pad(x, (0, cols * TILE - out_w, 0, rows * TILE - out_h))
    wants_grad = torch.is_grad_enabled() and (x.requires_grad or kernels.requires_grad)
    kernel_library = _kernels_for(x, kernels)
    if wants_grad and kernel_library is not None:
        out = _FusedTransforms.apply(x.contiguous(), kernels, bias)
    elif wants_grad or torch.compiler.is_compiling():
        out = _tiles_as_image(_output_tiles(x, kernels), n, rows, cols)
        out = out if bias is None else out + bias.view(1, -1, 1, 1)
    else:
        out = _convolve_in_bands(x.contiguous(), kernels, bias, rows, cols, kernel_library)
    return out[..., :out_h, :out_w]


def _output_tiles(x: torch.Tensor, kernels: torch.Tensor, bias_row: torch.Tensor | None = None) -> torch.Tensor:
    """x (N, C, 4 th + 2, 4 tw + 2) -> its output tiles as (16, N th tw F), plus `bias_row` if given."""
    channels = x.shape[1]
    tiles = INPUT_TRANSFORM @ _InputTiles.apply(x)                                 # 36, N th tw C
    products = torch.bmm(tiles.view(SPAN * SPAN, -1, channels), kernels).view(SPAN * SPAN, -1)
    if bias_row is None:
        return OUTPUT_TRANSFORM @ products
    return torch.addmm(bias_row.expand(TILE * TILE, -1), OUTPUT_TRANSFORM, products)


def _tiles_as_image(tiles: torch.Tensor, n: int, rows: int, cols: int) -> torch.Tensor:
    """(16, N th tw F) output tiles -> the (N, F, 4 th, 4 tw) image."""
    image = tiles.view(TILE, TILE, n, rows, cols, -1).permute(2, 5, 3, 0, 4, 1)
    return image.reshape(n, image.shape[1], rows * TILE, cols * TILE)


def _convolve_in_bands(x, kernels, bias, rows, cols, kernel_library):
    """Without autograd: each image in bands of tile rows, so that a band's transform-domain tiles stay in
    a core's cache (a 640 x 360 frame's 256-channel tiles are 130 MB at once, and the whole frame ran at
    torch's speed, a band at half its time; benchmarks/README.md). By the C kernels where given."""
    n, channels = x.shape[:2]
    filters = kernels.shape[2]
    out = x.new_empty(n, filters, rows * TILE, cols * TILE)
    band = min(rows, max(1, BAND_TILE_CHANNELS // (cols * channels)))
    if kernel_library is not None:
        _fused_bands(kernel_library, x, kernels, bias, out, band)
        return out
    bias_row = None if bias is None else bias.repeat(band * cols)
    for image in range(n):
        for top in range(0, rows, band):
            height = min(band, rows - top)
            piece = x[image:image + 1, :, top * TILE:(top + height) * TILE + 2]
            band_bias = None if bias_row is None else bias_row[:height * cols * filters]
            tiles = _output_tiles(piece, kernels, band_bias)
            view = out[image:image + 1, :, top * TILE:(top + height) * TILE]
            view.view(1, filters, height, TILE, cols, TILE).copy_(
                tiles.view(TILE, TILE, 1, height, cols, filters).permute(2, 5, 3, 0, 4, 1))
    return out


KERNEL_SOURCE = "winograd_kernels"   # vidcycle/runtime/winograd_kernels.c
_POINTER, _SIZE, _THREADS = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
SIGNATURES = {
    "input_transform": [_POINTER] + [_SIZE] * 7 + [_POINTER, _THREADS],
    "output_transform": [_POINTER, _POINTER] + [_SIZE] * 7 + [_POINTER, _THREADS],
    "output_adjoint": [_POINTER] + [_SIZE] * 4 + [_POINTER, _THREADS],
    "input_adjoint": [_POINTER] + [_SIZE] * 4 + [_POINTER, _THREADS],
    "filter_transform": [_POINTER, _SIZE, _SIZE, _POINTER, _THREADS],
    "filter_adjoint": [_POINTER, _SIZE, _SIZE, _POINTER, _THREADS],
}


def fused_transforms():
    """The C kernels that fuse each transform with the layout change around it (`winograd_kernels.c`, built
    by `runtime.native`), or None where they cannot be built: torch operations then do the same."""
    return native.load(KERNEL_SOURCE, SIGNATURES)


def _kernels_for(*tensors: torch.Tensor):
    """The C kernels where they can take these tensors (float32, on the CPU, outside a compiled graph)."""
    if torch.compiler.is_compiling() or any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        return None
    return fused_transforms()


_SCRATCH = threading.local()


def _scratch(name: str, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """A temporary of the transform domain that this thread reuses from call to call (one per `name`, grown
    as needed): written in place, it is still in cache, where a fresh buffer's transform ran 2-3x slower
    (benchmarks/README.md). Only for what is consumed before the call that fills it returns."""
    buffers = getattr(_SCRATCH, "buffers", None)
    if buffers is None:
        buffers = _SCRATCH.buffers = {}
    size = math.prod(shape)
    kept = buffers.get(name)
    if kept is None or kept.numel() < size or kept.dtype != like.dtype or kept.device != like.device:
        kept = buffers[name] = like.new_empty(size)
    return kept[:size].view(shape)


class _FusedTransforms(torch.autograd.Function):
    """Winograd's convolution of a padded, contiguous x (N, C, 4 th + 2, 4 tw + 2) by the C kernels: each
    transform reads its input and writes the next product's operand in one pass. Saves only the
    transformed tiles (the torch operations' path keeps the tiles before and after their transform)."""

    @staticmethod
    def forward(ctx, x, kernels, bias):
        library = fused_transforms()
        n, channels, height, width = x.shape
        rows, cols, filters = (height - 2) // TILE, (width - 2) // TILE, kernels.shape[2]
        tiles = x.new_empty(SPAN * SPAN, n * rows * cols, channels)
        native.call(library.input_transform, x, n, channels, rows, cols, channels * height * width,
                    height * width, width, tiles)
        products = torch.bmm(tiles, kernels, out=_scratch("products", (SPAN * SPAN, n * rows * cols, filters), x))
        out = x.new_empty(n, filters, rows * TILE, cols * TILE)
        native.call(library.output_transform, products, bias, n, filters, rows, cols, out[0].numel(),
                    out[0, 0].numel(), cols * TILE, out)
        ctx.save_for_backward(tiles, kernels)
        ctx.sizes = (n, channels, rows, cols, filters)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        library = fused_transforms()
        tiles, kernels = ctx.saved_tensors
        n, channels, rows, cols, filters = ctx.sizes
        grad = grad.contiguous()
        grad_products = _scratch("grad_products", (SPAN * SPAN, n * rows * cols, filters), grad)
        native.call(library.output_adjoint, grad, n, filters, rows, cols, grad_products)
        grad_x = grad_kernels = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_tiles = torch.bmm(grad_products, kernels.transpose(1, 2),
                                   out=_scratch("grad_tiles", (SPAN * SPAN, n * rows * cols, channels), grad))
            grad_x = grad.new_empty(n, channels, rows * TILE + 2, cols * TILE + 2)
            native.call(library.input_adjoint, grad_tiles, n, channels, rows, cols, grad_x)
        if ctx.needs_input_grad[1]:
            grad_kernels = torch.bmm(tiles.transpose(1, 2), grad_products)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_kernels, grad_bias


class _FusedFilters(torch.autograd.Function):
    """`transformed_filters` by the C kernels, its gradient back to the 3 x 3 weight too: one pass each way
    where torch's operations reorder the weight, multiply, and reorder the gradient back."""

    @staticmethod
    def forward(ctx, weight):
        filters, channels = weight.shape[:2]
        kernels = weight.new_empty(SPAN * SPAN, channels, filters)
        native.call(fused_transforms().filter_transform, weight, filters, channels, kernels)
        return kernels

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        channels, filters = grad.shape[1:]
        weight_grad = grad.new_empty(filters, channels, 3, 3)
        native.call(fused_transforms().filter_adjoint, grad.contiguous(), filters, channels, weight_grad)
        return weight_grad


def _fused_bands(library, x, kernels, bias, out, band):
    """`_convolve_in_bands` by the C kernels: each band's tiles read from x and its output written into
    `out` in place, through their steps."""
    n, channels, height, width = x.shape
    filters, out_height, out_width = out.shape[1:]
    rows, cols = out_height // TILE, out_width // TILE
    tiles = _scratch("band tiles", (SPAN * SPAN * band * cols * channels,), x)
    products = _scratch("band products", (SPAN * SPAN * band * cols * filters,), x)
    for image in range(n):
        for top in range(0, rows, band):
            count = min(band, rows - top)
            piece = tiles[:SPAN * SPAN * count * cols * channels].view(SPAN * SPAN, -1, channels)
            native.call(library.input_transform, x[image, :, top * TILE:], 1, channels, count, cols, 0,
                        height * width, width, piece)
            made = torch.bmm(piece, kernels, out=products[:SPAN * SPAN * count * cols * filters].view(
                SPAN * SPAN, -1, filters))
            native.call(library.output_transform, made, bias, 1, filters, count, cols, 0,
                        out_height * out_width, out_width, out[image, :, top * TILE:])


# Inside `filters_shared()`: each WinogradConv2d's transformed weight, keyed by the module, reused while the
# weight's value (its version and storage) and the grad mode are those it was made from.
_SHARED: ContextVar[dict | None] = ContextVar("winograd_shared_filters", default=None)


@contextmanager
def filters_shared():
    """Within, each Winograd convolution transforms its weight once however many times it runs (a training
    step runs each generator two or three times with the same weights; autograd sums the gradients that
    reach the one transform). A weight changed in place (a loaded state, training's FusedAdam, which counts
    its step as a change) or by a torch.optim step (torch's fused Adam does not count it) is transformed
    again; leaving frees them all."""
    if _SHARED.get() is not None:
        yield
        return
    shared = {}
    token = _SHARED.set(shared)
    stepped = register_optimizer_step_post_hook(lambda *_: shared.clear())
    try:
        yield
    finally:
        stepped.remove()
        _SHARED.reset(token)


class WinogradConv2d(nn.Conv2d):
    """An nn.Conv2d (3 x 3, stride 1, no padding, no groups) that runs `winograd_conv3x3` on float32 CPU
    tensors outside autocast and tracing, and torch's convolution otherwise. Same parameters, same state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype != torch.float32 or x.device.type != "cpu" or torch.is_autocast_enabled("cpu")
                or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):   # a graph keeps torch's
            return super().forward(x)
        return convolve_transformed(x, self.transformed_weight(), self.bias)

    def transformed_weight(self) -> torch.Tensor:
        shared = None if torch.compiler.is_compiling() else _SHARED.get()  # a compiled graph fuses its own
        if shared is None:
            return transformed_filters(self.weight)
        made_from = (self.weight._version, self.weight.data_ptr(), torch.is_grad_enabled())
        kept = shared.get(self)
        if kept is None or kept[0] != made_from:
            kept = shared[self] = (made_from, transformed_filters(self.weight))
        return kept[1]


# Narrower, the transforms cost what the products save. At 2 threads the 128-channel blocks of ngf 32
# paid on an Intel Xeon with AVX2 (cyclegan128-budget's step 0.93x), broke even on it with AVX-512 (0.99x)
# and lost on an AMD EPYC with AVX2 (its generator 1.08x); 64 channels lost on both (benchmarks/README.md,
# "Winograd's convolutions").
MIN_CHANNELS = {"GenuineIntel": 128}
DEFAULT_MIN_CHANNELS = 256


def min_channels() -> int:
    """The narrowest convolution (in and out channels) that Winograd's pays for on this CPU."""
    return MIN_CHANNELS.get(cpu_vendor(), DEFAULT_MIN_CHANNELS)


def convertible(module: nn.Module, floor: int = DEFAULT_MIN_CHANNELS) -> bool:
    return (type(module) is nn.Conv2d and module.kernel_size == (3, 3) and module.stride == (1, 1)
            and module.padding == (0, 0) and module.dilation == (1, 1) and module.groups == 1
            and module.padding_mode == "zeros" and min(module.in_channels, module.out_channels) >= floor)


def use_winograd(net: nn.Module, floor: int | None = None) -> int:
    """Make every plain 3 x 3, stride-1, unpadded convolution in `net` of `floor` channels or more
    (`min_channels()` unless given) a WinogradConv2d, in place: the same module objects and parameters (an
    optimiser, DDP or a checkpoint holding them is unaffected), only their forward changes. Returns how
    many."""
    floor = min_channels() if floor is None else floor
    chosen = [module for module in net.modules() if convertible(module, floor)]
    for module in chosen:
        module.__class__ = WinogradConv2d
    if chosen:
        fused_transforms()      # built (or found missing, in one line) now, not inside the first step
    return len(chosen)


def winograd_pays(device: torch.device, dtype: torch.dtype) -> bool:
    """Where Winograd's convolutions are the faster ones: float32 on an x86 CPU that torch runs with AVX2,
    or with AVX-512 on an Intel CPU, where its convolution and MKL's batched matrix product run at like
    rates, so 4x fewer multiply-adds win (0.71-0.85x a 64-wide generator's forward and backward;
    benchmarks/README.md). On AMD's AVX-512 MKL's product ran at half the convolution's rate and Winograd's
    lost; bf16 rounds the transform domain too coarsely; CUDA's cuDNN picks its own algorithms."""
    if device.type != "cpu" or dtype != torch.float32:
        return False
    capability = torch.backends.cpu.get_cpu_capability()
    return capability == "AVX2" or (capability == "AVX512" and cpu_vendor() == "GenuineIntel")


def winograd_pays_for_frames(device: torch.device, dtype: torch.dtype) -> bool:
    """Where translating frames (no autograd, bands) runs faster with Winograd's: float32 on a CPU that
    torch runs with AVX2. On an Intel CPU with AVX-512 a 9-block ngf-64 generator ran 0.91-1.00x torch's
    frame rate at 640 x 360 and 1.18x at 1280 x 720 (benchmarks/README.md): no rule to pick by."""
    return winograd_pays(device, dtype) and torch.backends.cpu.get_cpu_capability() == "AVX2"
