"""Influence scores with the sign convention of docs/pipeline.md:

    τ(test, i) = −∇f(θ)ᵀ (F + λI)⁻¹ ∇ℓ_i(θ)      (per block, summed over blocks)

positive = z_i helps the target f (default f = −loss). Self-influence is
∇ℓ_iᵀ (F + λI)⁻¹ ∇ℓ_i ≥ 0.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from tqdm.auto import tqdm

from ..device import resolve_device
from .stream import RowSource, ScoreTerm, full_scores, top_k_scores

__all__ = ["influence_queries", "influence_scores", "influence_top_k", "self_influence"]


def influence_queries(target_grads: torch.Tensor, preconditioner) -> torch.Tensor:
    """Q = −(F + λI)⁻¹ ∇f [M, K]: the test side of τ, so τ = Q G_trainᵀ."""
    return -preconditioner.solve(target_grads)


def influence_scores(target_grads: torch.Tensor, preconditioner, train, *,
                     out: Optional[torch.Tensor] = None, chunk_rows: Optional[int] = None,
                     device=None, progress: bool = True) -> torch.Tensor:
    """τ [M, N] for target gradients ∇f [M, K] against training rows ``train`` (a
    `GradientStore` or a [N, K] tensor of ∇ℓ_i)."""
    q = influence_queries(target_grads, preconditioner)
    return full_scores([ScoreTerm(q, train)], out=out, chunk_rows=chunk_rows, device=device,
                       progress=progress)


def influence_top_k(target_grads: torch.Tensor, preconditioner, train, k: int, *,
                    largest: bool = True, chunk_rows: Optional[int] = None, device=None,
                    progress: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) [M, k] of the most helpful (``largest=True``) or most harmful
    training examples per test row, streamed over chunks."""
    q = influence_queries(target_grads, preconditioner)
    return top_k_scores([ScoreTerm(q, train)], k, largest=largest, chunk_rows=chunk_rows,
                        device=device, progress=progress)


def self_influence(preconditioner, train, *, chunk_rows: Optional[int] = None, device=None,
                   progress: bool = True) -> torch.Tensor:
    """∇ℓ_iᵀ (F + λI)⁻¹ ∇ℓ_i for every training row, float64 [N] (work in float64)."""
    src = RowSource(train)
    device = resolve_device(device, "self_influence: device") or torch.device("cpu")
    out = torch.empty(src.num_rows, dtype=torch.float64)
    step = int(chunk_rows) if chunk_rows is not None else src.chunk_rows
    with tqdm(total=src.num_rows, desc="self-influence", unit="ex", unit_scale=True,
              dynamic_ncols=True, disable=not progress) as bar:
        for start in range(0, src.num_rows, step):
            stop = min(src.num_rows, start + step)
            G = src.read(start, stop, torch.float64, device)
            if hasattr(preconditioner, "whiten"):  # ‖L⁻¹g‖²: one triangular solve, not two
                out[start:stop] = preconditioner.whiten(G).square().sum(dim=1).cpu()
            else:
                out[start:stop] = (G * preconditioner.solve(G)).sum(dim=1).cpu()
            bar.update(stop - start)
    return out
