"""The strided and transposed convolutions' slow pass on the CPU: oneDNN's channels-last result brought
back to NCHW by a C transpose instead of torch's general copy.

Given NCHW float32 tensors, torch's oneDNN convolution computes a transposed convolution's output, and a
strided convolution's input gradient, channels-last, then copies the result to NCHW with its general
strided copy, which at 64 channels took longer than the convolution: a 2 x 64 x 128 x 128 result 6.9 ms
against 0.5 for an 8 x 8-blocked transpose, the 128-to-64-channel transposed convolution's forward at batch
2 18.4 ms, 32 G multiply-adds a second where oneDNN reaches 90-100 (benchmarks/README.md, "Strided
convolutions' results by a C transpose"). Here those two passes ask oneDNN for channels-last outright and
`layout_kernels.c` transposes; every other pass stays torch's NCHW call, where channels-last ran slower (the
weight's gradient up to 3x). The arithmetic is oneDNN's either way: the same values bit for bit. Where the
kernel cannot be built, on other devices and precisions, under autocast and in traced or compiled graphs, the
layers run torch's own convolution.
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from vidcycle.runtime import native

KERNEL_SOURCE = "layout_kernels"   # vidcycle/runtime/layout_kernels.c
SIGNATURES = {"transpose_matrices": [ctypes.c_void_p] * 2 + [ctypes.c_long] * 3 + [ctypes.c_int]}
MIN_CHANNELS = 8                   # the transpose's block: a result with fewer channels gains nothing


def layout_kernels():
    """The C transpose, or None where it cannot be built (torch's convolutions then run as they are)."""
    return native.load(KERNEL_SOURCE, SIGNATURES)


def _transposed(x: torch.Tensor, out: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    native.call(layout_kernels().transpose_matrices, x, out, x.shape[0], rows, cols)
    return out


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """A float32 CPU NCHW tensor's values in a channels-last tensor."""
    _, channels, height, width = x.shape
    out = torch.empty(x.shape, dtype=x.dtype, memory_format=torch.channels_last)
    return _transposed(x.contiguous(), out, channels, height * width)


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    """A float32 CPU tensor's values in a contiguous (NCHW) one: transposed if it is channels-last."""
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous()
    _, channels, height, width = x.shape
    return _transposed(x, torch.empty(x.shape, dtype=x.dtype), height * width, channels)


def _bias_sizes(weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool) -> list[int] | None:
    return None if bias is None else [weight.shape[1] if transposed else weight.shape[0]]


class _ChannelsLastInputGradient(torch.autograd.Function):
    """A strided convolution (torch's) whose input gradient is computed channels-last and transposed back;
    the weight's and bias's gradients by torch's NCHW call, apart."""

    @staticmethod
    def forward(ctx, x, weight, bias, settings):
        ctx.save_for_backward(x, weight)
        ctx.settings, ctx.bias_sizes = settings, _bias_sizes(weight, bias, transposed=False)
        return torch.ops.aten.convolution(x, weight, bias, *settings)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        wants_x, wants_weight, wants_bias = ctx.needs_input_grad[:3]
        grad_x = grad_weight = grad_bias = None
        if wants_x:
            shape_only = torch.empty(x.shape, dtype=x.dtype, memory_format=torch.channels_last)
            grad_x = to_nchw(torch.ops.aten.convolution_backward(
                to_channels_last(grad), shape_only, weight, None, *ctx.settings, [True, False, False])[0])
        if wants_weight or wants_bias:
            _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad, x, weight, ctx.bias_sizes, *ctx.settings, [False, wants_weight, wants_bias])
        return grad_x, grad_weight, grad_bias, None


class _ChannelsLastOutput(torch.autograd.Function):
    """A transposed convolution computed channels-last and transposed back; its backward torch's NCHW call."""

    @staticmethod
    def forward(ctx, x, weight, bias, settings):
        ctx.save_for_backward(x, weight)
        ctx.settings, ctx.bias_sizes = settings, _bias_sizes(weight, bias, transposed=True)
        return to_nchw(torch.ops.aten.convolution(to_channels_last(x), weight, bias, *settings))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        wants = list(ctx.needs_input_grad[:3])
        wants[2] = wants[2] and ctx.bias_sizes is not None
        grads = torch.ops.aten.convolution_backward(grad.contiguous(), x, weight, ctx.bias_sizes, *ctx.settings,
                                                    wants)
        return (*grads, None)


def _plain(x: torch.Tensor) -> bool:
    """A 4-D float32 CPU tensor outside autocast, tracing and compiling, with the kernel built."""
    return (x.dim() == 4 and x.dtype == torch.float32 and x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")
            and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())
            and layout_kernels() is not None)


class ChannelsLastInputGradientConv2d(nn.Conv2d):
    """An nn.Conv2d (strided, zero padding) whose input gradient comes channels-last through the C transpose
    on plain float32 CPU tensors. Same parameters, same state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _plain(x):
            return super().forward(x)
        settings = (self.stride, self.padding, self.dilation, False, (0, 0), self.groups)
        return _ChannelsLastInputGradient.apply(x, self.weight, self.bias, settings)


class ChannelsLastConvTranspose2d(nn.ConvTranspose2d):
    """An nn.ConvTranspose2d whose output comes channels-last through the C transpose on plain float32 CPU
    tensors (without an `output_size`). Same parameters, same state dict."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is not None or not _plain(x):
            return super().forward(x, output_size)
        settings = (self.stride, self.padding, self.dilation, True, self.output_padding, self.groups)
        return _ChannelsLastOutput.apply(x, self.weight, self.bias, settings)


def _strided(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d and module.stride != (1, 1) and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple) and module.groups == 1 and module.in_channels >= MIN_CHANNELS)


def _transposed_conv(module: nn.Module) -> bool:
    return type(module) is nn.ConvTranspose2d and module.groups == 1 and module.out_channels >= MIN_CHANNELS


def use_channels_last_results(net: nn.Module) -> int:
    """Make `net`'s strided convolutions and transposed convolutions (of 8 channels or more on the side the
    transpose writes) the classes above, in place: the same modules and parameters. Returns how many."""
    chosen = [module for module in net.modules() if _strided(module) or _transposed_conv(module)]
    for module in chosen:
        module.__class__ = (ChannelsLastConvTranspose2d if isinstance(module, nn.ConvTranspose2d)
                            else ChannelsLastInputGradientConv2d)
    if chosen:
        layout_kernels()      # built (or found missing, in one line) now, not inside the first step
    return len(chosen)


def channels_last_results_pay(device: torch.device, dtype: torch.dtype) -> bool:
    """Float32 on an x86 CPU that torch runs with AVX2 or AVX-512, where torch's convolutions are oneDNN's
    (the 128-px generator's strided and transposed layers, forward and backward at a step's batches, 0.90x
    torch's time held to AVX2 and 0.86x with AVX-512; a transposed layer's forward at 640 x 360 0.54-0.68x:
    benchmarks/README.md). bf16 and CUDA keep torch's."""
    return (device.type == "cpu" and dtype == torch.float32
            and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))
