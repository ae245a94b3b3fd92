"""Preconditioning: block-diagonal empirical Fisher of compressed gradients, damping,
Cholesky factors, and (F + λI)⁻¹ applied per block. See docs/scoring.md."""
from .cholesky import IdentityPreconditioner, Preconditioner
from .damping import DEFAULT_RELATIVE_DAMPING, DampingSearch, choose_damping, resolve_damping
from .fisher import BlockFisher, packed_offsets

__all__ = ["BlockFisher", "Preconditioner", "IdentityPreconditioner", "resolve_damping",
           "choose_damping", "DampingSearch", "DEFAULT_RELATIVE_DAMPING", "packed_offsets"]
