"""Which convolution each layer of a network runs in float32 on the CPU, where measured faster than torch's
own: Winograd's in the wide 3 x 3 ones (winograd.py), tap products in those with few filters
(few_filters.py), oneDNN's channels-last results transposed back by a C kernel in the strided and
transposed ones (channels_last.py); and its instance norms as C kernels (instance_norm.py). The networks stay the same
modules with the same parameters; each layer still runs torch's own in other precisions, on other
devices, under autocast and when traced."""

from __future__ import annotations

import torch
from torch import nn

from vidcycle.runtime import channels_last, instance_norm, native, winograd
from vidcycle.runtime.channels_last import channels_last_results_pay, use_channels_last_results
from vidcycle.runtime.few_filters import few_filters_pay, use_few_filters
from vidcycle.runtime.instance_norm import fast_instance_norm_pays, use_fast_instance_norm
from vidcycle.runtime.winograd import use_winograd, winograd_pays, winograd_pays_for_frames


def prepare_faster_convolutions(device: torch.device, dtype: torch.dtype) -> None:
    """Start building the C kernels that `use_faster_convolutions` will want, on another thread: a run's
    setup gathers its data and builds its networks meanwhile, so a first run on a machine does not wait
    for the compiler (0.7 s of a 2-core run's start, benchmarks/README.md)."""
    if winograd_pays(device, dtype):
        native.load_soon(winograd.KERNEL_SOURCE)
    if fast_instance_norm_pays(device, dtype):
        native.load_soon(instance_norm.KERNEL_SOURCE)
    if channels_last_results_pay(device, dtype):
        native.load_soon(channels_last.KERNEL_SOURCE)


def use_faster_convolutions(net: nn.Module, device: torch.device, dtype: torch.dtype,
                            layers_read: bool = True) -> int:
    """Convert `net`'s convolutions and instance norms in place for training (or a teacher's inference) in
    `dtype` on `device`; returns how many layers. `layers_read`: whether anything reads the outputs of the
    layers of `net.model` by index (then each keeps its own output: no ReLU taken into the norm before it)."""
    converted = use_winograd(net) if winograd_pays(device, dtype) else 0
    if fast_instance_norm_pays(device, dtype):
        converted += use_fast_instance_norm(net, fuse_top_level=not layers_read)
    if channels_last_results_pay(device, dtype):
        converted += use_channels_last_results(net)
    return converted + (use_few_filters(net) if few_filters_pay(device, dtype) else 0)


def use_faster_inference_convolutions(net: nn.Module, device: torch.device, dtype: torch.dtype) -> int:
    """For translating frames: Winograd's 3 x 3 convolutions where they pay for frames (without autograd
    they run in bands that hold less memory than torch's convolution). Not the tap products: without autograd a
    student's 16-to-3 output ran slower than torch's at 1280 x 720, and their planes outgrow the memory
    plan's model of torch's kernels (benchmarks/README.md, "Winograd's convolutions in `vidcycle apply`").
    Each call takes the weights to the transform domain again: 18 x 1.3 ms for a 9-block ngf-64 generator,
    about 1.4% of a 640 x 360 frame held to AVX2, where keeping them would hold 4x the blocks' weights
    (170 MB) for the whole job. And the transposed convolutions' output by oneDNN channels-last and a C
    transpose: a 9-block ngf-64 generator's two at 640 x 360, 217 -> 127 ms a frame held to AVX2."""
    converted = use_winograd(net) if winograd_pays_for_frames(device, dtype) else 0
    return converted + (use_channels_last_results(net) if channels_last_results_pay(device, dtype) else 0)
