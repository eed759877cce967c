"""Tiled inference equals whole-frame inference, shows no seams, and stays inside its memory plan."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vidcycle.errors import DeviceError, ModelError
from vidcycle.metrics import psnr
from vidcycle.models.nets import GeneratorSpec, build_generator, pad_to_multiple
from vidcycle.runtime.memory import bottleneck_bytes, estimate_run, measure_peak, parse_size, plan
from vidcycle.runtime.tiling import TiledRunner, run_tiled


def generator(n_blocks=2, ngf=8, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return build_generator(GeneratorSpec(n_blocks=n_blocks, ngf=ngf)).eval().to(dtype)


def smooth_frames(count, height, width, seed=0):
    """Frames with structure at several scales (not white noise): blurred noise plus a gradient."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(count, 3, height // 8 + 2, width // 8 + 2, generator=g)
    coarse = nn.functional.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False)
    fine = torch.rand(count, 3, height, width, generator=g) * 0.3
    ramp = torch.linspace(-0.5, 0.5, width).expand(count, 3, height, width)
    return (coarse * 1.4 - 0.7 + fine - 0.15 + ramp).clamp(-1, 1)


def to8(t):
    """A [-1, 1] tensor as the uint8 levels a frame would get (PSNR is on those, not on the floats)."""
    return ((t.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def untiled(net, x):
    with torch.inference_mode():
        return net(x)


def test_plan_forces_tiling_under_a_small_budget_and_matches_untiled():
    net = generator()
    x = smooth_frames(1, 256, 256)
    runner = TiledRunner(net)
    whole = plan(parse_size("1G"), (256, 256), runner, torch.float32, max_batch=1)
    budget = whole.estimate // 2
    tiled = plan(budget, (256, 256), runner, torch.float32)
    assert whole.tile is None and tiled.tile is not None and tiled.tile < 256
    out = runner(x, tiled.tile, tiled.overlap, tiled.keep_bytes)
    assert out.shape == x.shape
    assert psnr(to8(out), to8(untiled(net, x))) >= 40


KEPT = {"keep-nothing": 0, "keep-between-blocks": 2, "keep-inside-blocks": 4}  # bottleneck activations


@pytest.mark.parametrize("streams", KEPT.values(), ids=KEPT.keys())
def test_tiled_equals_untiled_whichever_statistics_path(streams):
    net = generator(n_blocks=3)
    x = smooth_frames(1, 256, 224, seed=1)
    keep = streams * bottleneck_bytes(TiledRunner(net), x.shape, x.dtype)
    out = run_tiled(net, x, tile=160 if streams == 0 else 96, keep_bytes=keep)
    assert psnr(to8(out), to8(untiled(net, x))) >= 40


def test_planned_compute_is_what_the_tiles_cost():
    net = generator(n_blocks=3)
    x = smooth_frames(1, 256, 256, seed=8)
    runner = TiledRunner(net)
    budget = plan(parse_size("1G"), (256, 256), runner, torch.float32, max_batch=1).estimate * 2 // 3
    chosen = plan(budget, (256, 256), runner, torch.float32)
    flops = []
    for run in (lambda: untiled(net, x), lambda: runner(x, chosen.tile, chosen.overlap, chosen.keep_bytes)):
        with FlopCounterMode(display=False) as counter:
            run()
        flops.append(counter.get_total_flops())
    assert chosen.tile is not None and chosen.keep_bytes > 0
    assert flops[1] / flops[0] == pytest.approx(chosen.compute, rel=0.02)
    assert chosen.compute < 2


def border_steps(image, borders):
    """Per border: mean |step| between the pixels on its two sides, over the mean |step| in the 32
    columns beside it (rows: pass the image transposed)."""
    steps = (image[..., 1:] - image[..., :-1]).abs().mean(dim=(0, 1))  # steps[c]: from column c to c + 1
    ratios = []
    for border in borders:
        beside = [c for c in range(border - 17, border + 16) if 0 <= c < steps.numel() and c + 1 not in borders]
        ratios.append((steps[border - 1] / steps[beside].mean()).item())
    return torch.tensor(ratios)


@pytest.mark.parametrize("streams", [0, 4], ids=["keep-nothing", "keep-inside-blocks"])
def test_no_seam_at_tile_borders(streams):
    """The step across each tile border, relative to the steps beside it, is within 10% of what it is
    in the untiled output. (Content alone moves a column's mean step by about as much as 10% from
    its neighbours', in the untiled output too, so the comparison is with the untiled output.)"""
    net = generator(n_blocks=2, ngf=16)
    x = smooth_frames(1, 256, 256, seed=2)
    runner = TiledRunner(net)
    keep = streams * bottleneck_bytes(runner, x.shape, x.dtype)
    tile = 160 if streams == 0 else 96
    tiled = ((runner(x, tile, keep_bytes=keep)[0] + 1) * 127.5).round()
    whole = ((untiled(net, x)[0] + 1) * 127.5).round()
    rows, cols = runner.seams(x, tile, keep_bytes=keep)
    assert rows and cols
    for borders, flip in ((cols, False), (rows, True)):
        seen = [border_steps(image.transpose(1, 2) if flip else image, borders) for image in (tiled, whole)]
        assert (seen[0] - seen[1]).abs().max() <= 0.10


def test_planned_run_stays_under_budget_and_estimate_is_measured():
    net = generator(n_blocks=3, ngf=16)
    x = smooth_frames(1, 256, 256, seed=3)
    runner = TiledRunner(net)
    budget = plan(parse_size("1G"), (256, 256), runner, torch.float32, max_batch=1).estimate // 2
    chosen = plan(budget, (256, 256), runner, torch.float32)
    estimate = estimate_run(runner, x.shape, torch.float32, "cpu", chosen.tile, chosen.overlap, chosen.keep_bytes)
    already = x.nbytes + sum(t.nbytes for t in net.state_dict().values())
    _, peak = measure_peak(lambda: runner(x, chosen.tile, chosen.overlap, chosen.keep_bytes))
    measured = already + peak
    assert chosen.tile is not None and chosen.keep_bytes > 0 and chosen.estimate <= budget
    assert measured <= estimate <= 1.3 * measured


def whole_frame_estimate_and_peak(dtype):
    net = generator(n_blocks=2, ngf=16, dtype=dtype)
    x = smooth_frames(2, 128, 160).to(dtype)
    runner = TiledRunner(net)
    with torch.inference_mode():
        _, peak = measure_peak(lambda: net(x))
    measured = x.nbytes + sum(t.nbytes for t in net.state_dict().values()) + peak
    return estimate_run(runner, x.shape, dtype), measured


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_whole_frame_estimate_matches_measured_peak(dtype):
    """On this CPU as it is: bf16 runs natively (oneDNN) where it has AVX512-BF16 or AMX, else emulated
    (torch's im2col kernels, ~13x the scratch); the estimate must follow whichever runs."""
    estimate, measured = whole_frame_estimate_and_peak(dtype)
    assert measured <= estimate <= 1.3 * measured


AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}  # read once, as torch loads
AVX512_WITHOUT_BF16 = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}  # Skylake to Tiger Lake, on an AVX-512 CPU


