"""Several processes under torchrun: reading its environment, joining the process group, sharing the work.

torchrun tells each process who it is through RANK, WORLD_SIZE, LOCAL_RANK and
LOCAL_WORLD_SIZE; `TorchrunEnv.read()` is the one place they are read. Training
joins a process group (nccl on GPUs, gloo on CPU) and wraps its nets in
DistributedDataParallel; `vidcycle apply` only splits its inputs.
"""

import datetime
import os
from dataclasses import dataclass

import torch
from torch import nn

from vidcycle.runtime.torchrun import TorchrunEnv

# Rank 0 fills the frame cache while the others wait. Decoding a large collection takes longer than
# NCCL's 10-minute default, so that one wait runs on its own gloo group with a long timeout; if rank 0
# fails meanwhile, torchrun stops the others.
CACHE_WAIT = datetime.timedelta(hours=24)
MAX_CUDA_LOADER_WORKERS = 8


@dataclass(frozen=True)
class Distributed:
    """This process's place in a training run, and the collectives it takes part in."""

    env: TorchrunEnv = TorchrunEnv()
    cache_group: object = None  # the gloo group for the long frame-cache wait

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world(self) -> int:
        return self.env.world

    @property
    def main(self) -> bool:
        return self.env.main

    @property
    def active(self) -> bool:
        return self.env.active

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def wait_for_cache(self) -> None:
        """The barrier after rank 0 filled the frame cache, with a timeout that decoding cannot outlast."""
        if self.active:
            torch.distributed.barrier(group=self.cache_group)


def init_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): join the process group, one GPU per process via LOCAL_RANK.

    gloo on CPU, nccl on CUDA. On CPU the processes of one machine share its
    cores. Returns this process's Distributed and its device.
    """
    env = TorchrunEnv.read()
    if not env.active:
        return Distributed(env), device
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    cache_group = torch.distributed.new_group(backend="gloo", timeout=CACHE_WAIT)
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world))
    return Distributed(env, cache_group), device


def shutdown(dist: Distributed) -> None:
    if dist.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def loader_workers(requested: int | None, device: torch.device, env: TorchrunEnv) -> int:
    """Data-loader processes per rank: as asked, else 1 on CPU (the cores train) and on CUDA this
    machine's cores shared among its ranks, at most 8 each (8 ranks must not start 64 workers)."""
    if requested is not None:
        return requested
    if device.type != "cuda":
        return 1
    return max(1, min(MAX_CUDA_LOADER_WORKERS, (os.cpu_count() or 1) // env.local_world))


def wrap_ddp(net: nn.Module, device: torch.device) -> nn.Module:
    """One net in DistributedDataParallel. Every parameter gets a gradient in the backward where it is
    trained (frozen discriminators are called unwrapped), so no find_unused_parameters; a generator
    used several times per step accumulates before its hook fires. The nets have no buffers."""
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(net, device_ids=ids)


def gather_object(obj, dist: Distributed) -> list:
    """Every rank's `obj` on rank 0, in rank order (a collective: all ranks call it); [] on the others."""
    if not dist.active:
        return [obj]
    gathered = [None] * dist.world if dist.main else None
    torch.distributed.gather_object(obj, gathered, dst=0)
    return gathered or []


def unwrap(net: nn.Module) -> nn.Module:
    """The network itself, under torch.compile's and DistributedDataParallel's wrappers."""
    net = getattr(net, "_orig_mod", net)  # torch.compile's OptimizedModule
    net = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
    return getattr(net, "_orig_mod", net)
