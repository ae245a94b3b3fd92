"""Several checkpoints of one model (TracIn, TRAK ensembles): load each in turn, restore
the model's own weights afterwards."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional

import torch

__all__ = ["load_state", "checkpoint_weights"]


def load_state(checkpoint: Any) -> Optional[Dict[str, torch.Tensor]]:
    """A state dict from a checkpoint given as a path (``torch.save`` of a state dict or
    of a dict with a ``"state_dict"`` / ``"model"`` entry), a state dict, a module, or
    None (= the model's current weights)."""
    if checkpoint is None:
        return None
    if isinstance(checkpoint, torch.nn.Module):
        return checkpoint.state_dict()
    if isinstance(checkpoint, (str, os.PathLike)):
        state = torch.load(os.fspath(checkpoint), map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        checkpoint = state
    if not isinstance(checkpoint, dict):
        raise TypeError("a checkpoint must be a path, a state dict, an nn.Module or None, got "
                        f"{type(checkpoint).__name__}")
    return checkpoint


@contextmanager
def checkpoint_weights(model: torch.nn.Module, checkpoint: Any) -> Iterator[torch.nn.Module]:
    """Inside the block, ``model`` holds the checkpoint's weights; afterwards its own."""
    state = load_state(checkpoint)
    if state is None:
        yield model
        return
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        model.load_state_dict(state)
        yield model
    finally:
        model.load_state_dict(saved)
