"""GradientCapture: per-sample gradients of a model's chosen layers, compressed per layer.

Hooked layers (Linear, Conv1D, Conv1d/2d, Embedding, norms, leaf modules; ``hooks.py``,
``paths.py``): one batched forward and one ``torch.autograd.grad`` with respect to the layer
outputs; each compressor gets its layer's pieces (factors, sparse rows, small gradients).
Layers on the "functional" path go through ``torch.func`` over the whole model
(``functional.py``). See docs/capture.md.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..layers import LayerInfo
from .batch import batch_size, take
from .functional import check_loss_tensor, per_sample_grads
from .hooks import HookRecorder
from .paths import densify, pieces, tied_pieces
from .select import coverage, discover_layers

__all__ = ["GradientCapture", "BatchDependenceError"]


# Modules whose training-mode forward makes a sample's output depend on its batch.
_BATCH_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


@contextlib.contextmanager
def checkpointing_off(model: nn.Module):
    """Turn off Hugging Face style gradient checkpointing (modules with a true
    ``gradient_checkpointing`` attribute) for one capture pass, restoring it on exit: a
    reentrant checkpoint runs its forward under no_grad, so no layer output inside it
    would have a gradient edge. Capture trades the checkpoint's memory saving for one
    batch's activations."""
    flipped = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for m in flipped:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in flipped:
            m.gradient_checkpointing = True


def compress_pieces(comp, parts) -> torch.Tensor:
    """Sum of a compressor applied to each piece of one layer's gradient (it is linear)."""
    y = None
    for p in parts:
        if p[0] == "factors":
            z = comp.compress_factors(p[1], p[2])
        elif p[0] == "patches":
            columns = getattr(comp, "input_columns", None)
            cols = columns(p[2].device) if columns is not None else None
            if cols is None:
                z = comp.compress_factors(p[1](), p[2])
            else:  # the compressor reads only these input columns: gather just them
                z = comp.compress_factor_columns(p[1](cols), p[2])
        elif p[0] == "sparse":
            z = comp.compress_sparse(p[1])
        else:
            z = comp.compress(p[1])
        y = z if y is None else y.add_(z)
    return y


class BatchDependenceError(ValueError):
    """A sample's gradient depends on the other samples of its batch."""


