"""The iFVP's three steps on packed block-diagonal matrices, one implementation per device.

Block l of a packed float64 tensor is a row-major [k_l, k_l] matrix at offset
Σ_{m<l} k_m² (the layout of ``grass.ops``). On the CPU the steps are the C++ core's
(``grass.ops.fisher_accumulate`` / ``cholesky_factor`` / ``cholesky_solve``: blocked,
OpenMP, no LAPACK; bench/bench_ifvp.py measures them against this module's torch path and
docs/scoring.md records the numbers). On CUDA they are torch's, batched: the blocks of one
size are gathered into one [n, k, k] batch, so a step costs a few launches per distinct
block size (not per block), and a factorisation checks every block's result with one
host synchronisation. The torch path runs on CPU tensors too (the tests compare it with the
core there), through :class:`BlockBatches` with ``torch_path=True``.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

from .. import ops

__all__ = ["BlockBatches", "fisher_accumulate", "cholesky_factor", "cholesky_solve"]


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on device without a host sync (pinned, asynchronous on CUDA)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class BlockBatches:
    """The blocks of a packed layout grouped by size, with the gather indices of each group
    on one device: for size k, the blocks ls, the packed positions [n·k·k] of their matrices
    and the columns [n·k] of their coordinates."""

    def __init__(self, block_sizes: Sequence[int], device):
        self.block_sizes = [int(k) for k in block_sizes]
        self.device = torch.device(device)
        by_size: Dict[int, List[int]] = {}
        for l, k in enumerate(self.block_sizes):
            by_size.setdefault(k, []).append(l)
        offsets, cols, off, col = [], [], 0, 0
        for k in self.block_sizes:
            offsets.append(off)
            cols.append(col)
            off += k * k
            col += k
        self.groups: List[Tuple[int, List[int], torch.Tensor, torch.Tensor]] = []
        for k, ls in by_size.items():
            pos = torch.cat([torch.arange(offsets[l], offsets[l] + k * k) for l in ls])
            col_idx = torch.cat([torch.arange(cols[l], cols[l] + k) for l in ls])
            self.groups.append((k, ls, _to(pos, self.device), _to(col_idx, self.device)))

    # ------------------------------------------------------------------ the three steps

    def fisher_accumulate(self, G: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
        """F_l += G_lᵀ G_l for every block (float64), G [N, K] on the layout's device."""
        N = G.shape[0]
        for k, ls, pos, cols in self.groups:
            Gg = G.index_select(1, cols).to(torch.float64).view(N, len(ls), k).transpose(0, 1)
            F.index_add_(0, pos, torch.bmm(Gg.transpose(1, 2), Gg).reshape(-1))
        return F

    def cholesky_factor(self, F: torch.Tensor, damping: torch.Tensor) -> torch.Tensor:
        """In place: F_l + λ_l I = L_l L_lᵀ. Reads only the lower triangle of each block;
        afterwards its strict upper triangle is zero. One host sync checks every block; on
        failure F is left as it came and the first failing block is named."""
        lam = _to(damping.to(torch.float64), self.device)
        factors, infos = [], []
        for k, ls, pos, _ in self.groups:
            A = F.index_select(0, pos).view(len(ls), k, k)
            ls_t = _to(torch.tensor(ls), self.device)
            A = A + lam.index_select(0, ls_t).view(-1, 1, 1) * torch.eye(
                k, dtype=torch.float64, device=self.device)
            factor, info = torch.linalg.cholesky_ex(A)
            factors.append(factor)
            infos.append(info)
        info_all = torch.cat(infos).tolist()  # the one synchronisation of a factorisation
        order = [l for _, ls, _, _ in self.groups for l in ls]
        failed = sorted((l, i) for l, i in zip(order, info_all) if i != 0)
        if failed:
            l, minor = failed[0]
            raise ValueError(
                f"block {l} (size {self.block_sizes[l]}) is not positive definite: leading minor "
                f"{minor} fails after damping {float(damping[l])}; raise damping (F was left "
                f"unchanged)")
        for (k, ls, pos, _), factor in zip(self.groups, factors):
            F.index_copy_(0, pos, factor.reshape(-1))
        return F

    def cholesky_solve(self, L: torch.Tensor, V: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out[:, block l] = (L_l L_lᵀ)⁻¹ V[:, block l] in float64, stored in out's dtype."""
        M = V.shape[0]
        for k, ls, pos, cols in self.groups:
            Lg = L.index_select(0, pos).view(len(ls), k, k)
            Vg = V.index_select(1, cols).to(torch.float64).view(M, len(ls), k).permute(1, 2, 0)
            X = torch.cholesky_solve(Vg, Lg)  # [n, k, M]
            out.index_copy_(1, cols, X.permute(2, 0, 1).reshape(M, len(ls) * k).to(out.dtype))
        return out

    def whiten(self, L: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """L_l⁻¹ V[:, block l] per block, float64 [M, K]."""
        M = V.shape[0]
        out = torch.empty(V.shape, dtype=torch.float64, device=self.device)
        for k, ls, pos, cols in self.groups:
            Lg = L.index_select(0, pos).view(len(ls), k, k)
            Vg = V.index_select(1, cols).to(torch.float64).view(M, len(ls), k).permute(1, 2, 0)
            X = torch.linalg.solve_triangular(Lg, Vg, upper=False)
            out.index_copy_(1, cols, X.permute(2, 0, 1).reshape(M, len(ls) * k))
        return out


# ---------------------------------------------------------------------- by device

def fisher_accumulate(G: torch.Tensor, block_sizes: Sequence[int], F: torch.Tensor,
                      batches: BlockBatches = None) -> torch.Tensor:
    """F += the per-block Gram matrices of G [N, K] (float32/float64), on F's device: the
    C++ core on the CPU, torch (batched) on CUDA."""
    if F.device.type == "cpu":
        return ops.fisher_accumulate(G, block_sizes, F=F)
    return (batches or BlockBatches(block_sizes, F.device)).fisher_accumulate(G, F)


def cholesky_factor(F: torch.Tensor, block_sizes: Sequence[int], damping: torch.Tensor,
                    batches: BlockBatches = None) -> torch.Tensor:
    """In place: F_l + damping[l] I = L_l L_lᵀ (reads only the lower triangles): the core
    on the CPU, torch with one host sync on CUDA. damping: float64 [L] on the CPU."""
    if F.device.type == "cpu":
        return ops.cholesky_factor(F, block_sizes, damping)
    return (batches or BlockBatches(block_sizes, F.device)).cholesky_factor(F, damping)


def cholesky_solve(L: torch.Tensor, block_sizes: Sequence[int], V: torch.Tensor,
                   batches: BlockBatches = None) -> torch.Tensor:
    """(L_l L_lᵀ)⁻¹ V_l for every block; V [M, K] float32/float64 on L's device."""
    if L.device.type == "cpu":
        return ops.cholesky_solve(L, block_sizes, V)
    out = torch.empty_like(V)
    return (batches or BlockBatches(block_sizes, L.device)).cholesky_solve(L, V, out)
