"""grass: scalable data attribution with sub-linear gradient compression.

The kernels live in ``grass.ops`` (SJLT, masks, GraSS, FJLT, Kronecker reconstruction,
FactGraSS, Cholesky iFVP), their plain-torch twins in ``grass.reference``. The attribution
pipeline (``Attributor`` and the compressors) is imported on first use, so ``import grass``
stays cheap and never initialises CUDA.
"""
from importlib import import_module as _import_module

# torch first: grass._C needs libgomp.so.1, which torch's wheel ships and loads; the dynamic
# loader then binds grass to that same OpenMP runtime (one thread pool, and no copy of
# libgomp inside grass's wheel; docs/portability.md).
import torch as _torch  # noqa: F401

from . import _C, ops
from .ops import build_info, cuda_available

__version__ = _C.__version__

# Public names provided by submodules, loaded lazily.
_LAZY = {
    "Attributor": "grass.attributor",
    "TRAK": "grass.ensemble",
    "TracIn": "grass.ensemble",
    "compress": "grass.compress",
    "capture": "grass.capture",
    "store": "grass.store",
    "precondition": "grass.precondition",
    "score": "grass.score",
    "distributed": "grass.distributed",
    "loop": "grass.loop",
    "reference": "grass.reference",
    "testing": "grass.testing",
}


def __getattr__(name):
    if name in _LAZY:
        module = _import_module(_LAZY[name])
        return getattr(module, name) if name in ("Attributor", "TRAK", "TracIn") else module
    raise AttributeError(f"module 'grass' has no attribute {name!r}")


__all__ = ["ops", "build_info", "cuda_available", "__version__", *_LAZY]
