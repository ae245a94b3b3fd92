"""Capture compressed per-sample gradients from the user's own training loop.

    cap = grass.loop.LoopCapture(model, grass.compress.FactGraSS(k=4096), store="runs/x")
    for step, (ids, x, y) in enumerate(loader):            # an ordinary loop, shuffling allowed
        with cap.window(f"step-{step}") if step in chosen else contextlib.nullcontext():
            with cap.step(ids):                            # a no-op outside a window
                loss = F.cross_entropy(model(x), y)        # the loop's own loss (mean)
                loss.backward()                            # the loop's own backward
        opt.step(); opt.zero_grad()

While a step block runs, forward hooks on the attributed linear layers keep each layer's
input a (detached) and a tensor hook on its output receives dL/dy from the loop's own
``backward()``; when the block ends, the per-sample factors (a, g) are compressed exactly
as `GradientCapture` does and appended to the window's store. No second forward or
backward pass runs, nothing is written to ``param.grad`` or the graph, and the hooks
return None, so the loop's losses and parameter updates are bitwise unchanged.

Per-sample scale: capture wants ∇ℓ_i, the gradient of sample i's own loss. A loop whose
loss is the batch mean L = (1/B) Σ ℓ_i delivers dL/dy_i = (1/B) dℓ_i/dy_i, so with
``reduction="mean"`` (the default) g is multiplied by B; ``"sum"`` takes g as it is; a
tensor [B] gives each sample's factor (e.g. a token-mean language-model loss: the batch's
token count over the sample's). Multiplying by a power of two is exact, so with B a
power of two the captured rows are bitwise those of caching afterwards.

A window is one store of rows ``<store>/<name>/train`` (an ordinary gradient store, rows
in the order the loop visited the examples), ``ids.pt`` (the example id of every row),
``weights.pt`` (the model's weights when the window opened) and ``window.json`` (steps,
learning rate, whether the weights changed during the window). See docs/capture.md.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..distributed.group import unwrap_model
from ..store import GradientStore, StoreWriter, hash_module
from ..store.store import _check_dtype
from ..capture.select import discover_layers

__all__ = ["LoopCapture", "CapturedWindow"]

WINDOW = "window.json"


def _save_atomic(obj: Any, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: str, obj: Dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _OutputGrads:
    """Forward hooks keeping each call's input, tensor hooks receiving dL/d(output)."""

    def __init__(self, entries):
        self.entries = entries
        self.calls: Dict[str, List[list]] = {}
        self._handles = []

    def __enter__(self):
        self.calls = {info.name: [] for info, _ in self.entries}
        for info, module in self.entries:
            self._handles.append(module.register_forward_hook(self._hook(info.name), with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, name):
        calls = self.calls

        def hook(module, args, kwargs, output):
            if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor) \
                    or not output.requires_grad:
                return None  # e.g. an evaluation forward inside the block: nothing to learn
            x = args[0] if args else next((v for k, v in kwargs.items() if k in ("input", "x")), None)
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"linear layer {name!r} was called without a tensor input")
            entry = [x.detach(), None]

            def grad_hook(g, entry=entry):
                if entry[1] is not None:
                    raise RuntimeError(
                        f"a second backward reached linear layer {name!r} within one capture step; "
                        "call backward() once per step block (one block per micro-batch)")
                entry[1] = g.detach()
                return None

            output.register_hook(grad_hook)
            calls[name].append(entry)
            return None
        return hook


