"""Dense random projections: Gaussian and Rademacher, y = P x with P [k, p].

P is never stored whole unless it fits a memory budget: its columns are generated from the
seed in fixed blocks of ``BLOCK`` columns (block b from a ``torch.Generator`` seeded with
``derive_seed(seed, "dense", b)``), so any range of columns can be made on its own and the
matrix is the same whatever chunk size a caller streams with. Generation runs on CPU, so
CPU and CUDA runs project with the same P. Entries have variance 1/k (Gaussian N(0, 1/k),
Rademacher +-1/sqrt(k)), so E||Px||^2 = ||x||^2 and inner products are unbiased.
"""
from __future__ import annotations

import math

import torch

from ..layers import LayerInfo, derive_seed
from .base import Compressor, CompressorSpec
from .identity import whole_layer

__all__ = ["Gaussian", "Rademacher", "DenseCompressor", "projection_columns", "BLOCK"]

BLOCK = 256  # columns per generator seed; fixes P independently of any chunk size
_KINDS = ("gaussian", "rademacher")


def projection_columns(seed: int, k: int, begin: int, end: int, kind: str = "gaussian") -> torch.Tensor:
    """Columns [begin, end) of the projection P [k, p] of this seed, as a float32 CPU
    tensor [end - begin, k] (that is, rows of P^T). Column j depends only on (seed, k, j).
    Memory: at most (end - begin + 2 * BLOCK) * k floats."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if not 0 <= begin <= end:
        raise ValueError(f"need 0 <= begin <= end, got begin={begin}, end={end}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if begin == end:
        return torch.empty(0, k)
    first, last = begin // BLOCK, (end - 1) // BLOCK
    scale = 1.0 / math.sqrt(k)
    parts = []
    for b in range(first, last + 1):
        gen = torch.Generator().manual_seed(derive_seed(seed, "dense", b))
        if kind == "gaussian":
            block = torch.randn(BLOCK, k, generator=gen).mul_(scale)
        else:
            bits = torch.randint(0, 2, (BLOCK, k), generator=gen, dtype=torch.int8)
            block = bits.float().mul_(2 * scale).sub_(scale)
        lo = max(begin, b * BLOCK) - b * BLOCK
        hi = min(end, (b + 1) * BLOCK) - b * BLOCK
        parts.append(block[lo:hi] if (lo, hi) != (0, BLOCK) else block)
    return parts[0].contiguous() if len(parts) == 1 else torch.cat(parts)


class DenseCompressor(Compressor):
    """y = P x for one layer. When p*k*4 bytes fit ``cache_bytes`` the matrix is generated
    once and kept (per device); otherwise it is regenerated chunk by chunk on every call,
    never holding more than ``chunk`` (rounded to whole BLOCKs) columns of it at once."""

    def __init__(self, info: LayerInfo, k: int, seed: int, *, kind: str = "gaussian",
                 chunk: int = 4096, cache_bytes: int = 256 << 20):
        super().__init__(info, k, seed)
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        if int(chunk) < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.method = kind
        self.kind = kind
        self.chunk = max(BLOCK, (int(chunk) + BLOCK - 1) // BLOCK * BLOCK)
        self.cache_bytes = int(cache_bytes)
        self.peak_columns = 0  # most columns of P held at once so far (for memory checks)

    @property
    def cached(self) -> bool:
        return self.info.numel * self.k * 4 <= self.cache_bytes

    def _columns(self, begin: int, end: int, device) -> torch.Tensor:
        self.peak_columns = max(self.peak_columns, end - begin)
        return projection_columns(self.seed, self.k, begin, end, self.kind).to(device)

    def _compress(self, grad: torch.Tensor) -> torch.Tensor:
        p = self.info.numel
        if self.cached:
            pt = self._cached("pt", grad.device, lambda: self._columns(0, p, "cpu"))
            return grad.float() @ pt
        y = torch.zeros(grad.shape[0], self.k, device=grad.device)
        for c0 in range(0, p, self.chunk):
            c1 = min(p, c0 + self.chunk)
            y.addmm_(grad[:, c0:c1].float(), self._columns(c0, c1, grad.device))
        return y

    def _compress_factors(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        # Stream the gradient in blocks of output rows (o0..o1 covers flat columns
        # [o0*d_in', o1*d_in')), so neither P nor the [B, p] gradient is held whole.
        if self.cached:
            return super()._compress_factors(a, g)
        info = self.info
        if info.bias:
            a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
        d_in = a.shape[-1]
        a, g = a.float(), g.float()
        rows = max(1, self.chunk // d_in)
        y = torch.zeros(a.shape[0], self.k, device=a.device)
        for o0 in range(0, info.d_out, rows):
            o1 = min(info.d_out, o0 + rows)
            block = torch.einsum("bto,bti->boi", g[:, :, o0:o1], a).reshape(a.shape[0], -1)
            y.addmm_(block, self._columns(o0 * d_in, o1 * d_in, a.device))
        return y


class _DenseSpec(CompressorSpec):
    kind = "gaussian"

    def __init__(self, k, *, seed: int = 0, chunk: int = 4096, cache_bytes: int = 256 << 20):
        super().__init__(k, seed=seed)
        self.chunk = int(chunk)
        self.cache_bytes = int(cache_bytes)

    def _build_one(self, info: LayerInfo, seed: int) -> Compressor:
        k = self._k_for(info)
        return whole_layer(info, k) or DenseCompressor(
            info, k, seed, kind=self.kind, chunk=self.chunk, cache_bytes=self.cache_bytes)


class Gaussian(_DenseSpec):
    """Dense Gaussian projection, entries N(0, 1/k). O(k p) time per sample.

    chunk, cache_bytes: speed/memory only (not part of the config): the matrix is cached
    when p*k*4 <= cache_bytes, else streamed ``chunk`` columns at a time."""

    method = "gaussian"
    kind = "gaussian"


class Rademacher(_DenseSpec):
    """Dense Rademacher projection, entries +-1/sqrt(k). O(k p) time per sample."""

    method = "rademacher"
    kind = "rademacher"
