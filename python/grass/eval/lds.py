"""Ground truth for the linear datamodeling score (LDS), cached on disk.

M models are trained on random α-subsets S_m of the training set; the target of every
test example under each of them is what attributions must predict:

    LDS(j) = Spearman over m of ( Σ_{i∈S_m} τ(j, i) ,  target_m(j) )

The cache is a directory::

    config.json          the configuration, the data fingerprint and their hash
    models/00017.npz     one file per finished model: subset indices, targets, accuracy

Each model file is written to a temporary name, flushed to disk and renamed, so a model
counts only once its result is complete; an interrupted run resumes with the models that
are missing. Opening a cache whose configuration differs is an error naming the fields.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..layers import derive_seed
from . import metrics
from .datasets import Split
from .models import build
from .objectives import accuracy, cross_entropy, evaluate, target_fn
from .train import TrainConfig, train

__all__ = ["GroundTruthConfig", "GroundTruth", "torch_threads", "subset_indices", "subset_masks", "LDSResult",
           "score_lds", "choose_damping", "split_test"]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class GroundTruthConfig:
    model: dict                         # models.build spec
    train: TrainConfig = field(default_factory=TrainConfig)
    target: str = "margin"              # objectives.TARGETS
    n_models: int = 100
    alpha: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.n_models < 2:
            raise ValueError(f"n_models must be >= 2 (a rank correlation needs two subsets), got {self.n_models}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        target_fn(self.target)

    def to_dict(self) -> dict:
        return {"model": self.model, "train": self.train.to_dict(), "target": self.target,
                "n_models": self.n_models, "alpha": self.alpha, "seed": self.seed}


@contextmanager
def torch_threads(n: Optional[int]):
    """Run a block with ``n`` intra-op torch threads (None: unchanged)."""
    if n is None:
        yield
        return
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def subset_indices(n_train: int, n_models: int, alpha: float, seed: int) -> np.ndarray:
    """[n_models, round(alpha * n_train)] sorted training indices of each subset; subset m
    depends only on (n_train, alpha, seed, m)."""
    size = int(round(alpha * n_train))
    if not 1 <= size < n_train:
        raise ValueError(f"alpha * n_train must give a proper subset, got {alpha} * {n_train}")
    out = np.empty((n_models, size), dtype=np.int64)
    for m in range(n_models):
        rng = np.random.default_rng(derive_seed(seed, "subset", m))
        out[m] = np.sort(rng.choice(n_train, size=size, replace=False))
    return out


def subset_masks(indices: np.ndarray, n_train: int) -> np.ndarray:
    masks = np.zeros((indices.shape[0], n_train), dtype=bool)
    np.put_along_axis(masks, indices, True, axis=1)
    return masks


def _atomic_save(path: str, **arrays) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _diff(a: dict, b: dict, prefix: str = "") -> List[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: cached {va!r}, requested {vb!r}")
    return out


class GroundTruth:
    """The cached ground truth of one (data, configuration) pair in ``directory``.

    ``build()`` trains the missing models (progress bar; Ctrl-C keeps finished ones);
    ``load()`` returns the subset masks [M, N] and targets [M, n_test].
    """

    def __init__(self, directory: str, split: Split, config: GroundTruthConfig,
                 loss_fn: Callable = cross_entropy):
        self.directory = str(directory)
        self.split = split
        self.config = config
        self.loss_fn = loss_fn
        self.manifest = {"format": FORMAT_VERSION, "config": config.to_dict(),
                         "data": {"name": split.name, "fingerprint": split.fingerprint(),
                                  "n_train": split.n_train, "n_test": split.n_test},
                         "loss": getattr(loss_fn, "__name__", repr(loss_fn))}
        self.manifest["hash"] = _hash(self.manifest)
        self._models_dir = os.path.join(self.directory, "models")
        self._open()
        self.indices = subset_indices(split.n_train, config.n_models, config.alpha, config.seed)

    def _open(self) -> None:
        path = os.path.join(self.directory, "config.json")
        if os.path.exists(path):
            with open(path) as f:
                cached = json.load(f)
            if cached.get("hash") != self.manifest["hash"]:
                diffs = _diff({k: v for k, v in cached.items() if k != "hash"},
                              {k: v for k, v in self.manifest.items() if k != "hash"})
                raise ValueError(
                    f"ground truth in {self.directory} was built with another configuration "
                    f"({'; '.join(diffs) or 'hash differs'}); use another directory or delete it")
            return
        os.makedirs(self._models_dir, exist_ok=True)
        tmp = path + f".{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.manifest, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _path(self, m: int) -> str:
        return os.path.join(self._models_dir, f"{m:05d}.npz")

    def finished(self) -> List[int]:
        return [m for m in range(self.config.n_models) if os.path.exists(self._path(m))]

    def missing(self) -> List[int]:
        return [m for m in range(self.config.n_models) if not os.path.exists(self._path(m))]

    @property
    def complete(self) -> bool:
        return not self.missing()

    def train_one(self, m: int) -> Tuple[np.ndarray, float]:
        """Train model m on its subset; (targets on the test set [n_test], test accuracy)."""
        s, cfg = self.split, self.config
        idx = torch.from_numpy(self.indices[m])
        seed = derive_seed(cfg.seed, "model", m)
        model = train(build(cfg.model, seed), s.x_train[idx], s.y_train[idx], cfg.train, seed,
                      self.loss_fn)
        targets = evaluate(model, s.x_test, s.y_test, target_fn(cfg.target)).numpy()
        return targets, accuracy(model, s.x_test, s.y_test)

    def build(self, progress: bool = True, max_models: Optional[int] = None,
              desc: str = "ground truth: training subset models",
              threads: Optional[int] = None) -> "GroundTruth":
        """Train the models not yet on disk (at most ``max_models`` of them), with
        ``threads`` torch threads (default: torch's setting; 1 is fastest for tiny models)."""
        with torch_threads(threads):
            return self._build(progress, max_models, desc)

    def _build(self, progress, max_models, desc) -> "GroundTruth":
        todo = self.missing()
        if max_models is not None:
            todo = todo[:max_models]
        done = self.config.n_models - len(self.missing())
        bar = tqdm(total=self.config.n_models, initial=done, desc=desc, unit="model",
                   disable=not progress or not todo, dynamic_ncols=True)
        try:
            for m in todo:
                targets, acc = self.train_one(m)
                _atomic_save(self._path(m), indices=self.indices[m], targets=targets,
                             accuracy=np.float64(acc))
                bar.update(1)
                bar.set_postfix(acc=f"{acc:.3f}")
        except KeyboardInterrupt:
            bar.close()
            left = len(self.missing())
            raise KeyboardInterrupt(f"ground truth interrupted: {self.config.n_models - left} of "
                                    f"{self.config.n_models} models are saved in {self.directory}; "
                                    "run again to resume") from None
        bar.close()
        return self

    def load(self) -> Tuple[np.ndarray, np.ndarray]:
        """(masks bool [M, N_train], targets float64 [M, n_test]); every model must exist."""
        missing = self.missing()
        if missing:
            raise RuntimeError(f"ground truth in {self.directory} is incomplete: {len(missing)} of "
                               f"{self.config.n_models} models missing (call build())")
        targets = np.empty((self.config.n_models, self.split.n_test))
        for m in range(self.config.n_models):
            with np.load(self._path(m)) as z:
                if not np.array_equal(z["indices"], self.indices[m]):
                    raise ValueError(f"{self._path(m)} holds another subset than the configuration "
                                     "derives; the cache is corrupt, delete it")
                targets[m] = z["targets"]
        return subset_masks(self.indices, self.split.n_train), targets

    def accuracies(self) -> np.ndarray:
        out = []
        for m in self.finished():
            with np.load(self._path(m)) as z:
                out.append(float(z["accuracy"]))
        return np.asarray(out)


def split_test(n_test: int, n_val: int) -> Tuple[np.ndarray, np.ndarray]:
    """(validation indices, reported indices) of the test set: the first ``n_val`` test
    examples choose hyper-parameters (damping), the rest are reported. The test set is
    already shuffled, so this is a random split."""
    if not 0 <= n_val < n_test:
        raise ValueError(f"n_val must be in [0, n_test) = [0, {n_test}), got {n_val}")
    return np.arange(n_val), np.arange(n_val, n_test)


@dataclass
class LDSResult:
    per_example: np.ndarray
    estimate: metrics.Estimate

    @property
    def mean(self) -> float:
        return self.estimate.mean

    def to_dict(self) -> dict:
        return self.estimate.to_dict()


def score_lds(scores, masks: np.ndarray, targets: np.ndarray,
              test_index: Optional[Sequence[int]] = None, n_boot: int = 2000,
              seed: int = 0) -> LDSResult:
    """LDS of ``scores`` [len(test_index), N] against the ground truth, restricted to the
    test examples ``test_index`` (all when None), with a bootstrap CI over test examples."""
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().double().numpy()
    t = targets if test_index is None else targets[:, np.asarray(test_index)]
    per = metrics.lds_per_example(scores, masks, t)
    return LDSResult(per, metrics.estimate(per, n_boot=n_boot, seed=seed))


def choose_damping(score_at: Callable[[float], np.ndarray], grid: Iterable[float],
                   masks: np.ndarray, targets_val: np.ndarray) -> Tuple[float, Dict[float, float]]:
    """The damping in ``grid`` with the best mean LDS on validation test examples.

    ``score_at(damping)`` returns scores [n_val, N] for the validation examples only;
    ``targets_val`` [M, n_val]. Returns (best damping, {damping: validation LDS})."""
    table = {}
    for d in grid:
        table[d] = float(metrics.lds_per_example(np.asarray(score_at(d), dtype=np.float64),
                                                 masks, targets_val).mean())
    if not table:
        raise ValueError("choose_damping needs a non-empty grid")
    best = max(table, key=table.get)
    return best, table