@pytest.mark.parametrize("isa", [AVX2_ONLY, AVX512_WITHOUT_BF16], ids=["avx2-only", "avx512-without-bf16"])
def test_bf16_estimate_matches_measured_peak_on_a_cpu_without_bf16(isa):
    """The same check in a child process capped below native bf16, so that a CPU with native bf16 tests
    the other paths too: on AVX2 torch runs bf16 in its own im2col kernels, whose column buffers the plan
    must count; on AVX-512 oneDNN emulates bf16 (on an AVX2-only CPU the cap changes nothing). In both
    `auto` must not pick bf16."""
    code = ("import json, torch, test_tiling as t\n"
            "from vidcycle.runtime.device import cpu_has_fast_bf16, pick_precision\n"
            "estimate, measured = t.whole_frame_estimate_and_peak(torch.bfloat16)\n"
            "print(json.dumps([estimate, measured, cpu_has_fast_bf16(), str(pick_precision('auto', torch.device('cpu')))]))")
    root = Path(__file__).resolve().parents[1]
    child = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                           env={**os.environ, **isa, "PYTHONPATH": f"{root}{os.pathsep}{root / 'tests'}"})
    assert child.returncode == 0, child.stderr
    estimate, measured, native, auto = json.loads(child.stdout.strip().splitlines()[-1])
    assert not native and auto == "torch.float32"
    assert measured <= estimate <= 1.3 * measured


def test_batch_of_frames_tiled_equals_untiled_frame_by_frame_statistics():
    net = generator()
    x = smooth_frames(3, 128, 160, seed=4)
    x[1] = x[1] * 0.3 - 0.5  # a dark, flat frame: its statistics differ from the others'
    out = run_tiled(net, x, tile=64, keep_bytes=4 * bottleneck_bytes(TiledRunner(net), x.shape, x.dtype))
    reference = untiled(net, x)
    assert all(psnr(to8(out[i]), to8(reference[i])) >= 40 for i in range(3))


