"""GraSS: mask to k' coordinates, then SJLT to k (``grass.ops.masked_sjlt``, one fused
pass). O(k') per sample instead of O(p). With a random mask the result is scaled by
sqrt(p/k'), so inner products stay unbiased; with a learned (selective) mask it is not.
On a linear layer the k' kept coordinates are gathered straight from the factors.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from .. import ops
from ..layers import LayerInfo
from .base import Compressor, CompressorSpec
from .fit import FittedSpec
from .identity import whole_layer
from .mask import FlatMask, LearnedFlatMask, gather_factors, mask_csr, split_indices
from .selective import MaskFit
from .sketch import _check_s

__all__ = ["GraSS", "GraSSCompressor", "DEFAULT_MASK_FACTOR", "mask_size", "warn_rank"]

# k' = DEFAULT_MASK_FACTOR * k unless given: a mask a few times wider than the sketch keeps
# most of what the SJLT can carry while still skipping most coordinates (docs/compress.md).
DEFAULT_MASK_FACTOR = 4

_MASKS = ("random", "selective")


def mask_size(k: int, k_mask: Optional[int], mask_factor: float) -> int:
    return int(k_mask) if k_mask is not None else max(int(k), int(round(mask_factor * k)))


def warn_rank(info: LayerInfo, k: int, kept: int, what: str) -> None:
    """Warns when a mask keeps fewer coordinates than the sketch size k: the k columns of
    the store then span at most `kept` dimensions (the rest is redundant storage)."""
    if kept < k:
        warnings.warn(f"layer {info.name!r}: {what} = {kept} < k = {k}: the sketch has rank at "
                      f"most min(k, {what}) = {kept}, so {k - kept} of its {k} columns add no "
                      f"information; use k <= {kept} or a larger mask", stacklevel=4)


def check_mask_kind(mask) -> str:
    if mask not in _MASKS:
        raise ValueError(f"mask must be one of {_MASKS}, got {mask!r}")
    return mask


class GraSSCompressor(LearnedFlatMask, Compressor):
    """y = scale * S (x[idx]); S an SJLT [k, k'] with this layer's seed."""

    method = "grass"
    _not_fittable = "this GraSS mask is not learned"

    def __init__(self, info: LayerInfo, k: int, seed: int, *, k_mask: int, s: int = 1,
                 learned: bool = False, indices: Optional[torch.Tensor] = None,
                 fit: Optional[MaskFit] = None, deterministic: bool = False):
        super().__init__(info, k, seed)
        self.s = _check_s(s)
        if self.s > self.k:
            raise ValueError(f"layer {info.name!r}: s must be <= k, got s={s}, k={k}")
        if int(k_mask) < 1:
            raise ValueError(f"layer {info.name!r}: k_mask must be >= 1, got {k_mask}")
        self.mask = FlatMask(info.numel, k_mask, seed, learned or indices is not None)
        if indices is not None:  # a given mask (e.g. learned elsewhere), kept unscaled
            self.mask.set(indices)
        self._init_fit(fit)
        self.deterministic = bool(deterministic)

    @property
    def k_mask(self) -> int:
        return self.mask.k

    def _options(self) -> dict:
        opts = {"k_mask": self.mask.k, "s": self.s, "mask": "selective" if self.mask.learned else "random"}
        if self.mask.learned:
            opts["fit"] = self.fit_options.to_dict()
        return opts

    def _scaled(self, y):
        return y.mul_(self.mask.scale) if self.mask.scale != 1.0 else y

    def _compress(self, grad):
        if self.mask.k >= self.mask.p:  # nothing masked: a plain SJLT
            y = ops.sjlt(grad, self.k, s=self.s, seed=self.seed, deterministic=self.deterministic)
        else:
            idx = self._cached("idx", grad.device, lambda: self.mask.indices, self.mask.p)
            y = ops.masked_sjlt(grad, idx, self.k, s=self.s, seed=self.seed,
                                deterministic=self.deterministic)
        return self._scaled(y)

    def _compress_sparse(self, grad):
        if self.mask.k < self.mask.p:
            grad = mask_csr(grad, self._cached("idx", grad.device, lambda: self.mask.indices, self.mask.p))
        return self._scaled(ops.sjlt(grad, self.k, s=self.s, seed=self.seed,
                                     deterministic=self.deterministic))

    def _compress_factors(self, a, g):
        pairs = self._cached("pairs", a.device, lambda: split_indices(
            self.mask.indices, self.info.d_in + int(self.info.bias)))
        z = gather_factors(a, g, None, self.info.bias, pairs)
        return self._scaled(ops.sjlt(z, self.k, s=self.s, seed=self.seed,
                                     deterministic=self.deterministic))


class GraSS(FittedSpec, CompressorSpec):
    """Mask each layer's gradient to k' coordinates, then SJLT to k.

    k_mask: k' (int or {layer: int}); default ``mask_factor * k`` (mask_factor default 4).
    s: SJLT non-zeros per column. mask: "random" (seeded, scaled sqrt(p/k')) or
    "selective" (learned, see SelectiveMask; needs ``fit``). fit: MaskFit options.
    """

    method = "grass"
    _per_layer_options = ("k", "k_mask")

    def __init__(self, k, *, seed: int = 0, k_mask=None, mask_factor: float = DEFAULT_MASK_FACTOR,
                 s: int = 1, mask: str = "random", fit=None, deterministic: bool = False):
        from .base import _check_k
        if not mask_factor >= 1:
            raise ValueError(f"mask_factor must be >= 1 (k' >= k), got {mask_factor!r}")
        opts = dict(k_mask=_check_k(k_mask, "k_mask") if k_mask is not None else None,
                    mask_factor=float(mask_factor), s=_check_s(s), mask=check_mask_kind(mask))
        if mask == "selective":
            opts["fit"] = MaskFit.coerce(fit).to_dict()
        elif fit is not None:
            raise ValueError("fit options apply to mask='selective' only")
        super().__init__(k, seed=seed, **opts)
        self.deterministic = bool(deterministic)

    @property
    def needs_fit(self) -> bool:
        return self.options["mask"] == "selective"

    def _build_one(self, info: LayerInfo, seed: int) -> Compressor:
        k = self._k_for(info)
        whole = whole_layer(info, k)
        if whole is not None:
            return whole
        k_mask = self.options["k_mask"]
        k_mask = mask_size(k, None if k_mask is None else self._layer_value(k_mask, info, "k_mask"),
                           self.options["mask_factor"])
        warn_rank(info, k, min(k_mask, info.numel), "k_mask")
        return GraSSCompressor(info, k, seed, k_mask=min(k_mask, info.numel),
                               s=min(self.options["s"], k), learned=self.options["mask"] == "selective",
                               fit=self.options.get("fit"), deterministic=self.deterministic)
