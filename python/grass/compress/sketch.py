"""Structured random sketches over the native kernels: SJLT and FJLT.

SJLT: each gradient coordinate adds +-1/sqrt(s) into s of k buckets (``grass.ops.sjlt``);
cost O(s * p) per sample, O(s * nnz) on sparse input. FJLT: (1/sqrt(k)) R H D x
(``grass.ops.fjlt``), O(p log p). Both preserve squared norms in expectation, so inner
products are unbiased. On a linear layer they act on the layer's flattened gradient,
formed batch by batch from its factors.
"""
from __future__ import annotations

import torch

from .. import ops
from ..layers import LayerInfo
from .base import Compressor, CompressorSpec
from .identity import whole_layer

__all__ = ["SJLT", "FJLT", "SJLTCompressor", "FJLTCompressor"]


def _check_s(s) -> int:
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise ValueError(f"s (non-zeros per column) must be a positive int, got {s!r}")
    return int(s)


class SJLTCompressor(Compressor):
    method = "sjlt"

    def __init__(self, info: LayerInfo, k: int, seed: int, *, s: int = 1,
                 deterministic: bool = False):
        super().__init__(info, k, seed)
        self.s = _check_s(s)
        if self.s > self.k:
            raise ValueError(f"layer {info.name!r}: s must be <= k, got s={s}, k={k}")
        self.deterministic = bool(deterministic)

    def _options(self) -> dict:
        return {"s": self.s}

    def _compress(self, grad: torch.Tensor) -> torch.Tensor:
        return ops.sjlt(grad, self.k, s=self.s, seed=self.seed, deterministic=self.deterministic)

    _compress_sparse = _compress  # ops.sjlt takes CSR: O(nnz * s)


class FJLTCompressor(Compressor):
    method = "fjlt"

    def _compress(self, grad: torch.Tensor) -> torch.Tensor:
        return ops.fjlt(grad, self.k, seed=self.seed)


class SJLT(CompressorSpec):
    """Sparse JL sketch to k dims, s non-zeros per column (default 1, as in the GraSS paper).

    deterministic: on CUDA, use the order-fixed kernel (bitwise reproducible); speed only,
    not part of the config."""

    method = "sjlt"

    def __init__(self, k, *, seed: int = 0, s: int = 1, deterministic: bool = False):
        super().__init__(k, seed=seed, s=_check_s(s))
        self.deterministic = bool(deterministic)

    def _build_one(self, info: LayerInfo, seed: int) -> Compressor:
        k = self._k_for(info)
        return whole_layer(info, k) or SJLTCompressor(
            info, k, seed, s=min(self.options["s"], k), deterministic=self.deterministic)


class FJLT(CompressorSpec):
    """Fast JL transform (subsampled randomized Hadamard) to k dims, as TRAK uses."""

    method = "fjlt"

    def _build_one(self, info: LayerInfo, seed: int) -> Compressor:
        k = self._k_for(info)
        return whole_layer(info, k) or FJLTCompressor(info, k, seed)
