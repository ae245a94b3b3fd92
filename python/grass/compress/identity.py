"""Identity: no compression (k = p). The reference every compressor is measured against,
and what small layers get (a layer no larger than the requested k is kept whole)."""
from __future__ import annotations

import torch

from .. import ops
from ..layers import LayerInfo
from .base import Compressor, CompressorSpec

__all__ = ["Identity", "IdentityCompressor", "whole_layer"]


class IdentityCompressor(Compressor):
    method = "identity"

    def __init__(self, info: LayerInfo, seed: int = 0):
        super().__init__(info, info.numel, seed)

    def _compress(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.float() if grad.dtype != torch.float32 else grad.clone()

    def _compress_factors(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return ops.kron(a, g, bias=self.info.bias)

    def config(self) -> dict:
        return {"method": self.method, "k": self.k}


class Identity(CompressorSpec):
    """Keep every layer's gradient as it is: k_l = p_l, exact and memory-hungry."""

    method = "identity"

    def __init__(self, k=None, *, seed: int = 0):
        if k is not None:
            raise ValueError(f"Identity keeps every coordinate (k = p per layer); got k={k!r}")
        super().__init__(None, seed=seed)

    def _build_one(self, info: LayerInfo, seed: int) -> Compressor:
        return IdentityCompressor(info, seed)

    def config(self) -> dict:
        return {"method": self.method}


def whole_layer(info: LayerInfo, k: int):
    """The Identity compressor for a layer no larger than k (kept whole), else None."""
    return IdentityCompressor(info, seed=0) if k >= info.numel else None
