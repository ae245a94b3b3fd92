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

__all__ = ["is_linear", "linear_dims", "is_conv", "conv_dims", "path_of", "discover_layers", "coverage"]

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


_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
_CONVS = (nn.Conv1d, nn.Conv2d)


def is_conv(module: nn.Module) -> bool:
    """True for ``nn.Conv1d`` / ``nn.Conv2d`` (any stride, padding, dilation, groups,
    padding mode), which capture through unfolded input patches."""
    return isinstance(module, _CONVS)


def conv_dims(module: nn.Module) -> Tuple[int, int]:
    """(d_in, d_out) of a convolution's per-group factor: C_in/groups * prod(kernel), C_out."""
    w = module.weight
    return int(w[0].numel()), int(w.shape[0])


def path_of(module: nn.Module) -> str:
    """The fastest exact capture path for a module's own parameters (see LayerInfo.path)."""
    if is_linear(module) and not isinstance(module, _FUNCTIONAL_PARENTS):
        return "factors"
    if is_conv(module):
        return "conv"
    if isinstance(module, nn.Embedding):
        # max_norm renormalises the weight in place during forward, and
        # scale_grad_by_freq scales by in-batch counts: both go through torch.func on the
        # module alone, which sees one sample at a time.
        return "module" if (module.max_norm is not None or module.scale_grad_by_freq) else "embedding"
    if isinstance(module, _NORMS):
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.track_running_stats:
            return "module"
        return "norm"
    if isinstance(module, _FUNCTIONAL_PARENTS) or any(True for _ in module.children()):
        return "functional"
    return "module"  # a leaf module: torch.func on the module alone, from its recorded input


class _Selected:
    """One chosen layer before parameter de-duplication: its module and trainable params."""

    def __init__(self, name: str, module: nn.Module, linear: bool, params, path: str = "",
                 tied: tuple = ()):
        self.name = name
        self.module = module
        self.linear = linear
        self.params = params  # list of (full name, Parameter)
        self.path = path or ("factors" if linear else "functional")
        self.tied = tuple(tied)


def _layer_for(name: str, module: nn.Module, recurse: bool) -> Optional[_Selected]:
    """The layer a module stands for, or None when it has no trainable parameters.

    A linear (or convolution) module whose weight is frozen but whose bias trains has
    nothing to factor, so it becomes a flat layer over the bias alone (torch.func on the
    module).
    """
    path = path_of(module)
    if path in ("factors", "conv"):
        params = _trainable([(_join(name, n), p) for n, p in
                             (("weight", module.weight), ("bias", getattr(module, "bias", None)))])
        if not params:
            return None
        linear = module.weight.requires_grad
        return _Selected(name, module, linear, params, path if linear else "module")
    params = _trainable((_join(name, n), p) for n, p in module.named_parameters(recurse=recurse))
    if not params:
        return None
    if recurse and any(True for _ in module.children()) and path != "functional":
        path = "functional"
    if path == "norm" and not all(p is getattr(module, "weight", None) or p is getattr(module, "bias", None)
                                  for _, p in params):
        path = "module"
    return _Selected(name, module, False, params, path)


