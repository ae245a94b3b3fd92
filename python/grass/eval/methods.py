"""Attribution methods as the evaluation runs them, all through the grass pipeline.

A ``Method`` is one configuration: ``kind`` ("influence": block-diagonal Fisher;
"trak": TRAK; "tracin": gradient dot product) with a compressor (by its
``grass.compress`` name) at a per-layer dimension k. ``Method.run(...)`` caches training
gradients in a store (resumable), fits, and scores; ``compression_time`` measures the
compressor alone on the same layers.

Per-layer k: every attributed layer is compressed to k dimensions; a layer with at most k
parameters is kept whole (the compressor specs do that), so "k" means the same for every
compressor, flat or factored.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..attributor import Attributor
from ..ensemble import TRAK
from .jobs import atomic_write_json
from .objectives import cross_entropy, target_fn as _target_fn

__all__ = ["COMPRESSORS", "FACTORED", "Method", "compressor_spec", "layer_infos", "batches",
           "compression_time", "Run"]

#: The compressors of the paper's table, in its order.
COMPRESSORS = ("RandomMask", "SelectiveMask", "SJLT", "FJLT", "Gaussian", "GraSS", "LoGra",
               "FactGraSS")
#: Compressors that work on a linear layer's factors and never form its gradient.
FACTORED = ("LoGra", "FactGraSS")


def layer_infos(model: nn.Module, layers=None):
    from ..capture.select import discover_layers
    return [info for info, _ in discover_layers(model, layers, include_flat=False)]


def compressor_spec(name: str, k: int, seed: int = 0, **options):
    """The ``grass.compress`` spec ``name`` at k per layer (a layer with at most k
    parameters is kept whole by every spec)."""
    import grass.compress as C
    if name == "Identity":
        return C.Identity()
    cls = getattr(C, name, None)
    if not (isinstance(cls, type) and issubclass(cls, C.CompressorSpec)):
        raise ValueError(f"unknown compressor {name!r}; choose from {list(COMPRESSORS)}")
    return cls(k=k, seed=seed, **options)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> List[tuple]:
    """A fixed-order loader over in-memory tensors: a list of (x, y) slices."""
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]


@dataclass(frozen=True)
class Method:
    kind: str                   # "influence" | "trak" | "tracin"
    compressor: str             # a grass.compress name, e.g. "GraSS"
    k: int
    seed: int = 0
    options: Tuple = ()         # extra compressor options as (key, value) pairs

    def __post_init__(self):
        if self.kind not in ("influence", "trak", "tracin"):
            raise ValueError(f"Method.kind must be 'influence', 'trak' or 'tracin', got {self.kind!r}")

    @property
    def key(self) -> str:
        return f"{self.kind}-{self.compressor}-k{self.k}-s{self.seed}"

    @property
    def label(self) -> str:
        base = {"influence": "IF", "trak": "TRAK", "tracin": "TracIn"}[self.kind]
        return f"{base} {self.compressor}"

    def spec(self):
        return compressor_spec(self.compressor, self.k, self.seed, **dict(self.options))


def _margin_output(model, batch):
    x, y = batch
    return model(x), y


@dataclass
class Run:
    """A method applied to one model and training set: cached gradients and a fit."""

    method: Method
    model: nn.Module
    x_train: torch.Tensor
    y_train: torch.Tensor
    run_dir: str
    target: str = "margin"
    loss_fn: Callable = cross_entropy
    layers: Optional[Sequence[str]] = None
    batch_size: int = 500
    progress: bool = True
    checkpoints: Optional[list] = None      # TRAK: state dicts to ensemble over
    times: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.spec = self.method.spec()
        self._train = batches(self.x_train, self.y_train, self.batch_size)
        if self.method.kind == "trak":
            # One kernel block per layer, like the influence rows: TRAK's single K x K kernel
            # over all layers costs a Cholesky of (sum of k_l)^3, out of reach at k = 8192 on CPU.
            self.engine = TRAK(self.model, _margin_output, self.spec, store=self.run_dir,
                               checkpoints=self.checkpoints, layers=self.layers,
                               block_diagonal=True, progress=self.progress)
        else:
            self.engine = Attributor(self.model, self.loss_fn, compressor=self.spec,
                                     layers=self.layers, store=self.run_dir,
                                     target_fn=_target_fn(self.target), progress=self.progress)

    def prepare(self, mask_sample: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> "Run":
        """Learn selective masks if the compressor needs them, then cache the training
        gradients (resumable)."""
        attrs = self.engine.attributors if self.method.kind == "trak" else [self.engine]
        for attr in attrs:
            if attr._needs_fit():
                t = time.perf_counter()
                test = None if mask_sample is None else batches(*mask_sample, self.batch_size)
                attr.fit_masks(self._train, test)
                self.times["mask_fit_s"] = self.times.get("mask_fit_s", 0) + time.perf_counter() - t
        # The caching time of the run that filled the store: a rerun over a complete store
        # reports the time measured when it was written, not the time to find it complete.
        saved = os.path.join(self.run_dir, "eval_times.json")
        t = time.perf_counter()
        self.engine.cache(self._train)
        self.times["cache_s"] = time.perf_counter() - t
        if os.path.exists(saved):
            with open(saved) as f:
                self.times.update(json.load(f))
        else:
            atomic_write_json(saved, dict(self.times))
        return self

    def fit(self, damping=None) -> "Run":
        if self.method.kind == "tracin":
            self.engine.fit(method="identity")
        else:
            self.engine.fit(damping)
        return self

    def scores(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """τ(test, train) [n, N] float32 for the fitted damping."""
        return self.engine.scores(batches(x, y, self.batch_size))

    def test_gradients(self, x, y):
        if self.method.kind == "trak":
            raise NotImplementedError("test gradients are per checkpoint for TRAK")
        return self.engine.test_gradients(batches(x, y, self.batch_size))

    def self_influence(self) -> torch.Tensor:
        return self.engine.self_influence()

    def remove_store(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _capture_factors(model, loss_fn, infos, modules, x, y, batch_size):
    """Per batch, per layer: (a [B, 1, d_in], g [B, 1, d_out]) of the per-sample losses."""
    out = []
    for xb, yb in batches(x, y, batch_size):
        saved_in, saved_g, hooks = {}, {}, []
        for info, mod in zip(infos, modules):
            def fwd(m, inp, o, name=info.name):
                saved_in[name] = inp[0].detach()
                o.register_hook(lambda gr, name=name: saved_g.__setitem__(name, gr.detach()))
            hooks.append(mod.register_forward_hook(fwd))
        try:
            model.zero_grad(set_to_none=True)
            loss_fn(model, (xb, yb)).sum().backward()
        finally:
            for h in hooks:
                h.remove()
            model.zero_grad(set_to_none=True)
        out.append({i.name: (saved_in[i.name].reshape(xb.shape[0], -1, i.d_in).contiguous(),
                             saved_g[i.name].reshape(xb.shape[0], -1, i.d_out).contiguous())
                    for i in infos})
    return out


MODES = ("gradient", "factors")


def compression_time(model: nn.Module, compressors: Dict[str, Dict[str, object]],
                     x: torch.Tensor, y: torch.Tensor, loss_fn: Callable = cross_entropy,
                     layers=None, batch_size: int = 500, repeats: int = 3,
                     budget_s: float = 60.0, modes: Sequence[str] = MODES,
                     progress: bool = True) -> Dict[str, Dict[str, dict]]:
    """Seconds each compressor takes to compress the per-sample gradients of (x, y).

    ``compressors``: {label: {layer name: Compressor}} (built by a spec's ``build``).
    The backward pass is done once, untimed, for all. Two modes:

    * ``"gradient"``: ``compress`` on each layer's per-sample gradient [B, p] (formed
      untimed by ``grass.ops.kron``), as when gradients come as vectors (the paper's setting);
    * ``"factors"``: ``compress_factors`` on the layer's inputs and output gradients, as the
      pipeline's capture calls it (methods without a factored path form the gradient
      inside, and that is timed).

    Every round times all compressors on the same batch (in a rotating order) before moving
    to the next batch, so machine load affects all alike; one whose round exceeds
    ``budget_s`` is not repeated. Returns
    {label: {mode: {"median_s", "runs_s"}}}.
    """
    from tqdm.auto import tqdm

    from .. import ops
    from ..capture.select import discover_layers

    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {list(modes)}")
    pairs = discover_layers(model, layers, include_flat=False)
    infos = [i for i, _ in pairs]
    if any(i.kind != "linear" for i in infos):
        raise ValueError("compression_time handles linear layers only")
    was = model.training
    model.eval()
    try:
        factors = _capture_factors(model, loss_fn, infos, [m for _, m in pairs], x, y, batch_size)
    finally:
        model.train(was)
    labels = list(compressors)
    runs: Dict[tuple, List[float]] = {(label, mode): [] for label in labels for mode in modes}
    skip = set()
    with tqdm(total=repeats, desc="timing compressors", unit="round", dynamic_ncols=True,
              disable=not progress) as bar:
        for r in range(repeats):
            elapsed = {key: 0.0 for key in runs if key not in skip}
            order = labels[r % len(labels):] + labels[:r % len(labels)]  # rotate: no fixed order bias
            for batch in factors:
                for info in infos:
                    a, g = batch[info.name]
                    # formed once per batch and layer, untimed, shared by every compressor
                    grad = ops.kron(a, g, bias=info.bias) if "gradient" in modes else None
                    for label in order:
                        c = compressors[label][info.name]
                        for mode in modes:
                            if (label, mode) in skip:
                                continue
                            t = time.perf_counter()
                            if mode == "factors":
                                c.compress_factors(a, g)
                            else:
                                c.compress(grad)
                            elapsed[(label, mode)] += time.perf_counter() - t
            for key, sec in elapsed.items():
                runs[key].append(sec)
                if sec > budget_s:
                    skip.add(key)
            bar.update(1)
    return {label: {mode: {"median_s": statistics.median(runs[(label, mode)]),
                           "runs_s": runs[(label, mode)]} for mode in modes}
            for label in compressors}
