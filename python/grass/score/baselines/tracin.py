"""TracIn (Pruthi et al., "Estimating Training Data Influence by Tracing Gradient Descent",
NeurIPS 2020), the checkpoint form TracInCP:

    τ(z, z_i) = Σ_c η_c ∇ℓ(z; θ_c) · ∇ℓ(z_i; θ_c)

a sum over checkpoints c with learning rates η_c of plain gradient dot products (no
curvature). With a target f instead of the test loss, grass uses −∇f in place of
∇ℓ(z), so with the default f = −loss this is exactly TracInCP and positive = helpful
(a "proponent"). Gradients are compressed by any grass compressor (the paper's fast
variant uses random projections); ``Identity`` gives exact dot products.
"""
from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from ...precondition import IdentityPreconditioner
from ..checkpoints import checkpoint_weights
from ..influence import self_influence as _self_influence
from ..stream import ScoreTerm, full_scores, top_k_scores

__all__ = ["tracin_terms", "TracIn"]


def _rates(learning_rates, c: int) -> List[float]:
    if learning_rates is None:
        return [1.0] * c
    rates = [float(x) for x in (learning_rates if isinstance(learning_rates, (list, tuple))
                                else [learning_rates] * c)]
    if len(rates) != c:
        raise ValueError(f"learning_rates must have one entry per checkpoint ({c}), got {len(rates)}")
    return rates


def tracin_terms(target_grads: Sequence[torch.Tensor], train: Sequence[Any],
                 learning_rates=None) -> List[ScoreTerm]:
    """Terms for τ = Σ_c η_c (−∇f_c) · ∇ℓ_{i,c}: target_grads[c] [M, K] (∇f at checkpoint
    c), train[c] the training gradients (GradientStore or [N, K]) at checkpoint c."""
    if len(target_grads) != len(train) or not target_grads:
        raise ValueError(f"need one target-gradient matrix per training store, got "
                         f"{len(target_grads)} and {len(train)}")
    rates = _rates(learning_rates, len(train))
    return [ScoreTerm(-g, rows, scale=eta) for g, rows, eta in zip(target_grads, train, rates)]


class TracIn:
    """TracInCP over one or more checkpoints, on compressed gradients in gradient stores
    (one per checkpoint, under ``store/checkpoint-<i>``)."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, compressor, *, store: str,
                 checkpoints: Optional[Sequence[Any]] = None, learning_rates=None, layers=None,
                 include_flat: bool = False, target_fn: Optional[Callable] = None,
                 dtype: str = "float32", device=None, progress: bool = True):
        from ...attributor import Attributor
        self.model = model
        self.checkpoints = [None] if checkpoints is None else list(checkpoints)
        if not self.checkpoints:
            raise ValueError("checkpoints must hold at least one checkpoint (or be None)")
        self.learning_rates = _rates(learning_rates, len(self.checkpoints))
        self.progress = progress
        self.attributors = [
            Attributor(model, loss_fn, compressor=compressor, layers=layers,
                       store=os.path.join(os.fspath(store), f"checkpoint-{i}"),
                       target_fn=target_fn, dtype=dtype, device=device,
                       include_flat=include_flat, progress=progress)
            for i in range(len(self.checkpoints))]

    def _each(self):
        for ckpt, attr in zip(self.checkpoints, self.attributors):
            with checkpoint_weights(self.model, ckpt):
                yield attr

    def cache(self, train_loader) -> None:
        for attr in self._each():
            attr.cache(train_loader)

    def _terms(self, test) -> List[ScoreTerm]:
        grads, rows = [], []
        for attr in self._each():
            grads.append(attr.test_gradients(test))
            rows.append(attr.train_store())
        return tracin_terms(grads, rows, self.learning_rates)

    def scores(self, test, *, out=None) -> torch.Tensor:
        return full_scores(self._terms(test), out=out, device=self.attributors[0].device,
                           progress=self.progress, desc="TracIn")

    def top_k(self, test, k: int = 10, *, largest: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        return top_k_scores(self._terms(test), k, largest=largest,
                            device=self.attributors[0].device, progress=self.progress,
                            desc="TracIn (top-k)")

    def self_influence(self) -> torch.Tensor:
        """Σ_c η_c ‖∇ℓ_{i,c}‖² [N] (TracIn's self-influence, used to find mislabelled data)."""
        total = None
        for eta, attr in zip(self.learning_rates, self._each()):
            store = attr.train_store()
            s = eta * _self_influence(IdentityPreconditioner(store.block_sizes), store,
                                      device=attr.device, progress=self.progress)
            total = s if total is None else total + s
        return total
