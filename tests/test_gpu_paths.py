"""Decisions only a GPU machine reaches, exercised on the CPU with stubbed CUDA queries."""

import torch

from vidcycle.device import pick_training_precision
from vidcycle.distributed import TorchrunEnv, loader_workers
from vidcycle.runs import rng_state, set_rng_state

CUDA = torch.device("cuda", 0)


def test_auto_training_precision_is_fp16_where_bf16_would_only_be_emulated(monkeypatch):
    capability = {"value": (7, 5)}  # T4: torch.cuda.is_bf16_supported() says True, by emulation
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["value"])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert pick_training_precision("auto", CUDA) == torch.float16
    capability["value"] = (8, 0)  # A100 and newer: native bf16 convolutions
    assert pick_training_precision("auto", CUDA) == torch.bfloat16
    assert pick_training_precision("fp32", torch.device("cpu")) == torch.float32


def test_rng_state_holds_the_training_gpu_only_and_resumes_where_fewer_are_visible(monkeypatch):
    states = {index: torch.full((16,), index, dtype=torch.uint8) for index in range(4)}
    restored = {}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(states.values()))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.update(
        {torch.device(device).index: state}))
    saved = rng_state(torch.device("cuda", 3))  # rank 3 of a 4-GPU run
    assert torch.equal(saved["cuda"], states[3])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def set_all(new_states):  # as torch does with more states than visible GPUs
        if len(new_states) > torch.cuda.device_count():
            raise IndexError("list index out of range")
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    set_rng_state(saved, CUDA)  # resumed on a machine showing one GPU
    assert torch.equal(restored[0], states[3])
    older = {**saved, "cuda": list(states.values())}  # a checkpoint of the old format: every visible GPU's
    set_rng_state(older, CUDA)  # not reused, and no IndexError
    assert torch.equal(restored[0], states[3])


def test_loader_workers_are_shared_among_the_ranks_of_a_machine(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    eight_ranks = TorchrunEnv(rank=0, world=8, local_rank=0, local_world=8)
    assert loader_workers(None, CUDA, eight_ranks) == 8  # 64 cores / 8 ranks, not 8 x 8
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert loader_workers(None, CUDA, eight_ranks) == 2
    assert loader_workers(None, CUDA, TorchrunEnv()) == 8  # one process keeps at most 8
    assert loader_workers(None, torch.device("cpu"), eight_ranks) == 1
    assert loader_workers(3, CUDA, eight_ranks) == 3  # --workers wins


def test_torchrun_environment_is_read_once_and_checked(monkeypatch):
    import pytest

    from vidcycle.errors import DeviceError
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert TorchrunEnv.read() == TorchrunEnv(2, 4, 0, 2)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(DeviceError, match="outside WORLD_SIZE"):
        TorchrunEnv.read()
