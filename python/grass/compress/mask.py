"""Masks: keep k' of a gradient's p coordinates.

RandomMask ("dropout" compression): k' coordinates drawn uniformly from the seed
(``grass.ops.mask_indices``), each scaled by sqrt(p/k') so inner products are unbiased:
E[<Mx, My>] = <x, y>. SelectiveMask: k' coordinates learned from gradients
(``selective.py``), kept unscaled; on a linear layer it masks the input and output
dimensions (k = k_in * k_out), like FactGraSS' masks without the sketch.

On a linear layer a flat mask never forms the gradient: coordinate (o, i) of sample b is
sum_t g[b,t,o] a~[b,t,i], gathered straight from the factors in O(B T k').
"""
from __future__ import annotations

import warnings

import math
from typing import Optional, Tuple

import torch

from .. import ops
from ..layers import LayerInfo, derive_seed
from .base import Compressor, CompressorSpec, split_factors
from .fit import FittedSpec
from .identity import whole_layer
from .selective import MaskFit, learn_factor_masks, learn_flat_mask

__all__ = ["RandomMask", "SelectiveMask", "MaskCompressor", "FactorMaskCompressor",
           "kron_indices", "gather_factors", "split_indices", "FlatMask", "FactorMask"]

_GATHER_BLOCK = 1 << 22  # elements of [B, chunk, T] products formed at once


def augment(a: torch.Tensor, bias: bool) -> torch.Tensor:
    """a~ = [a, 1] along the last dimension when the layer has a bias."""
    return torch.cat([a, torch.ones_like(a[..., :1])], dim=-1) if bias else a


def kron_indices(idx_in: torch.Tensor, idx_out: torch.Tensor, d_in: int) -> torch.Tensor:
    """Flat indices o*d_in + i of the coordinates kept by an input mask and an output mask,
    in the order of ``kron`` (o-major): sorted when both masks are."""
    return (idx_out[:, None] * int(d_in) + idx_in[None, :]).reshape(-1)


