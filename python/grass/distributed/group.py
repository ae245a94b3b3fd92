"""The process group as grass sees it: rank, world size, and the collectives grass needs.

Everything here is ``torch.distributed`` itself (launched with ``torchrun``; gloo on CPU,
NCCL on GPU). Without an initialised process group every function behaves as the one
process of a world of size 1, so single-process code paths are unchanged.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

__all__ = ["active", "rank", "world_size", "barrier", "row_range", "all_reduce_sum",
           "all_gather_rows", "all_gather_object", "rank_zero_only", "unwrap_model"]


def active() -> bool:
    """True when a ``torch.distributed`` process group with more than one rank is set up."""
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist
    return dist.get_rank() if active() else 0


def world_size() -> int:
    import torch.distributed as dist
    return dist.get_world_size() if active() else 1


def barrier() -> None:
    if active():
        import torch.distributed as dist
        dist.barrier()


def row_range(n: int, r: int = None, w: int = None) -> Tuple[int, int]:
    """Rank r's contiguous share [lo, hi) of n rows (shares differ by at most one row)."""
    r = rank() if r is None else int(r)
    w = world_size() if w is None else int(w)
    return r * n // w, (r + 1) * n // w


def _comm_device() -> torch.device:
    import torch.distributed as dist
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """t summed over ranks, in place (a no-op in one process)."""
    if active():
        import torch.distributed as dist
        dev = _comm_device()
        buf = t if t.device == dev else t.to(dev)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        if buf is not t:
            t.copy_(buf)
    return t


def all_gather_rows(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The pieces ``t`` of every rank joined along ``dim`` in rank order; pieces may differ
    in size along ``dim`` (padded for the exchange, trimmed after). Returns on t's device."""
    if not active():
        return t
    import torch.distributed as dist
    dev = _comm_device()
    w = dist.get_world_size()
    size = torch.tensor([t.shape[dim]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(size) for _ in range(w)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    pad = list(t.shape)
    pad[dim] = longest - t.shape[dim]
    local = torch.cat([t, t.new_zeros(pad)], dim=dim) if pad[dim] else t
    local = local.to(dev).contiguous()
    parts = [torch.empty_like(local) for _ in range(w)]
    dist.all_gather(parts, local)
    return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim=dim).to(t.device)


def rank_zero_only(fn):
    """``fn`` run by rank 0 only (others return None); for files every rank would write
    with the same content."""
    import functools

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        return fn(*args, **kwargs) if rank() == 0 else None
    return wrapped


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module whose layers are captured: DistributedDataParallel (and DataParallel)
    wrap the user's model as ``.module``; hooks go on the inner module's layers, and
    gradients are taken through it, so DDP's gradient all-reduce never runs during capture
    (per-sample gradients are local to the rank that computes them)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel
    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model


def all_gather_object(value):
    """Every rank's picklable ``value``, in rank order (one process: [value])."""
    if not active():
        return [value]
    import torch.distributed as dist
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def hash_model(model: nn.Module) -> str:
    """`grass.store.hash_module` of the full model: parameters sharded by FSDP2
    (``fully_shard``, DTensors) are gathered first, so every rank, and one process with
    the unsharded model, get the same hash. Collective when the model is sharded."""
    from ..store.fingerprint import hash_module, hash_tensors
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor
        return hash_module(model)
    params = list(model.named_parameters())
    buffers = list(model.named_buffers())
    if not any(isinstance(t, DTensor) for _, t in params + buffers):
        return hash_module(model)

    def full(t):
        return t.full_tensor() if isinstance(t, DTensor) else t
    return hash_tensors([("param:" + n, full(p)) for n, p in params]
                        + [("buffer:" + n, full(b)) for n, b in buffers])