@pytest.mark.parametrize("size, streams, tile", [((250, 131), 0, 160), ((131, 250), 4, 64), ((37, 301), 4, 64)])
def test_odd_sizes(size, streams, tile):
    net = generator()
    x = smooth_frames(1, *size, seed=5)
    out = run_tiled(net, x, tile, keep_bytes=streams * bottleneck_bytes(TiledRunner(net), x.shape, x.dtype))
    assert out.shape == x.shape
    assert psnr(to8(out), to8(untiled(net, x))) >= 40


def test_reduced_precision_tiles_match_untiled():
    net = generator(dtype=torch.bfloat16)
    x = smooth_frames(1, 192, 160, seed=6).bfloat16()
    out = run_tiled(net, x, tile=96, keep_bytes=4 * bottleneck_bytes(TiledRunner(net), x.shape, x.dtype))
    assert out.dtype == torch.bfloat16
    assert psnr(to8(out), to8(untiled(net, x))) >= 40


class DepthwiseBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, padding_mode="reflect")
        self.pointwise = nn.Conv2d(channels, channels, 1)
        self.norm = nn.InstanceNorm2d(channels)

    def forward(self, x):
        return x + self.norm(self.pointwise(torch.relu(self.depthwise(x))))


class MobileGenerator(nn.Module):
    """Not a ResnetGenerator and not one nn.Sequential: norms found by traversal, one stage."""

    def __init__(self, ngf=8):
        super().__init__()
        self.stem = nn.Conv2d(3, ngf, 5, padding=2, padding_mode="reflect")
        self.down = nn.Conv2d(ngf, ngf * 2, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(ngf * 2, ngf * 4, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList(DepthwiseBlock(ngf * 4) for _ in range(2))
        self.up = nn.ConvTranspose2d(ngf * 4, ngf, 4, stride=4)
        self.head = nn.Conv2d(ngf, 3, 3, padding=1, padding_mode="reflect")
        self.norms = nn.ModuleList(nn.InstanceNorm2d(c) for c in (ngf, ngf * 2, ngf * 4, ngf))

    def forward(self, x):
        height, width = x.shape[-2:]
        x = pad_to_multiple(x, 4)
        x = torch.relu(self.norms[0](self.stem(x)))
        x = torch.relu(self.norms[1](self.down(x)))
        x = torch.relu(self.norms[2](self.down2(x)))
        for block in self.blocks:
            x = block(x)
        x = torch.relu(self.norms[3](self.up(x)))
        return torch.tanh(self.head(x))[..., :height, :width]


def test_any_generator_with_instance_norms():
    torch.manual_seed(0)
    net = MobileGenerator().eval()
    x = smooth_frames(2, 150, 170, seed=7)
    assert len(TiledRunner(net).chain.stages) == 1
    out = run_tiled(net, x, tile=80)
    assert psnr(to8(out), to8(untiled(net, x))) >= 40


class TwiceNormalised(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 3, 3, padding=1), nn.InstanceNorm2d(3)

    def forward(self, x):
        return self.norm(self.conv(self.norm(x)))


def test_a_norm_layer_used_twice_is_refused():
    with pytest.raises(ModelError, match="runs twice"):
        TiledRunner(TwiceNormalised())


def test_plan_batches_whole_frames_when_they_fit():
    runner = TiledRunner(generator())
    one = plan(parse_size("1G"), (64, 64), runner, torch.float32, max_batch=1)
    several = plan(parse_size("1G"), (64, 64), runner, torch.float32, max_batch=6)
    assert (one.batch, one.tile, several.batch, several.tile) == (1, None, 6, None)
    squeezed = plan(several.estimate - 1, (64, 64), runner, torch.float32, max_batch=6)
    assert squeezed.batch == 5 and squeezed.estimate < several.estimate


def test_plan_refuses_a_budget_below_the_frame_itself():
    runner = TiledRunner(generator())
    with pytest.raises(DeviceError, match="too small"):
        plan(parse_size("100K"), (512, 512), runner, torch.float32)


@pytest.mark.parametrize("text, expected", [("512M", 512 * 2 ** 20), ("3G", 3 * 2 ** 30), ("1.5G", 3 * 2 ** 29),
                                            ("2GiB", 2 * 2 ** 30), ("1000", 1000), ("64kb", 64 * 1024)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "3X", "-1G", "G", "1.5.2M"])
def test_parse_size_rejects_nonsense(text):
    with pytest.raises(ValueError, match="512M"):
        parse_size(text)
