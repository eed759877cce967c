"""Convolutions with few filters by tap products and shifted sums: torch's convolution and gradients, the
same networks, used by training and distillation for float32 on the CPU."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, run_cli, write_noisy_images
from vidcycle.models.nets import GeneratorSpec, NLayerDiscriminator, ResnetGenerator
from vidcycle.runtime import few_filters
from vidcycle.runtime.few_filters import FewFiltersConv2d, few_filters_conv2d, few_filters_pay, use_few_filters


def relative(a, b):
    return float(((a - b).norm() / b.norm()).detach())


@pytest.mark.parametrize("shape, filters, kernel, padding, bias", [
    ((2, 16, 20, 20), 3, (7, 7), (0, 0), True),    # a generator's RGB output on its reflection-padded input
    ((1, 32, 9, 13), 1, (4, 4), (1, 1), True),     # a PatchGAN's one-score head
    ((3, 5, 6, 11), 2, (3, 5), (2, 1), False),     # rectangular, uneven padding, no bias
], ids=["rgb-7x7", "score-4x4", "rectangular"])
def test_values_and_gradients_are_torchs_convolution(shape, filters, kernel, padding, bias):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator, requires_grad=True)
    weight = torch.randn(filters, shape[1], *kernel, generator=generator, requires_grad=True)
    b = torch.randn(filters, generator=generator, requires_grad=True) if bias else None
    expected = F.conv2d(x, weight, b, padding=padding)
    got = few_filters_conv2d(x, weight, b, padding)
    assert got.shape == expected.shape
    assert relative(got, expected) < 1e-5
    upstream = torch.randn(expected.shape, generator=generator)
    inputs = (x, weight) + ((b,) if bias else ())
    for mine, theirs in zip(torch.autograd.grad(got, inputs, upstream),
                            torch.autograd.grad(expected, inputs, upstream)):
        assert mine.shape == theirs.shape
        assert relative(mine, theirs) < 1e-5


def test_only_the_gradients_asked_for_are_computed():
    x = torch.randn(1, 4, 10, 10)
    weight = torch.randn(3, 4, 3, 3, requires_grad=True)
    (grad,) = torch.autograd.grad(few_filters_conv2d(x, weight).sum(), weight)
    assert relative(grad, torch.autograd.grad(F.conv2d(x, weight).sum(), weight)[0]) < 1e-5


def test_a_converted_generator_and_discriminator_are_the_same_networks():
    torch.manual_seed(0)
    nets = {"generator": ResnetGenerator(GeneratorSpec(ngf=8, n_blocks=2)), "discriminator": NLayerDiscriminator(ndf=8)}
    x = torch.rand(2, 3, 40, 36) * 2 - 1
    for name, net in nets.items():
        before = {key: value.clone() for key, value in net.state_dict().items()}
        parameters = list(net.parameters())
        expected = net(x)
        assert use_few_filters(net) == 1, name  # the last layer only: 3 filters, 1 score
        assert sum(isinstance(module, FewFiltersConv2d) for module in net.modules()) == 1
        assert list(net.parameters()) == parameters
        assert all(torch.equal(value, before[key]) for key, value in net.state_dict().items())
        assert relative(net(x), expected) < 1e-5, name


def test_calls_where_it_does_not_pay_run_torchs_convolution(monkeypatch):
    calls = []
    monkeypatch.setattr(few_filters, "few_filters_conv2d",
                        lambda x, weight, bias, padding: calls.append(x) or F.conv2d(x, weight, bias, padding=padding))
    conv = torch.nn.Conv2d(8, 3, 7)
    assert use_few_filters(conv) == 1
    x = torch.rand(1, 8, 12, 12)
    conv(x)
    assert len(calls) == 1
    conv.double()(x.double())
    with torch.autocast("cpu", torch.bfloat16):
        conv.float()(x)
    torch.jit.trace(conv, x, check_trace=False)  # a traced (ONNX) graph holds torch's own convolution
    assert len(calls) == 1
    assert use_few_filters(torch.nn.Conv2d(8, 4, 7)) == 0  # 4 filters and more: torch's kernels fill
    assert use_few_filters(torch.nn.Conv2d(8, 3, 3, stride=2)) == 0
    assert use_few_filters(torch.nn.Conv2d(8, 3, 1)) == 0  # already one matrix product


@pytest.mark.parametrize("device, dtype, pays", [("cpu", torch.float32, True), ("cpu", torch.bfloat16, False),
                                                 ("cuda", torch.float32, False)])
def test_it_is_chosen_for_float32_on_the_cpu(device, dtype, pays):
    assert few_filters_pay(torch.device(device), dtype) is pays


def test_training_uses_it_in_float32_and_learns_the_same(tmp_path, monkeypatch):
    """Two float32 runs of the same seed, with torch's convolutions and with tap products: the second calls
    it in both generators' last layers, and the losses are the same."""
    x = write_noisy_images(tmp_path / "summer", 3, (60, 160, 60))
    y = write_noisy_images(tmp_path / "winter", 3, (220, 220, 240), seed=1)
    common = ["--x", x, "--y", y, *TINY, "--no-export", "--max-steps", 3, "--set", "schedule.log_every=1",
              "--precision", "fp32"]
    convolution = few_filters.few_filters_conv2d
    shapes = set()

    def counted(x, weight, *args):
        shapes.add(tuple(weight.shape[:2]))
        return convolution(x, weight, *args)

    monkeypatch.setattr(few_filters, "few_filters_conv2d", counted)
    for name, pays in (("torch", False), ("taps", True)):
        monkeypatch.setattr("vidcycle.runtime.convolutions.few_filters_pay", lambda device, dtype, pays=pays: pays)
        result = run_cli("train", *common, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
        assert bool(shapes) is pays
    assert shapes == {(3, 8)}  # the generators' RGB outputs (tiny: ngf 8)
    logs = [[json.loads(line) for line in (tmp_path / run / "losses.jsonl").open()] for run in ("torch", "taps")]
    assert len(logs[0]) == len(logs[1]) == 3
    # the first iteration is the same networks' to float32 rounding; after it Adam's first steps (about
    # lr * sign(gradient)) can turn rounding-sized differences in near-zero gradients into whole steps
    for tolerance, torchs, taps in zip((1e-5, 1e-2, 1e-2), *logs):
        for key in ("g_xy", "g_yx", "cycle_x", "cycle_y", "d_x", "d_y"):
            assert taps[key] == pytest.approx(torchs[key], rel=tolerance), (torchs["iteration"], key)
