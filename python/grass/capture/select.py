"""Which modules of a model are attributed, and how each one is captured.

Two kinds of layer (see ``grass.layers.LayerInfo``):

* ``"linear"``: ``nn.Linear`` and Hugging Face GPT-2's ``Conv1D``. Their per-sample
  weight gradient is ``sum_t g_t a_t^T``, so capture keeps the two factors (inputs a,
  output gradients g) and never forms the d_out x d_in matrix. The layout is always the
  grass one, ``[d_out, d_in (+1 bias column)]`` like ``nn.Linear.weight``. ``Conv1D``
  stores its weight transposed (``[d_in, d_out]``, ``y = x @ W + b``), so for it the
  reported gradient is that of ``W.T`` (flattened ``cat([W.T, b[:, None]], 1)``).
* ``"flat"``: any other module. The per-sample gradients of its trainable parameters are
  computed with ``torch.func`` and concatenated in ``LayerInfo.param_names`` order.

``LayerInfo.param_names`` always holds full parameter names (as in
``model.named_parameters()``); for linear layers they are the weight then the bias.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..layers import LayerInfo

__all__ = ["is_linear", "linear_dims", "discover_layers"]

# Modules that use their children's weights without calling the children (so a forward
# hook on the child never fires): nn.MultiheadAttention reads out_proj.weight directly.
# Such a module is captured as one flat layer, never through its children.
_FUNCTIONAL_PARENTS = (nn.MultiheadAttention,)


def _is_conv1d(module: nn.Module) -> bool:
    # Hugging Face GPT-2's Conv1D, recognised without importing transformers.
    w = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and hasattr(module, "nf")
            and isinstance(w, torch.Tensor) and w.dim() == 2)


def is_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` (and subclasses) and GPT-2's ``Conv1D``."""
    return isinstance(module, nn.Linear) or _is_conv1d(module)


def linear_dims(module: nn.Module) -> Tuple[int, int]:
    """(d_in, d_out) of a linear module, whatever its weight's storage order."""
    if _is_conv1d(module):
        return int(module.weight.shape[0]), int(module.weight.shape[1])  # weight [d_in, d_out]
    return int(module.weight.shape[1]), int(module.weight.shape[0])      # weight [d_out, d_in]


def _trainable(params):
    return [(n, p) for n, p in params if p is not None and p.requires_grad]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Selected:
    """One chosen layer before parameter de-duplication: its module and trainable params."""

    def __init__(self, name: str, module: nn.Module, linear: bool, params):
        self.name = name
        self.module = module
        self.linear = linear
        self.params = params  # list of (full name, Parameter)


def _layer_for(name: str, module: nn.Module, recurse: bool) -> Optional[_Selected]:
    """The layer a module stands for, or None when it has no trainable parameters.

    A linear module whose weight is frozen but whose bias trains has nothing to factor,
    so it becomes a flat layer over the bias alone.
    """
    if is_linear(module) and not isinstance(module, _FUNCTIONAL_PARENTS):
        params = _trainable([(_join(name, n), p) for n, p in
                             (("weight", module.weight), ("bias", getattr(module, "bias", None)))])
        if not params:
            return None
        return _Selected(name, module, module.weight.requires_grad, params)
    params = _trainable((_join(name, n), p) for n, p in module.named_parameters(recurse=recurse))
    if not params:
        return None
    return _Selected(name, module, False, params)


def _to_info(sel: _Selected) -> LayerInfo:
    names = tuple(n for n, _ in sel.params)
    numel = sum(p.numel() for _, p in sel.params)
    if sel.linear:
        d_in, d_out = linear_dims(sel.module)
        bias = any(p is getattr(sel.module, "bias", None) for _, p in sel.params)
        return LayerInfo(name=sel.name, kind="linear", numel=numel, d_in=d_in, d_out=d_out,
                         bias=bias, param_names=names)
    return LayerInfo(name=sel.name, kind="flat", numel=numel, param_names=names)


def _owners(model: nn.Module):
    """id(parameter) -> set of canonical names of the modules that hold it directly."""
    owners = {}
    canonical = {id(m): n for n, m in model.named_modules()}
    for mname, m in model.named_modules(remove_duplicate=False):
        for _, p in m.named_parameters(recurse=False):
            owners.setdefault(id(p), set()).add(canonical[id(m)])
    return owners


