"""The networks: reference key layout, any input size, the paper's PatchGAN and init."""

import subprocess
import sys

import pytest
import torch

from conftest import reference_state
from vidcycle.errors import ModelError
from vidcycle.models.nets import (GeneratorSpec, NLayerDiscriminator, build_generator, count_gmacs, generator_from_state,
                           spec_from_state)


def test_generator_keys_and_shapes_match_reference_layout():
    for blocks in (6, 9):
        ours = build_generator(GeneratorSpec(n_blocks=blocks, ngf=64)).state_dict()
        theirs = reference_state(n_blocks=blocks, ngf=64)
        assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert len(build_generator(GeneratorSpec(9, 64)).state_dict()) == 48
    assert sum(p.numel() for p in build_generator(GeneratorSpec(9, 64)).parameters()) == 11_378_179


def test_architecture_is_read_off_the_keys():
    assert spec_from_state(reference_state(6, 32)) == GeneratorSpec(n_blocks=6, ngf=32)
    assert spec_from_state(reference_state(9, 16)) == GeneratorSpec(n_blocks=9, ngf=16)


def test_old_checkpoints_with_running_stats_load_strictly():
    net = generator_from_state(reference_state(6, 8, stale_norm_keys=True))
    assert net.spec == GeneratorSpec(6, 8)


def test_any_input_size_comes_back_the_same_size():
    net = build_generator(GeneratorSpec(n_blocks=2, ngf=8)).eval()
    for height, width in ((31, 47), (1, 1), (5, 3), (64, 64), (182, 322)):
        with torch.no_grad():
            out = net(torch.rand(1, 3, height, width) * 2 - 1)
        assert out.shape == (1, 3, height, width)
        assert out.abs().max() <= 1


def test_patchgan_gives_30x30_patches_on_256():
    disc = NLayerDiscriminator(3, ndf=8, n_layers=3)
    assert disc(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)


def test_weights_start_from_n_0_002():
    torch.manual_seed(0)
    weights = build_generator(GeneratorSpec(9, 64)).model[13].conv_block[1].weight
    assert abs(weights.mean().item()) < 1e-3
    assert abs(weights.std().item() - 0.02) < 1e-3


def test_mobile_generator_takes_any_size_and_costs_less():
    spec = GeneratorSpec(n_blocks=2, ngf=8, kind="mobile")
    net = build_generator(spec).eval()
    for height, width in ((31, 47), (1, 1), (64, 64)):
        with torch.no_grad():
            assert net(torch.rand(1, 3, height, width) * 2 - 1).shape == (1, 3, height, width)
    assert count_gmacs(spec) < count_gmacs(GeneratorSpec(n_blocks=2, ngf=8))
    assert spec.label == "mobile resnet 2 blocks, ngf 8"


def test_counted_macs_are_what_a_real_forward_counts():
    from torch.utils.flop_counter import FlopCounterMode
    for spec in (GeneratorSpec(2, 8), GeneratorSpec(3, 8, kind="mobile")):
        net = build_generator(spec).eval()
        for height, width in ((31, 47), (64, 64)):
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                net(torch.zeros(1, 3, height, width))
            assert count_gmacs(spec, height, width) == counter.get_total_flops() / 2e9
    assert round(count_gmacs(GeneratorSpec(9, 64)), 1) == 49.6  # the paper's generator, 256 x 256


def test_counting_macs_does_not_import_torchs_compiler():
    """A second of every training run's start, for the one line that says what the networks cost."""
    code = ("import sys; from vidcycle.models.nets import GeneratorSpec, count_gmacs; "
            "assert round(count_gmacs(GeneratorSpec(6, 64)), 1) == 35.1; "
            "assert round(count_gmacs(GeneratorSpec(3, 8, kind='mobile'), 31, 47), 6) > 0; "
            "assert 'torch._dynamo' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_an_unknown_generator_kind_is_a_model_error():
    with pytest.raises(ModelError, match="unknown generator kind"):
        build_generator(GeneratorSpec(kind="transformer"))


def test_generators_are_built_by_kind_and_a_kind_without_the_resnet_layers_is_refused(monkeypatch):
    from vidcycle.models import nets
    from vidcycle.models.nets import GeneratorKind, require_resnet_layers

    class Plain(torch.nn.Module):  # a generator of another shape: one convolution
        def __init__(self, spec):
            super().__init__()
            self.spec, self.conv = spec, torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    monkeypatch.setitem(nets.GENERATOR_KINDS, "plain", GeneratorKind(Plain, "plain"))
    spec = GeneratorSpec(kind="plain")
    assert isinstance(build_generator(spec), Plain) and spec.label.startswith("plain")
    require_resnet_layers(GeneratorSpec(kind="mobile"), "PatchNCE")
    with pytest.raises(ModelError, match="PatchNCE addresses the ResNet generator's layers") as raised:
        require_resnet_layers(spec, "PatchNCE")
    assert "\n" not in str(raised.value)
