"""Scores streamed over chunks of training rows: the full [M, N] matrix, or top-k per
test row without ever holding more than one chunk of scores.

Every method in grass reduces to a sum of terms

    S[m, i] = Σ_t  scale_t · w_t[i] · ⟨Q_t[m], G_t[i]⟩

with Q_t [M, K_t] a query matrix (preconditioned test gradients), G_t [N, K_t] the rows of a
gradient store (or an in-memory matrix), w_t an optional weight per training row (TRAK's
1 − p_i) and scale_t a number (a checkpoint's learning rate, 1/#checkpoints). One term
is plain influence; several terms are checkpoint ensembles (TracIn, TRAK).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from ..device import resolve_device

__all__ = ["ScoreTerm", "RowSource", "score_chunks", "full_scores", "top_k_scores", "TopK"]


class RowSource:
    """Rows [N, K] from a `GradientStore` or an in-memory tensor, read in chunks."""

    def __init__(self, rows):
        from ..store import GradientStore
        if isinstance(rows, GradientStore):
            rows.require_complete()
            self.store, self.tensor = rows, None
            self.num_rows, self.dim = rows.num_rows, rows.dim
            self.chunk_rows = rows.chunk_rows
        elif isinstance(rows, torch.Tensor) and rows.dim() == 2:
            self.store, self.tensor = None, rows
            self.num_rows, self.dim = int(rows.shape[0]), int(rows.shape[1])
            self.chunk_rows = max(1, min(self.num_rows, (64 << 20) // max(1, 4 * self.dim)))
        else:
            raise TypeError(f"training rows must be a GradientStore or a [N, K] tensor, got "
                            f"{type(rows).__name__}")

    def read(self, start: int, stop: int, dtype: torch.dtype, device) -> torch.Tensor:
        src = self.store.gradients(start, stop) if self.store is not None else self.tensor[start:stop]
        return src.to(device=device, dtype=dtype)


@dataclass
class ScoreTerm:
    """One term of a score: ``scale · w[i] · ⟨queries[m], rows[i]⟩``."""
    queries: torch.Tensor                      # [M, K]
    rows: object                               # GradientStore or Tensor [N, K]
    weights: Optional[torch.Tensor] = None     # [N] or None
    scale: float = 1.0


def _prepare(terms: Sequence[ScoreTerm], device, dtype):
    if not terms:
        raise ValueError("at least one score term is needed")
    out = []
    m = n = None
    for i, t in enumerate(terms):
        src = RowSource(t.rows)
        q = t.queries
        if not isinstance(q, torch.Tensor) or q.dim() != 2 or q.shape[1] != src.dim:
            shape = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
            raise ValueError(f"term {i}: queries must be [M, K={src.dim}], got {shape}")
        if not bool(torch.isfinite(q).all()):
            raise ValueError(f"term {i}: the test gradients hold NaN or inf")
        if m is None:
            m, n = int(q.shape[0]), src.num_rows
        elif q.shape[0] != m or src.num_rows != n:
            raise ValueError(f"term {i} has {q.shape[0]} queries x {src.num_rows} rows; term 0 "
                             f"has {m} x {n}: every term must score the same test and train sets")
        w = t.weights
        if w is not None:
            w = torch.as_tensor(w).flatten()
            if w.numel() != n:
                raise ValueError(f"term {i}: weights must have one entry per training row ({n}), "
                                 f"got {w.numel()}")
            w = w.to(device=device, dtype=dtype)
        out.append((q.to(device=device, dtype=dtype), src, w, float(t.scale)))
    return out, m, n


def score_chunks(terms: Sequence[ScoreTerm], *, chunk_rows: Optional[int] = None, device=None,
                 dtype: torch.dtype = torch.float32, progress: bool = True,
                 desc: str = "scoring") -> Iterator[Tuple[int, torch.Tensor]]:
    """Yield ``(first_row, S[:, first_row:first_row + c])`` chunk by chunk, ``dtype``
    on ``device`` (default: the first query's device)."""
    device = resolve_device(device, "score_chunks: device") or terms[0].queries.device
    prepared, m, n = _prepare(terms, device, dtype)
    step = int(chunk_rows) if chunk_rows is not None else prepared[0][1].chunk_rows
    if step < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    with tqdm(total=n, desc=desc, unit="ex", unit_scale=True, dynamic_ncols=True,
              disable=not progress) as bar:
        for start in range(0, n, step):
            stop = min(n, start + step)
            acc = None
            for q, src, w, scale in prepared:
                s = q @ src.read(start, stop, dtype, device).T
                if w is not None:
                    s *= w[start:stop]
                if scale != 1.0:
                    s *= scale
                acc = s if acc is None else acc.add_(s)
            yield start, acc
            bar.update(stop - start)


def _check_fits(nbytes: int, what: str) -> None:
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return
    if nbytes > avail:
        raise MemoryError(f"{what} needs {nbytes / 2**30:.1f} GiB but {avail / 2**30:.1f} GiB of "
                          "memory is free; ask for top-k instead, or pass out= (e.g. a tensor "
                          "memory-mapped from a file with torch.from_file)")


def full_scores(terms: Sequence[ScoreTerm], *, out: Optional[torch.Tensor] = None,
                chunk_rows: Optional[int] = None, device=None, dtype: torch.dtype = torch.float32,
                progress: bool = True, desc: str = "scoring") -> torch.Tensor:
    """The full score matrix [M, N] on CPU (or written into ``out``)."""
    m = int(terms[0].queries.shape[0])
    n = RowSource(terms[0].rows).num_rows
    if out is None:
        _check_fits(m * n * torch.empty((), dtype=dtype).element_size(), f"the [{m}, {n}] score matrix")
        out = torch.empty(m, n, dtype=dtype)
    elif out.shape != (m, n):
        raise ValueError(f"out must have shape [{m}, {n}], got {tuple(out.shape)}")
    for start, s in score_chunks(terms, chunk_rows=chunk_rows, device=device, dtype=dtype,
                                 progress=progress, desc=desc):
        out[:, start:start + s.shape[1]] = s.to(out.device, out.dtype)
    return out


def _order_keys(values: torch.Tensor, start: int, largest: bool) -> torch.Tensor:
    """int64 keys that order float32 scores exactly like a stable sort would: the value's
    bits mapped to an order-preserving integer in the high 32 bits, the complement of the
    training index in the low 32 bits (so equal values rank the smaller index first).
    ``x + 0.0`` turns −0.0 into +0.0, which a float comparison treats as equal."""
    x = (values if largest else -values) + 0.0
    bits = x.view(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    idx = torch.arange(start, start + x.shape[1], dtype=torch.int64, device=x.device)
    return (bits << 32) | (0xFFFFFFFF - idx)


class TopK:
    """Running top-k per row over chunks of columns that arrive in increasing order.

    The result equals a stable sort of the full row: the k largest (``largest=False``:
    smallest) values, ties broken towards the smaller training index. float32 scores are
    selected with ``torch.topk`` on exact integer keys (`_order_keys`), other dtypes by a
    stable sort of the running candidates and the chunk.
    """

    def __init__(self, rows: int, k: int, *, largest: bool = True, device=None,
                 dtype: torch.dtype = torch.float32):
        self.k, self.largest = int(k), bool(largest)
        self.values = torch.empty(rows, 0, dtype=dtype, device=device)
        self.indices = torch.empty(rows, 0, dtype=torch.int64, device=device)
        self._keys = torch.empty(rows, 0, dtype=torch.int64, device=device)
        self._next = 0

    def add(self, start: int, scores: torch.Tensor) -> None:
        if start < self._next:
            raise ValueError(f"chunks must arrive in increasing column order (got start {start} "
                             f"after column {self._next})")
        if start + scores.shape[1] > 2**32:
            raise ValueError("top-k supports up to 2**32 training rows")
        c = scores.shape[1]
        scores = scores.to(self.values.dtype)
        vals = torch.cat([self.values.to(scores.device), scores], dim=1)
        keep = min(self.k, vals.shape[1])
        if scores.dtype == torch.float32:
            keys = torch.cat([self._keys.to(scores.device),
                              _order_keys(scores, start, self.largest)], dim=1)
            order = torch.topk(keys, keep, dim=1, sorted=True).indices
            self._keys = torch.gather(keys, 1, order)
            self.indices = 0xFFFFFFFF - (self._keys & 0xFFFFFFFF)
        else:
            idx = torch.arange(start, start + c, device=scores.device).expand(scores.shape[0], c)
            ids = torch.cat([self.indices.to(scores.device), idx], dim=1)
            order = torch.sort(vals, dim=1, descending=self.largest, stable=True).indices[:, :keep]
            self.indices = torch.gather(ids, 1, order)
        self.values = torch.gather(vals, 1, order)
        self._next = start + c


def top_k_scores(terms: Sequence[ScoreTerm], k: int, *, largest: bool = True,
                 chunk_rows: Optional[int] = None, device=None, dtype: torch.dtype = torch.float32,
                 progress: bool = True, desc: str = "scoring (top-k)"
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(values [M, k], indices [M, k]) of the k largest (or smallest) scores per test row,
    best first; ties go to the smaller training index."""
    n = RowSource(terms[0].rows).num_rows
    if not 1 <= int(k) <= n:
        raise ValueError(f"k must be in [1, N={n}], got {k}")
    top = None
    for start, s in score_chunks(terms, chunk_rows=chunk_rows, device=device, dtype=dtype,
                                 progress=progress, desc=desc):
        if top is None:
            top = TopK(s.shape[0], k, largest=largest, device=s.device, dtype=dtype)
        top.add(start, s)
    return top.values.cpu(), top.indices.cpu()
