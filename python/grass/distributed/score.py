"""Fisher, scores, top-k and self-influence sharded over the training rows.

Each rank takes a contiguous share [lo, hi) of the N training rows (a `ShardedStore.view`
of whatever store holds them, so M ranks read a store written by N ranks), runs the
single-process streaming code of ``grass.score`` on it, and the pieces are merged:

* Fisher: the per-layer sums Σ g gᵀ (float64) and the row count are all-reduced.
* scores: the [M, hi - lo] column blocks are all-gathered in rank order -> [M, N] on
  every rank.
* top-k: every rank's own top-k (with global indices) is all-gathered and the k best of
  the candidates are kept with the same order as one process (value, then smaller index).
* self-influence: the [hi - lo] pieces are all-gathered -> [N].

Without a process group each function is the single-process one.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from ..precondition import BlockFisher
from ..score import stream as _stream
from ..score.influence import self_influence as _self_influence
from ..score.stream import RowSource, ScoreTerm
from . import group
from .sharded_store import ShardedStore

__all__ = ["accumulate_fisher", "full_scores", "top_k_scores", "self_influence", "merge_top_k"]


def _share(rows, lo: int, hi: int):
    if isinstance(rows, torch.Tensor):
        return rows[lo:hi]
    return ShardedStore.view(rows, lo, hi)


def _local_terms(terms: Sequence[ScoreTerm]) -> Tuple[list, int, int, int]:
    n = RowSource(terms[0].rows).num_rows
    lo, hi = group.row_range(n)
    local = [ScoreTerm(t.queries, _share(t.rows, lo, hi),
                       None if t.weights is None else torch.as_tensor(t.weights).flatten()[lo:hi],
                       t.scale) for t in terms]
    return local, n, lo, hi


def accumulate_fisher(store, block_sizes, *, device=None, progress: bool = True) -> BlockFisher:
    """Σ_i g_i g_iᵀ per block over every row of ``store``: each rank adds its share, the
    sums and the row count are all-reduced (float64)."""
    fisher = BlockFisher(block_sizes, device=device)
    lo, hi = group.row_range(store.num_rows)
    with tqdm(total=hi - lo, desc="Fisher", unit="ex", unit_scale=True, dynamic_ncols=True,
              disable=not progress or group.rank() != 0) as bar:
        if hi > lo:
            for _, G in store.chunks(dtype=torch.float32, device=fisher.device, start=lo, stop=hi):
                fisher.update(G)
                bar.update(G.shape[0])
    if group.active():
        group.all_reduce_sum(fisher.sums)
        count = torch.tensor([float(fisher.num_rows)], dtype=torch.float64, device=fisher.device)
        fisher.num_rows = int(group.all_reduce_sum(count).item())
    return fisher


def full_scores(terms: Sequence[ScoreTerm], *, out: Optional[torch.Tensor] = None,
                progress: bool = True, **kw) -> torch.Tensor:
    """`grass.score.full_scores`, each rank scoring its share of the training rows; every
    rank gets the whole [M, N] matrix (written into ``out`` when given)."""
    if not group.active():
        return _stream.full_scores(terms, out=out, progress=progress, **kw)
    local, n, lo, hi = _local_terms(terms)
    m = int(terms[0].queries.shape[0])
    if out is not None and tuple(out.shape) != (m, n):
        raise ValueError(f"out must have shape [{m}, {n}], got {tuple(out.shape)}")
    dtype = kw.get("dtype", torch.float32)
    if hi > lo:
        piece = _stream.full_scores(local, progress=progress and group.rank() == 0, **kw)
    else:
        piece = torch.empty(m, 0, dtype=dtype)
    whole = group.all_gather_rows(piece, dim=1)
    if out is None:
        return whole
    out.copy_(whole)
    return out


def _keys(values: torch.Tensor, idx: torch.Tensor, largest: bool) -> torch.Tensor:
    # The ordering of grass.score.stream's TopK (stable sort: value, then smaller index),
    # for candidates whose indices are not one contiguous range.
    x = (values if largest else -values) + 0.0
    bits = x.view(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    return (bits << 32) | (0xFFFFFFFF - idx)


def merge_top_k(values: torch.Tensor, indices: torch.Tensor, k: int, *, largest: bool = True
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The k best of candidate (values [M, c], global indices [M, c]) per row, best first,
    ties to the smaller index: what one process's top-k over all rows gives, when the
    candidates hold each share's own top-k."""
    keep = min(int(k), values.shape[1])
    if values.dtype == torch.float32:
        order = torch.topk(_keys(values, indices, largest), keep, dim=1, sorted=True).indices
    else:
        by_index = torch.argsort(indices, dim=1, stable=True)
        v, i = torch.gather(values, 1, by_index), torch.gather(indices, 1, by_index)
        order = torch.sort(v, dim=1, descending=largest, stable=True).indices[:, :keep]
        values, indices = v, i
    return torch.gather(values, 1, order), torch.gather(indices, 1, order)


def top_k_scores(terms: Sequence[ScoreTerm], k: int, *, largest: bool = True,
                 progress: bool = True, **kw) -> Tuple[torch.Tensor, torch.Tensor]:
    """`grass.score.top_k_scores`, each rank over its share of the training rows, merged
    (every rank gets the result); memory per rank: one chunk of scores and [M, W·k]
    candidates."""
    if not group.active():
        return _stream.top_k_scores(terms, k, largest=largest, progress=progress, **kw)
    local, n, lo, hi = _local_terms(terms)
    if not 1 <= int(k) <= n:
        raise ValueError(f"k must be in [1, N={n}], got {k}")
    m = int(terms[0].queries.shape[0])
    dtype = kw.get("dtype", torch.float32)
    if hi > lo:
        v, i = _stream.top_k_scores(local, min(int(k), hi - lo), largest=largest,
                                    progress=progress and group.rank() == 0, **kw)
        i = i + lo
    else:
        v, i = torch.empty(m, 0, dtype=dtype), torch.empty(m, 0, dtype=torch.int64)
    return merge_top_k(group.all_gather_rows(v, dim=1), group.all_gather_rows(i, dim=1), k,
                       largest=largest)


def self_influence(preconditioner, train, *, progress: bool = True, **kw) -> torch.Tensor:
    """`grass.score.self_influence`, each rank over its share of the rows, gathered -> [N]."""
    if not group.active():
        return _self_influence(preconditioner, train, progress=progress, **kw)
    n = RowSource(train).num_rows
    lo, hi = group.row_range(n)
    if hi > lo:
        piece = _self_influence(preconditioner, _share(train, lo, hi),
                                progress=progress and group.rank() == 0, **kw)
    else:
        piece = torch.empty(0, dtype=torch.float64)
    return group.all_gather_rows(piece, dim=0)
