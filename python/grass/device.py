"""The one check of a user's ``device=`` argument, shared by every public entry point.

torch accepts ``torch.device("cuda")`` on any machine and fails only at the first
allocation, with ``AssertionError: Torch not compiled with CUDA enabled`` (a CPU build of
torch) or a driver error, far from the argument that caused it. ``resolve_device`` fails
at the argument instead, and says why CUDA cannot be used in the words of
``grass.cuda_available()``.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["resolve_device"]


def resolve_device(device, what: str = "device") -> Optional[torch.device]:
    """``device`` as a ``torch.device`` (None stays None), checked to be usable here.

    Args:
        device: None, a string such as ``"cpu"``, ``"cuda"`` or ``"cuda:1"``, or a
            ``torch.device``.
        what: how the caller names the argument in errors, e.g. ``"Attributor: device"``.

    Raises:
        ValueError: an unknown device string, or CUDA asked for where torch cannot use it
            (the message quotes ``grass.cuda_available()``), or a CUDA index beyond the
            devices torch sees.
    """
    if device is None:
        return None
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(f"{what} must be a device such as 'cpu', 'cuda' or 'cuda:0', "
                             f"got {device!r}") from None
    else:
        raise ValueError(f"{what} must be a device string such as 'cpu' or 'cuda', or a "
                         f"torch.device, got {type(device).__name__} {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            from .ops import cuda_available
            _, reason = cuda_available()
            raise ValueError(f"{what} is {str(dev)!r}, but CUDA cannot be used here: "
                             f"grass.cuda_available() says {reason!r}, and torch "
                             f"{torch.__version__} sees no CUDA device. Use device='cpu' "
                             "(or leave device unset)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{what} is {str(dev)!r}, but torch sees {count} CUDA "
                             f"device{'s' if count != 1 else ''} (indices 0..{count - 1})")
    return dev
