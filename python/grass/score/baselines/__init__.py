"""Baselines, in one place, on the same sign convention (positive = helpful):

* `tracin_terms`: gradient dot products over checkpoints with learning rates (the
  checkpoint ensemble itself is ``grass.TracIn``).
* `LiSSA` / `lissa_ihvp`: stochastic Neumann-series iHVP on the true Hessian or its
  Gauss–Newton part (``torch.func``), uncompressed.
* `DataInf`: the closed-form rank-one approximation of the damped inverse Fisher per
  block, usable as a preconditioner on compressed gradients.
* `ExactInfluence`: no compression, full damped block-diagonal Fisher on explicit
  per-sample gradients (small models).
"""
from .datainf import DataInf
from .exact import ExactInfluence
from .lissa import LiSSA, lissa_ihvp
from .tracin import tracin_terms

__all__ = ["tracin_terms", "LiSSA", "lissa_ihvp", "DataInf", "ExactInfluence"]
