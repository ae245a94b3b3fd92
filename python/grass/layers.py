"""What the pipeline knows about one attributed layer, and how its seed is derived.

Shared by capture (which discovers layers), compress (which builds one compressor per
layer) and store (which fingerprints the run).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Optional

PATHS = ("factors", "conv", "embedding", "norm", "module", "tied", "functional")


@dataclass(frozen=True)
class LayerInfo:
    """One attributed layer.

    kind == "linear": an ``nn.Linear`` (or GPT-2 ``Conv1D``) whose per-sample gradient
    is captured as factors a [B, T, d_in] and g [B, T, d_out]; its flattened gradient
    has ``numel = d_out * (d_in + bias)`` entries laid out like ``weight`` with the
    bias as an extra last input column (see ``grass.ops.kron``).
    kind == "flat": any other module; its parameters' per-sample gradients are
    flattened and concatenated (``numel`` entries) in ``param_names`` order.

    path: how capture computes the per-sample gradient (docs/capture.md):
    "factors" (Linear, Conv1D), "conv" (Conv1d / Conv2d: unfolded patches x output
    gradients), "embedding" (the rows of the tokens seen, sparse), "norm" (affine
    parameters of LayerNorm / RMSNorm / GroupNorm / BatchNorm from their normalised input),
    "module" (torch.func on the module alone, from its recorded input), "tied" (an
    embedding whose weight an output head reuses: both uses, summed) or "functional"
    (torch.func over the whole model). Empty: the kind's default ("factors" for linear,
    "functional" for flat). tied: the other modules whose uses of the parameter are included.
    """

    name: str
    kind: str  # "linear" or "flat"
    numel: int
    d_in: Optional[int] = None
    d_out: Optional[int] = None
    bias: bool = False
    param_names: tuple = ()
    path: str = ""
    tied: tuple = ()

    def __post_init__(self):
        if self.kind not in ("linear", "flat"):
            raise ValueError(f"LayerInfo.kind must be 'linear' or 'flat', got {self.kind!r}")
        if not self.path:
            object.__setattr__(self, "path", "factors" if self.kind == "linear" else "functional")
        if self.path not in PATHS:
            raise ValueError(f"LayerInfo.path must be one of {PATHS}, got {self.path!r}")
        if self.kind == "linear":
            if self.d_in is None or self.d_out is None:
                raise ValueError(f"linear layer {self.name!r} needs d_in and d_out")
            expected = self.d_out * (self.d_in + int(self.bias))
            if self.numel != expected:
                raise ValueError(
                    f"linear layer {self.name!r}: numel must be d_out*(d_in+bias) = {expected}, got {self.numel}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["param_names"] = list(self.param_names)
        d["tied"] = list(self.tied)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LayerInfo":
        """The inverse of ``to_dict`` (e.g. from a run's JSON description)."""
        d = dict(d)
        d["param_names"] = tuple(d.get("param_names", ()))
        d["tied"] = tuple(d.get("tied", ()))
        return cls(**d)


def derive_seed(seed: int, *parts) -> int:
    """A 63-bit seed for one layer (or sub-stream) of a run, stable across processes and
    platforms: hashing, not Python's randomised ``hash()``."""
    text = ":".join([str(int(seed)), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1
