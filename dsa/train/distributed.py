r"""Data-parallel training under ``torchrun`` (DistributedDataParallel), and the helpers train() needs.

    torchrun --standalone --nproc_per_node 2 -m dsa.train.trainer --attention dsa --seq-len 1024 ...

Several machines ("nodes"): the same command on each, with the node's rank and one address all can reach::

    torchrun --nnodes 2 --nproc_per_node 8 --node_rank 0 --master_addr HOST0 --master_port 29500 \
        -m dsa.train.trainer ...
    torchrun --nnodes 2 --nproc_per_node 8 --node_rank 1 --master_addr HOST0 --master_port 29500 \
        -m dsa.train.trainer ...

(or ``--rdzv-backend c10d --rdzv-endpoint HOST0:29500`` with any ``--node_rank``). The corpus cache is
prepared by global rank 0 first, then by each other node's local rank 0 (a node without a shared file
system builds its own copy), then read by every other rank (:func:`rank_zero_first`).

Each rank reads batch ``step * world + rank`` of the same deterministic sampler, so the global batch is
``world * batch_size`` and no two ranks see the same sequence. Every rank evaluates the same validation
batches (no collective inside eval, so ranks cannot deadlock); only rank 0 prints, shows progress and writes
the run JSON.

The DSA warm-up stage trains only the indexer with the main model frozen. Toggling ``requires_grad`` under
a live DDP wrapper breaks its reducer, so a wrapper lives for one LM phase at a time and the warm-up
all-reduces the indexer gradients by hand.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_from_env(device: str) -> DistInfo:
    """Joins the process group when launched by torchrun (WORLD_SIZE > 1); a plain run gets DistInfo()."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")
    backend = "nccl" if cuda else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local, backend=backend)


T = TypeVar("T")


def rank_zero_first(info: DistInfo, fn: Callable[[], T]) -> T:
    """``fn()`` on every rank, in three waves separated by barriers: global rank 0, then local rank 0 of
    every other node, then all other ranks. For work that fills a cache the others then read (the corpus):
    one process writes it per file system and no rank reads a half-written entry."""
    if not info.enabled:
        return fn()
    out = fn() if info.rank == 0 else None
    dist.barrier()
    if info.rank != 0 and info.local_rank == 0:
        out = fn()
    dist.barrier()
    if info.local_rank != 0:
        out = fn()
    return out


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """The DDP wrapper for one LM phase (``find_unused_parameters``: the indexer gets no gradient in a dense
    phase, and DSA's padded slots can leave parts unused)."""
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def release_wrappers() -> None:
    """Collects dropped DDP wrappers now, so their gradient hooks are gone before requires_grad changes."""
    gc.collect()


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def all_reduce_grads(params: list[nn.Parameter], info: DistInfo) -> None:
    """Averages the gradients of ``params`` over the ranks (the warm-up stage, outside DDP)."""
    if not info.enabled:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(info.world)


def param_checksums(model: nn.Module, info: DistInfo) -> list[float]:
    """Sum of |parameters| on every rank (rank order): equal values show the replicas stayed in sync."""
    local = torch.stack([p.detach().double().abs().sum() for p in model.parameters()]).sum()
    if not info.enabled:
        return [float(local)]
    dev = next(model.parameters()).device
    out = [torch.zeros((), dtype=torch.float64, device=dev) for _ in range(info.world)]
    dist.all_gather(out, local.to(dev))
    return [float(x) for x in out]


def barrier_and_close() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Waits for every rank (nothing to wait for in a single-process run)."""
    if info.enabled:
        dist.barrier()
