"""A Hugging Face ``TrainerCallback`` that captures compressed per-sample gradients while
``trainer.train()`` runs (needs ``transformers``; see docs/capture.md).

    cap = grass.loop.LoopCapture(model, grass.compress.FactGraSS(k=4096), store="runs/x")
    trainer = Trainer(model, args, train_dataset=ds, callbacks=[
        GradientCaptureCallback(cap, steps=[100, 200], scale="tokens")])
    trainer.train()

Each example must carry its id in the column ``ids_key`` (default ``"example_id"``), and the
Trainer must keep it (``remove_unused_columns=False``): a forward pre-hook on the model
takes it out of the inputs before the model sees them. ``steps`` (global optimizer steps,
counted from 0) become one window each, ``step-<n>``; ``epochs`` become windows
``epoch-<e>``. Gradient accumulation works (each micro-batch is one capture step).

``scale`` turns the loop's output gradients into those of each sample's own loss:
"mean" (the loss is a mean over the batch: x B), "tokens" (a token-level language-model
loss divided by the number of target tokens, as transformers' causal-LM loss is: x that
number, read from the ``num_items_in_batch`` the Trainer passes or counted from
``labels``; the per-sample loss is then the sum of the sample's token losses), or a
callable ``scale(inputs) -> float | Tensor[B]`` of the model's keyword inputs.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Union

import torch

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - exercised only without transformers
    raise ImportError("grass.loop.hf needs transformers (pip install transformers)") from e

from .capture import LoopCapture

__all__ = ["GradientCaptureCallback", "token_count"]


def token_count(inputs) -> float:
    """The divisor of transformers' causal-LM loss: ``num_items_in_batch`` when given,
    else the number of shifted labels that are not -100."""
    n = inputs.get("num_items_in_batch")
    if n is not None:
        return float(n.item() if isinstance(n, torch.Tensor) else n)
    labels = inputs.get("labels")
    if labels is None:
        raise ValueError("scale='tokens' needs labels (or num_items_in_batch) among the inputs")
    return float((labels[..., 1:] != -100).sum().item())


class GradientCaptureCallback(TrainerCallback):
    """Captures the chosen steps / epochs of ``trainer.train()`` into ``capture``."""

    def __init__(self, capture: LoopCapture, *, steps: Iterable[int] = (), epochs: Iterable[int] = (),
                 ids_key: str = "example_id", scale: Union[str, Callable] = "mean",
                 epoch_rows: Optional[int] = None, learning_rate: Optional[float] = None):
        if not isinstance(capture, LoopCapture):
            raise TypeError(f"capture must be a grass.loop.LoopCapture, got {type(capture).__name__}")
        if not (callable(scale) or scale in ("mean", "tokens")):
            raise ValueError(f"scale must be 'mean', 'tokens' or a callable, got {scale!r}")
        self.capture = capture
        self.steps = {int(s) for s in steps}
        self.epochs = {int(e) for e in epochs}
        self.ids_key = ids_key
        self.scale = scale
        self.epoch_rows = epoch_rows
        self.learning_rate = learning_rate
        self._hook = None
        self._window = None      # the open window's context manager
        self._pending = []       # [(ids, scale)] of the micro-batches run since begin_step

    # -- the model's inputs --------------------------------------------------------------
    def _pre_hook(self, module, args, kwargs):
        if self.ids_key not in kwargs:
            if self._window is not None and torch.is_grad_enabled():
                raise KeyError(f"the model's inputs hold no {self.ids_key!r}: give every example its "
                               f"id in that column and set TrainingArguments(remove_unused_columns="
                               "False)")
            return None
        kwargs = dict(kwargs)
        ids = kwargs.pop(self.ids_key)
        if self._window is not None and torch.is_grad_enabled():
            if self.scale == "mean":
                s = None
            elif self.scale == "tokens":
                s = token_count(kwargs)
            else:
                s = self.scale(kwargs)
            self._pending.append((ids, s))
        return args, kwargs

    def _open(self, name: str, rows, args) -> None:
        lr = self.learning_rate if self.learning_rate is not None else float(args.learning_rate)
        self._window = self.capture.window(name, rows=rows, learning_rate=lr)
        self._window.__enter__()

    def _close(self) -> None:
        if self._window is not None:
            w, self._window = self._window, None
            w.__exit__(None, None, None)

    def _finish_micro_batch(self) -> None:
        if self._window is None:
            return
        if len(self._pending) != 1:
            self.capture._abort_step()
            raise RuntimeError(f"expected one training forward per micro-batch, saw "
                               f"{len(self._pending)} (gradient checkpointing re-runs forwards; "
                               "turn it off while capturing)")
        ids, s = self._pending.pop()
        kw = {} if s is None else {"scale": s}
        self.capture.end_step(ids, **kw)

    # -- Trainer events --------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kw):
        self._hook = model.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def on_epoch_begin(self, args, state, control, **kw):
        e = int(round(state.epoch or 0))
        if e in self.epochs:
            self._open(f"epoch-{e}", self.epoch_rows, args)

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step in self.steps and self._window is None:
            self._open(f"step-{state.global_step}", None, args)
            self._step_window = True
        else:
            self._step_window = False
        self._pending = []
        self.capture.begin_step()

    def on_substep_end(self, args, state, control, **kw):  # a micro-batch, not the last
        self._finish_micro_batch()
        self._pending = []
        self.capture.begin_step()

    def on_pre_optimizer_step(self, args, state, control, **kw):  # the step's last micro-batch
        self._finish_micro_batch()
        self._pending = []

    def on_step_end(self, args, state, control, **kw):
        if getattr(self, "_step_window", False):
            self._close()
            self._step_window = False

    def on_epoch_end(self, args, state, control, **kw):
        if self._window is not None and not getattr(self, "_step_window", False):
            self._close()

    def on_train_end(self, args, state, control, **kw):
        self.capture._abort_step()
        self._close()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
