"""Compressor and spec base classes.

A *spec* is what the user passes (``grass.compress.FactGraSS(k=4096, seed=0)``); its
``build(layers)`` makes one *compressor* per layer. A compressor maps one layer's
per-sample gradient to ``[B, k]`` float32, either from the flat gradient ``[B, p]`` or,
for linear layers, from the two factors a ``[B, T, d_in]`` and g ``[B, T, d_out]`` (see
``docs/compress.md`` for layouts and scaling conventions).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from .. import ops
from ..layers import LayerInfo, derive_seed

__all__ = ["Compressor", "CompressorSpec", "split_factors", "from_config"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class Compressor:
    """One layer's compression. Subclasses implement ``_compress`` (and, for a cheaper path
    than forming the gradient, ``_compress_factors``).

    Attributes: ``info`` (the layer), ``k`` (output dimension), ``seed`` (this layer's
    seed, already derived from the run seed and the layer name), ``needs_fit``.
    """

    method = "base"
    needs_fit = False

    def __init__(self, info: LayerInfo, k: int, seed: int):
        if not isinstance(info, LayerInfo):
            raise TypeError(f"info must be a grass.layers.LayerInfo, got {type(info).__name__}")
        if int(k) < 1:
            raise ValueError(f"layer {info.name!r}: k must be >= 1, got {k}")
        self.info = info
        self.k = int(k)
        self.seed = int(seed)
        self._device_cache: Dict[Tuple[str, torch.device], torch.Tensor] = {}

    # ---- public API ------------------------------------------------------------------

    def compress(self, grad: torch.Tensor) -> torch.Tensor:
        """grad [B, info.numel] (this layer's flattened per-sample gradients, grass layout)
        -> [B, k] float32 on grad's device."""
        self._check_fitted()
        return self._compress(self._check_grad(grad))

    def compress_factors(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Linear layers: inputs a [B, T, d_in] (or [B, d_in]) and output gradients
        g [B, T, d_out] (or [B, d_out]) -> [B, k] float32; equals
        ``compress(ops.kron(a, g, bias=info.bias))``."""
        self._check_fitted()
        a, g = self._check_factors(a, g)
        return self._compress_factors(a, g)

    def compress_sparse(self, grad: torch.Tensor) -> torch.Tensor:
        """grad: a ``torch.sparse_csr_tensor`` [B, info.numel] (an embedding's per-sample
        gradient: the rows of the tokens seen) -> [B, k] float32; equals
        ``compress(grad.to_dense())``. SJLT, GraSS and FactGraSS never densify it."""
        self._check_fitted()
        if not isinstance(grad, torch.Tensor) or grad.layout != torch.sparse_csr:
            raise TypeError(f"layer {self.info.name!r}: compress_sparse takes a sparse CSR tensor, got "
                            f"{getattr(grad, 'layout', type(grad).__name__)}")
        if grad.dim() != 2 or grad.shape[1] != self.info.numel:
            raise ValueError(f"layer {self.info.name!r}: grad must have shape [B, {self.info.numel}], "
                             f"got {list(grad.shape)}")
        return self._compress_sparse(grad)

    def _compress_sparse(self, grad: torch.Tensor) -> torch.Tensor:
        # Generic path: densify (methods with a sparse kernel override this).
        return self._compress(self._check_grad(grad.to_dense()))

    def config(self) -> dict:
        """JSON-able description: method, k, seed and options (part of the store fingerprint)."""
        return {"method": self.method, "k": self.k, "seed": self.seed, **self._options()}

    def state_dict(self) -> dict:
        """Learned state (selective masks); ``{}`` for compressors that learn nothing."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} for layer {self.info.name!r} has no learned "
                             f"state, but load_state_dict got keys {sorted(state)}")

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self._options().items())
        return (f"{type(self).__name__}(layer={self.info.name!r}, p={self.info.numel}, k={self.k}"
                + (f", {opts}" if opts else "") + ")")

    # ---- for subclasses ----------------------------------------------------------------

    def _options(self) -> dict:
        return {}

    def _compress(self, grad: torch.Tensor) -> torch.Tensor:  # grad [B, p] checked
        raise NotImplementedError

    def _compress_factors(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        # Generic path: forms this layer's [B, p] gradient, one batch at a time.
        return self._compress(ops.kron(a, g, bias=self.info.bias))

    def _cached(self, key: str, device: torch.device, make: Callable[[], torch.Tensor],
                bound: Optional[int] = None) -> torch.Tensor:
        """A tensor built once (on CPU by ``make``) and kept per device. Index tensors give
        ``bound``: each copy is range-checked once, when it is made (``ops.check_indices``),
        so the kernels that read it on CUDA need no device sync per call."""
        device = torch.device(device)
        hit = self._device_cache.get((key, device))
        if hit is None:
            cpu = self._device_cache.get((key, torch.device("cpu")))
            if cpu is None:
                cpu = make()
                self._device_cache[(key, torch.device("cpu"))] = cpu
            hit = cpu.to(device)
            if bound is not None:
                ops.check_indices(hit, bound, name=key)
            self._device_cache[(key, device)] = hit
        return hit

    def _fit_seed(self, seed: Optional[int]) -> int:
        # The layer's seed, or a stream of it for a run-level fitting seed.
        return self.seed if seed is None else derive_seed(self.seed, "fit", int(seed))

    def _forget_cache(self) -> None:
        self._device_cache.clear()

    def _check_fitted(self) -> None:
        if self.needs_fit:
            raise RuntimeError(
                f"{type(self).__name__} for layer {self.info.name!r} has not been fitted: its "
                "mask is learned from gradients. Call grass.compress.fit_compressors(compressors, "
                "capture, train_batches, test_batches) (or load a fitted state with "
                "load_state_dict) before compressing; a random mask is never used in its place.")

    def _check_grad(self, grad: torch.Tensor) -> torch.Tensor:
        name = self.info.name
        if not isinstance(grad, torch.Tensor):
            raise TypeError(f"layer {name!r}: grad must be a torch.Tensor, got {type(grad).__name__}")
        if grad.dim() != 2 or grad.shape[1] != self.info.numel:
            raise ValueError(f"layer {name!r}: grad must have shape [B, {self.info.numel}], got "
                             f"{list(grad.shape)}")
        if not grad.is_floating_point():
            raise ValueError(f"layer {name!r}: grad must be floating point, got {grad.dtype}")
        grad = grad.detach()
        if grad.dtype not in _FLOAT_DTYPES:
            grad = grad.float()  # float64 (or other) is compressed in float32
        return grad.contiguous()

    def _check_factors(self, a: torch.Tensor, g: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        info = self.info
        if info.kind != "linear":
            raise ValueError(f"compress_factors is for linear layers; layer {info.name!r} is "
                             f"{info.kind!r} (use compress on its flat gradient)")
        for what, x in (("a", a), ("g", g)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"layer {info.name!r}: {what} must be a torch.Tensor, got "
                                f"{type(x).__name__}")
            if x.dim() not in (2, 3) or not x.is_floating_point():
                raise ValueError(f"layer {info.name!r}: {what} must be a floating tensor [B, T, d] "
                                 f"or [B, d], got {x.dtype} {list(x.shape)}")
        a, g = a.detach(), g.detach()
        if a.dim() == 2:
            a = a.unsqueeze(1)
        if g.dim() == 2:
            g = g.unsqueeze(1)
        if a.shape[:2] != g.shape[:2]:
            raise ValueError(f"layer {info.name!r}: a and g must agree on [B, T], got a "
                             f"{list(a.shape)} and g {list(g.shape)}")
        if a.shape[2] != info.d_in or g.shape[2] != info.d_out:
            raise ValueError(f"layer {info.name!r}: expected a [..., {info.d_in}] and g [..., "
                             f"{info.d_out}], got a {list(a.shape)} and g {list(g.shape)}")
        if a.dtype != g.dtype or a.dtype not in _FLOAT_DTYPES:
            a, g = a.float(), g.float()
        return a.contiguous(), g.contiguous()


def split_factors(k: int, d_in: int, d_out: int) -> Tuple[int, int]:
    """Split a product budget k into (k_in, k_out) with k_in * k_out <= k, as balanced as the
    factor sizes allow (k_in <= d_in, k_out <= d_out): sqrt(k) each when both fit, otherwise
    the small side is kept whole and the other side gets the rest."""
    k, d_in, d_out = int(k), int(d_in), int(d_out)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k_in = min(d_in, max(1, math.isqrt(k)))
    k_out = min(d_out, max(1, k // k_in))
    k_in = min(d_in, max(1, k // k_out))
    return k_in, k_out


_SPECS: Dict[str, type] = {}


class CompressorSpec:
    """What the user passes: builds one compressor per layer with per-layer seeds
    ``derive_seed(seed, layer.name)``.

    ``k`` is an int (every layer) or a dict ``{layer name: int}`` naming every layer. A layer
    whose gradient has no more than k entries is kept whole (an Identity compressor): a
    projection to as many dimensions as the gradient has would only lose information.
    """

    method = "base"
    _per_layer_options = ("k",)  # options that may be {layer name: value}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("method") and not cls.__name__.startswith("_"):
            _SPECS[cls.method] = cls

    def __init__(self, k=None, *, seed: int = 0, **options):
        self.k = _check_k(k, "k") if k is not None else None
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = int(seed)
        self.options = options

    # ---- public API ----------------------------------------------------------------------

    def build(self, layers: Iterable[LayerInfo]) -> Dict[str, Compressor]:
        """One compressor per layer, in the order given: ``{layer name: Compressor}``."""
        infos = _check_layers(layers)
        for what in self._per_layer_options:
            value = self.k if what == "k" else self.options.get(what)
            _check_unknown_layers(value, infos, what)
        out = {}
        for info in infos:
            seed = derive_seed(self.seed, info.name)
            out[info.name] = self._build_one(info, seed)
        return out

    def config(self) -> dict:
        """JSON-able: ``{"method": ..., "k": ..., "seed": ..., **options}``;
        ``from_config(spec.config())`` rebuilds an equal spec."""
        cfg = {"method": self.method, "k": _jsonable(self.k), "seed": self.seed}
        for key, value in self.options.items():
            cfg[key] = value.config() if isinstance(value, CompressorSpec) else _jsonable(value)
        return cfg

    @property
    def needs_fit(self) -> bool:
        """True when the built compressors learn a mask from gradients before use."""
        return False

    def __repr__(self) -> str:
        cfg = self.config()
        cfg.pop("method")
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in cfg.items())})"

    def __eq__(self, other) -> bool:
        return isinstance(other, CompressorSpec) and self.config() == other.config()

    # ---- for subclasses ------------------------------------------------------------------

    def _build_one(self, info: LayerInfo, seed: int) -> Compressor:
        raise NotImplementedError

    def _layer_value(self, value, info: LayerInfo, what: str):
        """The value of a per-layer option (int, or a dict naming every layer) for ``info``."""
        if isinstance(value, Mapping):
            if info.name not in value:
                raise ValueError(f"{type(self).__name__}: {what} is a dict but has no entry for "
                                 f"layer {info.name!r} (it names {sorted(value)})")
            return value[info.name]
        return value

    def _k_for(self, info: LayerInfo) -> int:
        if self.k is None:
            raise ValueError(f"{type(self).__name__} needs k")
        return int(self._layer_value(self.k, info, "k"))


def _check_k(k, what: str):
    if isinstance(k, Mapping):
        if not k:
            raise ValueError(f"{what} must be a positive int or a non-empty dict {{layer: int}}, got {{}}")
        for name, v in k.items():
            if not isinstance(name, str):
                raise TypeError(f"{what}: layer names must be str, got {name!r}")
            _check_k(v, f"{what}[{name!r}]")
        return dict(k)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{what} must be a positive int (or a dict {{layer: int}}), got {k!r}")
    return int(k)


def _check_layers(layers) -> List[LayerInfo]:
    infos = list(layers)
    for x in infos:
        if not isinstance(x, LayerInfo):
            raise TypeError("build(layers) takes a list of grass.layers.LayerInfo (e.g. "
                            f"GradientCapture(...).layers), got an element of type {type(x).__name__}")
    names = [i.name for i in infos]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"layer names must be unique, got duplicates {dup}")
    return infos


def _check_unknown_layers(value, infos: List[LayerInfo], what: str) -> None:
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {i.name for i in infos})
        if unknown:
            raise ValueError(f"{what} names layers that are not attributed: {unknown}; layers are "
                             f"{[i.name for i in infos]}")


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def from_config(config: Mapping[str, Any]) -> CompressorSpec:
    """The spec that ``config`` describes (the inverse of ``CompressorSpec.config``)."""
    if not isinstance(config, Mapping) or "method" not in config:
        raise ValueError(f"a compressor config is a dict with a 'method' key, got {config!r}")
    cfg = dict(config)
    method = cfg.pop("method")
    if method not in _SPECS:
        raise ValueError(f"unknown compressor method {method!r}; known: {sorted(_SPECS)}")
    if isinstance(cfg.get("flat"), Mapping):
        cfg["flat"] = from_config(cfg["flat"])
    return _SPECS[method](**cfg)
