"""Damping λ_l per block: relative to the mean eigenvalue (default) or absolute, and a
helper that picks it on held-out targets."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, List, Sequence, Union

import torch

__all__ = ["DEFAULT_RELATIVE_DAMPING", "resolve_damping", "DampingSearch", "choose_damping"]

#: λ_l = 0.1 · trace(F_l) / k_l: a tenth of the mean eigenvalue of F_l.
DEFAULT_RELATIVE_DAMPING = 0.1

Damping = Union[None, float, Sequence[float], torch.Tensor]


def resolve_damping(fisher, damping: Damping = None, *, relative: bool = True) -> torch.Tensor:
    """Absolute λ_l per block, float64 [L] on CPU.

    damping: None (= 0.1, relative), one number for every block, or one per block.
    relative=True: λ_l = damping_l · trace(F_l)/k_l (mean eigenvalue); else λ_l = damping_l.
    A block whose Fisher is zero (its gradients are all zero) gets λ_l = 1 with a warning:
    it contributes nothing to any score, and the Cholesky needs λ_l > 0.
    """
    L = len(fisher.block_sizes)
    if damping is None:
        damping, relative = DEFAULT_RELATIVE_DAMPING, True
    d = torch.as_tensor(damping, dtype=torch.float64).flatten().cpu()
    if d.numel() == 1:
        d = d.expand(L).clone()
    if d.numel() != L:
        raise ValueError(f"damping must be one number or one per block ({L}), got {d.numel()} values")
    if not bool(torch.isfinite(d).all()) or bool((d < 0).any()):
        raise ValueError(f"damping must be finite and >= 0, got {d.tolist()}")
    if relative:
        mean_eig = fisher.traces() / torch.tensor(fisher.block_sizes, dtype=torch.float64)
        d = d * mean_eig
    zero = d <= 0
    if bool(zero.any()):
        if relative:
            dead = [i for i in range(L) if bool(zero[i]) and float(mean_eig[i]) == 0.0]
            if dead:
                warnings.warn(f"blocks {dead} have an all-zero Fisher (their gradients are zero); "
                              "using damping 1 there (they add nothing to any score)", stacklevel=2)
                d[dead] = 1.0
        if bool((d <= 0).any()):
            raise ValueError(f"damping must be > 0 for every block (a zero damping makes the "
                             f"solve ill-posed), got {d.tolist()}")
    return d


@dataclass
class DampingSearch:
    """Result of `choose_damping`: the best candidate and every candidate's value."""
    best: float
    relative: bool
    candidates: List[float] = field(default_factory=list)
    values: List[float] = field(default_factory=list)

    def __str__(self) -> str:
        kind = "relative" if self.relative else "absolute"
        rows = "\n".join(f"  {c:<12.4g} {v: .6g}{'  <- best' if c == self.best else ''}"
                         for c, v in zip(self.candidates, self.values))
        return f"damping ({kind}) and criterion value:\n{rows}"


def choose_damping(evaluate: Callable[[float], float], candidates: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0),
                   *, relative: bool = True, progress: bool = False) -> DampingSearch:
    """Try every candidate damping, keep the one whose criterion is largest.

    ``evaluate(damping)`` fits with that damping and returns a score to maximise
    computed on held-out targets (e.g. the LDS on a validation split; never on the split
    you report). NaN values are never chosen.
    """
    cands = [float(c) for c in candidates]
    if not cands:
        raise ValueError("candidates must hold at least one damping value")
    values = []
    for c in cands:
        v = float(evaluate(c))
        values.append(v)
        if progress:
            print(f"damping {c:g}: {v:.6g}")
    finite = [(v, -i) for i, v in enumerate(values) if not math.isnan(v)]
    if not finite:
        raise ValueError(f"the criterion returned NaN for every damping in {cands}")
    best = cands[-max(finite)[1]]
    return DampingSearch(best=best, relative=relative, candidates=cands, values=values)
