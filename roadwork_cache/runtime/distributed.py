"""torchrun awareness: the same code runs as one process or as N ranks.

Under `torchrun --nproc-per-node N` the environment names this process's rank; ranks meet
at barriers over the gloo (CPU) or NCCL (CUDA) backend. Without torchrun everything here is
a no-op for rank 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from roadwork_cache.runtime.errors import UserError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        """Wait for every rank; when one has died (gloo and NCCL then fail the collective),
        stop in one sentence instead of a traceback: each shard is written whole, so what
        the ranks finished stays and a re-run does the rest."""
        if not self.distributed:
            return
        try:
            dist.barrier()
        except RuntimeError:  # DistBackendError and friends: a peer closed the connection
            raise UserError(
                f"rank {self.rank} of {self.world} lost the other ranks (one of them stopped); "
                "the shards written so far are kept: re-run the same command to resume"
            ) from None

    def mine(self, items: list) -> list:
        """This rank's share of a list of work units: round robin, whole units only."""
        return items[self.rank :: self.world]


def init_ranks(device_type: str) -> Ranks:
    """Read torchrun's environment and join the process group (once)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group(backend=backend)
    return ranks


def close_ranks(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()
