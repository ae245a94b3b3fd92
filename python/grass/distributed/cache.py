"""Caching under torch.distributed: each rank computes and writes its own share of the rows.

Rank r owns rows [lo_r, hi_r) of the N examples the loader yields (contiguous shares; with
a ``DataLoader`` of batch size b the shares are whole batches, so every rank computes the
same batches a single process would). A rank reads only its own examples when the loader
is a plain sequential ``DataLoader`` (it is rebuilt over a ``Subset``); any other loader
is iterated in full and the rank keeps its rows. Each rank writes an ordinary store under
``<store>/rank-r-of-W`` with `StoreWriter` / `fill_store`, so it resumes by itself after
a crash; ``shards.json`` (written by rank 0 before any row) names the parts.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterator, Optional

import torch

from ..capture.batch import batch_size, take
from ..store import GradientStore, StoreWriter, check_fingerprint, fill_store
from . import group
from .sharded_store import (SHARDS, ShardedStore, is_sharded, read_layout, shard_dir,
                            write_layout)

__all__ = ["shard_ranges", "rank_batches", "write_sharded"]


def shard_ranges(loader, n: int, w: int):
    """[(lo, hi)] per rank: whole batches of a DataLoader with a fixed batch size, else rows."""
    b = getattr(loader, "batch_size", None)
    if isinstance(loader, torch.utils.data.DataLoader) and isinstance(b, int) and b >= 1:
        nb = -(-n // b)
        return [(min(n, (r * nb // w) * b), min(n, ((r + 1) * nb // w) * b)) for r in range(w)]
    return [group.row_range(n, r, w) for r in range(w)]


def _plain_sequential(loader) -> bool:
    DL = torch.utils.data.DataLoader
    return (type(loader) is DL and isinstance(loader.sampler, torch.utils.data.SequentialSampler)
            and isinstance(loader.batch_size, int) and hasattr(loader.dataset, "__getitem__")
            and not isinstance(loader.dataset, torch.utils.data.IterableDataset))


def rank_batches(loader, lo: int, hi: int) -> Iterator[Any]:
    """The batches holding rows [lo, hi) of ``loader``, cut to exactly those rows."""
    if _plain_sequential(loader):
        DL = torch.utils.data.DataLoader
        sub = DL(torch.utils.data.Subset(loader.dataset, range(lo, hi)), batch_size=loader.batch_size,
                 shuffle=False, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                 pin_memory=loader.pin_memory, drop_last=False, timeout=loader.timeout,
                 worker_init_fn=loader.worker_init_fn,
                 persistent_workers=loader.persistent_workers if loader.num_workers > 0 else False)
        yield from sub
        return
    row = 0
    for batch in loader:
        b = batch_size(batch)
        a, e = max(lo, row), min(hi, row + b)
        if e > a:
            yield batch if (a, e) == (row, row + b) else take(batch, torch.arange(a - row, e - row))
        row += b
        if row >= hi:
            return


def write_sharded(attr, loader, sub: str, fp: Dict[str, Any], n: int, fn: Callable, desc: str,
                  check_batch: bool) -> GradientStore:
    """Write this rank's share of the store ``sub`` of Attributor ``attr`` (fingerprint
    ``fp`` of the whole run), wait for every rank, and return the whole store.

    A run directory whose store is complete is returned as it is, whoever wrote it; an
    incomplete sharded store must be resumed by as many ranks as started it.
    """
    path = attr._path(sub)
    w, r = group.world_size(), group.rank()
    single = os.path.isfile(os.path.join(path, "manifest.json"))
    if single or (is_sharded(path) and read_layout(path)["world_size"] != w):
        existing = ShardedStore(path) if not single else GradientStore(path)
        check_fingerprint({k: existing.fingerprint.get(k, "<missing>") for k in fp}, fp,
                          where=repr(path))
        if existing.complete:
            return existing
        started = 1 if single else read_layout(path)["world_size"]
        raise RuntimeError(f"the store at {path!r} was started by {started} process(es) and is "
                           f"incomplete ({existing.committed_rows} of {existing.num_rows} rows "
                           f"readable); resume it with {started} process(es), not {w}")
    ranges = shard_ranges(loader, n, w)
    layout = {"num_rows": n, "world_size": w, "ranges": [list(x) for x in ranges],
              "shards": [shard_dir(i, w) for i in range(w)],
              "fingerprint": fp}
    if is_sharded(path):
        old = read_layout(path)
        check_fingerprint(old["fingerprint"], fp, where=repr(path))
        if old["ranges"] != layout["ranges"]:
            raise RuntimeError(f"the store at {path!r} was split as {old['ranges']}, this launch "
                               f"splits it as {layout['ranges']} (did the loader's batch size change?)")
    else:
        leftovers = set(os.listdir(path)) - {SHARDS + ".tmp"} if os.path.isdir(path) else set()
        if leftovers - {shard_dir(i, w) for i in range(w)}:
            raise FileExistsError(f"{path!r} is not empty and holds no gradient store "
                                  f"({sorted(leftovers)[:5]}); choose an empty or new directory")
        group.barrier()  # nobody looks for shards.json before every rank has checked the directory
        if r == 0:
            write_layout(path, layout)
        group.barrier()
    lo, hi = ranges[r]
    if hi > lo:
        part_fp = dict(fp, shard={"rank": r, "world_size": w, "rows": [lo, hi]})
        with StoreWriter(os.path.join(path, shard_dir(r, w)), fingerprint=part_fp, num_rows=hi - lo,
                         block_sizes=attr.block_sizes, dtype=attr.dtype,
                         chunk_rows=attr.chunk_rows, layers=[i.name for i in attr.layers],
                         meta={"rank": r, "world_size": w, "rows": [lo, hi]}) as writer:
            batches = rank_batches(loader, lo, hi)
            if check_batch and writer.written_rows < hi - lo:
                first = next(batches)
                if batch_size(first) >= 2:
                    attr.capture.check_batch_invariance(attr.to_device(first), fn)
                import itertools
                batches = itertools.chain([first], batches)
            fill_store(writer, batches, lambda b: attr._compute(b, fn),
                       progress=attr.progress, desc=f"{desc} [rank {r}/{w}]")
    group.barrier()
    return ShardedStore(path)
