"""Multi-process evaluation: the process group that ``torchrun`` sets up, and float64 sum reductions.

``torchrun --nproc_per_node=K eval_fid.py ...`` starts K processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in the environment. :func:`init_distributed` joins
that group (``nccl`` when the run's device is CUDA, ``gloo`` on CPU) and gives each process its device
(``cuda:LOCAL_RANK``). Without those variables everything degrades to one process and no group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from ld3.utils.runtime import resolve_device


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` on ``device``; ``owns_group`` if we created it."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all processes (float64 stays float64); returns a CPU tensor."""
        if not self.distributed:
            return t.cpu()
        import torch.distributed as dist

        dev = self.device if self.backend == "nccl" else torch.device("cpu")
        buf = t.to(dev).clone()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.cpu()

    def all_reduce_max(self, value: int) -> int:
        if not self.distributed:
            return int(value)
        import torch.distributed as dist

        dev = self.device if self.backend == "nccl" else torch.device("cpu")
        buf = torch.tensor([int(value)], dtype=torch.int64, device=dev)
        dist.all_reduce(buf, op=dist.ReduceOp.MAX)
        return int(buf.item())

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def env_world() -> tuple:
    """(rank, world_size, local_rank) from torchrun's environment variables; (0, 1, 0) without them."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ValueError(f"malformed torchrun environment (RANK / WORLD_SIZE / LOCAL_RANK): {e}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"malformed torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return rank, world, local


def init_distributed(device: str = "auto") -> DistContext:
    """Join torchrun's process group if there is one; pick this process's device from ``device``.

    ``device`` as in the configs (``auto``, ``cpu``, ``cuda``, ``cuda:N``); with several processes a
    CUDA device becomes ``cuda:LOCAL_RANK`` (one GPU per process) and the backend ``nccl``, else ``gloo``.
    """
    rank, world, local = env_world()
    dev = resolve_device(device)
    if world == 1:
        return DistContext(0, 1, dev)
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA devices are visible")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    import torch.distributed as dist

    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        owns = True
    return DistContext(rank, world, dev, backend, owns)
