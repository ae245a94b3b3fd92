"""Explicit per-sample gradients through ``torch.func``: vmap over the batch of the
gradient of one sample's loss, with the model called through ``functional_call``.

Used for every "flat" layer (embeddings, norms, convolutions, anything), and for all
layers by ``GradientCapture.per_sample`` (tests, exact influence, mask fitting).

Tied parameters: a flat layer's parameter is replaced under every name it has, so its
gradient is the total over all its uses. A linear layer's weight is replaced only inside
that module, so its gradient is that of the module's own use: exactly what the factor
hooks see (``discover_layers`` warns when a linear weight is shared).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..layers import LayerInfo
from .batch import batch_size, per_sample_dims
from .select import _is_conv1d

__all__ = ["per_sample_grads"]


def check_loss_tensor(losses) -> None:
    """loss_fn's result must be a tensor of per-sample losses, not a batch reduction."""
    if not isinstance(losses, torch.Tensor):
        raise TypeError(f"loss_fn must return a tensor of per-sample losses [B], got {type(losses).__name__}")
    if losses.dim() == 0:
        raise ValueError("loss_fn returned a scalar; it must return per-sample losses of shape [B] "
                         "(e.g. reduction='none'): a mean would scale every gradient by 1/B and a sum "
                         "would mix samples")


class _LossModule(nn.Module):
    """Makes ``fn(model, batch)`` (a loss, or any function that calls the model) callable by
    ``functional_call``: parameters are substituted under the names ``model.<name>``."""

    def __init__(self, model: nn.Module, fn: Callable):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch):
        return self.fn(self.model, batch)


def _aliases(model: nn.Module) -> Dict[int, List[str]]:
    names: Dict[int, List[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


def per_sample_grads(model: nn.Module, fn: Callable, batch, entries: Sequence[Tuple[LayerInfo, nn.Module]],
                     *, chunk_size=None) -> Dict[str, torch.Tensor]:
    """{layer name: [B, numel]} per-sample gradients of ``fn(model, batch)[i]`` for the given
    layers, in the grass layout (linear: ``[d_out, d_in (+ bias column)]``; flat: the
    parameters flattened and concatenated in ``param_names`` order)."""
    B = batch_size(batch)
    leaves, spec = tree_flatten(batch)
    dims = per_sample_dims(leaves, B)

    aliases = _aliases(model)
    primals: Dict[str, torch.Tensor] = {}
    bindings: Dict[str, str] = {}  # functional_call name -> primal key
    for info, _ in entries:
        for pname in info.param_names:
            p = model.get_parameter(pname)
            primals[pname] = p.detach()
            names = aliases[id(p)] if (info.kind == "flat" or info.path == "tied") else [pname]
            for alias in names:
                bindings["model." + alias] = pname
    wrapper = _LossModule(model, fn)

    def sample_loss(prim, sample_leaves):
        sample = tree_unflatten([x.unsqueeze(0) if d == 0 else x
                                 for x, d in zip(sample_leaves, dims)], spec)
        tensors = {name: prim[key] for name, key in bindings.items()}
        out = functional_call(wrapper, tensors, (sample,), tie_weights=False, strict=False)
        check_loss_tensor(out)
        if tuple(out.shape) != (1,):
            raise ValueError(f"loss_fn must return per-sample losses of shape [B]; for a batch of "
                             f"one sample it returned shape {list(out.shape)}")
        return out[0]

    try:
        with torch.no_grad():  # torch.func.grad ignores an outer no_grad; the model's own
            # parameters then build no autograd graph
            grads = vmap(grad(sample_loss), in_dims=(None, dims), randomness="error",
                         chunk_size=chunk_size)(primals, leaves)
    except RuntimeError as e:
        raise _explain(e, model) from e

    out = {}
    for info, module in entries:
        if info.kind == "linear":
            w = grads[info.param_names[0]]
            if _is_conv1d(module) and info.path == "factors":
                w = w.transpose(1, 2)  # Conv1D stores [d_in, d_out]; grass layout is [d_out, d_in]
            w = w.reshape(B, info.d_out, -1)  # convolutions: [C_out, C_in/groups * kernel]
            parts = [w]
            if info.bias:
                parts.append(grads[info.param_names[1]].unsqueeze(-1))
            g = torch.cat(parts, dim=-1) if len(parts) > 1 else w
            out[info.name] = g.reshape(B, -1)
        else:
            out[info.name] = torch.cat([grads[n].reshape(B, -1) for n in info.param_names], dim=1)
    return out


def _explain(err: RuntimeError, model: nn.Module) -> Exception:
    msg = str(err)
    training = [f"{n or type(model).__name__!s} ({type(m).__name__})" for n, m in model.named_modules()
                if m.training and isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd))]
    hint = (f" Modules in training mode: {', '.join(training)}; call model.eval() before capturing "
            "per-sample gradients." if training else "")
    if "randomness" in msg:
        return ValueError("the model draws random numbers during forward (dropout in training mode?), "
                          "so per-sample gradients are not well defined." + hint + f" [{msg.splitlines()[0]}]")
    if "inplace" in msg.replace("in-place", "inplace") or "running_mean" in msg:
        return ValueError("the model changes a buffer in place during forward (BatchNorm in training "
                          "mode?), which per-sample gradients cannot do." + hint + f" [{msg.splitlines()[0]}]")
    return err
