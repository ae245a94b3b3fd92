"""Exact, uncompressed block-diagonal influence for MLPs, in float64: the reference that
compressed attributions are measured against.

For an ``nn.Linear`` layer fed one vector per sample, the per-sample weight gradient is
g_i ⊗ a_i (output gradient times input, bias as a constant-1 input), so inner products of
gradients factor: ⟨∇_i, ∇_j⟩ = (a_i·a_j)(g_i·g_j). With G_l [N, p_l] the layer's training
gradients, F_l = G_lᵀG_l / N and the Woodbury identity

    (F_l + λI)⁻¹ = (1/λ) (I − G_lᵀ (NλI + G_l G_lᵀ)⁻¹ G_l)

every score needs only N x N kernels, never a p_l x p_l matrix, however wide the layer:

    τ(t, i) = −Σ_l (1/λ_l) [ k_l(t, i) − k_l(t, ·) (Nλ_l I + K_l)⁻¹ K_l(·, i) ]

This is exact (no sketch, no approximation beyond float64) and costs O(N² (d_in + d_out))
per layer. The damping is ``λ_l = damping · trace(F_l) / p_l`` (relative to F_l's mean
eigenvalue), or absolute per layer.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

__all__ = ["KernelExactInfluence"]


def _linear_layers(model: nn.Module, layers: Optional[Sequence[str]]) -> List[tuple]:
    named = dict(model.named_modules())
    if layers is None:
        out = [(n, m) for n, m in named.items() if isinstance(m, nn.Linear)
               and m.weight.requires_grad]
    else:
        out = []
        for n in layers:
            if n not in named or not isinstance(named[n], nn.Linear):
                raise ValueError(f"layer {n!r} is not an nn.Linear module of {type(model).__name__}")
            out.append((n, named[n]))
    if not out:
        raise ValueError(f"{type(model).__name__} has no trainable nn.Linear layer")
    return out


class KernelExactInfluence:
    """Uncompressed block-diagonal (per ``nn.Linear``) empirical-Fisher influence.

    The evaluation's float64 reference for MLPs, in kernel form (an N x N solve per layer).
    The general user-facing baseline is ``grass.score.baselines.ExactInfluence``.

    Inputs to every attributed layer must be [B, d] (one vector per sample, as in an MLP).
    Scores follow grass's sign convention: positive = the training example helps the target.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, x_train: torch.Tensor,
                 y_train: torch.Tensor, layers: Optional[Sequence[str]] = None,
                 batch_size: int = 1024):
        # A private float64 copy: the user's model is left as it is.
        self.model = copy.deepcopy(model).double()
        self.loss_fn = loss_fn
        self.layers = _linear_layers(self.model, layers)
        self.batch_size = batch_size
        self.n = int(x_train.shape[0])
        self.train_factors = self._factors(x_train, y_train, loss_fn)
        self.kernels = {}
        for name, (a, g) in self.train_factors.items():
            self.kernels[name] = (a @ a.T) * (g @ g.T)  # [N, N] float64
        self._solved = None

    def _factors(self, x, y, fn) -> Dict[str, tuple]:
        """Per layer: (a [N, d_in(+1)], g [N, d_out]) float64, g = ∂fn_i/∂output_i."""
        inputs, grads = {}, {}
        hooks = []
        for name, mod in self.layers:
            def fwd(m, inp, out, name=name):
                if inp[0].dim() != 2:
                    raise ValueError(f"KernelExactInfluence needs [B, d] inputs to layer {name!r}, "
                                     f"got shape {tuple(inp[0].shape)}")
                inputs[name] = inp[0].detach()
                out.register_hook(lambda gr, name=name: grads.__setitem__(name, gr.detach()))
            hooks.append(mod.register_forward_hook(fwd))
        out = {name: ([], []) for name, _ in self.layers}
        was = self.model.training
        self.model.eval()
        try:
            for i in range(0, x.shape[0], self.batch_size):
                xb, yb = x[i:i + self.batch_size], y[i:i + self.batch_size]
                if xb.is_floating_point():
                    xb = xb.double()
                vals = fn(self.model, (xb, yb))
                if vals.dim() != 1:
                    raise ValueError(f"the function must return per-sample values [B], got shape "
                                     f"{tuple(vals.shape)}")
                self.model.zero_grad(set_to_none=True)
                vals.sum().backward()
                for name, mod in self.layers:
                    a = inputs[name].double()
                    if mod.bias is not None and mod.bias.requires_grad:
                        a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)
                    out[name][0].append(a)
                    out[name][1].append(grads[name].double())
        finally:
            for h in hooks:
                h.remove()
            self.model.zero_grad(set_to_none=True)
            self.model.train(was)
        return {name: (torch.cat(a), torch.cat(g)) for name, (a, g) in out.items()}

    def layer_numel(self, name: str) -> int:
        a, g = self.train_factors[name]
        return a.shape[1] * g.shape[1]

    def fisher_trace(self, name: str) -> float:
        """trace(F_l) = Σ_i ‖∇_i‖² / N."""
        return float(torch.diagonal(self.kernels[name]).sum() / self.n)

    def fit(self, damping: Union[float, Dict[str, float]] = 0.1, relative: bool = True
            ) -> "KernelExactInfluence":
        """Factor (Nλ_l I + K_l) per layer. ``damping``: a factor of the mean eigenvalue
        trace(F_l)/p_l when ``relative``, else the absolute λ (one value or per layer)."""
        self.damping = {}
        self._solved = {}
        for name, _ in self.layers:
            d = damping[name] if isinstance(damping, dict) else float(damping)
            lam = d * self.fisher_trace(name) / self.layer_numel(name) if relative else d
            if lam <= 0:
                raise ValueError(f"damping must be > 0 (layer {name!r} got λ = {lam})")
            k = self.kernels[name]
            chol = torch.linalg.cholesky(k + self.n * lam * torch.eye(self.n, dtype=k.dtype))
            # W = (NλI + K)⁻¹ K, so a score is k_t (I − W) / λ
            self._solved[name] = (lam, torch.cholesky_solve(k, chol))
            self.damping[name] = lam
        return self

    def scores(self, x_test: torch.Tensor, y_test: torch.Tensor, target_fn: Callable
               ) -> torch.Tensor:
        """τ(test, train) float64 [n_test, N]."""
        if self._solved is None:
            raise RuntimeError("call fit() before scores()")
        test = self._factors(x_test, y_test, target_fn)
        total = torch.zeros(x_test.shape[0], self.n, dtype=torch.float64)
        for name, (a, g) in self.train_factors.items():
            at, gt = test[name]
            kt = (at @ a.T) * (gt @ g.T)                     # [n_test, N]
            lam, w = self._solved[name]
            total -= (kt - kt @ w) / lam
        return total

    def self_influence(self) -> torch.Tensor:
        """∇ℓ_iᵀ (F + λI)⁻¹ ∇ℓ_i float64 [N] (>= 0)."""
        if self._solved is None:
            raise RuntimeError("call fit() before self_influence()")
        total = torch.zeros(self.n, dtype=torch.float64)
        for name, k in self.kernels.items():
            lam, w = self._solved[name]
            total += (torch.diagonal(k) - (k * w).sum(0)) / lam
        return total