class CapturedWindow:
    """A finished capture window: ``store`` (rows in visit order), ``ids`` [rows] (example
    id of each row), the window's ``weights`` (a state dict, loaded lazily) and ``info``."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        file = os.path.join(self.path, WINDOW)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"no finished capture window at {self.path!r} ({WINDOW} is "
                                    "missing: the window was never closed, e.g. the loop crashed)")
        with open(file) as f:
            self.info = json.load(f)
        self.store = GradientStore(os.path.join(self.path, "train"))
        self.store.require_complete()
        self.ids = torch.load(os.path.join(self.path, "ids.pt"), weights_only=True)
        if self.ids.shape != (self.store.num_rows,):
            raise ValueError(f"{self.path!r}: ids.pt has {tuple(self.ids.shape)} ids for "
                             f"{self.store.num_rows} rows; the window is damaged")

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def learning_rate(self) -> float:
        return float(self.info["learning_rate"])

    @property
    def weights(self) -> Dict[str, torch.Tensor]:
        return torch.load(os.path.join(self.path, "weights.pt"), map_location="cpu",
                          weights_only=True)

    def __repr__(self) -> str:
        return (f"CapturedWindow({self.name!r}, rows={self.store.num_rows}, steps="
                f"{len(self.info['steps'])}, weights_changed={self.info['weights_changed']})")


class LoopCapture:
    """Compressed per-sample gradients from a training loop (see the module docstring).

    Args:
        model: the model the loop trains (a DDP wrapper is looked through).
        compressor: a compressor spec from ``grass.compress`` (one that needs no fitting).
        store: directory of the capture; each window is a sub-directory.
        layers: which linear layers (None: every ``nn.Linear`` / ``Conv1D``).
        dtype: stored dtype of the rows.
        reduction: how the loop's loss reduces over the batch: "mean" (default), "sum".
        chunk_rows: rows per store chunk.
    """

    def __init__(self, model: nn.Module, compressor, store: str, *, layers=None,
                 dtype: str = "float32", reduction: str = "mean", chunk_rows: Optional[int] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if compressor is None or not hasattr(compressor, "build"):
            raise TypeError(f"compressor must be a compressor spec from grass.compress, got {compressor!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum' (or pass scale= to step), got {reduction!r}")
        self.model = unwrap_model(model)
        self.spec = compressor
        self.root = os.fspath(store)
        self.dtype = _check_dtype(dtype)
        self.reduction = reduction
        self.chunk_rows = chunk_rows
        entries = discover_layers(self.model, layers)
        flat = [info.name for info, _ in entries if info.kind != "linear"]
        if flat:
            raise ValueError(f"loop capture takes linear layers (nn.Linear, Conv1D) only, whose "
                             f"per-sample gradients come from the loop's own backward; layers "
                             f"{flat} are not linear (choose layers=, or cache them afterwards)")
        self._entries = entries
        self.layers = [info for info, _ in entries]
        self.compressors = compressor.build(self.layers)
        pending = [n for n, c in self.compressors.items() if getattr(c, "needs_fit", False)]
        if pending:
            raise ValueError(f"the compressors of layers {pending} need fitting (selective masks); "
                             "loop capture takes compressors that need none")
        self.block_sizes = [int(self.compressors[i.name].k) for i in self.layers]
        self._window = None
        self._rec = None
        self._step = 0

    @property
    def dim(self) -> int:
        return sum(self.block_sizes)

    # -- windows -----------------------------------------------------------------------
    @contextlib.contextmanager
    def window(self, name: str, *, rows: Optional[int] = None, learning_rate: float = 1.0):
        """Capture every step block run inside into a new window ``name`` of exactly
        ``rows`` rows (e.g. one epoch: the dataset size), written chunk by chunk as they
        come; ``rows=None`` keeps the rows in memory and writes them when the window
        closes (for a few steps)."""
        if self._window is not None:
            raise RuntimeError(f"window {self._window['name']!r} is still open; windows do not nest")
        if not name or os.sep in name or name.startswith("."):
            raise ValueError(f"name must be a plain directory name, got {name!r}")
        path = os.path.join(self.root, name)
        if os.path.exists(path):
            raise FileExistsError(f"capture window {path!r} exists already (a finished window, or "
                                  "one a crash left behind); choose another name or delete it")
        os.makedirs(path)
        weights_hash = hash_module(self.model)
        _save_atomic({k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()},
                     os.path.join(path, "weights.pt"))
        fp = {"role": "loop-capture", "window": name, "model": weights_hash,
              "compressor": self.spec.config(), "layers": [i.to_dict() for i in self.layers],
              "block_sizes": self.block_sizes, "dtype": self.dtype}
        def writer(n):
            return StoreWriter(os.path.join(path, "train"), fingerprint=fp, num_rows=int(n),
                               block_sizes=self.block_sizes, dtype=self.dtype,
                               chunk_rows=self.chunk_rows, layers=[i.name for i in self.layers],
                               meta={"capture": "training loop"})
        self._window = {"name": name, "path": path, "writer": writer(rows) if rows is not None else None,
                        "buffer": [], "ids": [], "steps": [], "hash": weights_hash}
        ok = False
        try:
            yield self
            ok = True
        finally:
            self._abort_step()
            w, self._window = self._window, None
            if w["writer"] is None and ok:
                if not w["buffer"]:
                    raise ValueError(f"window {name!r} captured no step")
                with writer(sum(b.shape[0] for b in w["buffer"])) as wr:
                    for b in w["buffer"]:
                        wr.append(b)
                w["writer"] = wr
            if w["writer"] is not None:
                w["writer"].close()
            if ok:
                if w["writer"].written_rows != w["writer"].num_rows:
                    raise ValueError(f"window {name!r} was opened for rows={rows} but its steps "
                                     f"captured {w['writer'].written_rows}")
                ids = torch.cat(w["ids"]) if w["ids"] else torch.empty(0, dtype=torch.int64)
                _save_atomic(ids, os.path.join(path, "ids.pt"))
                _write_json(os.path.join(path, WINDOW), {
                    "name": name, "rows": w["writer"].num_rows, "learning_rate": float(learning_rate),
                    "steps": w["steps"], "weights_changed": hash_module(self.model) != w["hash"],
                    "reduction": self.reduction, "closed": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def windows(self) -> List[str]:
        """Names of the finished windows, in the order they were closed."""
        if not os.path.isdir(self.root):
            return []
        found = []
        for name in os.listdir(self.root):
            file = os.path.join(self.root, name, WINDOW)
            if os.path.isfile(file):
                with open(file) as f:
                    found.append((json.load(f)["closed"], os.path.getmtime(file), name))
        return [name for _, _, name in sorted(found)]

    def open(self, name: str) -> CapturedWindow:
        return CapturedWindow(os.path.join(self.root, name))

    # -- scores (grass.loop.scores) -------------------------------------------------
    def tracin(self, target_fn, test, *, num_examples: int, windows=None, **kw) -> torch.Tensor:
        """TracIn [M, num_examples] over the finished windows (see grass.loop.scores)."""
        from .scores import captured_tracin
        return captured_tracin(self, target_fn, test, num_examples=num_examples, windows=windows, **kw)

    def influence(self, target_fn, test, *, num_examples: int, window=None, **kw) -> torch.Tensor:
        """Influence [M, num_examples] at one window (default: the last finished one)."""
        from .scores import captured_influence
        return captured_influence(self, target_fn, test, num_examples=num_examples, window=window, **kw)

    # -- steps -------------------------------------------------------------------------
    @contextlib.contextmanager
    def step(self, ids, *, scale=None):
        """One forward + backward of the loop (one micro-batch). ``ids`` [B]: the example
        ids of the batch's samples; ``scale``: per-sample factor(s) turning the loop's
        output gradients into those of each sample's own loss (default from ``reduction``).
        Outside a window the block runs untouched."""
        self.begin_step()
        try:
            yield
        except BaseException:
            self._abort_step()
            raise
        self.end_step(ids, scale=scale)

    def begin_step(self) -> None:
        """Start one micro-batch (`step` does begin/end; a callback calls them itself)."""
        self._abort_step()
        self._rec = _OutputGrads(self._entries).__enter__() if self._window is not None else None

    def _abort_step(self) -> None:
        rec, self._rec = getattr(self, "_rec", None), None
        if rec is not None:
            rec.__exit__(None, None, None)

    def end_step(self, ids, scale=None) -> None:
        """Finish the micro-batch begun by `begin_step`: compress and append its rows."""
        step = self._step
        self._step += 1
        rec, self._rec = getattr(self, "_rec", None), None
        if rec is None:
            return
        rec.__exit__(None, None, None)
        ids = torch.as_tensor(ids).detach().to("cpu", torch.int64).flatten()
        rows = self._rows(rec, int(ids.numel()), scale)
        w = self._window
        if w["writer"] is None:
            w["buffer"].append(rows.cpu())
        else:
            w["writer"].append(rows)
        w["ids"].append(ids)
        w["steps"].append(step)

    def _rows(self, rec: _OutputGrads, B: int, scale) -> torch.Tensor:
        if scale is None:
            scale = float(B) if self.reduction == "mean" else 1.0
        out = []
        with torch.no_grad():
            for info in self.layers:
                calls = rec.calls[info.name]
                if not calls:
                    raise RuntimeError(f"linear layer {info.name!r} did not run with gradients "
                                       "inside the step block")
                a_parts, g_parts = [], []
                for a, g in calls:
                    if g is None:
                        raise RuntimeError(
                            f"no gradient reached linear layer {info.name!r} inside the step block: "
                            "call loss.backward() inside `with capture.step(ids):`")
                    if a.shape[0] != B or g.shape[0] != B:
                        raise ValueError(f"step got {B} ids but linear layer {info.name!r} saw a "
                                         f"batch of {a.shape[0]} (batch-first inputs are needed)")
                    a_parts.append(a.reshape(B, -1, info.d_in))
                    g_parts.append(g.reshape(B, -1, info.d_out))
                a = a_parts[0] if len(a_parts) == 1 else torch.cat(a_parts, 1)
                g = g_parts[0] if len(g_parts) == 1 else torch.cat(g_parts, 1)
                if isinstance(scale, torch.Tensor):
                    s = scale.to(device=g.device, dtype=g.dtype).reshape(B, 1, 1)
                    g = g * s
                elif scale != 1.0:
                    g = g * scale
                if a.dtype != g.dtype:  # autocast: float32 inputs, half-precision outputs
                    a, g = a.float(), g.float()
                out.append(self.compressors[info.name].compress_factors(a, g).float())
        return torch.cat(out, dim=1)
