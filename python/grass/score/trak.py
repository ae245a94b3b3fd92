"""TRAK (Park et al., "TRAK: Attributing Model Behavior at Scale", ICML 2023) on grass's
compressed gradients.

For a classifier with correct-class probability p(z; θ), TRAK's model output is the
margin f(z; θ) = log(p / (1 − p)). Per checkpoint m, with Φ_m [N, K] the compressed
(projected) training gradients of f, φ_m(z) the test one and Q_m = diag(1 − p_i):

    τ_m(z, i) = φ_m(z)ᵀ (Φ_mᵀ Φ_m + λI)⁻¹ φ_m(z_i) · (1 − p_i)

The kernel Φᵀ Φ is one K×K block over all layers (``block_diagonal=False``, as in TRAK),
or one block per layer. Ensembling over checkpoints: ``ensemble="mean"`` averages the
per-checkpoint scores τ_m; ``ensemble="trak"`` is the paper's estimator, the mean over
checkpoints of the kernel term times the mean of Q (the paper's optional soft
thresholding is not applied). Positive = helpful, as everywhere in grass.

This module holds TRAK's scoring: the margin target and the score terms over stores.
``grass.TRAK`` (grass/ensemble.py) composes them with one Attributor per checkpoint.
"""
from __future__ import annotations

from typing import Any, Callable, List, Sequence

import torch

from ..store.fingerprint import hash_callable
from .stream import ScoreTerm

__all__ = ["classification_margin", "correct_class_probability", "MarginTarget", "trak_terms"]


def _check_logits(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 2 or labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"expected logits [B, C] and labels [B], got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"the margin needs at least 2 classes, got logits {tuple(logits.shape)}")


def classification_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log(p_y / (1 − p_y)) = z_y − logsumexp_{j≠y} z_j per sample [B], computed stably."""
    _check_logits(logits, labels)
    y = labels.long().unsqueeze(1)
    correct = logits.gather(1, y).squeeze(1)
    others = logits.scatter(1, y, float("-inf"))
    return correct - torch.logsumexp(others, dim=1)


def correct_class_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """p_y = softmax(logits)[y] per sample [B]."""
    _check_logits(logits, labels)
    return torch.softmax(logits, dim=1).gather(1, labels.long().unsqueeze(1)).squeeze(1)


class MarginTarget:
    """``fn(model, batch) -> [B]`` margins, from ``output_fn(model, batch) -> (logits [B, C],
    labels [B])``; usable as both the training function and the target of an Attributor."""

    def __init__(self, output_fn: Callable):
        if not callable(output_fn):
            raise TypeError(f"output_fn must be callable, got {type(output_fn).__name__}")
        self.output_fn = output_fn

    def __call__(self, model, batch) -> torch.Tensor:
        logits, labels = self.output_fn(model, batch)
        return classification_margin(logits, labels)

    def __grass_fingerprint__(self):
        return {"margin_of": hash_callable(self.output_fn)}

    def probabilities(self, model, batch) -> torch.Tensor:
        with torch.no_grad():
            logits, labels = self.output_fn(model, batch)
            return correct_class_probability(logits.float(), labels)


def trak_terms(test_features: Sequence[torch.Tensor], train: Sequence[Any],
               probabilities: Sequence[torch.Tensor], preconditioners: Sequence[Any], *,
               ensemble: str = "mean") -> List[ScoreTerm]:
    """Score terms of TRAK over checkpoints m (see the module docstring).

    test_features[m]: φ_m(z) [M, K]; train[m]: Φ_m (GradientStore or [N, K]);
    probabilities[m]: p_i [N]; preconditioners[m]: solves (Φ_mᵀΦ_m/N + λI) — its
    ``num_rows`` N turns that into (Φ_mᵀΦ_m + NλI)⁻¹ = (1/N)(Φ_mᵀΦ_m/N + λI)⁻¹.
    """
    if ensemble not in ("mean", "trak"):
        raise ValueError(f"ensemble must be 'mean' or 'trak', got {ensemble!r}")
    c = len(test_features)
    if not c or not (len(train) == len(probabilities) == len(preconditioners) == c):
        raise ValueError("test_features, train, probabilities and preconditioners need one "
                         f"entry per checkpoint; got {len(test_features)}, {len(train)}, "
                         f"{len(probabilities)}, {len(preconditioners)}")
    qs = [1.0 - torch.as_tensor(p, dtype=torch.float64).flatten() for p in probabilities]
    if ensemble == "trak":
        mean_q = torch.stack(qs).mean(0)
        qs = [mean_q] * c
    terms = []
    for phi, rows, q, pre in zip(test_features, train, qs, preconditioners):
        queries = pre.solve(phi) / float(pre.num_rows)
        terms.append(ScoreTerm(queries, rows, weights=q.float(), scale=1.0 / c))
    return terms
