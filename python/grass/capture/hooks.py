"""Linear layers: capture the two factors of the per-sample weight gradient.

For y = W a + b applied to every token t of sample s, dl_s/dW = sum_t g_{s,t} a_{s,t}^T
with g = dl/dy. A forward hook keeps each call's input a and the gradient edge of its
output y; after the forward pass one ``torch.autograd.grad`` of sum_s l_s with respect to
those edges gives every g. Edges, not the tensors: an in-place op on y later in the
forward (``ReLU(inplace=True)``) rebinds y's history, and the gradient "with respect to y"
would then be that of the modified tensor; the edge stays the linear layer's own output.
Since samples do not interact (the model is batch-invariant), dl/dy_s = dl_s/dy_s, so the
per-sample factors come out of one batched backward, and neither the d_out x d_in
per-sample gradient nor ``weight.grad`` is ever computed.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import nn

try:
    from torch.autograd.graph import get_gradient_edge
except ImportError as e:  # torch < 2.2
    raise ImportError(f"grass.capture needs torch >= 2.2 (gradient edges), found {torch.__version__}") from e

from ..layers import LayerInfo

__all__ = ["FactorRecorder"]


def _layer_input(name: str, args, kwargs) -> torch.Tensor:
    if args:
        x = args[0]
    else:  # called with a keyword: Linear(input=x), Conv1D(x=x)
        x = next((v for k, v in kwargs.items() if k in ("input", "x")), None)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"linear layer {name!r} was called without a tensor input "
                        f"(args {[type(a).__name__ for a in args]}, kwargs {sorted(kwargs)})")
    return x


class FactorRecorder:
    """Context manager: forward hooks on the given linear modules record, for each call,
    the input (detached) and the gradient edge of the output."""

    def __init__(self, entries: Sequence[Tuple[LayerInfo, nn.Module]]):
        for info, _ in entries:
            if info.kind != "linear":
                raise ValueError(f"FactorRecorder takes linear layers only, got {info.name!r} ({info.kind})")
        self.entries = list(entries)
        self.calls: Dict[str, list] = {}  # layer -> [(a, a's version, edge, y's shape, y's dtype)]
        self._handles = []

    def __enter__(self) -> "FactorRecorder":
        self.calls = {info.name: [] for info, _ in self.entries}
        for info, module in self.entries:
            self._handles.append(module.register_forward_hook(self._hook(info.name), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, name: str):
        calls = self.calls

        def hook(module, args, kwargs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"linear layer {name!r} returned {type(output).__name__}, not a tensor")
            edge = get_gradient_edge(output) if output.requires_grad else None
            a = _layer_input(name, args, kwargs).detach()
            calls[name].append((a, a._version, edge, tuple(output.shape), output.dtype))
        return hook

    def factors(self, total: torch.Tensor, batch_size: int) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        """{layer: (a [B, T, d_in], g [B, T, d_out])} from the recorded calls and the summed
        per-sample loss ``total``. Several calls of one layer are joined along T (their
        gradients add up); a layer that was not called gets zero factors with T = 1."""
        edges = []
        for info, _ in self.entries:
            for a, version, edge, _, _ in self.calls[info.name]:
                if a._version != version:
                    raise RuntimeError(
                        f"the input of linear layer {info.name!r} was modified in place after the "
                        "layer read it, so its captured value is no longer the layer's input; "
                        "avoid in-place ops on tensors that feed linear layers")
                if edge is None:
                    raise RuntimeError(
                        f"the output of linear layer {info.name!r} does not require grad, so its "
                        "gradient cannot be captured (was the layer run under torch.no_grad() or "
                        "with frozen parameters and inputs?)")
                edges.append(edge)
        grads = torch.autograd.grad(total, edges, allow_unused=True) if edges else []
        it = iter(grads)
        out = {}
        B = int(batch_size)
        for info, _ in self.entries:
            a_parts, g_parts = [], []
            for a, _, _, shape, dtype in self.calls[info.name]:
                g = next(it)
                if g is None:  # the output did not reach the loss
                    g = torch.zeros(shape, dtype=dtype, device=a.device)
                if a.dim() < 2 or a.shape[0] != B or g.shape[0] != B:
                    raise ValueError(
                        f"linear layer {info.name!r} saw input {list(a.shape)} and output "
                        f"{list(shape)}; per-sample capture needs the batch ({B}) as the first "
                        "dimension of every linear layer's input (batch_first layouts)")
                a_parts.append(a.reshape(B, -1, info.d_in))
                g_parts.append(g.detach().reshape(B, -1, info.d_out))
            if not a_parts:
                dev = next(iter(grads), total).device if grads else total.device
                a_parts = [torch.zeros(B, 1, info.d_in, device=dev)]
                g_parts = [torch.zeros(B, 1, info.d_out, device=dev)]
            a = a_parts[0] if len(a_parts) == 1 else torch.cat(a_parts, dim=1)
            g = g_parts[0] if len(g_parts) == 1 else torch.cat(g_parts, dim=1)
            out[info.name] = (a, g)
        self.calls = {info.name: [] for info, _ in self.entries}
        return out
