"""Learning a selective mask: which k' gradient coordinates best preserve train x test
inner products (the GraSS paper's Selective Mask; objective and defaults in docs/compress.md).

Logits S (one per coordinate, or one per input and one per output dimension of a linear
layer) give a soft mask w = sigmoid(S). Masking both gradients weighs coordinate j's
product by w_j^2, so the masked inner products are

    flat:      <w*x, w*y> = sum_j w_j^2 x_j y_j
    factored:  sum_{o,i} w_out[o]^2 w_in[i]^2 G_x[o,i] G_y[o,i]

We maximise the mean, over test gradients, of the Pearson correlation across training
gradients between masked and full inner products, minus an l1 penalty lambda * mean(w)
(per factor) that drives the mask towards few entries. lambda rises geometrically from
l1[0] to l1[1] over the run, so the soft mask sweeps from dense to sparse; every
``eval_every`` steps the hard mask (top-k' logits) is scored on held-out gradients and
the best one is kept. Nothing here is random except the initial logits and the
fit/held-out split, both drawn from the layer's seed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Mapping, Optional, Tuple, Union

import torch

__all__ = ["MaskFit", "learn_flat_mask", "learn_factor_masks", "column_correlation"]


@dataclass(frozen=True)
class MaskFit:
    """Hyper-parameters of selective-mask learning.

    steps: Adam steps on the logits. lr: Adam learning rate.
    l1: (start, end) of the geometric ramp of the l1 weight lambda.
    holdout: fraction of the fitting sample (train and test rows alike) held out to pick the
    best hard mask. eval_every: steps between held-out evaluations.
    init_std: standard deviation of the initial logits. At w = 1/2 everywhere the masked
    inner products are proportional to the full ones, so the correlation is at its maximum
    and its gradient vanishes; a tiny random start breaks that tie (larger starting noise
    gave worse masks in our runs, see docs/compress.md).
    """

    steps: int = 300
    lr: float = 0.05
    l1: Tuple[float, float] = (1e-2, 10.0)
    holdout: float = 0.25
    eval_every: int = 5
    init_std: float = 1e-3

    def __post_init__(self):
        l1 = tuple(float(v) for v in self.l1)
        object.__setattr__(self, "l1", l1)
        if int(self.steps) < 1:
            raise ValueError(f"MaskFit.steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"MaskFit.lr must be > 0, got {self.lr}")
        if len(l1) != 2 or not (0 < l1[0] <= l1[1]):
            raise ValueError(f"MaskFit.l1 must be (start, end) with 0 < start <= end, got {self.l1}")
        if not 0 < self.holdout < 1:
            raise ValueError(f"MaskFit.holdout must be in (0, 1), got {self.holdout}")
        if int(self.eval_every) < 1:
            raise ValueError(f"MaskFit.eval_every must be >= 1, got {self.eval_every}")
        if self.init_std < 0:
            raise ValueError(f"MaskFit.init_std must be >= 0, got {self.init_std}")

    @classmethod
    def coerce(cls, value) -> "MaskFit":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"unknown MaskFit options {unknown}; known: {sorted(known)}")
            return cls(**value)
        raise TypeError(f"fit options must be a MaskFit or a dict, got {type(value).__name__}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["l1"] = list(self.l1)
        return d


def column_correlation(approx: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """Mean over columns (test gradients) of the Pearson correlation across rows (training
    gradients) of two [n, m] inner-product matrices. Columns where ``full`` is constant carry
    no ranking and are left out; a constant ``approx`` column counts as 0."""
    xc = approx - approx.mean(0)
    yc = full - full.mean(0)
    ynorm = yc.norm(dim=0)
    valid = ynorm > 0
    if not bool(valid.any()):
        raise ValueError("the full inner products are constant over the training gradients for "
                         "every test gradient: there is nothing to preserve (are the gradients zero?)")
    num = (xc * yc).sum(0)[valid]
    den = (xc.norm(dim=0)[valid] * ynorm[valid]).clamp_min(torch.finfo(full.dtype).tiny)
    return (num / den).mean()


# ---- the two problem shapes ------------------------------------------------------------------

class _Flat:
    """Rows are flat gradients [n, p]."""

    def __init__(self, tr, te):
        self.tr, self.te = tr, te

    def soft(self, w):  # w [p]
        return (self.tr * w.square()) @ self.te.T

    def full(self):
        return self.tr @ self.te.T

    def hard(self, idx):
        return self.tr[:, idx] @ self.te[:, idx].T


class _FactoredGrads:
    """Rows are per-sample gradients [n, d_out, d_in']."""

    def __init__(self, tr, te):
        self.tr, self.te = tr, te

    def soft(self, w_in, w_out):
        weight = w_out.square()[:, None] * w_in.square()[None, :]
        return (self.tr * weight).flatten(1) @ self.te.flatten(1).T

    def full(self):
        return self.tr.flatten(1) @ self.te.flatten(1).T

    def hard(self, idx_in, idx_out):
        tr = self.tr[:, idx_out][:, :, idx_in].flatten(1)
        te = self.te[:, idx_out][:, :, idx_in].flatten(1)
        return tr @ te.T


class _FactoredRank1:
    """One token per sample: the gradient is g a^T, so <G_x, G_y> = <a_x, a_y> <g_x, g_y>."""

    def __init__(self, tr, te):
        (self.a_tr, self.g_tr), (self.a_te, self.g_te) = tr, te

    def soft(self, w_in, w_out):
        return (((self.a_tr * w_in.square()) @ self.a_te.T)
                * ((self.g_tr * w_out.square()) @ self.g_te.T))

    def full(self):
        return (self.a_tr @ self.a_te.T) * (self.g_tr @ self.g_te.T)

    def hard(self, idx_in, idx_out):
        return ((self.a_tr[:, idx_in] @ self.a_te[:, idx_in].T)
                * (self.g_tr[:, idx_out] @ self.g_te[:, idx_out].T))


# ---- splitting and normalising the sample ------------------------------------------------------

def _rows(x) -> int:
    return int(x[0].shape[0]) if isinstance(x, tuple) else int(x.shape[0])


def _take(x, idx):
    return tuple(t[idx] for t in x) if isinstance(x, tuple) else x[idx]


def _normalise(x):
    # Inner products of tiny gradients can underflow float32; correlations do not care
    # about a global scale, so bring the sample to unit RMS first.
    if isinstance(x, tuple):
        return tuple(_normalise(t) for t in x)
    x = x.float()
    rms = x.square().mean().sqrt()
    return x / rms if rms > 0 else x


def _split(train, test, holdout: float, gen: torch.Generator):
    """(fit_train, fit_test, held_train, held_test); without test gradients the training
    sample is split in two and one half plays the test side."""
    if test is None:
        n = _rows(train)
        if n < 8:
            raise ValueError(f"selective-mask fitting needs at least 8 training gradients when no "
                             f"test gradients are given, got {n}")
        perm = torch.randperm(n, generator=gen)
        train, test = _take(train, perm[: n // 2]), _take(train, perm[n // 2:])
    parts = []
    for what, x in (("train", train), ("test", test)):
        n = _rows(x)
        held = max(2, int(round(holdout * n)))
        if n - held < 2:
            raise ValueError(f"selective-mask fitting needs at least 4 {what} gradients (2 to fit, "
                             f"2 held out with holdout={holdout}), got {n}")
        perm = torch.randperm(n, generator=gen)
        parts.append((_take(x, perm[held:]), _take(x, perm[:held])))
    (tr_fit, tr_held), (te_fit, te_held) = parts
    return tr_fit, te_fit, tr_held, te_held


def _topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    return torch.topk(logits.detach(), k, sorted=False).indices.sort().values


# ---- the optimisation --------------------------------------------------------------------------

def _optimise(problem_cls, train, test, sizes, ks, fit: MaskFit, seed: int):
    gen = torch.Generator().manual_seed(int(seed) % (1 << 63))
    tr_fit, te_fit, tr_held, te_held = _split(train, test, fit.holdout, gen)
    fit_p = problem_cls(_normalise(tr_fit), _normalise(te_fit))
    held_p = problem_cls(_normalise(tr_held), _normalise(te_held))
    device = (tr_fit[0] if isinstance(tr_fit, tuple) else tr_fit).device
    full_fit = fit_p.full()
    full_held = held_p.full()

    logits = [(torch.randn(d, generator=gen) * fit.init_std).to(device).requires_grad_(True)
              for d in sizes]
    opt = torch.optim.Adam(logits, lr=fit.lr)
    lo, hi = fit.l1
    best = (-math.inf, None, -1)
    for step in range(int(fit.steps)):
        lam = lo * (hi / lo) ** (step / max(1, fit.steps - 1))
        ws = [torch.sigmoid(s) for s in logits]
        loss = -column_correlation(fit_p.soft(*ws), full_fit) + lam * sum(w.mean() for w in ws)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % fit.eval_every == 0 or step + 1 == fit.steps:
            with torch.no_grad():
                idx = [_topk(s, k) for s, k in zip(logits, ks)]
                score = float(column_correlation(held_p.hard(*idx), full_held))
            if score > best[0]:
                best = (score, [i.cpu() for i in idx], step + 1)

    # The same held-out score for a random mask of the same size, for the report.
    rand = [torch.randperm(d, generator=gen)[:k].sort().values.to(device) for d, k in zip(sizes, ks)]
    with torch.no_grad():
        random_score = float(column_correlation(held_p.hard(*rand), full_held))
    report = {"heldout_correlation": best[0], "random_mask_correlation": random_score,
              "best_step": best[2], "steps": int(fit.steps),
              "n_train": _rows(tr_fit) + _rows(tr_held), "n_test": _rows(te_fit) + _rows(te_held)}
    return best[1], report


def learn_flat_mask(train: torch.Tensor, test: Optional[torch.Tensor], k: int, *,
                    fit: Union[MaskFit, Mapping, None] = None, seed: int = 0):
    """The k coordinates (sorted int64 CPU indices) of flat gradients [n, p] that best
    preserve train x test inner products, and a report dict."""
    fit = MaskFit.coerce(fit)
    _check_2d("train", train)
    p = int(train.shape[1])
    if test is not None:
        _check_2d("test", test)
        if test.shape[1] != p:
            raise ValueError(f"train and test gradients must have the same width, got "
                             f"{train.shape[1]} and {test.shape[1]}")
    if not 1 <= k <= p:
        raise ValueError(f"k must be in [1, p={p}], got {k}")
    (idx,), report = _optimise(_Flat, train, test, [p], [k], fit, seed)
    return idx, report


def learn_factor_masks(train, test, k_in: int, k_out: int, *,
                       fit: Union[MaskFit, Mapping, None] = None, seed: int = 0):
    """Input and output masks (sorted int64 CPU indices, k_in and k_out of them) for a
    linear layer, and a report dict.

    train/test: per-sample gradients [n, d_out, d_in'] (grass layout, bias column
    included), or, for one token per sample, factor pairs (a [n, d_in'], g [n, d_out])
    where a already carries the ones column when the layer has a bias.
    """
    fit = MaskFit.coerce(fit)
    if isinstance(train, tuple):
        a, g = train
        d_in, d_out = int(a.shape[1]), int(g.shape[1])
        problem = _FactoredRank1
        for what, x in (("train", train), ("test", test)):
            if x is None:
                continue
            if (not isinstance(x, tuple) or len(x) != 2 or x[0].dim() != 2 or x[1].dim() != 2
                    or x[0].shape[1] != d_in or x[1].shape[1] != d_out or x[0].shape[0] != x[1].shape[0]):
                raise ValueError(f"{what}: expected factors (a [n, {d_in}], g [n, {d_out}])")
    else:
        if not isinstance(train, torch.Tensor) or train.dim() != 3:
            raise ValueError("train must be per-sample gradients [n, d_out, d_in'] or factors (a, g)")
        d_out, d_in = int(train.shape[1]), int(train.shape[2])
        problem = _FactoredGrads
        if test is not None and (not isinstance(test, torch.Tensor) or tuple(test.shape[1:]) != (d_out, d_in)):
            raise ValueError(f"test must be per-sample gradients [m, {d_out}, {d_in}] like train")
    if not 1 <= k_in <= d_in or not 1 <= k_out <= d_out:
        raise ValueError(f"need 1 <= k_in <= {d_in} and 1 <= k_out <= {d_out}, got k_in={k_in}, "
                         f"k_out={k_out}")
    (idx_in, idx_out), report = _optimise(problem, train, test, [d_in, d_out], [k_in, k_out], fit, seed)
    return idx_in, idx_out, report


def _check_2d(what, x):
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"{what} gradients must be a floating tensor [n, p], got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