def _to_info(sel: _Selected) -> LayerInfo:
    names = tuple(n for n, _ in sel.params)
    numel = sum(p.numel() for _, p in sel.params)
    if sel.path == "tied":  # an embedding [vocab, dim] read by a head as Linear(dim, vocab)
        vocab, dim = sel.module.weight.shape
        return LayerInfo(name=sel.name, kind="linear", numel=numel, d_in=int(dim), d_out=int(vocab),
                         bias=False, param_names=names, path="tied", tied=sel.tied)
    if sel.linear:
        d_in, d_out = conv_dims(sel.module) if sel.path == "conv" else linear_dims(sel.module)
        bias = any(p is getattr(sel.module, "bias", None) for _, p in sel.params)
        return LayerInfo(name=sel.name, kind="linear", numel=numel, d_in=d_in, d_out=d_out,
                         bias=bias, param_names=names, path=sel.path, tied=sel.tied)
    return LayerInfo(name=sel.name, kind="flat", numel=numel, param_names=names, path=sel.path,
                     tied=sel.tied)


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
      * ``None``: every module with direct trainable parameters (``recurse=False``), each by
        the fastest exact path for its type (``path_of``): Linear / Conv1D / Conv1d /
        Conv2d through factors ("linear"), Embedding through its sparse rows, norms from
        their normalised input, other leaf modules by torch.func on the module alone. A
        module that uses its parameters without being a leaf (``nn.MultiheadAttention``, a
        container's own ``nn.Parameter``) needs torch.func over the whole model: only with
        ``include_flat=True``, otherwise it is left out (``coverage`` lists it, and
        ``GradientCapture`` warns above 1% of the trainable parameters). Tied weights:
        see ``_tie``.
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
            recurse = isinstance(m, _FUNCTIONAL_PARENTS)
            sel = _layer_for(name, m, recurse=recurse)
            if sel is not None and sel.path == "functional" and not include_flat:
                sel = None  # the whole-model torch.func path only on request
            if sel is not None:
                selected.append(sel)
        selected = _tie(model, selected, include_flat)
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

    owners = _owners(model)
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
        if sel.path not in ("factors", "functional"):
            # A hook sees only this module's use of a parameter; a shared one needs all uses.
            others = sorted(set().union(*(owners.get(id(p), set()) for _, p in sel.params)) - {name})
            if others:
                head = _tied_head(model, sel, others)
                sel = (_Selected(name, m, True, sel.params, "tied", (head,)) if head is not None
                       else _Selected(name, m, False, sel.params, "functional", tuple(others)))
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


def _tie(model: nn.Module, selected: List[_Selected], include_flat: bool) -> List[_Selected]:
    """Give each parameter shared by several modules (tied weights) to one layer, explicitly.

    An ``nn.Embedding`` whose weight a later linear module reuses as its weight (a language
    model's output head) becomes one "tied" layer: both uses are captured by hooks and their
    gradients summed. Any other sharing makes the first holder a "functional" layer over the
    shared parameter (torch.func replaces it under every name, so its gradient is the total
    over all uses); with ``include_flat=False`` that layer is left out instead (and reported
    by coverage). Later holders never attribute the parameter again.
    """
    owners = _owners(model)
    holders = {}
    for sel in selected:
        for _, p in sel.params:
            holders.setdefault(id(p), []).append(sel)
    claimed, out = set(), []
    for sel in selected:
        keep = [(n, p) for n, p in sel.params if id(p) not in claimed]
        if not keep:
            continue
        shared = [(n, p) for n, p in keep if len(owners.get(id(p), ())) > 1]
        if shared:
            others = sorted(set().union(*(owners[id(p)] for _, p in shared)) - {sel.name})
            head = _tied_head(model, sel, others)
            if head is not None:
                sel = _Selected(sel.name, sel.module, True, keep, "tied", (head,))
            elif include_flat:
                sel = _Selected(sel.name, sel.module, False, keep, "functional", tuple(others))
            else:
                claimed.update(id(p) for _, p in shared)
                keep = [(n, p) for n, p in keep if len(owners.get(id(p), ())) <= 1]
                if not keep:
                    continue
                sel = _Selected(sel.name, sel.module, sel.linear and any(
                    p is getattr(sel.module, "weight", None) for _, p in keep), keep,
                    sel.path if (sel.linear or sel.path != "norm") else "module")
        elif len(keep) != len(sel.params):
            linear = sel.linear and any(p is sel.module.weight for _, p in keep)
            path = sel.path if linear or sel.path not in ("factors", "conv", "norm") else "module"
            sel = _Selected(sel.name, sel.module, linear, keep, path)
        claimed.update(id(p) for _, p in sel.params)
        out.append(sel)
    return out


def _tied_head(model: nn.Module, sel: _Selected, others: List[str]) -> Optional[str]:
    """The name of the one linear module that reuses an embedding's weight as its own weight
    ([vocab, dim] read as Linear(dim, vocab)), or None for any other kind of sharing."""
    if sel.path != "embedding" or len(others) != 1 or len(sel.params) != 1:
        return None
    head = model.get_submodule(others[0])
    if (isinstance(head, nn.Linear) and head.weight is sel.module.weight
            and not _holds_other_use(model, sel.module.weight, {sel.name, others[0]})):
        return others[0]
    return None


def _holds_other_use(model: nn.Module, p, allowed) -> bool:
    return any(n not in allowed for n in _owners(model).get(id(p), ()))


def _warn_shared_linear(model: nn.Module, selected: List[_Selected]) -> None:
    owners = _owners(model)
    for sel in selected:
        if not sel.linear or sel.path not in ("factors", "conv"):
            continue
        others = owners.get(id(sel.module.weight), set()) - {sel.name}
        if others:
            warnings.warn(
                f"linear layer {sel.name!r} shares its weight with {sorted(others)}; its captured "
                f"gradient covers only the use of the weight inside {sel.name!r}, not the total "
                "gradient of the shared parameter", stacklevel=3)


def coverage(model: nn.Module, infos) -> dict:
    """What a set of layers attributes: ``{"total": trainable parameters (each shared one
    once), "attributed": ..., "paths": {path: {"layers": n, "params": n}}, "left_out":
    [(module name, n params), ...]}``."""
    trainable = {id(p): p for p in model.parameters() if p.requires_grad}
    attributed = set()
    paths = {}
    for info in infos:
        entry = paths.setdefault(info.path, {"layers": 0, "params": 0})
        entry["layers"] += 1
        entry["params"] += int(info.numel)
        attributed.update(id(model.get_parameter(n)) for n in info.param_names)
    left, seen = {}, set()
    for mname, m in model.named_modules():
        for _, p in m.named_parameters(recurse=False):
            if id(p) in trainable and id(p) not in attributed and id(p) not in seen:
                seen.add(id(p))
                left[mname or "(root)"] = left.get(mname or "(root)", 0) + p.numel()
    total = sum(p.numel() for p in trainable.values())
    done = sum(trainable[i].numel() for i in attributed if i in trainable)
    return {"total": int(total), "attributed": int(done), "paths": paths,
            "left_out": sorted(left.items(), key=lambda kv: -kv[1])}
