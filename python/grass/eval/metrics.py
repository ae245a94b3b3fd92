"""Metrics: linear datamodeling score (LDS), bootstrap confidence intervals, detection AUC
and the fraction of positives found when inspecting the top of a ranking.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

__all__ = ["rankdata", "spearman_rows", "lds_per_example", "bootstrap_ci", "Estimate",
           "estimate", "auc", "fraction_found", "detection_curve"]


def _np(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def rankdata(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank) along ``axis``."""
    a = np.moveaxis(_np(a), axis, -1)
    n = a.shape[-1]
    order = np.argsort(a, axis=-1, kind="stable")
    sorted_a = np.take_along_axis(a, order, -1)
    flat_s = sorted_a.reshape(-1, n)
    # Runs of equal values (never crossing rows) share the mean of their positions.
    new = np.ones_like(flat_s, dtype=bool)
    new[:, 1:] = flat_s[:, 1:] != flat_s[:, :-1]
    run = np.cumsum(new.ravel()) - 1
    pos = np.tile(np.arange(1, n + 1, dtype=np.float64), flat_s.shape[0])
    mean_pos = np.bincount(run, weights=pos) / np.bincount(run)
    ranks_sorted = mean_pos[run].reshape(sorted_a.shape)
    ranks = np.empty_like(ranks_sorted)
    np.put_along_axis(ranks, order, ranks_sorted, -1)
    return np.moveaxis(ranks, -1, axis)


def spearman_rows(a, b) -> np.ndarray:
    """Spearman correlation of each row of ``a`` [R, M] with the same row of ``b`` [R, M].

    A row where either side is constant has no defined correlation; it counts as 0 (the
    ranking carries no information), never as a dropped row.
    """
    a, b = _np(a), _np(b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"spearman_rows needs two [R, M] arrays of the same shape, got "
                         f"{a.shape} and {b.shape}")
    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    num = (ra * rb).sum(1)
    out = np.zeros(a.shape[0])
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def lds_per_example(scores, masks, targets) -> np.ndarray:
    """Per-test-example LDS.

    scores  [n_test, N]: τ(test j, train i), positive = helps the target.
    masks   [M, N] bool: training subset S_m of each retrained model.
    targets [M, n_test]: the target of test j under the model trained on S_m.
    Returns [n_test]: Spearman over m of (Σ_{i∈S_m} τ(j, i), targets[m, j]).
    """
    scores, masks, targets = _np(scores), _np(masks), _np(targets)
    if scores.ndim != 2 or masks.ndim != 2 or targets.ndim != 2:
        raise ValueError("scores, masks and targets must be 2-D")
    if scores.shape[1] != masks.shape[1]:
        raise ValueError(f"scores have {scores.shape[1]} training columns but masks have "
                         f"{masks.shape[1]}")
    if targets.shape != (masks.shape[0], scores.shape[0]):
        raise ValueError(f"targets must have shape [M, n_test] = {(masks.shape[0], scores.shape[0])}, "
                         f"got {targets.shape}")
    predicted = scores @ masks.T                      # [n_test, M]
    return spearman_rows(predicted, targets.T)


@dataclass(frozen=True)
class Estimate:
    """A mean with a bootstrap percentile confidence interval."""

    mean: float
    low: float
    high: float
    level: float = 0.95

    def __str__(self) -> str:
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"

    def to_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "level": self.level}


def bootstrap_ci(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0
                 ) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement)."""
    v = _np(values).ravel()
    if v.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 256):  # chunks keep memory at 256 * n
        stop = min(n_boot, start + 256)
        idx = rng.integers(0, v.size, size=(stop - start, v.size))
        means[start:stop] = v[idx].mean(1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def estimate(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    lo, hi = bootstrap_ci(values, n_boot, level, seed)
    return Estimate(float(_np(values).mean()), lo, hi, level)


def auc(scores, positive) -> float:
    """ROC AUC of ``scores`` (higher = more likely positive) for boolean labels
    ``positive``: the Mann-Whitney statistic with ties counted half."""
    s, pos = _np(scores).ravel(), np.asarray(positive, dtype=bool).ravel()
    if s.shape != pos.shape:
        raise ValueError(f"scores and positive must have the same length, got {s.size} and {pos.size}")
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auc needs at least one positive and one negative example")
    ranks = rankdata(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fraction_found(scores, positive, inspected: float) -> float:
    """Fraction of all positives among the top ``inspected`` fraction of ``scores``
    (highest first; ties broken by index)."""
    s, pos = _np(scores).ravel(), np.asarray(positive, dtype=bool).ravel()
    if not 0 <= inspected <= 1:
        raise ValueError(f"inspected must be a fraction in [0, 1], got {inspected}")
    if pos.sum() == 0:
        raise ValueError("fraction_found needs at least one positive example")
    top = np.argsort(-s, kind="stable")[:int(round(inspected * s.size))]
    return float(pos[top].sum() / pos.sum())


def detection_curve(scores, positive) -> Tuple[np.ndarray, np.ndarray]:
    """(fraction inspected, fraction of positives found), inspecting highest scores first;
    both start at 0 and end at 1."""
    s, pos = _np(scores).ravel(), np.asarray(positive, dtype=bool).ravel()
    order = np.argsort(-s, kind="stable")
    found = np.concatenate([[0.0], np.cumsum(pos[order]) / max(pos.sum(), 1)])
    return np.arange(s.size + 1) / s.size, found
