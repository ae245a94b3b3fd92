"""Fast, deterministic training of small models on in-memory tensors.

No DataLoader: batches are index slices of tensors already in memory, shuffled by a
seeded generator, so a (spec, data, config, seed) always gives the same weights on a given
machine and thread count. Only parameters with ``requires_grad`` are trained (LoRA).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .objectives import cross_entropy

__all__ = ["TrainConfig", "train", "fit"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"      # "adam" or "sgd" (with momentum)
    momentum: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self):
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"TrainConfig.optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"TrainConfig needs epochs >= 0, batch_size >= 1, lr > 0; got {self}")

    def to_dict(self) -> dict:
        return asdict(self)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
          seed: int, loss_fn: Callable = cross_entropy,
          step_callback: Optional[Callable[[int], None]] = None) -> nn.Module:
    """Train ``model`` in place on (x, y) with mini-batches of the mean per-sample loss.

    ``seed`` fixes the batch order; the initial weights are the model's own (see
    ``models.build``). Returns the model in eval mode.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of samples, got {x.shape[0]} and {y.shape[0]}")
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("cannot train on an empty dataset")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameter with requires_grad=True")
    if config.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    model.train()
    step = 0
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, config.batch_size):
            idx = order[i:i + config.batch_size]
            loss = loss_fn(model, (x[idx], y[idx])).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step_callback is not None:
                step_callback(step)
    model.eval()
    return model


def fit(spec: dict, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, seed: int,
        loss_fn: Callable = cross_entropy) -> nn.Module:
    """Build the model a spec describes (initial weights from ``seed``) and train it."""
    from .models import build

    return train(build(spec, seed), x, y, config, seed, loss_fn)
