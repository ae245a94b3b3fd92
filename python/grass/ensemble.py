"""Scoring methods over several checkpoints of one model, composed from one Attributor per
checkpoint: TRAK and TracInCP.

The scoring itself lives in the scoring layer (``grass.score.trak_terms`` and the margin
target, ``grass.score.baselines.tracin_terms``), over gradient stores; this module owns
what needs the Attributor: one store per checkpoint under ``store/checkpoint-<i>``, and the
one loop that loads each checkpoint's weights in turn and restores the model's own after.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch

from .attributor import Attributor
from .precondition import IdentityPreconditioner
from .score import ScoreTerm, full_scores, top_k_scores
from .score.influence import self_influence as store_self_influence
from .score.baselines.tracin import checkpoint_rates, tracin_terms
from .score.checkpoints import checkpoint_weights
from .score.trak import MarginTarget, trak_terms
from .store.files import load_cache, save_cache

__all__ = ["CheckpointAttributors", "TRAK", "TracIn"]


class CheckpointAttributors:
    """One Attributor per checkpoint of ``model`` (stores under ``store/checkpoint-<i>``),
    and the checkpoint loop that TRAK and TracIn share."""

    def __init__(self, model: torch.nn.Module, fn: Callable, compressor, *, store: str,
                 checkpoints: Optional[Sequence[Any]] = None, layers=None,
                 target_fn: Optional[Callable] = None, include_flat: bool = False,
                 dtype: str = "float32", device=None, progress: bool = True):
        self.model = model
        self.checkpoints = [None] if checkpoints is None else list(checkpoints)
        if not self.checkpoints:
            raise ValueError("checkpoints must hold at least one checkpoint (or be None)")
        self.progress = progress
        self.attributors = [
            Attributor(model, fn, compressor=compressor, layers=layers,
                       store=os.path.join(os.fspath(store), f"checkpoint-{i}"),
                       target_fn=target_fn, dtype=dtype, device=device,
                       include_flat=include_flat, progress=progress)
            for i in range(len(self.checkpoints))]

    @property
    def device(self) -> torch.device:
        return self.attributors[0].device

    def each(self) -> Iterator[Tuple[int, Attributor]]:
        """(i, Attributor of checkpoint i) with the model holding checkpoint i's weights
        inside each step; the model's own weights come back after every step."""
        for i, (ckpt, attr) in enumerate(zip(self.checkpoints, self.attributors)):
            with checkpoint_weights(self.model, ckpt):
                yield i, attr

    def cache(self, train_loader) -> None:
        """Each checkpoint's training gradients into its store (resumable)."""
        for _, attr in self.each():
            attr.cache(train_loader)


