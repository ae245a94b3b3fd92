"""Named experiment sizes: the data, model, training and ground-truth settings that the
tests, ``grass demo`` and the tables use, in one place.

* ``tiny``: scikit-learn digits, a 64-32-10 MLP, 30 subset models: seconds (tests, CI).
* ``small``: 2000 MNIST digits, a 784-64-10 MLP, 50 subset models: the demo (minutes).
* ``paper``: 4000 MNIST digits, the 784-128-128-10 MLP, 100 subset models: the tables.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from . import datasets
from .lds import GroundTruthConfig
from .models import mlp_spec
from .train import TrainConfig

__all__ = ["Preset", "PRESETS", "get"]


@dataclass(frozen=True)
class Preset:
    name: str
    dataset: str
    n_train: int
    n_test: int
    n_val: int                 # first n_val test examples choose the damping; the rest are reported
    hidden: tuple
    train: TrainConfig
    n_models: int
    alpha: float = 0.5
    target: str = "margin"
    data_seed: int = 0
    model_seed: int = 12345    # the attributed model (trained on the full training set)

    def split(self, **overrides) -> datasets.Split:
        kw = dict(n_train=self.n_train, n_test=self.n_test, seed=self.data_seed)
        kw.update(overrides)
        return datasets.load(self.dataset, **kw)

    def model_spec(self, split: datasets.Split) -> dict:
        return mlp_spec(split.x_train.shape[1], split.classes, self.hidden)

    def ground_truth_config(self, split: datasets.Split, seed: int = 0) -> GroundTruthConfig:
        return GroundTruthConfig(model=self.model_spec(split), train=self.train,
                                 target=self.target, n_models=self.n_models, alpha=self.alpha,
                                 seed=seed)

    def with_(self, **changes) -> "Preset":
        return replace(self, **changes)


PRESETS = {
    "tiny": Preset("tiny", "digits", n_train=600, n_test=200, n_val=50, hidden=(32,),
                   train=TrainConfig(epochs=150, batch_size=1024, lr=1e-2), n_models=30),
    "small": Preset("small", "mnist", n_train=2000, n_test=500, n_val=100, hidden=(64,),
                    train=TrainConfig(epochs=10, batch_size=128, lr=2e-3), n_models=50),
    "paper": Preset("paper", "mnist", n_train=4000, n_test=1000, n_val=200, hidden=(128, 128),
                    train=TrainConfig(epochs=20, batch_size=128, lr=1e-3), n_models=100),
}


def get(name: str, dataset: Optional[str] = None) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"size must be one of {sorted(PRESETS)}, got {name!r}")
    p = PRESETS[name]
    return p if dataset is None else p.with_(dataset=dataset)
