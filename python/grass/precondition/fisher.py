"""The block-diagonal empirical Fisher of compressed gradients, accumulated over chunks.

For gradients G [N, K] split into blocks of columns (one per layer, sizes k_l), block l
is F_l = (1/N) G_lᵀ G_l. The unnormalised sums Σ_i g_i g_iᵀ are kept in float64 in the
packed layout of ``grass.ops`` (block l is a row-major [k_l, k_l] matrix at offset
Σ_{m<l} k_m²), so chunks can be added in any order and N is divided out at the end.
The sums use ``grass.precondition.ifvp.fisher_accumulate``: the C++ core on CPU, torch
(float64, batched per block size) on CUDA, since the CUDA toolkit grass builds against
ships no cuBLAS.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..device import resolve_device
from .ifvp import BlockBatches, fisher_accumulate

__all__ = ["BlockFisher", "packed_offsets"]


def packed_offsets(block_sizes: Sequence[int]) -> List[int]:
    """Start of each block in the packed layout (and the total size last)."""
    out, off = [0], 0
    for k in block_sizes:
        off += int(k) * int(k)
        out.append(off)
    return out


class BlockFisher:
    """Σ_i g_i g_iᵀ per block (float64) and the number of rows added."""

    def __init__(self, block_sizes: Sequence[int], device=None):
        sizes = [int(k) for k in block_sizes]
        if not sizes or any(k < 1 for k in sizes):
            raise ValueError(f"block_sizes must be a non-empty list of positive ints, got {list(block_sizes)!r}")
        self.block_sizes = sizes
        self.device = resolve_device(device, "BlockFisher: device") or torch.device("cpu")
        self._offsets = packed_offsets(sizes)
        self.sums = torch.zeros(self._offsets[-1], dtype=torch.float64, device=self.device)
        self.num_rows = 0
        self._batches = None  # gather indices of the CUDA path, built on first use

    @property
    def dim(self) -> int:
        return sum(self.block_sizes)

    def update(self, G: torch.Tensor) -> "BlockFisher":
        """Add the rows of G [n, K] (float32 or float64; other floats are converted)."""
        if not isinstance(G, torch.Tensor) or G.dim() != 2 or G.shape[1] != self.dim:
            shape = tuple(G.shape) if isinstance(G, torch.Tensor) else type(G).__name__
            raise ValueError(f"G must be a tensor [n, K={self.dim}], got {shape}")
        if G.shape[0] == 0:
            return self
        if G.dtype not in (torch.float32, torch.float64):
            G = G.float()
        if self.device.type != "cpu" and self._batches is None:
            self._batches = BlockBatches(self.block_sizes, self.device)
        fisher_accumulate(G.to(self.device).contiguous(), self.block_sizes, self.sums, self._batches)
        self.num_rows += int(G.shape[0])
        return self

    @classmethod
    def from_store(cls, store, *, device=None, chunk_rows: Optional[int] = None,
                   progress: bool = True) -> "BlockFisher":
        """Accumulate over every row of a complete `GradientStore`, chunk by chunk."""
        store.require_complete()
        fisher = cls(store.block_sizes, device=device)
        with tqdm(total=store.num_rows, desc="Fisher", unit="ex", unit_scale=True,
                  dynamic_ncols=True, disable=not progress) as bar:
            for _, G in store.chunks(chunk_rows, dtype=torch.float32, device=fisher.device):
                fisher.update(G)
                bar.update(G.shape[0])
        return fisher

    def block_sums(self, l: int) -> torch.Tensor:
        """View of block l's unnormalised sum, [k_l, k_l]."""
        k = self.block_sizes[l]
        return self.sums[self._offsets[l]:self._offsets[l + 1]].view(k, k)

    def block(self, l: int) -> torch.Tensor:
        """F_l = (1/N) Σ g g^T for block l, a new [k_l, k_l] float64 tensor."""
        self._require_rows()
        return self.block_sums(l) / self.num_rows

    def normalised(self) -> torch.Tensor:
        """All blocks divided by N, packed (a new tensor)."""
        self._require_rows()
        return self.sums / self.num_rows

    def traces(self) -> torch.Tensor:
        """trace(F_l) per block, float64 [L] on CPU."""
        self._require_rows()
        return torch.stack([torch.diagonal(self.block_sums(l)).sum()
                            for l in range(len(self.block_sizes))]).cpu() / self.num_rows

    def _require_rows(self) -> None:
        if self.num_rows == 0:
            raise RuntimeError("the Fisher has no rows yet: call update() or from_store() first")

    def to(self, device) -> "BlockFisher":
        out = BlockFisher(self.block_sizes, device=device)
        out.sums = self.sums.to(out.device)
        out.num_rows = self.num_rows
        return out

    def state_dict(self) -> Dict[str, Any]:
        return {"block_sizes": list(self.block_sizes), "num_rows": self.num_rows,
                "sums": self.sums.cpu()}

    @classmethod
    def from_state_dict(cls, state: Dict[str, Any], device=None) -> "BlockFisher":
        out = cls(state["block_sizes"], device=device)
        sums = state["sums"]
        if sums.shape != out.sums.shape:
            raise ValueError(f"Fisher state has {sums.numel()} packed entries, block sizes need "
                             f"{out.sums.numel()}")
        out.sums = sums.to(out.device, torch.float64)
        out.num_rows = int(state["num_rows"])
        return out