def mask_csr(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The columns ``idx`` (sorted int64 [k']) of a CSR tensor [B, p] as a CSR tensor [B, k']
    (``x.to_dense()[:, idx]`` without densifying): binary search of each stored column."""
    crow, col, val = x.crow_indices(), x.col_indices(), x.values()
    B, kk = x.shape[0], idx.numel()
    if col.numel() == 0 or kk == 0:
        keep = torch.zeros(col.numel(), dtype=torch.bool, device=col.device)
        pos = col
    else:
        pos = torch.searchsorted(idx, col)
        keep = idx[pos.clamp(max=kk - 1)] == col
    rows = torch.repeat_interleave(torch.arange(B, device=col.device), crow[1:] - crow[:-1])
    new_crow = torch.zeros(B + 1, dtype=torch.int64, device=col.device)
    new_crow[1:] = torch.cumsum(torch.bincount(rows[keep], minlength=B), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(new_crow, pos[keep], val[keep], size=(B, kk))


def split_indices(idx: torch.Tensor, d_in: int) -> torch.Tensor:
    """Flat indices o*d_in + i as a [2, k'] tensor of (o, i)."""
    return torch.stack([idx // int(d_in), idx % int(d_in)])


def gather_factors(a: torch.Tensor, g: torch.Tensor, idx: torch.Tensor, bias: bool,
                   pairs: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Coordinates ``idx`` of kron(a, g, bias) without forming it: a [B, T, d_in],
    g [B, T, d_out], idx int64 [k'] (flat, o*d_in' + i) -> [B, k'] float32.
    ``pairs``: ``split_indices(idx, d_in')`` if already at hand (on a's device)."""
    a = augment(a, bias)
    B, T, d_in = a.shape
    if pairs is None:
        pairs = split_indices(idx, d_in)
    o, i = pairs[0], pairs[1]
    if T == 1:  # one token: a product, no reduction
        return torch.index_select(g[:, 0], 1, o).float().mul_(torch.index_select(a[:, 0], 1, i).float())
    # Tokens last, so each gathered coordinate is a contiguous run of T values.
    a_t = a.transpose(1, 2).float().contiguous()  # [B, d_in', T]
    g_t = g.transpose(1, 2).float().contiguous()  # [B, d_out, T]
    n = o.numel()
    out = torch.empty(B, n, device=a.device, dtype=torch.float32)
    step = max(1, _GATHER_BLOCK // max(1, B * T))
    for j0 in range(0, n, step):
        prod = torch.index_select(g_t, 1, o[j0:j0 + step])
        prod.mul_(torch.index_select(a_t, 1, i[j0:j0 + step]))
        torch.sum(prod, dim=2, out=out[:, j0:j0 + step])
    return out


class FlatMask:
    """k of p coordinates of a flat gradient: random from a seed, learned, or all of them."""

    def __init__(self, p: int, k: int, seed: int, learned: bool):
        self.p, self.k, self.seed = int(p), min(int(k), int(p)), int(seed)
        self.learned = bool(learned) and self.k < self.p
        self.indices: Optional[torch.Tensor] = None  # int64 CPU, sorted
        if self.k >= self.p:
            self.indices = torch.arange(self.p)
        elif not self.learned:
            self.indices = ops.mask_indices(self.p, self.k, seed=self.seed).cpu()

    @property
    def fitted(self) -> bool:
        return self.indices is not None

    @property
    def scale(self) -> float:
        # Unbiased inner products for a uniformly random mask; a learned mask is kept as is.
        return 1.0 if self.learned or self.k >= self.p else math.sqrt(self.p / self.k)

    def set(self, indices: torch.Tensor, what: str = "indices") -> None:
        self.indices = _check_indices(indices, self.k, self.p, what)


class FactorMask:
    """An input mask (k_in of d_in', bias column included) and an output mask (k_out of d_out)."""

    def __init__(self, d_in: int, d_out: int, k_in: int, k_out: int, seed: int, learned: bool):
        self.d_in, self.d_out = int(d_in), int(d_out)
        self.k_in, self.k_out = min(int(k_in), self.d_in), min(int(k_out), self.d_out)
        self.seed = int(seed)
        self.learned = bool(learned) and (self.k_in < self.d_in or self.k_out < self.d_out)
        self.idx_in = self.idx_out = None
        if not self.learned:
            self.idx_in = _random_or_all(self.d_in, self.k_in, derive_seed(seed, "in"))
            self.idx_out = _random_or_all(self.d_out, self.k_out, derive_seed(seed, "out"))

    @property
    def fitted(self) -> bool:
        return self.idx_in is not None

    @property
    def k(self) -> int:
        return self.k_in * self.k_out

    @property
    def scale(self) -> float:
        if self.learned:
            return 1.0
        return math.sqrt(self.d_in * self.d_out / (self.k_in * self.k_out))

    def flat_indices(self) -> torch.Tensor:
        return kron_indices(self.idx_in, self.idx_out, self.d_in)

    def set(self, idx_in: torch.Tensor, idx_out: torch.Tensor) -> None:
        self.idx_in = _check_indices(idx_in, self.k_in, self.d_in, "idx_in")
        self.idx_out = _check_indices(idx_out, self.k_out, self.d_out, "idx_out")


def _random_or_all(p: int, k: int, seed: int) -> torch.Tensor:
    return torch.arange(p) if k >= p else ops.mask_indices(p, k, seed=seed).cpu()


def _check_indices(idx, k: int, p: int, what: str) -> torch.Tensor:
    if not isinstance(idx, torch.Tensor) or idx.dim() != 1 or idx.dtype != torch.int64:
        raise ValueError(f"{what} must be an int64 tensor [{k}], got "
                         f"{getattr(idx, 'dtype', type(idx).__name__)} {list(getattr(idx, 'shape', []))}")
    idx = idx.detach().cpu()
    if idx.numel() != k:
        raise ValueError(f"{what} must hold {k} indices, got {idx.numel()}")
    if k and (int(idx.min()) < 0 or int(idx.max()) >= p):
        raise ValueError(f"{what} must lie in [0, {p}), got range [{int(idx.min())}, {int(idx.max())}]")
    if k > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise ValueError(f"{what} must be sorted and distinct")
    return idx.clone()


def fit_data_flat(info: LayerInfo, data) -> torch.Tensor:
    """Fitting data as flat gradients [n, p]: from factors (a, g) through kron."""
    if data is None or isinstance(data, torch.Tensor):
        return data
    a, g = data
    if a.dim() == 2:
        a, g = a[:, None], g[:, None]
    if a.shape[-1] == info.d_in + int(info.bias):  # already augmented (rank-1 fitting form)
        a = a[..., :info.d_in]
    return ops.kron(a.float().contiguous(), g.float().contiguous(), bias=info.bias)


def fit_data_factored(info: LayerInfo, data):
    """Fitting data for factor masks: (a~ [n, d_in'], g [n, d_out]) for one token per
    sample, else per-sample gradients [n, d_out, d_in']."""
    if data is None:
        return None
    d_in = info.d_in + int(info.bias)
    if isinstance(data, torch.Tensor):
        return data.reshape(data.shape[0], info.d_out, d_in)
    a, g = data
    if a.dim() == 3 and a.shape[1] == 1:
        a, g = a[:, 0], g[:, 0]
    if a.dim() == 2:
        if a.shape[-1] == info.d_in:
            a = augment(a, info.bias)
        return a.float(), g.float()
    return fit_data_flat(info, (a, g)).reshape(a.shape[0], info.d_out, d_in)


class _LearnedMask:
    """What a compressor with a possibly learned ``self.mask`` (FlatMask or FactorMask)
    adds to ``Compressor``: fitting options and report, ``needs_fit``, ``fit`` and the
    state round trip. Subclasses give ``_learn`` (fitting data -> the arguments of
    ``mask.set`` and the report), ``_state_keys`` (the mask attributes saved, in the order
    ``mask.set`` takes them) and, if they like, the error text for fitting a random mask."""

    _state_keys: Tuple[str, ...] = ()
    _not_fittable = "a random mask has nothing to fit"

    def _init_fit(self, fit: Optional[MaskFit]) -> None:
        self.fit_options = MaskFit.coerce(fit)
        self.fit_report: Optional[dict] = None

    @property
    def needs_fit(self) -> bool:
        return not self.mask.fitted

    def fit(self, train, test=None, *, seed: Optional[int] = None) -> dict:
        """Learn the mask from train (and test) gradients: flat [n, p], or factors (a, g) of
        a linear layer. Returns the fitting report."""
        if not self.mask.learned:
            raise ValueError(f"layer {self.info.name!r}: {self._not_fittable}")
        *learned, report = self._learn(train, test, self._fit_seed(seed))
        self.mask.set(*learned)
        self._forget_cache()
        self.fit_report = report
        return report

    def state_dict(self) -> dict:
        if not (self.mask.learned and self.mask.fitted):
            return {}
        return {key: getattr(self.mask, key).clone() for key in self._state_keys}

    def load_state_dict(self, state) -> None:
        if not self.mask.learned:
            return super().load_state_dict(state)
        _expect_keys(self, state, set(self._state_keys))
        self.mask.set(*(state[key] for key in self._state_keys))
        self._forget_cache()


class LearnedFlatMask(_LearnedMask):
    """A learned ``FlatMask``: ``indices``, k' sorted coordinates of the flat gradient.
    (FlatMask.learned is false when k' >= p: a whole mask is never fitted.)"""

    _state_keys = ("indices",)

    def _learn(self, train, test, seed: int):
        return learn_flat_mask(fit_data_flat(self.info, train), fit_data_flat(self.info, test),
                               self.mask.k, fit=self.fit_options, seed=seed)


class LearnedFactorMask(_LearnedMask):
    """A learned ``FactorMask``: ``idx_in`` (k_in of d_in') and ``idx_out`` (k_out of d_out)."""

    _state_keys = ("idx_in", "idx_out")

    def _learn(self, train, test, seed: int):
        return learn_factor_masks(fit_data_factored(self.info, train), fit_data_factored(self.info, test),
                                  self.mask.k_in, self.mask.k_out, fit=self.fit_options, seed=seed)


class MaskCompressor(LearnedFlatMask, Compressor):
    """A flat mask (random or learned) over the layer's p coordinates."""

    def __init__(self, info: LayerInfo, k: int, seed: int, *, learned: bool = False,
                 fit: Optional[MaskFit] = None):
        super().__init__(info, min(int(k), info.numel), seed)
        self.mask = FlatMask(info.numel, self.k, seed, learned)
        self.method = "selective_mask" if learned else "random_mask"
        self._init_fit(fit)

    def _options(self) -> dict:
        return {"fit": self.fit_options.to_dict()} if self.mask.learned else {}

    def _index(self, device) -> torch.Tensor:
        return self._cached("idx", device, lambda: self.mask.indices, self.mask.p)

    def _compress(self, grad):
        y = ops.mask_gather(grad, self._index(grad.device)).float()
        return y.mul_(self.mask.scale) if self.mask.scale != 1.0 else y

    def _compress_sparse(self, grad):
        y = mask_csr(grad, self._index(grad.device)).to_dense().float()
        return y.mul_(self.mask.scale) if self.mask.scale != 1.0 else y

    def _compress_factors(self, a, g):
        pairs = self._cached("pairs", a.device, lambda: split_indices(
            self.mask.indices, self.info.d_in + int(self.info.bias)))
        y = gather_factors(a, g, None, self.info.bias, pairs)
        return y.mul_(self.mask.scale) if self.mask.scale != 1.0 else y


class FactorMaskCompressor(LearnedFactorMask, Compressor):
    """A linear layer's input and output masks; y = kron(a~[..., idx_in], g[..., idx_out])
    scaled, k = k_in * k_out (o-major, like kron)."""

    def __init__(self, info: LayerInfo, k_in: int, k_out: int, seed: int, *, learned: bool = True,
                 fit: Optional[MaskFit] = None):
        if info.kind != "linear":
            raise ValueError(f"layer {info.name!r}: factor masks need a linear layer, got {info.kind!r}")
        mask = FactorMask(info.d_in + int(info.bias), info.d_out, k_in, k_out, seed, learned)
        super().__init__(info, mask.k, seed)
        self.mask = mask
        self.method = "selective_mask" if learned else "random_factor_mask"
        self._init_fit(fit)

    def _options(self) -> dict:
        opts = {"k_in": self.mask.k_in, "k_out": self.mask.k_out}
        if self.mask.learned:
            opts["fit"] = self.fit_options.to_dict()
        return opts

    def _compress(self, grad):
        idx = self._cached("flat", grad.device, self.mask.flat_indices, self.mask.d_in * self.mask.d_out)
        y = ops.mask_gather(grad, idx).float()
        return y.mul_(self.mask.scale) if self.mask.scale != 1.0 else y

    def _compress_factors(self, a, g):
        idx_in = self._cached("in", a.device, lambda: self.mask.idx_in, self.mask.d_in)
        idx_out = self._cached("out", a.device, lambda: self.mask.idx_out, self.mask.d_out)
        a = augment(a, self.info.bias)
        y = ops.kron(a[:, :, idx_in].contiguous(), g[:, :, idx_out].contiguous())
        return y.mul_(self.mask.scale) if self.mask.scale != 1.0 else y


def _expect_keys(comp: Compressor, state, keys) -> None:
    if not isinstance(state, dict) or set(state) != set(keys):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{type(comp).__name__} for layer {comp.info.name!r}: state must have keys "
                         f"{sorted(keys)}, got {got}")


class RandomMask(CompressorSpec):
    """Keep k random coordinates per layer ("dropout" compression), scaled by sqrt(p/k) so
    inner products are unbiased. O(k) per sample, also on linear layers (gathered from the
    factors)."""

    method = "random_mask"

    def _build_one(self, info: LayerInfo, seed: int) -> Compressor:
        k = self._k_for(info)
        return whole_layer(info, k) or MaskCompressor(info, k, seed, learned=False)


class SelectiveMask(FittedSpec, CompressorSpec):
    """Keep k coordinates per layer chosen to preserve train x test gradient inner products
    (learned; call ``fit`` before use). On a linear layer (``factored=True``, the default)
    it masks input and output dimensions, k_in * k_out <= k (``split_factors``), or the
    explicit ``k_in``/``k_out``; on other layers it masks flat coordinates.

    fit: ``MaskFit`` or dict of its fields (steps, lr, l1, holdout, eval_every, init_std).
    """

    method = "selective_mask"
    _per_layer_options = ("k", "k_in", "k_out")

    def __init__(self, k=None, *, seed: int = 0, factored: bool = True, k_in=None, k_out=None,
                 fit=None):
        from .base import _check_k
        if (k_in is None) != (k_out is None):
            raise ValueError("give both k_in and k_out, or neither")
        if k is None and k_in is None:
            raise ValueError("SelectiveMask needs k (or k_in and k_out)")
        super().__init__(k, seed=seed, factored=bool(factored),
                         k_in=_check_k(k_in, "k_in") if k_in is not None else None,
                         k_out=_check_k(k_out, "k_out") if k_out is not None else None,
                         fit=MaskFit.coerce(fit).to_dict())

    @property
    def needs_fit(self) -> bool:
        return True

    def _build_one(self, info: LayerInfo, seed: int) -> Compressor:
        fit = self.options["fit"]
        if info.kind == "linear" and self.options["factored"]:
            k_in, k_out = _factor_sizes(self, info, self.options["k_in"], self.options["k_out"])
            if k_in * k_out >= info.numel:
                return whole_layer(info, info.numel)
            return FactorMaskCompressor(info, k_in, k_out, seed, learned=True, fit=fit)
        k = self._k_for(info)
        return whole_layer(info, k) or MaskCompressor(info, k, seed, learned=True, fit=fit)


def _factor_sizes(spec: CompressorSpec, info: LayerInfo, k_in, k_out) -> Tuple[int, int]:
    """(k_in, k_out) for a linear layer: explicit values (clamped to the factor sizes), or
    a balanced split of the spec's k."""
    d_in = info.d_in + int(info.bias)
    if k_in is not None:
        return (min(d_in, int(spec._layer_value(k_in, info, "k_in"))),
                min(info.d_out, int(spec._layer_value(k_out, info, "k_out"))))
    return split_factors(spec._k_for(info), d_in, info.d_out)
