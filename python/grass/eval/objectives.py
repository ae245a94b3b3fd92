"""Per-sample losses and targets, in the pipeline's form ``fn(model, batch) -> Tensor[B]``
with ``batch = (x, y)``.

Classification: logits [B, C], labels [B]. Sequences: logits [B, T, V], labels [B, T];
a sample's value is the mean over its T positions.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["cross_entropy", "log_prob", "margin", "TARGETS", "target_fn", "accuracy",
           "evaluate"]


def _per_position(logits: torch.Tensor, y: torch.Tensor):
    if logits.dim() == 2:
        return logits, y, None
    if logits.dim() == 3:
        b, t, v = logits.shape
        return logits.reshape(b * t, v), y.reshape(b * t), (b, t)
    raise ValueError(f"logits must be [B, C] or [B, T, V], got shape {tuple(logits.shape)}")


def _per_sample(values: torch.Tensor, bt):
    return values if bt is None else values.view(bt).mean(1)


def cross_entropy(model, batch) -> torch.Tensor:
    """Per-sample cross-entropy [B] (the training loss)."""
    x, y = batch
    logits, yy, bt = _per_position(model(x), y)
    return _per_sample(F.cross_entropy(logits, yy, reduction="none"), bt)


def log_prob(model, batch) -> torch.Tensor:
    """Per-sample log-likelihood of the label [B] (= -cross_entropy)."""
    return -cross_entropy(model, batch)


def margin(model, batch) -> torch.Tensor:
    """TRAK's margin [B]: logit of the correct class minus the log-sum-exp of the others,
    i.e. log(p / (1 - p)) of the correct class."""
    x, y = batch
    logits, yy, bt = _per_position(model(x), y)
    correct = logits.gather(1, yy[:, None])[:, 0]
    others = logits.masked_fill(F.one_hot(yy, logits.shape[1]).bool(), float("-inf"))
    return _per_sample(correct - torch.logsumexp(others, dim=1), bt)


TARGETS = {"margin": margin, "logprob": log_prob}


def target_fn(name: str):
    if name not in TARGETS:
        raise ValueError(f"target must be one of {sorted(TARGETS)}, got {name!r}")
    return TARGETS[name]


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, fn, batch_size: int = 2048) -> torch.Tensor:
    """``fn`` over a dataset in batches, without gradients: float32 [N]."""
    was = model.training
    model.eval()
    try:
        out = [fn(model, (x[i:i + batch_size], y[i:i + batch_size])).float()
               for i in range(0, x.shape[0], batch_size)]
    finally:
        model.train(was)
    return torch.cat(out)


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> float:
    """Fraction of correct argmax predictions (per position for sequences)."""
    was = model.training
    model.eval()
    try:
        hits, total = 0, 0
        for i in range(0, x.shape[0], batch_size):
            logits = model(x[i:i + batch_size])
            yy = y[i:i + batch_size]
            hits += int((logits.argmax(-1) == yy).sum())
            total += yy.numel()
    finally:
        model.train(was)
    return hits / max(total, 1)
