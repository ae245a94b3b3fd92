"""(F + λI)⁻¹ per block by Cholesky: factor once, solve for any number of vectors.

Through ``grass.precondition.ifvp``: the C++ core on CPU (float64, no LAPACK); on CUDA
``torch.linalg.cholesky_ex`` / ``torch.cholesky_solve`` in float64, batched over the
blocks of one size with one host sync per factorisation, since the CUDA toolkit grass
builds against ships no cuSOLVER. Both use the same packed layout, and the factors live
on the Fisher's device.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import torch

from .damping import Damping, resolve_damping
from .fisher import BlockFisher, packed_offsets
from .ifvp import BlockBatches, cholesky_factor, cholesky_solve

__all__ = ["Preconditioner", "IdentityPreconditioner"]


class Preconditioner:
    """Cholesky factors L_l of F_l + λ_l I, with F_l = (1/N) G_lᵀ G_l.

    Build with `Preconditioner.fit(fisher, damping=None, relative=True)`.
    """

    def __init__(self, block_sizes: Sequence[int], factors: torch.Tensor, damping: torch.Tensor,
                 num_rows: int):
        self.block_sizes = [int(k) for k in block_sizes]
        self._offsets = packed_offsets(self.block_sizes)
        if factors.dtype != torch.float64 or factors.shape != (self._offsets[-1],):
            raise ValueError(f"factors must be packed float64 [{self._offsets[-1]}], got "
                             f"{factors.dtype} {tuple(factors.shape)}")
        self.factors = factors
        self.damping = torch.as_tensor(damping, dtype=torch.float64).cpu()
        self.num_rows = int(num_rows)
        self._batches = None  # gather indices of the batched torch path, built on first use

    def _batched(self) -> BlockBatches:
        if self._batches is None:
            self._batches = BlockBatches(self.block_sizes, self.device)
        return self._batches

    @property
    def device(self) -> torch.device:
        return self.factors.device

    @property
    def dim(self) -> int:
        return sum(self.block_sizes)

    @classmethod
    def fit(cls, fisher: BlockFisher, damping: Damping = None, *, relative: bool = True) -> "Preconditioner":
        """Factor F_l + λ_l I for every block (see `resolve_damping` for ``damping``)."""
        lam = resolve_damping(fisher, damping, relative=relative)
        F = fisher.normalised()  # a new tensor: the Fisher itself is kept for refits
        try:
            cholesky_factor(F, fisher.block_sizes, lam)
        except ValueError as e:
            raise ValueError(f"{e} (damping per block: {[f'{x:.3g}' for x in lam.tolist()]}); "
                             "the damped Fisher is not positive definite: raise the damping") from None
        return cls(fisher.block_sizes, F, lam, fisher.num_rows)

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        """(F_l + λ_l I)⁻¹ V_l for every block; V [M, K] -> [M, K] in V's dtype (float32 or
        float64; half types come back as float32), on V's device. Work is in float64."""
        if not isinstance(V, torch.Tensor) or V.dim() != 2 or V.shape[1] != self.dim:
            shape = tuple(V.shape) if isinstance(V, torch.Tensor) else type(V).__name__
            raise ValueError(f"V must be a tensor [M, K={self.dim}], got {shape}")
        if V.dtype not in (torch.float32, torch.float64):
            V = V.float()
        batches = None if self.device.type == "cpu" else self._batched()
        return cholesky_solve(self.factors, self.block_sizes,
                              V.detach().to(self.device).contiguous(), batches).to(V.device)

    def whiten(self, V: torch.Tensor) -> torch.Tensor:
        """L_l⁻¹ V_l per block, float64 [M, K] on the factors' device, so that
        ‖whiten(v)‖² = vᵀ(F + λI)⁻¹v with one triangular solve instead of two (the core
        offers only the full solve; this uses torch's batched ``solve_triangular``)."""
        if not isinstance(V, torch.Tensor) or V.dim() != 2 or V.shape[1] != self.dim:
            shape = tuple(V.shape) if isinstance(V, torch.Tensor) else type(V).__name__
            raise ValueError(f"V must be a tensor [M, K={self.dim}], got {shape}")
        return self._batched().whiten(self.factors, V.detach().to(self.device, torch.float64))

    def to(self, device) -> "Preconditioner":
        return Preconditioner(self.block_sizes, self.factors.to(device), self.damping, self.num_rows)

    def state_dict(self) -> Dict[str, Any]:
        return {"block_sizes": list(self.block_sizes), "factors": self.factors.cpu(),
                "damping": self.damping, "num_rows": self.num_rows}

    @classmethod
    def from_state_dict(cls, state: Dict[str, Any], device=None) -> "Preconditioner":
        factors = state["factors"]
        if device is not None:
            factors = factors.to(device)
        return cls(state["block_sizes"], factors, state["damping"], state["num_rows"])


class IdentityPreconditioner:
    """No curvature: solve(V) = V (gradient dot products, as in TracIn)."""

    def __init__(self, block_sizes: Sequence[int]):
        self.block_sizes = [int(k) for k in block_sizes]
        self.damping = None

    @property
    def dim(self) -> int:
        return sum(self.block_sizes)

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        if not isinstance(V, torch.Tensor) or V.dim() != 2 or V.shape[1] != self.dim:
            shape = tuple(V.shape) if isinstance(V, torch.Tensor) else type(V).__name__
            raise ValueError(f"V must be a tensor [M, K={self.dim}], got {shape}")
        return V if V.dtype in (torch.float32, torch.float64) else V.float()