def _functional_child_of(model: nn.Module):
    """Canonical names of modules that sit under a _FUNCTIONAL_PARENTS module -> that parent's name."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _FUNCTIONAL_PARENTS):
            for sub, _ in m.named_modules(prefix=name):
                if sub != name:
                    out.setdefault(sub, name)
    return out


def discover_layers(model: nn.Module, layers=None, *, include_flat: bool = False
                    ) -> List[Tuple[LayerInfo, nn.Module]]:
    """Choose the attributed layers of ``model``, in module registration order.

    layers:
      * ``None``: every ``nn.Linear`` / ``Conv1D`` with trainable parameters, captured as
        "linear"; with ``include_flat=True`` also every other module with direct trainable
        parameters (``recurse=False``), captured as "flat". A parameter shared by several
        modules (tied weights) goes to the first layer that holds it.
      * a list of module names (as in ``model.named_modules()``) or a list of module types:
        each matching module is one layer; a linear module is "linear", any other module is
        "flat" over all its trainable parameters (recursively). Unknown names, modules
        without trainable parameters and layers that share parameters are errors.

    Only parameters with ``requires_grad`` count. Returns ``[(LayerInfo, module), ...]``.
    """
    canonical = list(model.named_modules())  # registration order, aliases removed
    order = {id(m): i for i, (_, m) in enumerate(canonical)}
    name_of = {id(m): n for n, m in canonical}
    functional_child = _functional_child_of(model)

    selected: List[_Selected] = []
    if layers is None:
        for name, m in canonical:
            if name in functional_child:
                continue  # captured (or not) with its parent
            if is_linear(m) and not isinstance(m, _FUNCTIONAL_PARENTS):
                sel = _layer_for(name, m, recurse=False)
            elif isinstance(m, _FUNCTIONAL_PARENTS):
                sel = _layer_for(name, m, recurse=True) if include_flat else None
            else:
                sel = _layer_for(name, m, recurse=False) if include_flat else None
            if sel is not None:
                selected.append(sel)
        selected = _dedupe(selected)
    else:
        selected = _explicit(model, layers, canonical, name_of, functional_child)
        _check_disjoint(selected)

    if not selected:
        what = "linear layers (nn.Linear / Conv1D)" if layers is None and not include_flat else "layers"
        hint = " Pass include_flat=True or an explicit layers= list." if layers is None and not include_flat else ""
        raise ValueError(f"no {what} with parameters requiring grad were found in {type(model).__name__}.{hint}")

    selected.sort(key=lambda s: order[id(s.module)])
    _warn_shared_linear(model, selected)
    return [(_to_info(s), s.module) for s in selected]


def _explicit(model, layers, canonical, name_of, functional_child) -> List[_Selected]:
    if isinstance(layers, (str, type)) or not isinstance(layers, Sequence) or len(layers) == 0:
        raise TypeError("layers must be None, a non-empty list of module names or a non-empty "
                        f"list of module types; got {layers!r}")
    if all(isinstance(x, str) for x in layers):
        by_name = dict(model.named_modules(remove_duplicate=False))
        modules = []
        for name in layers:
            if name not in by_name:
                valid = ", ".join(repr(n) for n, _ in canonical if n) or "(the model has no submodules)"
                raise ValueError(f"layer {name!r} is not a module of {type(model).__name__}; "
                                 f"valid names: {valid}")
            modules.append(by_name[name])
    elif all(isinstance(x, type) for x in layers):
        types = tuple(layers)
        modules = [m for _, m in canonical if isinstance(m, types)]
        if not modules:
            raise ValueError(f"no module of {type(model).__name__} is an instance of "
                             f"{[t.__name__ for t in types]}")
    else:
        raise TypeError(f"layers must be all module names or all module types, got {layers!r}")

    seen, out = set(), []
    for m in modules:
        if id(m) in seen:
            continue
        seen.add(id(m))
        name = name_of[id(m)]
        if name in functional_child:
            raise ValueError(
                f"layer {name!r} belongs to {functional_child[name]!r} "
                f"({type(model.get_submodule(functional_child[name])).__name__}), which uses its "
                f"weights without calling it, so hooks on {name!r} never fire; select "
                f"{functional_child[name]!r} instead (captured as a flat layer)")
        sel = _layer_for(name, m, recurse=True)
        if sel is None:
            kind = "linear layer" if is_linear(m) else "layer"
            raise ValueError(f"{kind} {name!r} ({type(m).__name__}) has no parameters with "
                             "requires_grad=True")
        out.append(sel)
    return out


def _check_disjoint(selected: List[_Selected]) -> None:
    holder = {}
    for sel in selected:
        for pname, p in sel.params:
            if id(p) in holder and holder[id(p)] != sel.name:
                raise ValueError(
                    f"layers {holder[id(p)]!r} and {sel.name!r} share parameter {pname!r}: a "
                    "parameter may belong to one layer only (select either the container or "
                    "its submodules, and only one of two tied modules)")
            holder[id(p)] = sel.name


def _dedupe(selected: List[_Selected]) -> List[_Selected]:
    # Tied parameters (e.g. a language-model head sharing the embedding) belong to the
    # first layer that holds them; later holders lose them, which may change their kind.
    claimed, out = set(), []
    for sel in selected:
        keep = [(n, p) for n, p in sel.params if id(p) not in claimed]
        if len(keep) != len(sel.params):
            dropped = [n for n, p in sel.params if id(p) in claimed]
            warnings.warn(f"layer {sel.name!r}: parameters {dropped} are shared with an earlier "
                          "layer and are attributed there only", stacklevel=3)
        if not keep:
            continue
        linear = sel.linear and any(p is sel.module.weight for _, p in keep)
        claimed.update(id(p) for _, p in keep)
        out.append(_Selected(sel.name, sel.module, linear, keep))
    return out


def _warn_shared_linear(model: nn.Module, selected: List[_Selected]) -> None:
    owners = _owners(model)
    for sel in selected:
        if not sel.linear:
            continue
        others = owners.get(id(sel.module.weight), set()) - {sel.name}
        if others:
            warnings.warn(
                f"linear layer {sel.name!r} shares its weight with {sorted(others)}; its captured "
                f"gradient covers only the use of the weight inside {sel.name!r}, not the total "
                "gradient of the shared parameter", stacklevel=3)
