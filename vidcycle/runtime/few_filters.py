"""Convolutions with few filters (a generator's RGB output, a discriminator's one-score head) as one wide
matrix product and shifted sums, for float32 on the CPU.

torch's CPU convolution runs a 64-to-3 7 x 7 convolution, every CycleGAN generator's last layer, at a
fifth of its usual rate: its kernels vectorise over output channels, and 3 fill a fraction of each
register. The same convolution here: one matrix product of every filter tap (filters x k x k rows) with
the input (channels x pixels), then the k x k planes of tap outputs summed, each shifted by its tap; the
backward is the output gradient scattered to the taps and two matrix products. The same multiply-adds, at the matrix
product's rate: 0.42-0.58x torch's time forward and backward for an RGB output, 0.74x for a one-score
head (benchmarks/README.md, "Few filters"). With more filters torch's kernels fill and the tap planes
grow: 6 filters ran 0.86x or 1.34x as measured, 8 and 16 ran 1.9x and 2.5x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MAX_FILTERS = 3   # 1 and 3 faster than torch's wherever measured, 6 not always


class _FewFilters(torch.autograd.Function):
    """conv2d of an already padded x, stride 1, by a product with every tap and shifted sums."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        n, _, height, width = x.shape
        planes = (_taps(weight) @ x.reshape(n, x.shape[1], height * width)).view(
            n, weight.shape[0], *weight.shape[2:], height, width)
        out = _shifted_sum(planes)
        return out if bias is None else out.add_(bias.view(1, -1, 1, 1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        n, channels, height, width = x.shape
        plane_grads = _scattered(grad, weight.shape, height, width).view(n, -1, height * width)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = (_taps(weight).t() @ plane_grads).view(x.shape)
        if ctx.needs_input_grad[1]:
            products = torch.bmm(plane_grads, x.view(n, channels, height * width).transpose(1, 2)).sum(0)
            grad_weight = products.view(weight.shape[0], *weight.shape[2:], channels).permute(0, 3, 1, 2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias


def _taps(weight: torch.Tensor) -> torch.Tensor:
    """(filters, channels, kh, kw) -> (filters kh kw, channels): one row per filter tap."""
    return weight.permute(0, 2, 3, 1).reshape(-1, weight.shape[1])


def _shifted_sum(planes: torch.Tensor) -> torch.Tensor:
    """(N, filters, kh, kw, H, W) -> (N, filters, H - kh + 1, W - kw + 1): tap (i, j)'s plane read from
    row i and column j on, all summed."""
    kh, kw, height, width = planes.shape[2:]
    rows, cols = height - kh + 1, width - kw + 1
    out = planes[:, :, 0, 0, :rows, :cols].clone()
    for i in range(kh):
        for j in range(kw):
            if i or j:
                out += planes[:, :, i, j, i:i + rows, j:j + cols]
    return out


def _scattered(grad: torch.Tensor, weight_shape, height: int, width: int) -> torch.Tensor:
    """The backward of `_shifted_sum`: the output gradient placed in each tap's plane at its shift."""
    n, filters, rows, cols = grad.shape
    kh, kw = weight_shape[2:]
    planes = grad.new_zeros(n, filters, kh, kw, height, width)
    for i in range(kh):
        for j in range(kw):
            planes[:, :, i, j, i:i + rows, j:j + cols] = grad
    return planes


def few_filters_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                       padding: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """conv2d(x, weight, bias, padding=padding), stride 1, zero padding, float32, by tap products."""
    if padding != (0, 0):
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    return _FewFilters.apply(x.contiguous(), weight, bias)


def _traced() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


class FewFiltersConv2d(nn.Conv2d):
    """An nn.Conv2d of at most MAX_FILTERS filters that runs `few_filters_conv2d` on float32 CPU tensors
    outside autocast and tracing, and torch's convolution otherwise. Same parameters, same state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu" or torch.is_autocast_enabled("cpu") or _traced():
            return super().forward(x)
        return few_filters_conv2d(x, self.weight, self.bias, self.padding)


def convertible(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d and module.out_channels <= MAX_FILTERS and module.stride == (1, 1)
            and module.dilation == (1, 1) and module.groups == 1 and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple) and module.kernel_size != (1, 1))


def use_few_filters(net: nn.Module) -> int:
    """Make every convertible convolution in `net` (stride 1, at most MAX_FILTERS filters) a
    FewFiltersConv2d, in place: the same module objects and parameters, only their forward changes.
    Returns how many."""
    chosen = [module for module in net.modules() if convertible(module)]
    for module in chosen:
        module.__class__ = FewFiltersConv2d
    return len(chosen)


def few_filters_pay(device: torch.device, dtype: torch.dtype) -> bool:
    """Float32 on the CPU: measured faster with AVX2 alone, AVX-512 and AMX (an Intel Xeon, 2 threads).
    bf16 and CUDA keep their own convolutions."""
    return device.type == "cpu" and dtype == torch.float32
