"""Mislabel detection: flip the labels of a fraction of the training set, train on it, and
rank training examples by how suspicious an attribution method finds them.

Two rankings (both "higher = more suspicious"):

* self-influence ∇ℓ_iᵀ (F + λI)⁻¹ ∇ℓ_i: a flipped example is hard to fit, so its own
  loss is very sensitive to its own weight;
* harm to a clean validation set: −Σ_v τ(v, i) (τ > 0 helps), since a flipped example
  pulls the model away from correct predictions.

Reported: ROC AUC of the ranking for the flipped set, and the fraction of flipped examples
found when inspecting the top 10% / 20% of the ranking.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np
import torch

from . import metrics

__all__ = ["flip_labels", "detection_report", "harm_to_validation", "DEFAULT_INSPECTED"]

DEFAULT_INSPECTED = (0.1, 0.2)


def flip_labels(y: torch.Tensor, fraction: float, classes: int, seed: int
                ) -> Tuple[torch.Tensor, np.ndarray]:
    """(labels with exactly round(fraction * N) of them changed to a different class drawn
    uniformly, boolean mask of the flipped ones [N])."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if classes < 2:
        raise ValueError(f"classes must be >= 2 to flip a label, got {classes}")
    y = torch.as_tensor(y)
    if y.dim() != 1:
        raise ValueError(f"y must be a 1-D tensor of class labels, got shape {tuple(y.shape)}")
    n = int(y.shape[0])
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n, size=int(round(fraction * n)), replace=False)
    shift = rng.integers(1, classes, size=chosen.size)   # never 0: the label always changes
    y_new = y.clone()
    y_new[torch.from_numpy(chosen)] = (y[torch.from_numpy(chosen)] + torch.from_numpy(shift)) % classes
    flipped = np.zeros(n, dtype=bool)
    flipped[chosen] = True
    return y_new, flipped


def harm_to_validation(scores) -> np.ndarray:
    """Suspicion from validation scores τ [n_val, N]: −Σ_v τ(v, i) [N]."""
    s = scores.detach().cpu().double().numpy() if hasattr(scores, "detach") else np.asarray(scores)
    return -s.sum(0)


def detection_report(suspicion, flipped, inspected: Sequence[float] = DEFAULT_INSPECTED
                     ) -> Dict[str, float]:
    """{"auc": ..., "found@0.1": ..., ...} for a suspicion ranking (higher = flagged first)."""
    s = suspicion.detach().cpu().double().numpy() if hasattr(suspicion, "detach") else np.asarray(suspicion, float)
    if not np.isfinite(s).all():
        raise ValueError("the suspicion scores hold NaN or inf")
    out = {"auc": metrics.auc(s, flipped)}
    for f in inspected:
        out[f"found@{f:g}"] = metrics.fraction_found(s, flipped, f)
    return out
