"""Strided and transposed convolutions with oneDNN's channels-last results transposed back by a C kernel: the
same convolution and gradients as torch's, the same networks, chosen for float32 on x86 CPUs, and torch's
own wherever the kernel cannot run."""

import copy

import pytest
import torch
from torch import nn

from vidcycle.models.nets import GeneratorSpec, NLayerDiscriminator, ResnetGenerator
from vidcycle.runtime import channels_last
from vidcycle.runtime.channels_last import (ChannelsLastConvTranspose2d, ChannelsLastInputGradientConv2d,
                                            channels_last_results_pay, to_channels_last, to_nchw,
                                            use_channels_last_results)
from vidcycle.runtime.convolutions import use_faster_convolutions, use_faster_inference_convolutions
from vidcycle.runtime.memory import estimate_run, measure_peak
from vidcycle.runtime.tiling import TiledRunner


@pytest.fixture(autouse=True)
def kernel():
    if channels_last.layout_kernels() is None:
        pytest.skip("no C compiler on this machine: the transpose kernel cannot be built")


def relative(a, b):
    return float(((a - b).norm() / b.norm().clamp_min(1e-12)).detach())


@pytest.mark.parametrize("shape", [(2, 16, 9, 11), (1, 3, 5, 7), (3, 9, 1, 1), (1, 24, 8, 8)])
def test_the_layout_changes_are_torchs(shape):
    x = torch.randn(shape)
    in_channels_last = to_channels_last(x)
    assert in_channels_last.is_contiguous(memory_format=torch.channels_last) and torch.equal(in_channels_last, x)
    back = to_nchw(in_channels_last)
    assert back.is_contiguous() and torch.equal(back, x)


def the_layer(transposed, in_channels, out_channels, bias):
    torch.manual_seed(0)
    if transposed:
        return nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=bias)
    return nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=bias)


@pytest.mark.parametrize("transposed", [False, True], ids=["strided", "transposed"])
@pytest.mark.parametrize("batch, in_channels, out_channels, size, bias",
                         [(2, 16, 24, (12, 17), True), (1, 9, 12, (7, 5), False), (3, 32, 8, (10, 10), True)])
def test_values_and_gradients_are_torchs(transposed, batch, in_channels, out_channels, size, bias):
    plain = the_layer(transposed, in_channels, out_channels, bias)
    converted = copy.deepcopy(plain)
    assert use_channels_last_results(converted) == 1
    assert type(converted) is (ChannelsLastConvTranspose2d if transposed else ChannelsLastInputGradientConv2d)
    x = torch.randn(batch, in_channels, *size, requires_grad=True)
    expected, got = plain(x), converted(x)
    assert got.is_contiguous() and got.shape == expected.shape and relative(got, expected) < 1e-6
    upstream = torch.randn_like(expected)
    theirs = torch.autograd.grad(expected, [x, *plain.parameters()], upstream)
    mine = torch.autograd.grad(got, [x, *converted.parameters()], upstream)
    for name, a, b in zip(["input", "weight", "bias"], mine, theirs):
        assert a.is_contiguous() and relative(a, b) < 1e-6, name


@pytest.mark.parametrize("transposed", [False, True], ids=["strided", "transposed"])
def test_only_the_gradients_wanted_are_computed(transposed):
    """The network's first layer takes images that need no gradient; a frozen layer's weight needs none."""
    plain = the_layer(transposed, 8, 16, bias=True)
    converted = copy.deepcopy(plain)
    use_channels_last_results(converted)
    x = torch.randn(2, 8, 6, 6)
    weight_grad, = torch.autograd.grad(converted(x).square().sum(), converted.weight)
    expected, = torch.autograd.grad(plain(x).square().sum(), plain.weight)
    assert relative(weight_grad, expected) < 1e-6
    converted.requires_grad_(False)
    x.requires_grad_(True)
    input_grad, = torch.autograd.grad(converted(x).square().sum(), x)
    expected, = torch.autograd.grad(plain(x).square().sum(), x)
    assert relative(input_grad, expected) < 1e-6


