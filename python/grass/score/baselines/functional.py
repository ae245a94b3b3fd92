"""Explicit per-sample gradients and Hessian-vector products with ``torch.func``, over a
chosen set of parameters flattened into one vector (for the uncompressed baselines).

``fn(model, batch) -> [B]`` is called on a wrapper module, so any user function that
calls the model (not only ``model(x)``) sees the substituted parameters.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from ...capture.batch import batch_size, per_sample_dims
from ...capture.functional import _LossModule

__all__ = ["ParamSpace", "per_sample_gradients", "Curvature", "hvp", "move_batch"]


def move_batch(batch, device, dtype: torch.dtype = None):
    """The batch's tensors on ``device``; floating-point ones cast to ``dtype`` if given."""
    def conv(x):
        if not isinstance(x, torch.Tensor):
            return x
        x = x.to(device)
        return x.to(dtype) if dtype is not None and x.is_floating_point() else x
    return tree_map(conv, batch)


class ParamSpace:
    """Named parameters of ``model`` as one flat vector, in the given order, grouped in
    blocks (one per layer)."""

    def __init__(self, model: nn.Module, blocks: Sequence[Sequence[str]]):
        named = dict(model.named_parameters())
        self.model = model
        self.blocks = [list(b) for b in blocks]
        self.names: List[str] = [n for b in self.blocks for n in b]
        missing = [n for n in self.names if n not in named]
        if missing:
            raise ValueError(f"parameters {missing} are not parameters of {type(model).__name__}")
        if len(set(self.names)) != len(self.names):
            raise ValueError("a parameter appears in more than one block")
        self.shapes = [named[n].shape for n in self.names]
        self.numels = [named[n].numel() for n in self.names]
        self.block_sizes = [sum(named[n].numel() for n in b) for b in self.blocks]

    @property
    def dim(self) -> int:
        return sum(self.numels)

    def current(self) -> Dict[str, torch.Tensor]:
        named = dict(self.model.named_parameters())
        return {n: named[n].detach() for n in self.names}

    def flatten(self, tensors: Dict[str, torch.Tensor], batch_dims: int = 0) -> torch.Tensor:
        lead = None
        parts = []
        for n in self.names:
            t = tensors[n]
            lead = t.shape[:batch_dims]
            parts.append(t.reshape(*lead, -1))
        return torch.cat(parts, dim=-1)

    def unflatten(self, flat: torch.Tensor) -> Dict[str, torch.Tensor]:
        out, start = {}, 0
        for n, shape, k in zip(self.names, self.shapes, self.numels):
            out[n] = flat[start:start + k].view(shape)
            start += k
        return out

    def call(self, fn: Callable, params: Dict[str, torch.Tensor], batch):
        wrapper = _LossModule(self.model, fn)
        return functional_call(wrapper, {f"model.{n}": p for n, p in params.items()}, (batch,))


def _check_per_sample(out: torch.Tensor, b: int, what: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.dim() != 1 or out.shape[0] != b:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{what} must return per-sample values [B={b}] (reduction='none'), got "
                         f"{shape}")
    return out


def per_sample_gradients(space: ParamSpace, fn: Callable, batch) -> torch.Tensor:
    """∇_θ fn(model, sample) for every sample of ``batch``: [B, P] in the space's order."""
    b = batch_size(batch)
    leaves, spec = tree_flatten(batch)
    dims = per_sample_dims(leaves, b)
    params = space.current()

    def one(p, *sample):
        full = tree_unflatten([x.unsqueeze(0) if d == 0 else x for x, d in zip(sample, dims)], spec)
        out = space.call(fn, p, full)
        return _check_per_sample(out, 1, "fn")[0]

    grads = vmap(grad(one), in_dims=(None, *dims))(params, *leaves)
    return space.flatten(grads, batch_dims=1)


class Curvature:
    """Curvature-vector products at the current parameters for the batch mean of ``fn``,
    by reverse-over-reverse autograd; the graph is built once per batch and reused for
    every vector.

    kind="hessian": H v with H = ∇² mean fn.
    kind="gauss_newton": Jᵀ H_out J v with ``output_fn(model, batch)`` the network outputs
    and ``output_loss_fn(outputs, batch) -> [B]`` the loss on them (J v by the double-vjp
    trick, so no forward-mode AD is needed).
    """

    def __init__(self, space: ParamSpace, fn: Callable, batch, *, kind: str = "hessian",
                 output_fn: Callable = None, output_loss_fn: Callable = None):
        b = batch_size(batch)
        self.theta = space.flatten(space.current()).detach().requires_grad_(True)
        params = space.unflatten(self.theta)
        self.kind = kind
        with torch.enable_grad():
            if kind == "hessian":
                value = _check_per_sample(space.call(fn, params, batch), b, "fn").mean()
                self.grad = torch.autograd.grad(value, self.theta, create_graph=True)[0]
            elif kind == "gauss_newton":
                if output_fn is None or output_loss_fn is None:
                    raise ValueError("curvature='gauss_newton' needs output_fn(model, batch) and "
                                     "output_loss_fn(outputs, batch)")
                self.out = space.call(output_fn, params, batch)
                self.u = torch.zeros_like(self.out, requires_grad=True)
                self.jt_u = torch.autograd.grad(self.out, self.theta, self.u, create_graph=True)[0]
                self.o = self.out.detach().requires_grad_(True)
                loss = _check_per_sample(output_loss_fn(self.o, batch), b, "output_loss_fn").mean()
                self.grad_o = torch.autograd.grad(loss, self.o, create_graph=True)[0]
            else:
                raise ValueError(f"curvature must be 'hessian' or 'gauss_newton', got {kind!r}")

    def _apply(self, v: torch.Tensor) -> torch.Tensor:
        def g(out, inp, cot):
            return torch.autograd.grad(out, inp, cot, retain_graph=True)[0]
        if self.kind == "hessian":
            return g(self.grad, self.theta, v)
        jv = g(self.jt_u, self.u, v)
        hjv = g(self.grad_o, self.o, jv)
        return g(self.out, self.theta, hjv)

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        """[P] -> [P] or [M, P] -> [M, P] (one backward pass per vector)."""
        with torch.enable_grad():
            if V.dim() == 1:
                return self._apply(V).detach()
            return torch.stack([self._apply(v) for v in V]).detach()


def hvp(space: ParamSpace, fn: Callable, batch, v: torch.Tensor, *, curvature: str = "hessian",
        output_fn: Callable = None, output_loss_fn: Callable = None) -> torch.Tensor:
    """One curvature-vector product (see `Curvature`)."""
    return Curvature(space, fn, batch, kind=curvature, output_fn=output_fn,
                     output_loss_fn=output_loss_fn).matvec(v)
