"""Exact influence for small models: no compression, explicit per-sample gradients
(``torch.func``), the full damped block-diagonal empirical Fisher per layer
(p_l × p_l), float64 by default:

    τ(test, i) = −∇fᵀ (F + λI)⁻¹ ∇ℓ_i,   F_l = (1/N) Σ_i ∇_l ℓ_i ∇_l ℓ_iᵀ

Memory is N·P for the gradients and Σ p_l² for the Fisher, so this is for models with
up to a few hundred thousand attributed parameters; it is the reference the compressed
methods approach as k grows.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional, Tuple

import torch

from ...capture.select import discover_layers
from ...device import resolve_device
from ...precondition import BlockFisher, Preconditioner
from ..influence import influence_queries, self_influence as _self_influence
from ..stream import ScoreTerm, full_scores, top_k_scores
from ..targets import resolve_target
from .functional import ParamSpace, move_batch, per_sample_gradients

__all__ = ["ExactInfluence"]


class ExactInfluence:
    """Uncompressed block-diagonal Fisher influence on explicit per-sample gradients."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, *, layers=None,
                 include_flat: bool = False, target_fn: Optional[Callable] = None,
                 dtype: torch.dtype = torch.float64, device=None, progress: bool = True):
        self.dtype = dtype
        self.device = resolve_device(device, "ExactInfluence: device") or next(model.parameters()).device
        # A private copy in the working precision; the user's model is left as it is.
        self.model = copy.deepcopy(model).to(device=self.device, dtype=dtype)
        self.loss_fn = loss_fn
        self.target_fn = resolve_target(loss_fn, target_fn)
        self.layers = [info for info, _ in discover_layers(self.model, layers, include_flat=include_flat)]
        self.space = ParamSpace(self.model, [info.param_names for info in self.layers])
        self.progress = progress
        self.train_gradients: Optional[torch.Tensor] = None
        self.fisher: Optional[BlockFisher] = None
        self.preconditioner: Optional[Preconditioner] = None

    def _to(self, batch):
        return move_batch(batch, self.device, self.dtype)

    def gradients(self, loader, fn: Callable) -> torch.Tensor:
        """Explicit per-sample gradients [n, P] of ``fn`` over a loader."""
        return torch.cat([per_sample_gradients(self.space, fn, self._to(b)) for b in loader])

    def fit(self, train_loader, damping=None, *, relative: bool = True) -> "ExactInfluence":
        """Per-sample training gradients, the Fisher per layer, and its damped Cholesky."""
        self.train_gradients = self.gradients(train_loader, self.loss_fn)
        self.fisher = BlockFisher(self.space.block_sizes, device=self.device).update(self.train_gradients)
        self.preconditioner = Preconditioner.fit(self.fisher, damping, relative=relative)
        return self

    def refit(self, damping=None, *, relative: bool = True) -> "ExactInfluence":
        """New damping without recomputing gradients."""
        self._require_fit()
        self.preconditioner = Preconditioner.fit(self.fisher, damping, relative=relative)
        return self

    def _require_fit(self):
        if self.preconditioner is None:
            raise RuntimeError("call fit(train_loader) first")

    def _queries(self, test_loader) -> torch.Tensor:
        self._require_fit()
        return influence_queries(self.gradients(test_loader, self.target_fn), self.preconditioner)

    def scores(self, test_loader) -> torch.Tensor:
        """τ [M, N] in the working dtype."""
        return full_scores([ScoreTerm(self._queries(test_loader), self.train_gradients)],
                           dtype=self.dtype, progress=self.progress, desc="exact influence")

    def top_k(self, test_loader, k: int = 10, *, largest: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        return top_k_scores([ScoreTerm(self._queries(test_loader), self.train_gradients)], k,
                            largest=largest, dtype=self.dtype, progress=self.progress)

    def self_influence(self) -> torch.Tensor:
        self._require_fit()
        return _self_influence(self.preconditioner, self.train_gradients, progress=self.progress)
