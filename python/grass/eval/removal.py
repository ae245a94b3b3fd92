"""Counterfactual removal: drop the training examples an attribution calls most helpful
for a group of test examples, retrain, and see how much the group's accuracy falls.

If the attributions are right, removing the top q% by a method hurts the group more than
removing q% at random. Each (ranking, fraction, seed) retraining is one job of a
``JobCache``, so an interrupted study resumes where it stopped.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..layers import derive_seed
from .datasets import Split
from .jobs import JobCache
from .models import build
from .objectives import accuracy, cross_entropy, evaluate, target_fn
from .train import TrainConfig, train

__all__ = ["helpfulness", "removal_order", "run_removal", "summarise_removal"]


def helpfulness(scores) -> np.ndarray:
    """Total helpfulness of each training example for a test group: Σ_j τ(j, i) [N]."""
    s = scores.detach().cpu().double().numpy() if hasattr(scores, "detach") else np.asarray(scores, float)
    if s.ndim != 2:
        raise ValueError(f"scores must be [n_test, N], got shape {s.shape}")
    return s.sum(0)


def removal_order(help_: np.ndarray) -> np.ndarray:
    """Training indices, most helpful first (ties by index)."""
    return np.argsort(-np.asarray(help_, float), kind="stable")


def run_removal(split: Split, spec: dict, train_config: TrainConfig, rankings: Dict[str, np.ndarray],
                test_index: np.ndarray, fractions: Sequence[float] = (0.05, 0.1, 0.3),
                seeds: int = 5, cache_dir: Optional[str] = None, target: str = "margin",
                loss_fn: Callable = cross_entropy, progress: bool = True, base_seed: int = 0
                ) -> Dict[str, Dict[float, list]]:
    """Retrain without the top ``fraction`` of each ranking (training indices, most helpful
    first) and without a random ``fraction`` (``"random"``), ``seeds`` times each.

    Returns {ranking: {fraction: [{"seed", "accuracy", "target"} per seed]}}, accuracy and
    mean target over the test examples ``test_index``, plus ``"none"`` ({0.0: ...}): the
    full training set retrained with the same seeds. Seed r uses the same initial weights
    and batch-order seed for every ranking, so rankings differ only in what is removed.
    """
    n = split.n_train
    for name, order in rankings.items():
        order = np.asarray(order)
        if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
            raise ValueError(f"ranking {name!r} must be a permutation of the {n} training indices")
    if "random" in rankings or "none" in rankings:
        raise ValueError("'random' and 'none' are reserved for the baselines (random removal, "
                         "no removal)")
    config = {"data": split.fingerprint(), "model": spec, "train": train_config.to_dict(),
              "test_index": [int(i) for i in test_index], "target": target,
              "base_seed": base_seed, "loss": getattr(loss_fn, "__name__", repr(loss_fn))}
    cache = JobCache(cache_dir, config) if cache_dir is not None else None
    xt = split.x_test[torch.as_tensor(test_index)]
    yt = split.y_test[torch.as_tensor(test_index)]
    names = [*rankings, "random"]
    jobs = [("none", 0.0, r) for r in range(seeds)]
    jobs += [(name, f, r) for name in names for f in fractions for r in range(seeds)]
    results: Dict[str, Dict[float, list]] = {"none": {0.0: []}}
    results.update({name: {f: [] for f in fractions} for name in names})

    def one(name, f, r):
        n_remove = int(round(f * n))
        if name == "none":
            removed = np.arange(0)
        elif name == "random":
            rng = np.random.default_rng(derive_seed(base_seed, "random-removal", f, r))
            removed = rng.choice(n, size=n_remove, replace=False)
        else:
            removed = np.asarray(rankings[name])[:n_remove]
        keep = np.setdiff1d(np.arange(n), removed)
        seed = derive_seed(base_seed, "retrain", r)
        idx = torch.from_numpy(keep)
        model = train(build(spec, seed), split.x_train[idx], split.y_train[idx], train_config,
                      seed, loss_fn)
        return {"seed": r, "removed": n_remove, "accuracy": accuracy(model, xt, yt),
                "target": float(evaluate(model, xt, yt, target_fn(target)).mean())}

    with tqdm(total=len(jobs), desc="removal: retraining", unit="model", dynamic_ncols=True,
              disable=not progress) as bar:
        for name, f, r in jobs:
            key = f"{name}-f{f:g}-s{r}"
            res = cache.run(key, lambda: one(name, f, r)) if cache is not None else one(name, f, r)
            results[name][f].append(res)
            bar.update(1)
    return results


def summarise_removal(results: Dict[str, Dict[float, list]], what: str = "accuracy"
                      ) -> Dict[str, Dict[float, dict]]:
    """{ranking: {fraction: {"mean", "std", "min", "max", "n"}}} of ``what`` over seeds."""
    out = {}
    for name, by_f in results.items():
        out[name] = {}
        for f, runs in by_f.items():
            v = np.array([r[what] for r in runs], float)
            out[name][f] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}
    return out
