"""The generators' instance norm as C kernels: torch's values and gradients, torch's own where the kernels
cannot run, and the same networks after conversion."""

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vidcycle.models.nets import GeneratorSpec, build_generator
from vidcycle.runtime import instance_norm, native
from vidcycle.runtime.convolutions import use_faster_convolutions
from vidcycle.runtime.instance_norm import FastInstanceNorm2d, FusedReLU, use_fast_instance_norm
from vidcycle.training.patchnce import encoder_features


@pytest.fixture
def counted(monkeypatch):
    """How many planes the C kernels normalised, forward and backward."""
    if instance_norm.norm_kernels() is None:
        pytest.skip("no C compiler on this machine")
    calls = {"forward": 0, "backward": 0}
    real = instance_norm._InstanceNorm

    class Counting(real):
        @staticmethod
        def forward(ctx, x, eps, relu, library):
            calls["forward"] += 1
            return real.forward(ctx, x, eps, relu, library)

        @staticmethod
        def backward(ctx, grad):
            calls["backward"] += 1
            return real.backward.__wrapped__(ctx, grad) if hasattr(real.backward, "__wrapped__") else \
                real.backward(ctx, grad)

    monkeypatch.setattr(instance_norm, "_InstanceNorm", Counting)
    return calls


def close(got, expected, tolerance=1e-5):
    return float((got - expected).detach().norm()) <= tolerance * float(expected.detach().norm())


def converted_norm(eps=1e-5):
    norm = nn.InstanceNorm2d(4, eps=eps)
    assert use_fast_instance_norm(norm) == 1 and type(norm) is FastInstanceNorm2d
    return norm


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 8, 16, 16), (3, 2, 1, 9), (1, 1, 33, 31)])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_the_kernels_give_torch_values_and_gradients(counted, shape, eps):
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(*shape, generator=generator) * 3 + 2).requires_grad_()
    y = x.detach().clone().requires_grad_()
    weights = torch.randn(*shape, generator=generator)
    got = F.relu(converted_norm(eps)(x))              # with the ReLU the generators put after it, in place
    expected = F.relu(F.instance_norm(y, eps=eps))
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    assert close(got, expected) and close(x.grad, y.grad)
    assert counted == {"forward": 1, "backward": 1}


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 8, 16, 16), (1, 1, 33, 31)])
def test_the_norm_with_its_relu_gives_torch_values_and_gradients(counted, shape):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=generator)
    x[..., 0] = x[..., 1]                                     # ties and zeros: where the ReLU's mask is decided
    x = x.requires_grad_()
    y = x.detach().clone().requires_grad_()
    weights = torch.randn(*shape, generator=generator)
    norm = converted_norm()
    norm.relu = True
    got = norm(x)
    expected = F.relu(F.instance_norm(y))
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    assert float(got.min()) == 0.0 and close(got, expected) and close(x.grad, y.grad)
    assert counted == {"forward": 1, "backward": 1}
    with torch.autocast("cpu", dtype=torch.bfloat16):        # torch's own path keeps the ReLU too
        assert float(norm(x.detach()).min()) == 0.0


def test_a_non_contiguous_input_and_gradient(counted):
    x = torch.randn(2, 4, 6, 8).permute(0, 1, 3, 2).requires_grad_()      # strides of a transposed image
    y = x.detach().clone().requires_grad_()
    grad = torch.randn(2, 4, 8, 6).transpose(2, 3).contiguous().transpose(2, 3)
    converted_norm()(x).backward(grad)
    F.instance_norm(y).backward(grad)
    assert close(x.grad, y.grad)


def test_other_precisions_shapes_and_traces_run_torch(counted):
    norm = converted_norm()
    x = torch.randn(1, 4, 8, 8)
    assert close(norm(x.bfloat16()).float(), F.instance_norm(x), 1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        norm(x)
    assert close(norm(x[0]), F.instance_norm(x)[0])           # an unbatched image, as nn.InstanceNorm2d takes it
    traced = torch.jit.trace(norm, x, check_trace=False)
    assert close(traced(x), F.instance_norm(x))
    assert counted == {"forward": 0, "backward": 0}


def test_without_the_kernels_torch_runs(monkeypatch, caplog):
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_told_no_compiler", [])
    monkeypatch.setenv("CC", "no-such-compiler")
    with caplog.at_level(logging.INFO, logger="vidcycle"):
        norm = converted_norm()
        x = torch.randn(2, 4, 8, 8, requires_grad=True)
        y = x.detach().clone().requires_grad_()
        norm(x).sum().backward()
        F.instance_norm(y).sum().backward()
    assert close(x.grad, y.grad, 1e-4) or float(y.grad.abs().max()) < 1e-5
    assert [record.getMessage() for record in caplog.records] == [
        "no C compiler (cc, gcc, clang or $CC) to build vidcycle's C kernels (instance_norm_kernels.c and the "
        "others): torch operations run instead, a few percent slower"]


def test_a_generator_converted_for_training_is_the_same_network(counted):
    torch.manual_seed(3)
    spec = GeneratorSpec(n_blocks=2, ngf=8)
    plain, fast = build_generator(spec), build_generator(spec)
    fast.load_state_dict(plain.state_dict())
    use_faster_convolutions(fast, torch.device("cpu"), torch.float32)
    assert sum(type(m) is FastInstanceNorm2d for m in fast.modules()) == 3 + 2 * 2 + 2   # stem, down, blocks, up
    assert list(fast.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    out_fast, out_plain = fast(x), plain(x)
    assert close(out_fast, out_plain, 1e-4)
    out_fast.square().mean().backward()
    out_plain.square().mean().backward()
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        assert float((a.grad - b.grad).norm()) <= 1e-4 * float(b.grad.norm()) + 1e-7, name
    assert counted["forward"] == 9 and counted["backward"] == 9
    assert use_faster_convolutions(build_generator(spec), torch.device("cpu"), torch.bfloat16) == 0


def test_relus_are_taken_into_the_norms_only_where_no_layer_is_read_by_index(counted):
    """Inside residual blocks always; in the generator's own layer list (which PatchNCE and the students'
    feature loss index) only when nothing reads it: there each layer's output stays what it was."""
    torch.manual_seed(4)
    spec = GeneratorSpec(n_blocks=2, ngf=8)
    plain, read, unread = build_generator(spec), build_generator(spec), build_generator(spec)
    read.load_state_dict(plain.state_dict())
    unread.load_state_dict(plain.state_dict())
    use_faster_convolutions(read, torch.device("cpu"), torch.float32)
    use_faster_convolutions(unread, torch.device("cpu"), torch.float32, layers_read=False)
    fused = lambda net: sum(type(m) is FusedReLU for m in net.modules())
    assert fused(read) == 2 and fused(unread) == 2 + 1 + 2 + 2          # blocks; then stem, down and up too
    x = torch.randn(2, 3, 32, 32)
    layers = tuple(range(len(plain.model) - 1))
    with torch.no_grad():
        for a, b in zip(encoder_features(read, x, layers), encoder_features(plain, x, layers)):
            assert a.shape == b.shape and close(a, b, 1e-4)
        assert close(unread(x), plain(x), 1e-4)
    out_unread, out_plain = unread(x), plain(x)
    out_unread.square().mean().backward()
    out_plain.square().mean().backward()
    for (name, a), b in zip(unread.named_parameters(), plain.parameters()):
        assert float((a.grad - b.grad).norm()) <= 1e-4 * float(b.grad.norm()) + 1e-7, name
