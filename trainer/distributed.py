"""torchrun / DistributedDataParallel plumbing, and the one sampler used with or without it.

``torchrun --nproc_per_node N -m edge.cli train ...`` sets RANK/WORLD_SIZE/LOCAL_RANK; we
then join a process group (NCCL on GPUs, gloo on CPU), wrap the model in DDP and give each
rank a disjoint slice of the epoch's sample order. Rank 0 validates, writes checkpoints and
shows progress bars; the others wait and receive its decisions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when launched by torchrun; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        if world > 1:
            dev = torch.device("cuda", local)
        else:
            dev = torch.device(device if device.startswith("cuda") else "cuda")
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, dev)


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast(info: DistInfo, obj):
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(info: DistInfo, value: torch.Tensor) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def epoch_indices(
    n: int, epoch: int, seed: int, weights: np.ndarray | None = None, rank: int = 0, world_size: int = 1
) -> list[int]:
    """This rank's sample order for ``epoch``: a seeded permutation, or weighted draws
    with replacement when ``weights`` is given; padded so every rank gets as many."""
    rng = np.random.default_rng((seed, 7919, epoch))
    if weights is not None:
        order = rng.choice(n, size=n, replace=True, p=weights)
    else:
        order = rng.permutation(n)
    per_rank = -(-n // world_size)
    order = np.resize(order, per_rank * world_size)
    return [int(i) for i in order[rank::world_size]]
