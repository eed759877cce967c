"""FusedAdam: torch's fused Adam without torch.optim around it, bit for bit, with torch's state dict, and a
CPU training run that never imports torch's compiler."""

import copy
import subprocess
import sys

import torch

from conftest import TINY, write_noisy_images
from vidcycle.training.adam import FusedAdam


def small_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3),
                               torch.nn.Conv2d(3, 3, 1))


def train(net, optimizer, steps: int, seed: int, frozen_last: bool = False) -> None:
    """`steps` steps on random batches; the last layer frozen (no gradient) when asked; lr halved after 2."""
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        net[3].weight.requires_grad_(not frozen_last)
        optimizer.zero_grad(set_to_none=True)
        net(torch.randn(2, 3, 12, 12, generator=generator)).square().mean().backward()
        optimizer.step()
        if step == 2:
            for group in optimizer.param_groups:
                group["lr"] /= 2


def test_it_makes_torchs_fused_adams_parameters_and_state_bit_for_bit():
    ours_net, torch_net = small_net(), small_net()
    ours = FusedAdam(ours_net.parameters(), lr=2e-3, betas=(0.5, 0.999))
    theirs = torch.optim.Adam(torch_net.parameters(), lr=2e-3, betas=(0.5, 0.999), fused=True)
    for optimizer, net in ((ours, ours_net), (theirs, torch_net)):
        train(net, optimizer, 3, seed=1, frozen_last=True)   # a parameter without a gradient: no state yet
        train(net, optimizer, 3, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(ours_net.parameters(), torch_net.parameters()))
    mine, torchs = ours.state_dict(), theirs.state_dict()
    assert mine["param_groups"] == torchs["param_groups"] and ours.defaults == theirs.defaults
    assert mine["state"].keys() == torchs["state"].keys() == {0, 1, 2, 3, 4, 5}
    for number, values in torchs["state"].items():
        assert {key: (value.dtype, value.shape) for key, value in values.items()} == \
            {key: (value.dtype, value.shape) for key, value in mine["state"][number].items()}
        assert all(torch.equal(value, mine["state"][number][key]) for key, value in values.items())


def adam_of(kind, net):
    extra = {"fused": True} if kind is torch.optim.Adam else {}
    return kind(net.parameters(), lr=1e-3, betas=(0.5, 0.999), **extra)


def take_steps(net, optimizer, batches) -> None:
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        net(batch).square().mean().backward()
        optimizer.step()


def test_a_state_dict_of_either_goes_on_in_the_other_as_it_would_have():
    """A checkpoint written with torch's optimiser resumes in FusedAdam, and the other way round."""
    batches = torch.randn(6, 2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    reference = small_net()
    take_steps(reference, adam_of(torch.optim.Adam, reference), batches)
    for first, then in ((torch.optim.Adam, FusedAdam), (FusedAdam, torch.optim.Adam)):
        net = small_net()
        before = adam_of(first, net)
        take_steps(net, before, batches[:3])
        saved = copy.deepcopy(before.state_dict())
        resumed = copy.deepcopy(net)
        after = adam_of(then, resumed)
        after.load_state_dict(saved)
        take_steps(resumed, after, batches[3:])
        assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), reference.parameters()))


def test_a_cpu_training_run_leaves_torchs_compiler_unimported(tmp_path):
    """torch.optim imports torch._dynamo at its first call: a second of every run's start, for nothing."""
    x = write_noisy_images(tmp_path / "x", 4, (200, 80, 40), seed=0)
    y = write_noisy_images(tmp_path / "y", 4, (40, 80, 200), seed=1)
    args = ["train", "--x", str(x), "--y", str(y), *TINY, "--max-steps", "2", "--out", str(tmp_path / "run"),
            "--no-export"]
    code = ("import sys; from vidcycle.cli.group import cli\n"
            f"try:\n    cli({args!r})\nexcept SystemExit as end:\n    assert not end.code, end.code\n"
            "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
