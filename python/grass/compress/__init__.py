"""Gradient compressors: one per layer, built from a spec the user passes.

    spec = grass.compress.FactGraSS(k=4096, seed=0)
    compressors = spec.build(capture.layers)        # {layer name: Compressor}

Flat methods (any layer): Identity, Gaussian, Rademacher, FJLT, SJLT, RandomMask,
SelectiveMask, GraSS. Factored methods (linear layers; another method for the rest):
LoGra, FactGraSS, FactorizedSJLT. See docs/compress.md.
"""
from .base import Compressor, CompressorSpec, from_config, split_factors
from .dense import Gaussian, Rademacher
from .factored import FactGraSS, FactorizedSJLT, LoGra
from .fit import fit_compressors, load_state_dict, state_dict
from .grass import GraSS
from .identity import Identity
from .mask import RandomMask, SelectiveMask
from .selective import MaskFit
from .sketch import FJLT, SJLT

__all__ = [
    "Compressor", "CompressorSpec", "from_config", "split_factors",
    "Identity", "Gaussian", "Rademacher", "FJLT", "SJLT", "RandomMask", "SelectiveMask", "GraSS",
    "LoGra", "FactGraSS", "FactorizedSJLT", "MaskFit",
    "fit_compressors", "state_dict", "load_state_dict",
]
