"""The CycleGAN networks: the generators by kind (`GENERATOR_KINDS`: the ResNet generator and its mobile
variant), the 70x70 PatchGAN discriminator, and what a generator costs.

Module layout and parameter names follow the reference implementation's
`ResnetGenerator` / `NLayerDiscriminator` exactly (see shared docs,
checkpoints.md), so its published `state_dict` files load with strict keys.
The mobile generator (kind "mobile") is GAN Compression's (Li et al., CVPR
2020): the same stem and up/down-sampling, with depthwise-separable residual
blocks.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from vidcycle.errors import ModelError


@dataclass(frozen=True)
class GeneratorSpec:
    """What is needed to rebuild a generator: the architecture's numbers."""

    n_blocks: int = 9
    ngf: int = 64
    in_channels: int = 3
    out_channels: int = 3
    kind: str = "resnet"  # or "mobile": depthwise-separable residual blocks

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        kind = GENERATOR_KINDS[self.kind].label if self.kind in GENERATOR_KINDS else self.kind
        return f"{kind} {self.n_blocks} blocks, ngf {self.ngf}"


def _norm(channels: int) -> nn.Module:
    # affine=False, no running stats: the paper's instance norm, and no keys in the state dict.
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=True),
            _norm(channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=True),
            _norm(channels),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class SeparableConv2d(nn.Module):
    """A k x k depthwise convolution, instance norm, then a 1 x 1 pointwise one (GAN Compression's)."""

    def __init__(self, channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, channels, kernel_size, groups=channels, bias=True),
                                  _norm(channels),
                                  nn.Conv2d(channels, out_channels, 1, bias=True))

    def forward(self, x):
        return self.conv(x)


class MobileResnetBlock(ResnetBlock):
    """A residual block whose two 3 x 3 convolutions are depthwise-separable: 9C + C^2 multiply-adds per
    pixel instead of 9C^2 (at 128 channels, 8.4x fewer)."""

    def __init__(self, channels: int):
        nn.Module.__init__(self)
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            SeparableConv2d(channels, channels),
            _norm(channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            SeparableConv2d(channels, channels),
            _norm(channels),
        )


class ResnetGenerator(nn.Module):
    """c7s1-ngf, d2ngf, d4ngf, R4ngf x n_blocks, u2ngf, ungf, c7s1-3, tanh.

    Takes any input size: sides are reflect-padded to a multiple of 4 and the
    output is cropped back, so the output always has the input's size.
    """

    def __init__(self, spec: GeneratorSpec = GeneratorSpec(), block: type = ResnetBlock):
        super().__init__()
        self.spec = spec
        ngf = spec.ngf
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(spec.in_channels, ngf, 7, bias=True), _norm(ngf), nn.ReLU(True)]
        for mult in (1, 2):
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=True),
                       _norm(ngf * mult * 2), nn.ReLU(True)]
        layers += [block(ngf * 4) for _ in range(spec.n_blocks)]
        for mult in (4, 2):
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1,
                                          output_padding=1, bias=True),
                       _norm(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, spec.out_channels, 7, bias=True), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        padded = pad_to_multiple(x, 4)
        return self.model(padded)[..., :height, :width]


def pad_to_multiple(x: torch.Tensor, multiple: int, min_side: int = 8) -> torch.Tensor:
    """Pad bottom and right up to a multiple (and at least min_side, so instance norm has
    more than one value at the bottleneck); reflect where the image is big enough."""
    height, width = x.shape[-2:]
    padded_height, padded_width = _padded_size(height, width, multiple, min_side)
    pad_h, pad_w = padded_height - height, padded_width - width
    if not pad_h and not pad_w:
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class NLayerDiscriminator(nn.Module):
    """The 70x70 PatchGAN (n_layers=3): C64-C128-C256-C512, then a 1-channel 4x4 conv."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=True),
                       _norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """N(0, gain) for conv weights, zero biases, as the paper and reference do."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return net


def mobile_resnet(spec: GeneratorSpec) -> ResnetGenerator:
    """The ResNet generator with depthwise-separable residual blocks (kind "mobile")."""
    return ResnetGenerator(spec, MobileResnetBlock)


@dataclass(frozen=True)
class GeneratorKind:
    """One architecture of `GeneratorSpec.kind`: its builder (spec -> module), its name in labels, and
    whether it keeps the ResNet generator's layer list (`model`: 0 pad, 1-3 the 7x7 stem, 4-6 and 7-9 the
    two stride-2 downsamplings, residual blocks of 4 ngf channels from 10 on), which PatchNCE's layer
    indices (nce.layers) and the students' feature distillation (loss.features) address."""

    build: Callable
    label: str
    resnet_layers: bool = False


GENERATOR_KINDS: dict[str, GeneratorKind] = {
    "resnet": GeneratorKind(ResnetGenerator, "resnet", resnet_layers=True),
    "mobile": GeneratorKind(mobile_resnet, "mobile resnet", resnet_layers=True),
}


