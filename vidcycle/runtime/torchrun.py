"""Who this process is under torchrun: RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE, read in one place.

Reading them needs no process group, so `vidcycle apply` shares its inputs out by rank without ever
importing torch.distributed; training joins a group (vidcycle.training.distributed).
"""

import os
from dataclasses import dataclass

from vidcycle.errors import DeviceError


@dataclass(frozen=True)
class TorchrunEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @classmethod
    def read(cls) -> "TorchrunEnv":
        """From torchrun's variables; a plain process is rank 0 of 1. Raises DeviceError for nonsense."""
        try:
            world = int(os.environ.get("WORLD_SIZE", 1))
            rank = int(os.environ.get("RANK", 0))
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        except ValueError as error:
            raise DeviceError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({error})") from error
        if world < 1 or not 0 <= rank < world:
            raise DeviceError(f"RANK={rank} is outside WORLD_SIZE={world}")
        return cls(rank, world, local_rank, max(1, local_world))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1
