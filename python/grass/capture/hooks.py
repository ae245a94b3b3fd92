"""Hooked layers: record each call's input and the gradient edge of its output.

For y = W a + b applied to every token t of sample s, dl_s/dW = sum_t g_{s,t} a_{s,t}^T
with g = dl/dy. A forward hook keeps each call's input a and the gradient edge of its
output y; after the forward pass one ``torch.autograd.grad`` of sum_s l_s with respect to
those edges gives every g. Edges, not the tensors: an in-place op on y later in the
forward (``ReLU(inplace=True)``) rebinds y's history, and the gradient "with respect to y"
would then be that of the modified tensor; the edge stays the layer's own output.
Since samples do not interact (the model is batch-invariant), dl/dy_s = dl_s/dy_s, so the
per-sample (input, output gradient) pairs come out of one batched backward, and no
``weight.grad`` is ever computed.

The same recording serves every hooked path (``LayerInfo.path``): linear factors,
convolution patches, embedding rows, norm affine parameters and torch.func on one module
(``capture/paths.py`` turns the pairs into gradients). Calls made while the recorder is
not armed (a checkpointed block re-running its forward during backward) are ignored.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

try:
    from torch.autograd.graph import get_gradient_edge
except ImportError as e:  # torch < 2.2
    raise ImportError(f"grass.capture needs torch >= 2.2 (gradient edges), found {torch.__version__}") from e

from ..layers import LayerInfo

__all__ = ["HookRecorder", "Call"]


def _layer_input(name: str, args, kwargs) -> torch.Tensor:
    if args:
        x = args[0]
    else:  # called with a keyword: Linear(input=x), Conv1D(x=x)
        x = next((v for k, v in kwargs.items() if k in ("input", "x", "hidden_states")), None)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"layer {name!r} was called without a tensor input "
                        f"(args {[type(a).__name__ for a in args]}, kwargs {sorted(kwargs)})")
    return x


def _detach(x):
    return x.detach() if isinstance(x, torch.Tensor) else x


class Call:
    """One recorded call of a hooked module: its input ``x`` (detached), for the "module"
    path all its arguments, and after ``backward`` the output gradient ``g``."""

    __slots__ = ("x", "version", "args", "kwargs", "edge", "shape", "dtype", "g")

    def __init__(self, x, args, kwargs, edge, shape, dtype):
        self.x, self.version = x, x._version
        self.args, self.kwargs = args, kwargs
        self.edge, self.shape, self.dtype = edge, shape, dtype
        self.g = None


class HookRecorder:
    """Context manager: forward hooks on the hooked modules of the given layers (and on the
    heads of tied layers) record every call. ``B`` is the batch size: an embedding called
    with a broadcast batch of one (position ids [1, T]) has its output expanded to B rows,
    so that each sample gets its own output gradient."""

    def __init__(self, entries: Sequence[Tuple[LayerInfo, nn.Module]], model: nn.Module, B: int):
        self.targets: List[Tuple[str, LayerInfo, nn.Module]] = []
        for info, module in entries:
            if info.path == "functional":
                raise ValueError(f"HookRecorder takes hooked layers only, got {info.name!r} (functional)")
            self.targets.append((info.name, info, module))
            for other in info.tied:
                self.targets.append((other, info, model.get_submodule(other)))
        self.B = int(B)
        self.calls: Dict[str, List[Call]] = {}
        self._handles = []
        self._armed = False

    def __enter__(self) -> "HookRecorder":
        self.calls = {name: [] for name, _, _ in self.targets}
        for name, info, module in self.targets:
            self._handles.append(module.register_forward_hook(self._hook(name, info), with_kwargs=True))
        self._armed = True
        return self

    def __exit__(self, *exc) -> None:
        self._armed = False
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, name: str, info: LayerInfo):
        keep_all = info.path == "module"
        expand = info.path in ("embedding", "tied")

        def hook(module, args, kwargs, output):
            if not self._armed:
                return None
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {name!r} ({type(module).__name__}) returned "
                                f"{type(output).__name__}, not a tensor; select its submodules "
                                "instead, or capture it with include_flat=True")
            x = _layer_input(name, args, kwargs).detach()
            replaced = None
            if expand and isinstance(module, nn.Embedding) and x.dim() >= 1 and x.shape[0] == 1 != self.B:
                x = x.expand(self.B, *x.shape[1:])
                output = replaced = output.expand(self.B, *output.shape[1:])
            edge = get_gradient_edge(output) if output.requires_grad else None
            a = tuple(_detach(v) for v in args) if keep_all else None
            kw = {k: _detach(v) for k, v in kwargs.items()} if keep_all else None
            self.calls[name].append(Call(x, a, kw, edge, tuple(output.shape), output.dtype))
            return replaced
        return hook

    def backward(self, total: torch.Tensor, retain_graph: bool = False) -> Dict[str, List[Call]]:
        """Fill every call's output gradient ``g`` from the summed per-sample loss ``total``
        (zeros for an output that did not reach the loss) and return ``{module name:
        [Call]}``; the recorder is disarmed first. With ``retain_graph`` the calls are kept
        for another backward (several targets of one forward)."""
        self._armed = False
        edges, where = [], []
        for name, _, _ in self.targets:
            for call in self.calls[name]:
                if call.x._version != call.version:
                    raise RuntimeError(
                        f"the input of layer {name!r} was modified in place after the layer read "
                        "it, so its captured value is no longer the layer's input; avoid in-place "
                        "ops on tensors that feed attributed layers")
                if call.edge is None:
                    raise RuntimeError(
                        f"the output of layer {name!r} does not require grad, so its gradient "
                        "cannot be captured (was the layer run under torch.no_grad(), inside a "
                        "reentrant checkpoint, or with frozen parameters and inputs?)")
                edges.append(call.edge)
                where.append(call)
        grads = torch.autograd.grad(total, edges, allow_unused=True, retain_graph=retain_graph) if edges else []
        for call, g in zip(where, grads):
            if g is None:  # the output did not reach the loss
                g = torch.zeros(call.shape, dtype=call.dtype, device=call.x.device)
            call.g = g.detach()
        if retain_graph:
            return self.calls
        for call in where:
            call.edge = None
        calls, self.calls = self.calls, {name: [] for name, _, _ in self.targets}
        return calls
