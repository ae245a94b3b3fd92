"""DataInf (Kwon et al., "DataInf: Efficiently Estimating Data Influence in LoRA-tuned
LLMs and Diffusion Models", ICLR 2024): per block, the inverse of the damped Fisher is
replaced by the mean of rank-one inverses, which Sherman–Morrison gives in closed form:

    (F_l + λ_l I)⁻¹ ≈ (1/N) Σ_i (g_i g_iᵀ + λ_l I)⁻¹
                    = (1/(N λ_l)) Σ_i (I − g_i g_iᵀ / (λ_l + g_iᵀ g_i))

so for a vector v,  H̃_l⁻¹ v = (v − (1/N) Σ_i (g_iᵀ v)/(λ_l + ‖g_i‖²) g_i) / λ_l.
No K×K matrix is formed; applying it costs one pass over the training rows. Scores use
grass's sign convention, τ = −∇fᵀ H̃⁻¹ ∇ℓ_i (positive = helpful). The default damping is
relative, λ_l = 0.1 · trace(F_l)/k_l, as for the Cholesky path.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from ...device import resolve_device
from ...precondition.damping import DEFAULT_RELATIVE_DAMPING
from ..stream import RowSource

__all__ = ["DataInf"]


class DataInf:
    """DataInf's approximate (F_l + λ_l I)⁻¹ over training rows (a `GradientStore` or a
    [N, K] tensor); a drop-in preconditioner with ``solve(V)``."""

    def __init__(self, train, block_sizes: Optional[Sequence[int]] = None, damping=None, *,
                 relative: bool = True, chunk_rows: Optional[int] = None, device=None,
                 progress: bool = True):
        self.source = RowSource(train)
        if block_sizes is None:
            if self.source.store is None:
                raise ValueError("block_sizes is required when the training rows are a tensor")
            block_sizes = self.source.store.block_sizes
        self.block_sizes = [int(k) for k in block_sizes]
        if sum(self.block_sizes) != self.source.dim:
            raise ValueError(f"block_sizes sum to {sum(self.block_sizes)}, the rows have "
                             f"K={self.source.dim} columns")
        self.num_rows = self.source.num_rows
        self.chunk_rows = int(chunk_rows) if chunk_rows is not None else self.source.chunk_rows
        self.device = resolve_device(device, "DataInf: device") or torch.device("cpu")
        self.progress = progress
        self._slices = []
        start = 0
        for k in self.block_sizes:
            self._slices.append(slice(start, start + k))
            start += k
        L = len(self.block_sizes)
        if damping is None:
            damping, relative = DEFAULT_RELATIVE_DAMPING, True
        d = torch.as_tensor(damping, dtype=torch.float64).flatten()
        d = d.expand(L).clone() if d.numel() == 1 else d
        if d.numel() != L or bool((d <= 0).any()) or not bool(torch.isfinite(d).all()):
            raise ValueError(f"damping must be one positive number or one per block ({L}), got "
                             f"{d.tolist()}")
        if relative:
            sq = torch.zeros(L, dtype=torch.float64)
            for _, G in self._chunks("DataInf damping"):
                for l, s in enumerate(self._slices):
                    sq[l] += G[:, s].square().sum().cpu()
            mean_eig = sq / self.num_rows / torch.tensor(self.block_sizes, dtype=torch.float64)
            if bool((mean_eig <= 0).any()):
                raise ValueError(f"blocks {(mean_eig <= 0).nonzero().flatten().tolist()} have "
                                 "all-zero gradients: relative damping is undefined; pass an "
                                 "absolute damping (relative=False)")
            d = d * mean_eig
        self.damping = d

    @property
    def dim(self) -> int:
        return sum(self.block_sizes)

    def _chunks(self, desc: str):
        n = self.num_rows
        with tqdm(total=n, desc=desc, unit="ex", unit_scale=True, dynamic_ncols=True,
                  disable=not self.progress) as bar:
            for start in range(0, n, self.chunk_rows):
                stop = min(n, start + self.chunk_rows)
                yield start, self.source.read(start, stop, torch.float64, self.device)
                bar.update(stop - start)

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        """H̃⁻¹ V per block, V [M, K] -> [M, K] (V's dtype, float32 for half types)."""
        if not isinstance(V, torch.Tensor) or V.dim() != 2 or V.shape[1] != self.dim:
            shape = tuple(V.shape) if isinstance(V, torch.Tensor) else type(V).__name__
            raise ValueError(f"V must be a tensor [M, K={self.dim}], got {shape}")
        out_dtype = V.dtype if V.dtype in (torch.float32, torch.float64) else torch.float32
        v = V.detach().to(self.device, torch.float64)
        acc = torch.zeros_like(v)
        for _, G in self._chunks("DataInf"):
            for l, s in enumerate(self._slices):
                g = G[:, s]
                coef = (v[:, s] @ g.T) / (self.damping[l] + g.square().sum(1))
                acc[:, s] += coef @ g
        out = torch.empty_like(v)
        for l, s in enumerate(self._slices):
            out[:, s] = (v[:, s] - acc[:, s] / self.num_rows) / self.damping[l]
        return out.to(V.device, out_dtype)
