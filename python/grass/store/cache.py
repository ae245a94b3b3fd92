"""Filling a store from batches: skip what is committed, compute the rest, commit.

Row i of a store is the i-th example the batches yield, so the batches must come in the
same order on every run (no shuffling). On resume, batches whose rows are all committed
are read but not computed; a batch straddling the committed boundary is computed whole
(so its rows are bitwise the rows an uninterrupted run computes) and only its new rows
are written.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from ..capture.batch import batch_size
from .store import StoreWriter

__all__ = ["fill_store"]


def fill_store(writer: StoreWriter, batches: Iterable[Any],
               compute: Callable[[Any], torch.Tensor], *, progress: bool = True,
               desc: str = "caching gradients") -> int:
    """Append ``compute(batch)`` ([B, K]) for every batch not yet committed.

    Returns the number of rows computed in this call. Raises when the batches hold
    fewer or more examples than the store's ``num_rows``.
    """
    done = writer.written_rows
    n = writer.num_rows
    if done == n:
        return 0
    computed = 0
    row = 0
    with tqdm(total=n, initial=done, desc=desc, unit="ex", unit_scale=True, dynamic_ncols=True,
              disable=not progress, smoothing=0.1) as bar:
        for batch in batches:
            b = batch_size(batch)
            if row + b <= done:  # committed in an earlier run
                row += b
                continue
            if row >= n:
                raise ValueError(f"the batches hold more than the {n} examples the store was "
                                 "created for (did the dataset change?)")
            grads = compute(batch)
            if not isinstance(grads, torch.Tensor) or grads.dim() != 2 or grads.shape[0] != b:
                shape = tuple(grads.shape) if isinstance(grads, torch.Tensor) else type(grads).__name__
                raise ValueError(f"compute(batch) must return [B={b}, K] gradients, got {shape}")
            skip = max(0, done - row)
            writer.append(grads[skip:])
            computed += b - skip
            bar.update(b - skip)
            row += b
    if row != n:
        raise ValueError(f"the batches held {row} examples but the store expects {n}; the "
                         f"{writer.committed_rows} committed rows are kept (did the dataset "
                         "change?)")
    writer.commit()
    return computed