class TRAK(CheckpointAttributors):
    """TRAK scores with grass compressors as the projection, over one or more checkpoints.

    ``output_fn(model, batch) -> (logits [B, C], labels [B])``. Each checkpoint gets its
    own gradient store under ``store/checkpoint-<i>``; the model's own weights are
    restored after every step.
    """

    def __init__(self, model: torch.nn.Module, output_fn: Callable, compressor, *, store: str,
                 checkpoints: Optional[Sequence[Any]] = None, layers=None,
                 include_flat: bool = False, dtype: str = "float32", device=None,
                 block_diagonal: bool = False, ensemble: str = "mean", progress: bool = True):
        if ensemble not in ("mean", "trak"):
            raise ValueError(f"ensemble must be 'mean' or 'trak', got {ensemble!r}")
        self.margin = MarginTarget(output_fn)
        super().__init__(model, self.margin, compressor, store=store, checkpoints=checkpoints,
                         layers=layers, target_fn=self.margin, include_flat=include_flat,
                         dtype=dtype, device=device, progress=progress)
        self.block_diagonal = block_diagonal
        self.ensemble = ensemble
        self._probabilities: List[Optional[torch.Tensor]] = [None] * len(self.checkpoints)

    def cache(self, train_loader) -> None:
        """Projected margin gradients Φ_m and probabilities p_i per checkpoint (resumable)."""
        for i, attr in self.each():
            store = attr.cache(train_loader)
            path = os.path.join(attr.run_dir, "trak_probabilities.pt")
            saved = load_cache(path, "TRAK's training probabilities")
            if (isinstance(saved, dict) and saved.get("store") == store.digest
                    and isinstance(saved.get("p"), torch.Tensor) and saved["p"].numel() == store.num_rows):
                self._probabilities[i] = saved["p"]
                continue
            p = torch.cat([self.margin.probabilities(attr.model, attr.to_device(b)).cpu()
                           for b in train_loader]).double()
            if p.numel() != store.num_rows:
                raise ValueError(f"the loader yielded {p.numel()} examples, the store holds "
                                 f"{store.num_rows}")
            save_cache({"store": store.digest, "p": p}, path)
            self._probabilities[i] = p

    def fit(self, damping=None, *, relative: bool = True) -> "TRAK":
        """Factor each checkpoint's kernel Φᵀ Φ/N + λI (default λ: 1e-3 of the mean
        eigenvalue; TRAK itself uses none, which fails when the kernel is singular)."""
        if damping is None:
            damping, relative = 1e-3, True
        for i, attr in self.each():
            if self._probabilities[i] is None:
                raise RuntimeError("call cache(train_loader) before fit()")
            attr.fit(damping=damping, relative=relative, block_diagonal=self.block_diagonal)
        return self

    def _terms(self, test) -> List[ScoreTerm]:
        feats, rows, pres = [], [], []
        for i, attr in self.each():
            if self._probabilities[i] is None:
                raise RuntimeError("call cache(train_loader) (it resumes or reuses the stores) "
                                   "and fit() before scoring")
            attr._require_fit()  # loads the saved kernel factors of an earlier fit
            feats.append(attr.test_gradients(test))
            rows.append(attr.train_store())
            pres.append(attr.preconditioner)
        return trak_terms(feats, rows, self._probabilities, pres, ensemble=self.ensemble)

    def scores(self, test, *, out=None) -> torch.Tensor:
        """TRAK scores [M, N] for a loader of test batches (positive = helpful)."""
        return full_scores(self._terms(test), out=out, device=self.device,
                           progress=self.progress, desc="TRAK")

    def top_k(self, test, k: int = 10, *, largest: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        return top_k_scores(self._terms(test), k, largest=largest,
                            device=self.device, progress=self.progress,
                            desc="TRAK (top-k)")


class TracIn(CheckpointAttributors):
    """TracInCP over one or more checkpoints, on compressed gradients in gradient stores
    (one per checkpoint, under ``store/checkpoint-<i>``)."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, compressor, *, store: str,
                 checkpoints: Optional[Sequence[Any]] = None, learning_rates=None, layers=None,
                 include_flat: bool = False, target_fn: Optional[Callable] = None,
                 dtype: str = "float32", device=None, progress: bool = True):
        super().__init__(model, loss_fn, compressor, store=store, checkpoints=checkpoints,
                         layers=layers, target_fn=target_fn, include_flat=include_flat,
                         dtype=dtype, device=device, progress=progress)
        self.learning_rates = checkpoint_rates(learning_rates, len(self.checkpoints))

    def _terms(self, test) -> List[ScoreTerm]:
        grads, rows = [], []
        for _, attr in self.each():
            grads.append(attr.test_gradients(test))
            rows.append(attr.train_store())
        return tracin_terms(grads, rows, self.learning_rates)

    def scores(self, test, *, out=None) -> torch.Tensor:
        return full_scores(self._terms(test), out=out, device=self.device,
                           progress=self.progress, desc="TracIn")

    def top_k(self, test, k: int = 10, *, largest: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        return top_k_scores(self._terms(test), k, largest=largest,
                            device=self.device, progress=self.progress,
                            desc="TracIn (top-k)")

    def self_influence(self) -> torch.Tensor:
        """Σ_c η_c ‖∇ℓ_{i,c}‖² [N] (TracIn's self-influence, used to find mislabelled data)."""
        total = None
        for eta, (_, attr) in zip(self.learning_rates, self.each()):
            store = attr.train_store()
            s = eta * store_self_influence(IdentityPreconditioner(store.block_sizes), store,
                                      device=attr.device, progress=self.progress)
            total = s if total is None else total + s
        return total
