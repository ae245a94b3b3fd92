"""TracIn (Pruthi et al., "Estimating Training Data Influence by Tracing Gradient Descent",
NeurIPS 2020), the checkpoint form TracInCP:

    τ(z, z_i) = Σ_c η_c ∇ℓ(z; θ_c) · ∇ℓ(z_i; θ_c)

a sum over checkpoints c with learning rates η_c of plain gradient dot products (no
curvature). With a target f instead of the test loss, grass uses −∇f in place of
∇ℓ(z), so with the default f = −loss this is exactly TracInCP and positive = helpful
(a "proponent"). Gradients are compressed by any grass compressor (the paper's fast
variant uses random projections); ``Identity`` gives exact dot products.

This module holds TracIn's scoring over stores; ``grass.TracIn`` (grass/ensemble.py)
composes it with one Attributor per checkpoint.
"""
from __future__ import annotations

from typing import Any, List, Sequence

import torch

from ..stream import ScoreTerm

__all__ = ["tracin_terms", "checkpoint_rates"]


def checkpoint_rates(learning_rates, c: int) -> List[float]:
    """One learning rate η_c per checkpoint (1 each when None; a number is used for all)."""
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
    rates = checkpoint_rates(learning_rates, len(train))
    return [ScoreTerm(-g, rows, scale=eta) for g, rows, eta in zip(target_grads, train, rates)]
