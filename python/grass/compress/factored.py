"""Compressors that use a linear layer's factor structure: the per-sample gradient is
G = sum_t g_t a~_t^T ([d_out, d_in'], a~ = [a, 1] with a bias), and each method compresses
the two factors before they meet, so the d_out x d_in' gradient is never formed.

* LoGra: dense Gaussian projections P_in [k_in, d_in'], P_out [k_out, d_out];
  y = vec(P_out G P_in^T) = sum_t (P_out g_t) (x) (P_in a~_t), k = k_in * k_out.
* FactGraSS: masks of k_in' input and k_out' output dimensions, then an SJLT of the
  k' = k_in' k_out' masked entries to k (``grass.ops.factgrass``, fused); the mask is
  scaled by sqrt(d_in' d_out / k') when random.
* Factorized SJLT: SJLT each factor (S_in [k_in, d_in'], S_out [k_out, d_out]), then
  their Kronecker product: y = vec(S_out G S_in^T).

Outputs are laid out like ``grass.ops.kron``: o-major, index o' * k_in + i'. ``compress``
on a flat gradient [B, d_out * d_in'] computes the same map from the reshaped gradient.
On flat (non-linear) layers these specs use the flat method named by ``flat`` (default:
GraSS for FactGraSS, Gaussian for LoGra, SJLT for factorized SJLT).
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import ops
from ..layers import LayerInfo, derive_seed
from .base import Compressor, CompressorSpec, _check_k, split_factors
from .dense import Gaussian, projection_columns
from .fit import FittedSpec
from .identity import whole_layer
from .grass import DEFAULT_MASK_FACTOR, GraSS, check_mask_kind, warn_rank
from .mask import FactorMask, LearnedFactorMask, _factor_sizes, augment, mask_csr
from .selective import MaskFit
from .sketch import SJLT, _check_s

__all__ = ["LoGra", "FactGraSS", "FactorizedSJLT", "LoGraCompressor", "FactGraSSCompressor",
           "FactorizedSJLTCompressor"]


def _d_in_aug(info: LayerInfo) -> int:
    return info.d_in + int(info.bias)


def _need_linear(info: LayerInfo, what: str) -> None:
    if info.kind != "linear":
        raise ValueError(f"{what} compresses linear layers; layer {info.name!r} is {info.kind!r}")


class LoGraCompressor(Compressor):
    method = "logra"

    def __init__(self, info: LayerInfo, k_in: int, k_out: int, seed: int):
        _need_linear(info, "LoGra")
        super().__init__(info, int(k_in) * int(k_out), seed)
        self.k_in, self.k_out = int(k_in), int(k_out)

    def _options(self) -> dict:
        return {"k_in": self.k_in, "k_out": self.k_out}

    def projections(self, device="cpu"):
        """(P_in [k_in, d_in'], P_out [k_out, d_out]) float32; entries N(0, 1/k_in), N(0, 1/k_out)."""
        p_in = self._cached("p_in", device, lambda: projection_columns(
            derive_seed(self.seed, "in"), self.k_in, 0, _d_in_aug(self.info)).T.contiguous())
        p_out = self._cached("p_out", device, lambda: projection_columns(
            derive_seed(self.seed, "out"), self.k_out, 0, self.info.d_out).T.contiguous())
        return p_in, p_out

    def _compress_factors(self, a, g):
        p_in, p_out = self.projections(a.device)
        a_small = augment(a, self.info.bias).float() @ p_in.T   # [B, T, k_in]
        g_small = g.float() @ p_out.T                            # [B, T, k_out]
        return ops.kron(a_small.contiguous(), g_small.contiguous())

    def _compress(self, grad):
        p_in, p_out = self.projections(grad.device)
        G = grad.float().reshape(-1, self.info.d_out, _d_in_aug(self.info))
        return (p_out @ G @ p_in.T).reshape(grad.shape[0], -1)


class FactGraSSCompressor(LearnedFactorMask, Compressor):
    method = "factgrass"
    _not_fittable = "this FactGraSS mask is random; nothing to fit"

    def __init__(self, info: LayerInfo, k: int, seed: int, *, k_in: int, k_out: int, s: int = 1,
                 learned: bool = False, fit: Optional[MaskFit] = None, deterministic: bool = False):
        _need_linear(info, "FactGraSS")
        super().__init__(info, k, seed)
        self.s = _check_s(s)
        if self.s > self.k:
            raise ValueError(f"layer {info.name!r}: s must be <= k, got s={s}, k={k}")
        self.mask = FactorMask(_d_in_aug(info), info.d_out, k_in, k_out, seed, learned)
        self._init_fit(fit)
        self.deterministic = bool(deterministic)

    def _options(self) -> dict:
        opts = {"k_in": self.mask.k_in, "k_out": self.mask.k_out, "s": self.s,
                "mask": "selective" if self.mask.learned else "random"}
        if self.mask.learned:
            opts["fit"] = self.fit_options.to_dict()
        return opts

    def _scaled(self, y):
        return y.mul_(self.mask.scale) if self.mask.scale != 1.0 else y

    def _compress_factors(self, a, g):
        idx_in = self._cached("in", a.device, lambda: self.mask.idx_in, self.mask.d_in)
        idx_out = self._cached("out", a.device, lambda: self.mask.idx_out, self.mask.d_out)
        y = ops.factgrass(a, g, idx_in, idx_out, self.k, bias=self.info.bias, s=self.s,
                          seed=self.seed, deterministic=self.deterministic)
        return self._scaled(y)

    def input_columns(self, device) -> "torch.Tensor":
        """The columns of the input factor a (bias column excluded) this compressor reads:
        capture may hand over just these (``compress_factor_columns``), e.g. gathering a
        convolution's kept patch entries instead of unfolding every patch."""
        idx = self._cached("in", device, lambda: self.mask.idx_in)
        d_in = self.info.d_in
        return idx[:-1] if self.info.bias and int(self.mask.idx_in[-1]) == d_in else idx

    def compress_factor_columns(self, a_cols, g):
        """a_cols [B, T, n]: the columns ``input_columns()`` of a, in that order; g [B, T, d_out]
        (any strides: a convolution hands over channels-first views). Equals
        ``compress_factors(a, g)`` up to float rounding: the masked gradient
        sum_t g'_t (x) a'_t is one batched GEMM [k_out', T] x [T, k_in'] (long T, as
        convolutions have, is where GEMM beats the fused per-sample kernel), then the SJLT."""
        self._check_fitted()
        n = int(self.input_columns("cpu").numel())
        if a_cols.dim() != 3 or a_cols.shape[2] != n or g.dim() != 3 or g.shape[:2] != a_cols.shape[:2] \
                or g.shape[2] != self.info.d_out:
            raise ValueError(f"layer {self.info.name!r}: expected a_cols [B, T, {n}] and g [B, T, "
                             f"{self.info.d_out}], got {list(a_cols.shape)} and {list(g.shape)}")
        with_bias = self.info.bias and int(self.mask.idx_in[-1]) == self.info.d_in
        idx_out = self._cached("out", g.device, lambda: self.mask.idx_out)
        g_sel = g.transpose(1, 2).index_select(1, idx_out).float()       # [B, k_out', T]
        z = torch.bmm(g_sel, a_cols.float())                              # [B, k_out', n]
        if with_bias:
            z = torch.cat([z, g_sel.sum(2, keepdim=True)], dim=2)
        y = ops.sjlt(z.reshape(z.shape[0], -1).contiguous(), self.k, s=self.s, seed=self.seed,
                     deterministic=self.deterministic)
        return self._scaled(y)

    def _compress_sparse(self, grad):
        # The same map on a sparse gradient (a tied embedding's rows): mask, then SJLT.
        idx = self._cached("flat", grad.device, self.mask.flat_indices, self.mask.d_in * self.mask.d_out)
        y = ops.sjlt(mask_csr(grad, idx), self.k, s=self.s, seed=self.seed,
                     deterministic=self.deterministic)
        return self._scaled(y)

    def _compress(self, grad):
        # The same map on the flat gradient: GraSS with the Kronecker-structured mask.
        idx = self._cached("flat", grad.device, self.mask.flat_indices, self.mask.d_in * self.mask.d_out)
        y = ops.masked_sjlt(grad, idx, self.k, s=self.s, seed=self.seed,
                            deterministic=self.deterministic)
        return self._scaled(y)


class FactorizedSJLTCompressor(Compressor):
    method = "factorized_sjlt"

    def __init__(self, info: LayerInfo, k_in: int, k_out: int, seed: int, *, s: int = 1,
                 deterministic: bool = False):
        _need_linear(info, "Factorized SJLT")
        super().__init__(info, int(k_in) * int(k_out), seed)
        self.k_in, self.k_out = int(k_in), int(k_out)
        self.s = _check_s(s)
        if self.s > min(self.k_in, self.k_out):
            raise ValueError(f"layer {info.name!r}: s must be <= min(k_in, k_out), got s={s}")
        self.seed_in, self.seed_out = derive_seed(seed, "in"), derive_seed(seed, "out")
        self.deterministic = bool(deterministic)

    def _options(self) -> dict:
        return {"k_in": self.k_in, "k_out": self.k_out, "s": self.s}

    def _sjlt_rows(self, x, k, seed):  # x [..., d] -> [..., k]
        lead = x.shape[:-1]
        y = ops.sjlt(x.reshape(-1, x.shape[-1]).contiguous(), k, s=self.s, seed=seed,
                     deterministic=self.deterministic)
        return y.reshape(*lead, k)

    def _compress_factors(self, a, g):
        a_small = self._sjlt_rows(augment(a, self.info.bias), self.k_in, self.seed_in)
        g_small = self._sjlt_rows(g, self.k_out, self.seed_out)
        return ops.kron(a_small, g_small)

    def _compress(self, grad):
        B, d_out, d_in = grad.shape[0], self.info.d_out, _d_in_aug(self.info)
        right = self._sjlt_rows(grad.reshape(B, d_out, d_in), self.k_in, self.seed_in)  # G S_in^T
        left = self._sjlt_rows(right.transpose(1, 2), self.k_out, self.seed_out)         # [B, k_in, k_out]
        return left.transpose(1, 2).reshape(B, -1)


class _FactoredSpec(FittedSpec, CompressorSpec):
    """Shared by the factored specs: per-layer (k_in, k_out) and the flat fallback."""

    _per_layer_options = ("k", "k_in", "k_out")
    _default_flat = None

    def _init(self, k, seed, k_in, k_out, flat, **opts):
        if (k_in is None) != (k_out is None):
            raise ValueError("give both k_in and k_out, or neither")
        if k is None and k_in is None:
            raise ValueError(f"{type(self).__name__} needs k (or k_in and k_out)")
        if flat is not None and not isinstance(flat, CompressorSpec):
            raise TypeError(f"flat must be a compressor spec for non-linear layers, got {flat!r}")
        if flat is not None and getattr(flat, "_factored_only", False):
            raise ValueError("flat must be a flat method (e.g. GraSS, SJLT, Gaussian)")
        CompressorSpec.__init__(self, k, seed=seed,
                                k_in=_check_k(k_in, "k_in") if k_in is not None else None,
                                k_out=_check_k(k_out, "k_out") if k_out is not None else None,
                                flat=flat, **opts)

    def _flat_spec(self) -> CompressorSpec:
        flat = self.options["flat"]
        if flat is None:
            if self.k is None:
                raise ValueError(f"{type(self).__name__} without k has no flat method for "
                                 "non-linear layers; pass k or flat=")
            flat = self._default_flat_spec()
        return flat

    @property
    def needs_fit(self) -> bool:
        flat = self.options["flat"]
        return bool(flat is not None and flat.needs_fit)

    def _build_one(self, info: LayerInfo, seed: int) -> Compressor:
        if info.kind != "linear":
            flat = self._flat_spec()
            # Same seed derivation as if the flat spec had been asked directly.
            return flat._build_one(info, derive_seed(flat.seed, info.name))
        return self._build_linear(info, seed)

    def config(self) -> dict:
        cfg = super().config()
        if cfg.get("flat") is None:
            cfg.pop("flat", None)
        return cfg


class LoGra(_FactoredSpec):
    """LoGra: Gaussian projection of each factor of a linear layer, k = k_in * k_out
    (k split by ``split_factors`` unless k_in/k_out are given). flat: spec for non-linear
    layers (default Gaussian with the same k and seed)."""

    method = "logra"
    _factored_only = True

    def __init__(self, k=None, *, seed: int = 0, k_in=None, k_out=None, flat=None):
        self._init(k, seed, k_in, k_out, flat)

    def _default_flat_spec(self):
        return Gaussian(self.k, seed=self.seed)

    def _build_linear(self, info, seed):
        k_in, k_out = _factor_sizes(self, info, self.options["k_in"], self.options["k_out"])
        if k_in * k_out >= info.numel:
            return whole_layer(info, info.numel)
        return LoGraCompressor(info, k_in, k_out, seed)


class FactorizedSJLT(_FactoredSpec):
    """SJLT each factor of a linear layer, then their Kronecker product; k = k_in * k_out.
    flat: spec for non-linear layers (default SJLT with the same k, s and seed)."""

    method = "factorized_sjlt"
    _factored_only = True

    def __init__(self, k=None, *, seed: int = 0, k_in=None, k_out=None, s: int = 1, flat=None,
                 deterministic: bool = False):
        self._init(k, seed, k_in, k_out, flat, s=_check_s(s))
        self.deterministic = bool(deterministic)

    def _default_flat_spec(self):
        return SJLT(self.k, seed=self.seed, s=self.options["s"], deterministic=self.deterministic)

    def _build_linear(self, info, seed):
        k_in, k_out = _factor_sizes(self, info, self.options["k_in"], self.options["k_out"])
        if k_in * k_out >= info.numel:
            return whole_layer(info, info.numel)
        return FactorizedSJLTCompressor(info, k_in, k_out, seed, s=min(self.options["s"], k_in, k_out),
                                        deterministic=self.deterministic)


class FactGraSS(_FactoredSpec):
    """FactGraSS: mask the input and output dimensions of each linear layer to k_in', k_out'
    (k_in' * k_out' = k' <= mask_factor * k by ``split_factors``, or k_in/k_out given),
    rebuild the k'-dim masked gradient and SJLT it to k, fused. mask: "random" or
    "selective" (learned per factor; needs ``fit``). flat: spec for non-linear layers
    (default GraSS with the same k, mask_factor, s, mask and seed)."""

    method = "factgrass"
    _factored_only = True
    _per_layer_options = ("k", "k_in", "k_out")

    def __init__(self, k, *, seed: int = 0, k_in=None, k_out=None,
                 mask_factor: float = DEFAULT_MASK_FACTOR, s: int = 1, mask: str = "random",
                 fit=None, flat=None, deterministic: bool = False):
        if k is None:
            raise ValueError("FactGraSS needs k (the sketch size); k_in/k_out set the mask sizes")
        if not mask_factor >= 1:
            raise ValueError(f"mask_factor must be >= 1 (k' >= k), got {mask_factor!r}")
        opts = dict(mask_factor=float(mask_factor), s=_check_s(s), mask=check_mask_kind(mask))
        if mask == "selective":
            opts["fit"] = MaskFit.coerce(fit).to_dict()
        elif fit is not None:
            raise ValueError("fit options apply to mask='selective' only")
        self._init(k, seed, k_in, k_out, flat, **opts)
        self.deterministic = bool(deterministic)

    @property
    def needs_fit(self) -> bool:
        return self.options["mask"] == "selective" or super().needs_fit

    def _default_flat_spec(self):
        o = self.options
        return GraSS(self.k, seed=self.seed, mask_factor=o["mask_factor"], s=o["s"], mask=o["mask"],
                     fit=o.get("fit"), deterministic=self.deterministic)

    def _build_linear(self, info, seed):
        k = self._k_for(info)
        whole = whole_layer(info, k)
        if whole is not None:
            return whole
        o = self.options
        if o["k_in"] is not None:
            k_in, k_out = _factor_sizes(self, info, o["k_in"], o["k_out"])
        else:
            budget = max(k, int(round(o["mask_factor"] * k)))
            k_in, k_out = split_factors(budget, _d_in_aug(info), info.d_out)
        warn_rank(info, k, k_in * k_out, "k_in * k_out")
        return FactGraSSCompressor(info, k, seed, k_in=k_in, k_out=k_out, s=min(o["s"], k),
                                   learned=o["mask"] == "selective", fit=o.get("fit"),
                                   deterministic=self.deterministic)
