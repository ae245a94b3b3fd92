"""LiSSA (Agarwal, Bullins & Hazan, "Second-Order Stochastic Optimization for Machine
Learning in Linear Time", JMLR 2017), the stochastic inverse-Hessian-vector product that
Koh & Liang (ICML 2017) used for influence functions.

For a curvature H (the Hessian of the mean loss, or its Gauss–Newton part), a damping λ
and a scale s larger than the largest eigenvalue of H + λI, the Neumann series of
(H + λI)⁻¹ = (1/s) Σ_j (I − (H + λI)/s)^j gives the recursion

    h_0 = v,    h_j = v + h_{j−1} − (H_j h_{j−1} + λ h_{j−1}) / s,    (H + λI)⁻¹ v ≈ h_J / s

with H_j the curvature on the j-th mini-batch (an unbiased estimate of H). It converges
when every eigenvalue of (H + λI)/s lies in (0, 2); ``repeats`` independent runs are
averaged. (Koh & Liang's form ``h = v + (1 − d) h − H h / s`` is the same with λ = d·s.)
No compression is involved: this baseline works on the uncompressed parameters.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from tqdm.auto import tqdm

from ...capture.select import discover_layers
from ...device import resolve_device
from ..targets import resolve_target
from .functional import Curvature, ParamSpace, move_batch, per_sample_gradients

__all__ = ["lissa_ihvp", "LiSSA"]


def _cycle(batches: Iterable):
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("the curvature batches are empty")


def lissa_ihvp(space: ParamSpace, loss_fn: Callable, vectors: torch.Tensor, batches: Iterable, *,
               damping: float = 0.01, scale: float = 10.0, depth: int = 100, repeats: int = 1,
               curvature: str = "hessian", output_fn: Optional[Callable] = None,
               output_loss_fn: Optional[Callable] = None, to_device: Callable = lambda b: b,
               progress: bool = True) -> torch.Tensor:
    """LiSSA estimate of (H + λI)⁻¹ v for every row v of ``vectors`` [M, P] (or [P])."""
    if scale <= 0 or damping < 0 or depth < 1 or repeats < 1:
        raise ValueError(f"need scale > 0, damping >= 0, depth >= 1, repeats >= 1; got scale={scale}, "
                         f"damping={damping}, depth={depth}, repeats={repeats}")
    single = vectors.dim() == 1
    V = vectors.unsqueeze(0) if single else vectors
    if V.dim() != 2 or V.shape[1] != space.dim:
        raise ValueError(f"vectors must be [M, P={space.dim}] or [P], got {tuple(vectors.shape)}")
    V = V.detach()
    total = torch.zeros_like(V)
    with tqdm(total=repeats * depth, desc="LiSSA", unit="step", dynamic_ncols=True,
              disable=not progress) as bar:
        for _ in range(repeats):
            h = V.clone()
            it = _cycle(batches)
            last = (None, None)  # a batch seen again (e.g. one full batch) reuses its graph
            for _ in range(depth):
                raw = next(it)
                if raw is not last[0]:
                    last = (raw, Curvature(space, loss_fn, to_device(raw), kind=curvature,
                                           output_fn=output_fn, output_loss_fn=output_loss_fn))
                Hh = last[1].matvec(h)
                h = V + h - (Hh + damping * h) / scale
                if not bool(torch.isfinite(h).all()):
                    raise FloatingPointError(
                        "LiSSA diverged: the recursion needs scale > the largest eigenvalue of "
                        f"H + damping·I (and H + damping·I positive definite); scale={scale}, "
                        f"damping={damping}: raise the scale or the damping")
                bar.update(1)
            total += h / scale
    out = total / repeats
    return out[0] if single else out


class LiSSA:
    """Influence τ = −∇fᵀ (H + λI)⁻¹ ∇ℓ_i with a LiSSA iHVP on the uncompressed parameters
    of the chosen layers (small models: one iHVP per test example)."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, *, layers=None,
                 include_flat: bool = False, target_fn: Optional[Callable] = None,
                 damping: float = 0.01, scale: float = 10.0, depth: int = 100, repeats: int = 1,
                 curvature: str = "hessian", output_fn: Optional[Callable] = None,
                 output_loss_fn: Optional[Callable] = None, device=None, progress: bool = True):
        self.model = model
        self.loss_fn = loss_fn
        self.target_fn = resolve_target(loss_fn, target_fn)
        infos = [info for info, _ in discover_layers(model, layers, include_flat=include_flat)]
        self.space = ParamSpace(model, [info.param_names for info in infos])
        self.options = dict(damping=damping, scale=scale, depth=depth, repeats=repeats,
                            curvature=curvature, output_fn=output_fn, output_loss_fn=output_loss_fn)
        self.device = resolve_device(device, "LiSSA: device") or next(model.parameters()).device
        self.progress = progress

    def _to(self, batch):
        return move_batch(batch, self.device)

    def target_gradients(self, test_loader) -> torch.Tensor:
        return torch.cat([per_sample_gradients(self.space, self.target_fn, self._to(b))
                          for b in test_loader])

    def scores(self, train_loader, test_loader, curvature_batches: Optional[Iterable] = None
               ) -> torch.Tensor:
        """τ [M, N]; the curvature is estimated on ``curvature_batches`` (default: the
        training loader, cycled)."""
        grads = self.target_gradients(test_loader)
        queries = -lissa_ihvp(self.space, self.loss_fn, grads,
                              train_loader if curvature_batches is None else curvature_batches,
                              to_device=self._to, progress=self.progress, **self.options)
        cols = []
        for batch in train_loader:
            G = per_sample_gradients(self.space, self.loss_fn, self._to(batch))
            cols.append((queries @ G.T).cpu())
        return torch.cat(cols, dim=1)
