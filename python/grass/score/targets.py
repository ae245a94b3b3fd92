"""Targets f(model, batch) -> [B]: what a test example's attribution explains."""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["NegativeLoss", "resolve_target"]


class NegativeLoss:
    """f = −loss: the default target (for a log-loss, the log-likelihood of the label)."""

    def __init__(self, loss_fn: Callable):
        self.loss_fn = loss_fn

    def __call__(self, model, batch) -> torch.Tensor:
        return -self.loss_fn(model, batch)

    def __grass_fingerprint__(self):
        from ..store.fingerprint import hash_callable
        return {"negative_of": hash_callable(self.loss_fn)}

    def __repr__(self) -> str:
        return f"NegativeLoss({getattr(self.loss_fn, '__qualname__', self.loss_fn)!r})"


def resolve_target(loss_fn: Callable, target_fn=None) -> Callable:
    """``target_fn`` if given, else −``loss_fn``."""
    if target_fn is None:
        return NegativeLoss(loss_fn)
    if not callable(target_fn):
        raise TypeError(f"target_fn must be callable (model, batch) -> [B], got "
                        f"{type(target_fn).__name__}")
    return target_fn
