"""Targets f(model, batch) -> [B]: what a test example's attribution explains."""
from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["NegativeLoss", "TokenLogProbs", "resolve_target"]


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


class TokenLogProbs:
    """Per-token targets of a causal language model: for a batch ``(input_ids [B, T],
    attention_mask [B, T])`` (or ``input_ids`` alone, or a dict with those keys), the value
    [b, j] is log p(input_ids[b, start + j] | input_ids[b, :start + j]) for the tokens of the
    continuation, positions ``start .. T - 1``. Attribution then gives one test row per
    token (``Attributor.scores`` / ``top_k``: M = B * (T - start) rows, sequence-major), from
    one forward per batch: sequences are not repeated. A padded position (attention mask
    0) gets target 0 and a zero gradient row.

    ``logits``: how to get logits [B, T, V] from (model, input_ids, attention_mask);
    default ``model(input_ids=..., attention_mask=...).logits`` (Hugging Face), or the
    model's output itself when it is a tensor.
    """

    per_token = True

    def __init__(self, start: int, logits: Optional[Callable] = None):
        if not isinstance(start, int) or isinstance(start, bool) or start < 1:
            raise ValueError(f"start must be an int >= 1 (the first continuation position; "
                             f"position 0 has no prefix), got {start!r}")
        self.start = int(start)
        self.logits = logits

    @staticmethod
    def _unpack(batch):
        if isinstance(batch, torch.Tensor):
            return batch, None
        if isinstance(batch, dict):
            return batch["input_ids"], batch.get("attention_mask")
        return batch[0], (batch[1] if len(batch) > 1 else None)

    def __call__(self, model, batch) -> torch.Tensor:
        ids, mask = self._unpack(batch)
        if ids.dim() != 2 or ids.shape[1] <= self.start:
            raise ValueError(f"TokenLogProbs(start={self.start}) needs input_ids [B, T] with T > "
                             f"{self.start}, got {list(ids.shape)}")
        if self.logits is not None:
            logits = self.logits(model, ids, mask)
        else:
            out = model(input_ids=ids, attention_mask=mask) if mask is not None else model(ids)
            logits = out if isinstance(out, torch.Tensor) else out.logits
        logp = torch.log_softmax(logits[:, self.start - 1:-1].float(), dim=-1)  # predicts start..T-1
        target = logp.gather(2, ids[:, self.start:, None]).squeeze(2)           # [B, T - start]
        if mask is not None:
            target = target * mask[:, self.start:].to(target.dtype)
        return target

    def config(self) -> dict:
        return {"target": "token_log_probs", "start": self.start,
                "logits": None if self.logits is None else getattr(self.logits, "__qualname__", "custom")}

    def __grass_fingerprint__(self):
        from ..store.fingerprint import hash_callable
        return {"token_log_probs": self.start, "logits": hash_callable(self.logits)}

    def __repr__(self) -> str:
        return f"TokenLogProbs(start={self.start})"