@contextlib.contextmanager
def preserved_buffers(model: nn.Module):
    """Restore, on exit, the buffers of modules in training mode (BatchNorm running
    statistics and their counters), which a forward pass would otherwise update."""
    saved = []
    for m in model.modules():
        if m.training:
            for name, buf in m.named_buffers(recurse=False):
                if buf is not None:
                    saved.append((buf, buf.detach().clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def _check_losses(losses, B: int) -> torch.Tensor:
    check_loss_tensor(losses)
    if tuple(losses.shape) != (B,):
        raise ValueError(f"loss_fn must return per-sample losses of shape [B] = [{B}], got "
                         f"{list(losses.shape)}")
    if not losses.requires_grad:
        raise ValueError("loss_fn returned losses that do not require grad: no attributed "
                         "parameter takes part in them (is the loss computed under torch.no_grad()?)")
    return losses


class GradientCapture:
    """Per-sample gradients of ``loss_fn(model, batch) -> Tensor[B]`` for chosen layers.

    layers: None (every trainable parameter, each module by its fastest exact path; modules
    that need torch.func over the whole model only with include_flat=True), a list of
    module names, or a list of module types (see ``grass.capture.discover_layers``).
    ``coverage`` says what is attributed; with layers=None, leaving out more than 1% of the
    trainable parameters warns, naming the modules. chunk_size: samples per
    ``torch.func.vmap`` chunk for functional layers (None: the whole batch at once).

    The model's parameters and buffers are left as they were, and ``param.grad`` is never
    written. Put the model in eval mode: capture assumes each sample's gradient does not
    depend on the rest of its batch (``check_batch_invariance`` tests it).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, layers=None, include_flat: bool = False,
                 *, chunk_size: Optional[int] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(model, batch) -> Tensor[B], got {loss_fn!r}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
        self.model = model
        self.loss_fn = loss_fn
        self.chunk_size = chunk_size
        self._entries: List[Tuple[LayerInfo, nn.Module]] = discover_layers(
            model, layers, include_flat=include_flat)
        self.layers: List[LayerInfo] = [info for info, _ in self._entries]
        self.coverage = coverage(model, self.layers)
        self._warned = False
        if layers is None:
            cov = self.coverage
            left = cov["total"] - cov["attributed"]
            if cov["total"] and left > 0.01 * cov["total"]:
                names = ", ".join(f"{n!r} ({c})" for n, c in cov["left_out"][:10])
                more = f" and {len(cov['left_out']) - 10} more" if len(cov["left_out"]) > 10 else ""
                warnings.warn(
                    f"{left} of {cov['total']} trainable parameters ({100 * left / cov['total']:.1f}%) "
                    f"are not attributed: modules {names}{more} need torch.func over the whole "
                    "model; pass include_flat=True to attribute them too", stacklevel=3)

    def __repr__(self) -> str:
        kinds = ", ".join(f"{i.name}:{i.kind}" for i in self.layers)
        return f"GradientCapture({type(self.model).__name__}, layers=[{kinds}])"

    # ---- what users and the pipeline call --------------------------------------------------

    def compressed(self, batch, compressors: Mapping, fn: Optional[Callable] = None) -> Dict[str, torch.Tensor]:
        """{layer name: [B, k_l] float32} for one batch, in ``self.layers`` order.
        compressors: {layer name: Compressor} (``spec.build(capture.layers)``)."""
        self._check_compressors(compressors)
        fn = fn or self.loss_fn
        out: Dict[str, torch.Tensor] = {}
        hooked = [(i, m) for i, m in self._entries if i.path != "functional"]
        flat = [(i, m) for i, m in self._entries if i.path == "functional"]
        if hooked:
            for info, parts in self._hooked(batch, fn, hooked):
                out[info.name] = compress_pieces(compressors[info.name], parts)
        if flat:
            grads = self._per_sample(batch, fn, flat)
            for info, _ in flat:
                out[info.name] = compressors[info.name].compress(grads.pop(info.name))
        return {info.name: out[info.name] for info in self.layers}

    def compressed_rows(self, batch, compressors: Mapping, fn: Callable) -> Dict[str, torch.Tensor]:
        """Several targets per sample from one forward: ``fn(model, batch) -> Tensor[B, n]``
        (e.g. the log-probability of each token of a continuation) gives {layer name:
        [B * n, k_l]}, row b * n + j the compressed gradient of target [b, j]. One forward,
        then one backward per column j on the same graph: sequences are never repeated.
        Every layer must be hooked (no "functional" path)."""
        self._check_compressors(compressors)
        flat = [i.name for i, _ in self._entries if i.path == "functional"]
        if flat:
            raise ValueError(f"per-token targets need hooked layers; layers {flat} use torch.func "
                             "over the whole model (select other layers or drop include_flat)")
        self._warn_training_mode()
        B = batch_size(batch)
        rows: Dict[str, list] = {i.name: [] for i in self.layers}
        with preserved_buffers(self.model), checkpointing_off(self.model), \
                HookRecorder(self._entries, self.model, B) as rec:
            targets = fn(self.model, batch)
            check_loss_tensor(targets)
            if targets.dim() != 2 or targets.shape[0] != B:
                raise ValueError(f"a per-token target must return [B, n] = [{B}, n] values, got "
                                 f"{list(targets.shape)}")
            n = int(targets.shape[1])
            for j in range(n):
                calls = rec.backward(targets[:, j].sum(), retain_graph=j + 1 < n)
                for info, module in self._entries:
                    if info.path == "tied":
                        parts = tied_pieces(info, module, calls[info.name], calls[info.tied[0]], B)
                    else:
                        parts = pieces(info, module, calls[info.name], B, self.model)
                    rows[info.name].append(compress_pieces(compressors[info.name], parts))
        # [n, B, k] -> [B, n, k] -> [B * n, k]
        return {name: torch.stack(r, 1).reshape(B * n, -1) if n else
                torch.zeros(0, compressors[name].k) for name, r in rows.items()}

    def factors(self, batch, fn: Optional[Callable] = None,
                layers: Optional[Iterable[str]] = None) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        """{layer name: (a [B, T, d_in], g [B, T, d_out])}: the captured factors of the layers
        whose gradient is one pair of factors (Linear, Conv1D, ungrouped convolutions)."""
        entries = [(i, m) for i, m in self._select(layers) if i.path in ("factors", "conv")]
        out = {}
        if entries:
            for info, parts in self._hooked(batch, fn or self.loss_fn, entries):
                if len(parts) == 1 and parts[0][0] == "factors":
                    out[info.name] = (parts[0][1], parts[0][2])
                elif len(parts) == 1 and parts[0][0] == "patches":
                    out[info.name] = (parts[0][1](), parts[0][2])
        return out

    def per_sample(self, batch, fn: Optional[Callable] = None,
                   layers: Optional[Iterable[str]] = None, *, via: str = "func") -> Dict[str, torch.Tensor]:
        """{layer name: [B, numel_l]} explicit per-sample gradients in the grass layout, for
        every layer (or the named ones). via="func": ``torch.func`` over the whole model for
        every layer (independent of the hooks); via="hooks": each layer's own path, densified
        (works where vmap over the model does not, e.g. with data-dependent attention masks).
        Memory: B * sum(numel_l) floats."""
        entries = self._select(layers)
        fn = fn or self.loss_fn
        if via == "func":
            return self._per_sample(batch, fn, entries)
        if via != "hooks":
            raise ValueError(f"via must be 'func' or 'hooks', got {via!r}")
        out = {}
        hooked = [(i, m) for i, m in entries if i.path != "functional"]
        flat = [(i, m) for i, m in entries if i.path == "functional"]
        if hooked:
            for info, parts in self._hooked(batch, fn, hooked):
                dense = None
                for p in parts:
                    d = densify(p, info)
                    dense = d if dense is None else dense.add_(d)
                out[info.name] = dense
        if flat:
            out.update(self._per_sample(batch, fn, flat))
        return {i.name: out[i.name] for i, _ in entries}

    def check_batch_invariance(self, batch, fn: Optional[Callable] = None, *, n_samples: int = 3,
                               rtol: float = 1e-4) -> float:
        """Compare, for the first ``n_samples`` samples, the gradient of loss_i computed inside
        the batch with the gradient computed on the sample alone (plain autograd, attributed
        parameters only). Raises BatchDependenceError naming the likely cause when they differ
        by more than ``rtol`` (relative); returns the largest relative difference otherwise."""
        fn = fn or self.loss_fn
        B = batch_size(batch)
        if B < 2:
            raise ValueError("check_batch_invariance needs a batch of at least 2 samples")
        params = [self.model.get_parameter(n) for info in self.layers for n in info.param_names]
        n = min(int(n_samples), B)

        def flat_grad(loss, retain):
            gs = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
            return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).detach()
                              for g, p in zip(gs, params)])

        worst, worst_ratio = 0.0, 1.0
        with preserved_buffers(self.model):
            losses = _check_losses(fn(self.model, batch), B)
            in_batch = [flat_grad(losses[i], retain=True) for i in range(n)]
            del losses
            for i in range(n):
                try:
                    alone = flat_grad(_check_losses(fn(self.model, take(batch, torch.tensor([i]))), 1)[0],
                                      retain=False)
                except (ValueError, RuntimeError) as e:
                    if isinstance(e, BatchDependenceError):
                        raise
                    raise BatchDependenceError(
                        f"the model cannot run on a single sample ({type(e).__name__}: {e}); per-sample "
                        f"gradients need a batch-invariant model.{self._suspects_hint()}") from e
                scale = max(float(alone.norm()), float(in_batch[i].norm()), torch.finfo(torch.float32).tiny)
                err = float((in_batch[i] - alone).norm()) / scale
                if err > worst:
                    worst = err
                    worst_ratio = float(in_batch[i].norm()) / max(float(alone.norm()), 1e-300)
        if worst > rtol:
            hint = self._suspects_hint()
            if not hint and abs(worst_ratio * B - 1) < 0.05:
                hint = (f" The gradient inside the batch is 1/B = 1/{B} of the gradient alone: the "
                        "loss seems to be divided by the batch size; return unreduced per-sample losses.")
            if not hint:
                hint = (" No BatchNorm or Dropout in training mode was found: look for a loss or a "
                        "module that mixes samples (batch statistics, a mean over the batch).")
            raise BatchDependenceError(
                f"per-sample gradients depend on the batch: for one of the first {n} samples the "
                f"gradient computed in the batch differs from the gradient computed alone by "
                f"{worst:.2e} (relative; tolerance {rtol:g}).{hint}")
        return worst

    # ---- internals -------------------------------------------------------------------------

    def _select(self, layers):
        if layers is None:
            return list(self._entries)
        wanted = list(layers)
        known = {i.name for i in self.layers}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise ValueError(f"layers {unknown} are not captured; captured layers: {sorted(known)}")
        wanted = set(wanted)
        return [(i, m) for i, m in self._entries if i.name in wanted]

    def _check_compressors(self, compressors) -> None:
        if not isinstance(compressors, Mapping):
            raise TypeError("compressors must be a dict {layer name: Compressor} "
                            f"(spec.build(capture.layers)), got {type(compressors).__name__}")
        missing = [i.name for i in self.layers if i.name not in compressors]
        if missing:
            raise ValueError(f"no compressor for layers {missing}; build them with "
                             "spec.build(capture.layers)")
        for info in self.layers:
            c = compressors[info.name]
            cinfo = getattr(c, "info", None)
            if cinfo is None or cinfo.numel != info.numel or cinfo.kind != info.kind:
                raise ValueError(f"the compressor for layer {info.name!r} was built for another layer "
                                 f"({cinfo}); expected {info}")

    def _hooked(self, batch, fn, entries):
        """Yield (info, pieces) for each hooked layer, from one forward and one backward."""
        self._warn_training_mode()
        B = batch_size(batch)
        with preserved_buffers(self.model), checkpointing_off(self.model), \
                HookRecorder(entries, self.model, B) as rec:
            losses = _check_losses(fn(self.model, batch), B)
            calls = rec.backward(losses.sum())
            del losses
        for info, module in entries:
            if info.path == "tied":
                parts = tied_pieces(info, module, calls.pop(info.name), calls.pop(info.tied[0]), B)
            else:
                parts = pieces(info, module, calls.pop(info.name), B, self.model)
            yield info, parts

    def _per_sample(self, batch, fn, entries):
        with preserved_buffers(self.model):
            return per_sample_grads(self.model, fn, batch, entries, chunk_size=self.chunk_size)

    def _suspects(self) -> List[str]:
        return [f"{n!r} ({type(m).__name__})" for n, m in self.model.named_modules()
                if m.training and isinstance(m, _BATCH_DEPENDENT)]

    def _warn_training_mode(self) -> None:
        # Once per capture: the hooks run the batch as it is, so BatchNorm or dropout in
        # training mode would silently mix samples (torch.func refuses them by itself).
        if self._warned:
            return
        found = self._suspects()
        if found:
            self._warned = True
            warnings.warn(f"modules in training mode make per-sample gradients depend on the batch: "
                          f"{', '.join(found)}; call model.eval() before capturing gradients",
                          stacklevel=4)

    def _suspects_hint(self) -> str:
        found = self._suspects()
        if not found:
            return ""
        return (f" Likely cause: modules in training mode: {', '.join(found)}. Call model.eval() "
                "before capturing gradients.")
