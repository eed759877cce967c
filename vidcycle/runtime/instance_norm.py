"""Instance norm (the generators' kind: no affine parameters, no running statistics) as C kernels, for
float32 on the CPU.

Instance norm does next to no arithmetic; its cost is passes over memory. torch's CPU kernels take the
forward in several (statistics, then normalising) and the backward in more (the two sums, then the
gradient), at about a fifth of a copy's rate: the forward and backward of a 2 x 64 x 128 x 128 activation,
with its ReLU, took 4.1 ms where one copy took 0.3. `instance_norm_kernels.c` does each plane's forward in
two passes (its sums, then the output) and its backward in two (the gradient's two sums, then the input's
gradient), with the same float32 result to rounding (sums in double). Where the kernels cannot be built,
or the tensor is not a float32 CPU one outside autocast and tracing, torch's instance norm runs.

A ReLU right after an instance norm is taken into the same passes (`fuse_relus`): the norm's module runs
both and the ReLU's passes its input on. That changes what the norm's layer outputs, so it is done only
where no one reads a layer's output by its index: inside residual blocks always, in a network's own
layer list when its caller says so (PatchNCE and the students' feature loss read that list).
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from vidcycle.runtime import native

KERNEL_SOURCE = "instance_norm_kernels"   # vidcycle/runtime/instance_norm_kernels.c
SIGNATURES = {
    "instance_norm_forward": [ctypes.c_void_p] * 4 + [ctypes.c_long] * 2 + [ctypes.c_double] + [ctypes.c_int] * 2,
    "instance_norm_backward": [ctypes.c_void_p] * 5 + [ctypes.c_long] * 2 + [ctypes.c_int] * 2,
}


def norm_kernels():
    """The C kernels, or None where they cannot be built (torch's instance norm then runs)."""
    return native.load(KERNEL_SOURCE, SIGNATURES)


class _InstanceNorm(torch.autograd.Function):
    """instance_norm(x, eps=eps), then relu if `relu`, by the C kernels; saves x and each plane's mean and
    1 / std."""

    @staticmethod
    def forward(ctx, x, eps, relu, library):
        planes, size = x.shape[0] * x.shape[1], x.shape[2] * x.shape[3]
        out = torch.empty_like(x)
        mean, rstd = x.new_empty(planes), x.new_empty(planes)
        native.call(library.instance_norm_forward, x, out, mean, rstd, planes, size, eps, int(relu))
        ctx.save_for_backward(x, mean, rstd)
        ctx.library, ctx.relu = library, relu
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, mean, rstd = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = torch.empty_like(x)
        native.call(ctx.library.instance_norm_backward, grad, x, mean, rstd, grad_x, mean.numel(),
                    x.shape[2] * x.shape[3], int(ctx.relu))
        return grad_x, None, None, None


def _plain(x: torch.Tensor) -> bool:
    """A 4-D float32 CPU tensor outside autocast, tracing and compiling."""
    return (x.dim() == 4 and x.dtype == torch.float32 and x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")
            and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()))


class FastInstanceNorm2d(nn.InstanceNorm2d):
    """An InstanceNorm2d (no affine parameters, no running statistics) that runs the C kernels on plain
    float32 CPU tensors, torch's instance norm otherwise; with the ReLU after it when `relu` is set."""

    relu = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        library = norm_kernels() if _plain(x) else None
        if library is None:
            out = super().forward(x)
            return torch.relu_(out) if self.relu else out
        return _InstanceNorm.apply(x.contiguous(), self.eps, self.relu, library)


class FusedReLU(nn.ReLU):
    """A ReLU whose work the FastInstanceNorm2d before it does: passes its input on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def convertible(module: nn.Module) -> bool:
    return type(module) is nn.InstanceNorm2d and not module.affine and not module.track_running_stats


def use_fast_instance_norm(net: nn.Module, fuse_top_level: bool = False) -> int:
    """Make every convertible InstanceNorm2d in `net` a FastInstanceNorm2d, in place (the same modules;
    they hold no parameters or buffers), and fuse the ReLUs after them (`fuse_relus`). Returns how many
    norms."""
    chosen = [module for module in net.modules() if convertible(module)]
    for module in chosen:
        module.__class__ = FastInstanceNorm2d
    if chosen:
        fuse_relus(net, fuse_top_level)
        norm_kernels()      # built (or found missing, in one line) now, not inside the first step
    return len(chosen)


def fuse_relus(net: nn.Module, top_level: bool) -> int:
    """Each ReLU right after a FastInstanceNorm2d in a Sequential of `net` is done by the norm: in nested
    Sequentials (a residual block's) always, in `net.model`, the layer list that others index, only when
    `top_level`. Returns how many."""
    indexed = getattr(net, "model", None)
    fused = 0
    for sequence in net.modules():
        if not isinstance(sequence, nn.Sequential) or (sequence is indexed and not top_level):
            continue
        for norm, relu in zip(sequence, list(sequence)[1:]):
            if type(norm) is FastInstanceNorm2d and type(relu) is nn.ReLU and not norm.relu:
                norm.relu = True
                relu.__class__ = FusedReLU
                fused += 1
    return fused


def fast_instance_norm_pays(device: torch.device, dtype: torch.dtype) -> bool:
    """Float32 on the CPU: forward and backward (with the ReLU after) 0.67-0.77x torch's time held to AVX2,
    0.59-0.87x with AVX-512, and the 128-px float32 step 0.949x held to AVX2 (benchmarks/README.md,
    "Instance norm as C kernels"). bf16 and CUDA keep torch's."""
    return device.type == "cpu" and dtype == torch.float32
