"""Fingerprints: what a store's content depends on, so a stale store is never reused.

A fingerprint is a flat JSON-able dict of named fields (the model's parameters, the
compressor configuration and seeds, the layers, the dtype, N, the loss, ...). Two
fingerprints are compared field by field; `check_fingerprint` raises
`FingerprintMismatch` naming every field that differs.

Hashes are BLAKE2b over exact bytes (dtype, shape and raw data of every tensor), so a
single changed bit of a weight changes the fingerprint, and the result is the same in
every process and on every platform (no use of Python's randomised ``hash()``).
"""
from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import torch
from torch.utils._pytree import tree_flatten

__all__ = [
    "FingerprintMismatch",
    "hash_tensors",
    "hash_module",
    "hash_callable",
    "hash_batch",
    "hash_json",
    "check_fingerprint",
    "fingerprint_digest",
]

_DIGEST = 16  # bytes; 128-bit hashes are plenty to tell runs apart


class FingerprintMismatch(ValueError):
    """An existing store was written by a different run; ``fields`` names what differs."""

    def __init__(self, message: str, fields: Tuple[str, ...]):
        super().__init__(message)
        self.fields = fields


def _update_tensor(h, t: torch.Tensor) -> None:
    t = t.detach()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel() == 0:
        return
    flat = t.reshape(-1).contiguous().cpu()
    if flat.is_sparse or flat.layout != torch.strided:
        flat = flat.to_dense()
    h.update(flat.view(torch.uint8).numpy().data)


def hash_tensors(named: Iterable[Tuple[str, torch.Tensor]]) -> str:
    """Hash of (name, dtype, shape, bytes) of every tensor, in the given order."""
    h = hashlib.blake2b(digest_size=_DIGEST)
    for name, t in named:
        h.update(f"{name}|".encode())
        if t is None:
            h.update(b"None|")
        else:
            _update_tensor(h, t)
    return h.hexdigest()


def hash_module(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer of ``model`` (names, dtypes, shapes, values).

    Buffers count: BatchNorm running statistics, for instance, change gradients in eval
    mode.
    """
    named = [("param:" + n, p) for n, p in model.named_parameters()]
    named += [("buffer:" + n, b) for n, b in model.named_buffers()]
    return hash_tensors(named)


def hash_callable(fn: Optional[Callable]) -> Optional[Dict[str, str]]:
    """Identity of a loss or target function: its qualified name and a hash of its source
    (or, when the source is unavailable, of its bytecode). ``None`` stays ``None``. An
    object with a ``__grass_fingerprint__()`` method describes itself.

    Functions whose behaviour depends on state outside their source (closures over
    mutable objects, module globals) are fingerprinted by name and source only.
    """
    if fn is None:
        return None
    custom = getattr(fn, "__grass_fingerprint__", None)
    if custom is not None:  # wrappers (e.g. f = −loss) describe themselves
        return custom()
    if isinstance(fn, torch.nn.Module):
        return {"name": f"{type(fn).__module__}.{type(fn).__qualname__}",
                "state": hash_module(fn)}
    target = getattr(fn, "__func__", fn)  # bound methods
    if not callable(target):
        raise TypeError(f"expected a callable, got {type(fn).__name__}")
    module = getattr(target, "__module__", None) or type(target).__module__
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    h = hashlib.blake2b(digest_size=_DIGEST)
    try:
        src = inspect.getsource(target if inspect.isroutine(target) else type(target))
        h.update(b"source|" + src.encode())
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        if code is not None:
            h.update(b"code|" + code.co_code + repr(code.co_consts).encode())
        else:
            h.update(b"type|" + repr(type(target)).encode())
    defaults = getattr(target, "__defaults__", None)
    if defaults:
        h.update(b"defaults|" + repr(defaults).encode())
    return {"name": f"{module}.{qualname}", "code": h.hexdigest()}


def hash_batch(batch: Any) -> str:
    """Hash of every tensor (and repr of every other leaf) of a batch pytree."""
    h = hashlib.blake2b(digest_size=_DIGEST)
    leaves, spec = tree_flatten(batch)
    h.update(repr(spec).encode())
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            _update_tensor(h, leaf)
        else:
            h.update(repr(leaf).encode())
    return h.hexdigest()


def hash_json(obj: Any) -> str:
    """Hash of a JSON-able object with sorted keys (stable across runs)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=_DIGEST).hexdigest()


def fingerprint_digest(fingerprint: Mapping[str, Any]) -> str:
    """One short hash of a whole fingerprint (used to tie derived files to a store)."""
    return hash_json(dict(fingerprint))


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_fingerprint(stored: Mapping[str, Any], given: Mapping[str, Any], *, where: str) -> None:
    """Raise `FingerprintMismatch` unless the two fingerprints agree on every field.

    Values are compared after a JSON round trip, so tuples and lists are the same.
    """
    a = json.loads(json.dumps(dict(stored), sort_keys=True, default=str))
    b = json.loads(json.dumps(dict(given), sort_keys=True, default=str))
    fields = tuple(sorted(k for k in set(a) | set(b) if a.get(k, "<missing>") != b.get(k, "<missing>")))
    if not fields:
        return
    lines = [f"  {f}: stored {_short(a.get(f, '<missing>'))}, now {_short(b.get(f, '<missing>'))}"
             for f in fields]
    raise FingerprintMismatch(
        f"the gradient store at {where} was written by a different run; these fields "
        f"differ ({', '.join(fields)}):\n" + "\n".join(lines) +
        "\nUse a new store directory for the new run, or delete the old one; a store is never "
        "silently reused or overwritten.", fields)
