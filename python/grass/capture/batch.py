"""Batches as nested containers (tensor, tuple, list, dict, ...) of per-sample tensors.

The batch size B is the first dimension of the first tensor with at least one dimension.
Every tensor whose first dimension equals B is per-sample; anything else (scalars,
tensors of another leading size, non-tensors) is passed to every sample unchanged.
"""
from __future__ import annotations

from typing import Any, List, Sequence

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["batch_size", "per_sample_dims", "take", "to_device"]


def batch_size(batch: Any) -> int:
    """B of a batch; errors on a batch without tensors or with B == 0."""
    leaves, _ = tree_flatten(batch)
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor) and leaf.dim() >= 1:
            b = int(leaf.shape[0])
            if b == 0:
                raise ValueError("the batch is empty (batch size 0); per-sample gradients need "
                                 "at least one sample")
            return b
    raise ValueError("cannot find the batch size: the batch holds no tensor with a batch "
                     f"dimension (got {type(batch).__name__})")


def per_sample_dims(leaves: Sequence[Any], b: int) -> List[Any]:
    """vmap in_dims for flattened leaves: 0 for per-sample tensors, None for the rest."""
    return [0 if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] == b else None
            for x in leaves]


def take(batch: Any, index: torch.Tensor) -> Any:
    """The sub-batch of the samples at ``index`` (int64 [n]); constants are kept as they are."""
    b = batch_size(batch)
    leaves, spec = tree_flatten(batch)
    dims = per_sample_dims(leaves, b)
    out = [x[index.to(x.device)] if d == 0 else x for x, d in zip(leaves, dims)]
    return tree_unflatten(out, spec)


def to_device(batch: Any, device) -> Any:
    """The batch with every tensor moved to ``device`` (None: unchanged)."""
    if device is None:
        return batch
    leaves, spec = tree_flatten(batch)
    return tree_unflatten([x.to(device) if isinstance(x, torch.Tensor) else x for x in leaves], spec)