def test_a_converted_generator_is_the_same_network():
    torch.manual_seed(0)
    net = ResnetGenerator(GeneratorSpec(ngf=8, n_blocks=1))
    before = {key: value.clone() for key, value in net.state_dict().items()}
    parameters = list(net.parameters())
    x = torch.rand(2, 3, 36, 28) * 2 - 1
    expected = net(x)
    expected_grads = torch.autograd.grad(expected.square().sum(), parameters)
    assert use_channels_last_results(net) == 4   # two strided, two transposed; not the 3x3 nor the 7x7 ones
    assert list(net.parameters()) == parameters and net.state_dict().keys() == before.keys()
    assert all(torch.equal(value, before[key]) for key, value in net.state_dict().items())
    got = net(x)
    assert relative(got, expected) < 1e-6
    for mine, theirs in zip(torch.autograd.grad(got.square().sum(), parameters), expected_grads):
        assert relative(mine, theirs) < 1e-5
    # the discriminator's first strided convolution reads 3 channels: a transpose of 3 gains nothing
    assert use_channels_last_results(NLayerDiscriminator(ndf=8)) == 2


def test_where_the_kernel_cannot_run_torchs_convolution_runs(monkeypatch):
    calls = []
    for function in (channels_last._ChannelsLastOutput, channels_last._ChannelsLastInputGradient):
        monkeypatch.setattr(function, "apply", lambda *args: calls.append(args) or torch.zeros(1))
    layers = [the_layer(True, 8, 8, bias=True), the_layer(False, 8, 8, bias=True)]
    for layer in layers:
        use_channels_last_results(layer)
    x = torch.randn(1, 8, 6, 6)
    for layer in layers:
        layer(x)
    assert len(calls) == 2
    for layer in layers:
        layer.double()(x.double())
        with torch.autocast("cpu", torch.bfloat16):
            layer.float()(x)
        if isinstance(layer, nn.ConvTranspose2d):
            layer(x, [12, 12])      # an asked output size
    monkeypatch.setattr(channels_last, "layout_kernels", lambda: None)   # no compiler
    for layer in layers:
        assert layer(x).shape[1] == 8
    assert len(calls) == 2


def test_a_traced_graph_keeps_torchs_convolution():
    net = ResnetGenerator(GeneratorSpec(ngf=8, n_blocks=1)).eval()
    assert use_channels_last_results(net) == 4
    with torch.no_grad():
        graph = torch.jit.trace(net, torch.rand(1, 3, 16, 16)).inlined_graph
    kinds = [node.kind() for node in graph.nodes()]
    assert kinds.count("aten::_convolution") == 8


@pytest.mark.parametrize("capability, device, dtype, chosen", [
    ("AVX2", "cpu", torch.float32, True), ("AVX512", "cpu", torch.float32, True),
    ("DEFAULT", "cpu", torch.float32, False), ("AVX2", "cpu", torch.bfloat16, False),
    ("AVX2", "cuda", torch.float32, False)])
def test_it_is_chosen_for_float32_on_x86_cpus(monkeypatch, capability, device, dtype, chosen):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert channels_last_results_pay(torch.device(device), dtype) is chosen
    net = ResnetGenerator(GeneratorSpec(ngf=8, n_blocks=1))
    use_faster_convolutions(net, torch.device(device), dtype)
    inference = ResnetGenerator(GeneratorSpec(ngf=8, n_blocks=1))
    use_faster_inference_convolutions(inference, torch.device(device), dtype)
    for converted in (net, inference):
        kinds = {type(module) for module in converted.modules()}
        assert (ChannelsLastConvTranspose2d in kinds) is chosen
        assert (ChannelsLastInputGradientConv2d in kinds) is chosen


def test_the_memory_plan_still_covers_a_converted_generator():
    """The plan models torch's transposed convolution (two output-sized buffers besides the output); the
    channels-last path holds the input's copy and one output-sized buffer instead, no more."""
    torch.manual_seed(0)
    net = ResnetGenerator(GeneratorSpec(ngf=16, n_blocks=2)).eval()
    assert use_channels_last_results(net) == 4
    x = torch.rand(2, 3, 96, 128) * 2 - 1
    with torch.inference_mode():
        net(x)
        _, peak = measure_peak(lambda: net(x))
    measured = x.nbytes + sum(value.nbytes for value in net.state_dict().values()) + peak
    assert measured <= estimate_run(TiledRunner(net), x.shape, torch.float32) <= 1.3 * measured
