"""Scores from windows captured in a training loop (`grass.loop.LoopCapture`).

A window's rows are in the order the loop visited the examples, each with its example id;
the scores of its rows are added into the columns of their ids (an example captured twice
in a window counts twice, as in TracIn's sum over steps). Target gradients are computed at
the weights the window saved when it opened, with the window's own compressors.

* `captured_tracin`: Σ_w η_w (−∇f(θ_w)) · ∇ℓ_i(θ_s) over windows w — TracIn's sum over
  the captured steps; exact when each window is one step (θ_s = θ_w).
* `captured_influence`: −∇f(θ_w)ᵀ(F_w + λI)⁻¹∇ℓ_i with the block Fisher of window w's rows
  (influence at a checkpoint, e.g. a final pass over the data whose steps do not update).
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import torch

from ..capture.capture import GradientCapture
from ..distributed.score import accumulate_fisher
from ..precondition import Preconditioner
from ..score.checkpoints import checkpoint_weights
from ..score.influence import influence_queries
from ..score.stream import ScoreTerm, full_scores

__all__ = ["window_target_gradients", "captured_tracin", "captured_influence"]


def window_target_gradients(capture, window, target_fn: Callable, test) -> torch.Tensor:
    """Compressed ∇f [M, K] (float32, CPU) of the test batches at the window's weights."""
    cap = GradientCapture(capture.model, target_fn, layers=[i.name for i in capture.layers])
    rows = []
    with checkpoint_weights(capture.model, window.weights):
        for batch in test:
            g = cap.compressed(batch, capture.compressors)
            rows.append(torch.cat([g[i.name].float() for i in capture.layers], 1).cpu())
    if not rows:
        raise ValueError("the test loader yielded no batches")
    return torch.cat(rows)


def _scatter(scores: torch.Tensor, ids: torch.Tensor, num_examples: int, out: torch.Tensor):
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_examples):
        raise ValueError(f"captured example ids span [{int(ids.min())}, {int(ids.max())}], outside "
                         f"[0, num_examples={num_examples})")
    out.index_add_(1, ids.to(out.device), scores.to(out.dtype))


def _windows(capture, names):
    names = capture.windows() if names is None else list(names)
    if not names:
        raise ValueError(f"no finished capture window under {capture.root!r}")
    out = [capture.open(n) for n in names]
    return out


def captured_tracin(capture, target_fn: Callable, test, *, num_examples: int,
                    windows: Optional[Sequence[str]] = None, progress: bool = False) -> torch.Tensor:
    """TracIn [M, num_examples] over the captured windows (default: all), each scaled by its
    learning rate; examples no window saw score 0."""
    out = None
    for w in _windows(capture, windows):
        grads = window_target_gradients(capture, w, target_fn, test)
        s = full_scores([ScoreTerm(-grads, w.store, scale=w.learning_rate)], progress=progress,
                        desc=f"TracIn ({w.name})")
        if out is None:
            out = torch.zeros(s.shape[0], int(num_examples), dtype=torch.float32)
        _scatter(s, w.ids, int(num_examples), out)
    return out


def captured_influence(capture, target_fn: Callable, test, *, num_examples: int,
                       window: Optional[str] = None, damping=None, relative: bool = True,
                       progress: bool = False) -> torch.Tensor:
    """Influence [M, num_examples] at one window (default: the last finished one), with the
    block-diagonal Fisher of that window's rows."""
    w = _windows(capture, None if window is None else [window])[-1]
    if w.info["weights_changed"]:
        warnings.warn(f"the weights changed while window {w.name!r} was captured (its steps "
                      "updated the model), so its rows are gradients at several parameter states; "
                      "influence at one checkpoint wants a window whose steps do not update",
                      stacklevel=2)
    fisher = accumulate_fisher(w.store, w.store.block_sizes, progress=progress)
    pre = Preconditioner.fit(fisher, damping, relative=relative)
    grads = window_target_gradients(capture, w, target_fn, test)
    s = full_scores([ScoreTerm(influence_queries(grads, pre), w.store)], progress=progress)
    out = torch.zeros(s.shape[0], int(num_examples), dtype=torch.float32)
    _scatter(s, w.ids, int(num_examples), out)
    return out