def generator_kind(kind: str) -> GeneratorKind:
    """Raises ModelError for a kind this vidcycle does not build."""
    if kind not in GENERATOR_KINDS:
        raise ModelError(f"unknown generator kind {kind!r}; this vidcycle builds "
                         f"{', '.join(GENERATOR_KINDS)} (upgrade it to read newer models)")
    return GENERATOR_KINDS[kind]


def require_resnet_layers(spec: GeneratorSpec, use: str) -> None:
    """Refuse, in one line, a generator whose kind lacks the ResNet layer list that `use` addresses.
    Raises ModelError."""
    if not generator_kind(spec.kind).resnet_layers:
        raise ModelError(f"{use} addresses the ResNet generator's layers; a {spec.kind} generator has other "
                         f"layers (use a kind among {', '.join(k for k, v in GENERATOR_KINDS.items() if v.resnet_layers)})")


def build_generator(spec: GeneratorSpec, init: bool = True) -> nn.Module:
    """The generator of `spec.kind`, initialised N(0, 0.02) unless `init` is False. Raises ModelError."""
    net = generator_kind(spec.kind).build(spec)
    return init_weights(net) if init else net


@functools.lru_cache(maxsize=None)
def count_gmacs(spec: GeneratorSpec, height: int = 256, width: int = 256) -> float:
    """Multiply-adds (in G) of one height x width frame through the generator: those of its convolutions and
    transposed convolutions (nothing else in these networks multiplies), as torch's FLOP counter counts them
    (a test holds the two equal), from the frame's size carried through the layer list in order (pads
    widen it, strides narrow it; a residual block keeps it). No forward runs: one on meta tensors, like the
    counter itself, imports torch's compiler, a second of every training run's start. The frame is padded
    to a multiple of 4 beforehand, as forward does. Milliseconds for any size.
    """
    with torch.device("meta"):
        net = generator_kind(spec.kind).build(spec)
    height, width = _padded_size(height, width, 4)
    macs = 0
    for module in net.model.modules():
        if isinstance(module, nn.ReflectionPad2d):
            left, right, top, bottom = module.padding
            height, width = height + top + bottom, width + left + right
        elif isinstance(module, nn.ConvTranspose2d):   # weight: in, out / groups, kernel: per input pixel
            macs += height * width * math.prod(module.weight.shape)
            height, width = (_transposed_side(side, module, axis) for axis, side in enumerate((height, width)))
        elif isinstance(module, nn.Conv2d):            # weight: out, in / groups, kernel: per output pixel
            height, width = (_convolved_side(side, module, axis) for axis, side in enumerate((height, width)))
            macs += height * width * math.prod(module.weight.shape)
    return macs / 1e9


def _convolved_side(side: int, conv: nn.Conv2d, axis: int) -> int:
    span = conv.dilation[axis] * (conv.kernel_size[axis] - 1) + 1
    return (side + 2 * conv.padding[axis] - span) // conv.stride[axis] + 1


def _transposed_side(side: int, conv: nn.ConvTranspose2d, axis: int) -> int:
    span = conv.dilation[axis] * (conv.kernel_size[axis] - 1) + 1
    return (side - 1) * conv.stride[axis] - 2 * conv.padding[axis] + span + conv.output_padding[axis]


def _padded_size(height: int, width: int, multiple: int, min_side: int = 8) -> tuple[int, int]:
    """The size pad_to_multiple gives a height x width input."""
    return max(height + -height % multiple, min_side), max(width + -width % multiple, min_side)


_BLOCK_KEY = re.compile(r"^model\.(\d+)\.conv_block\.")
_STALE_NORM_KEY = re.compile(r"\.(running_mean|running_var|num_batches_tracked)$")


def clean_reference_state(state: dict) -> dict:
    """Drop InstanceNorm running-stat keys that old PyTorch versions saved (as the reference loader does)."""
    return {k: v for k, v in state.items() if not _STALE_NORM_KEY.search(k)}


def spec_from_state(state: dict) -> GeneratorSpec:
    """Read the architecture off a reference generator's keys: ngf from the first conv, blocks by count."""
    first = state.get("model.1.weight")
    if first is None or first.dim() != 4:
        raise ModelError("not a CycleGAN ResNet generator: no 'model.1.weight' convolution")
    blocks = {int(m.group(1)) for key in state if (m := _BLOCK_KEY.match(key))}
    if not blocks:
        raise ModelError("not a CycleGAN ResNet generator: no residual blocks found")
    last_conv = max(int(k.split(".")[1]) for k in state if k.startswith("model.") and k.endswith(".weight"))
    out_channels = state[f"model.{last_conv}.weight"].shape[0]
    return GeneratorSpec(n_blocks=len(blocks), ngf=first.shape[0], in_channels=first.shape[1],
                         out_channels=out_channels)


def generator_from_state(state: dict) -> ResnetGenerator:
    """Rebuild a generator from a reference-layout state dict, strict keys and shapes."""
    state = clean_reference_state(state)
    net = build_generator(spec_from_state(state), init=False)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        raise ModelError(f"weights do not fit a ResNet generator: {first_line}") from error
    return net
