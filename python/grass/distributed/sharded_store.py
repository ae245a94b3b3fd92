"""A training store written by several ranks, read as one [N, K] store by any number of
processes.

Layout (on top of the ordinary store format, docs/distributed.md):

    <store>/shards.json                 format, N, world size, each rank's rows [lo, hi),
                                        the run's fingerprint (the same as a one-process store's)
    <store>/rank-00000-of-00002/        an ordinary store (docs/store.md) of rows [lo_0, hi_0)
    <store>/rank-00001-of-00002/        ... of rows [lo_1, hi_1)

Each rank writes, commits and resumes its own part with `StoreWriter` (its own lock and
manifest), so a crash of one rank loses at most its uncommitted rows. Readers open every
part with `GradientStore` (its chunk-read path, with whatever verification it does) and
see the parts concatenated in rank order.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..store import STORE_DTYPES, GradientStore, fingerprint_digest
from ..store.store import _fsync_dir

__all__ = ["ShardedStore", "open_store", "is_sharded", "shard_dir", "SHARDS"]

SHARDS = "shards.json"
SHARDS_FORMAT = "grass.sharded_store"


def shard_dir(r: int, w: int) -> str:
    return f"rank-{r:05d}-of-{w:05d}"


def is_sharded(path: str) -> bool:
    return os.path.isfile(os.path.join(path, SHARDS))


def read_layout(path: str) -> Dict[str, Any]:
    file = os.path.join(path, SHARDS)
    with open(file) as f:
        try:
            layout = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file} is not valid JSON ({e}); the sharded store is damaged") from None
    if layout.get("format") != SHARDS_FORMAT:
        raise ValueError(f"{file} is not a grass sharded-store layout (format "
                         f"{layout.get('format')!r}, expected {SHARDS_FORMAT!r})")
    return layout


def write_layout(path: str, layout: Mapping[str, Any]) -> None:
    """Atomically (temporary file, fsync, rename, fsync the directory)."""
    os.makedirs(path, exist_ok=True)
    tmp = os.path.join(path, SHARDS + ".tmp")
    with open(tmp, "w") as f:
        json.dump(dict(layout, format=SHARDS_FORMAT), f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(path, SHARDS))
    _fsync_dir(path)


def open_store(path: str) -> GradientStore:
    """The store at ``path``: an ordinary `GradientStore`, or a `ShardedStore` when
    several ranks wrote it."""
    path = os.fspath(path)
    if is_sharded(path):
        return ShardedStore(path)
    return GradientStore(path)


def _prefix(parts) -> int:
    """Committed rows readable from the start: whole parts in order, then the committed
    head of the first incomplete part (rows of later parts are not a prefix)."""
    total = 0
    for p, first, n in parts:
        have = max(0, min(n, p.committed_rows - first))
        total += have
        if have < n:
            break
    return total


class ShardedStore(GradientStore):
    """Rows [N, K] made of row ranges of ordinary stores, concatenated in order.

    ``ShardedStore(path)`` opens a store written by several ranks; ``ShardedStore.view(
    store, lo, hi)`` is rows [lo, hi) of any store (a rank's share while scoring).
    It is a `GradientStore`: ``gradients``, ``chunks``, ``require_complete``, ``digest``,
    ``fingerprint`` and the layout properties mean the same; ``gradients(start, stop)``
    is a memory map when the rows lie in one part, a copy when they span parts.
    """

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self._layout = read_layout(self.path)
        parts = []
        for (lo, hi), sub in zip(self._layout["ranges"], self._layout["shards"]):
            if hi > lo:
                parts.append((GradientStore(os.path.join(self.path, sub)), 0, int(hi) - int(lo)))
        self._init_parts(parts, self._layout["fingerprint"], int(self._layout["num_rows"]))

    @classmethod
    def view(cls, store: GradientStore, lo: int, hi: int) -> "ShardedStore":
        """Rows [lo, hi) of ``store`` (which must be complete) as a store of hi - lo rows."""
        store.require_complete()
        lo, hi = int(lo), int(hi)
        if not 0 <= lo <= hi <= store.num_rows:
            raise IndexError(f"rows [{lo}, {hi}) are outside [0, {store.num_rows}) of {store.path!r}")
        self = cls.__new__(cls)
        self.path = store.path
        self._layout = None
        if isinstance(store, ShardedStore):
            parts, start = [], 0
            for part, first, n in store._parts:
                a, b = max(lo, start), min(hi, start + n)
                if b > a:
                    parts.append((part, first + a - start, b - a))
                start += n
        else:
            parts = [(store, lo, hi - lo)] if hi > lo else []
        self._init_parts(parts, store.fingerprint, hi - lo, like=store)
        return self

    def _init_parts(self, parts: List[Tuple[GradientStore, int, int]], fingerprint, num_rows: int,
                    like: Optional[GradientStore] = None) -> None:
        self._parts = parts  # (store, first row in it, rows)
        ref = like if like is not None else (parts[0][0] if parts else None)
        if ref is None:
            raise ValueError(f"the sharded store at {self.path!r} has no rows")
        for part, _, _ in parts:
            for key in ("dim", "block_sizes", "dtype", "layers"):
                if getattr(part, key) != getattr(ref, key):
                    raise ValueError(f"the parts of {self.path!r} disagree on {key}: "
                                     f"{getattr(part, key)!r} in {part.path!r}, "
                                     f"{getattr(ref, key)!r} in {ref.path!r}")
        total = sum(n for _, _, n in parts)
        if total != num_rows:
            raise ValueError(f"the parts of {self.path!r} hold {total} rows, the layout says "
                             f"{num_rows}: the sharded store is damaged")
        committed = _prefix(parts)
        self._manifest = {
            "fingerprint": dict(fingerprint), "num_rows": num_rows, "committed_rows": committed,
            "dim": ref.dim, "block_sizes": ref.block_sizes, "layers": ref.layers,
            "dtype": ref.dtype, "chunk_rows": ref.chunk_rows,
            "meta": dict(ref.meta, parts=[p.path for p, _, _ in parts]),
        }
        self._np_dtype, self._torch_dtype = STORE_DTYPES[ref.dtype]

    # -- description -------------------------------------------------------------------
    @property
    def digest(self) -> str:
        return fingerprint_digest(self._manifest["fingerprint"])

    @property
    def parts(self) -> List[GradientStore]:
        return [p for p, _, _ in self._parts]

    @property
    def complete(self) -> bool:
        return all(p.committed_rows >= first + n for p, first, n in self._parts)

    def refresh(self) -> "ShardedStore":
        for p, _, _ in self._parts:
            p.refresh()
        self._manifest["committed_rows"] = _prefix(self._parts)
        return self

    def require_complete(self) -> None:
        for p, first, n in self._parts:
            if p.committed_rows < first + n:
                raise RuntimeError(
                    f"the gradient store at {self.path!r} is incomplete: its part {p.path!r} has "
                    f"{p.committed_rows} of {p.num_rows} rows committed; relaunch the caching "
                    f"(with the same number of processes) to resume it")

    def __repr__(self) -> str:
        return (f"ShardedStore({self.path!r}, parts={len(self._parts)}, rows={self.committed_rows}/"
                f"{self.num_rows}, K={self.dim}, dtype={self.dtype})")

    # -- reading -----------------------------------------------------------------------
    def gradients(self, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        start, stop = self._range(start, stop)
        pieces, base = [], 0
        for part, first, n in self._parts:
            a, b = max(start, base), min(stop, base + n)
            if b > a:
                pieces.append(part.gradients(first + a - base, first + b - base))
            base += n
        if not pieces:
            return torch.empty(0, self.dim, dtype=self._torch_dtype)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def verify(self) -> None:
        for part, _, _ in self._parts:
            part.verify()
