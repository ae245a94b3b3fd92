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
import json
import types
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import torch
from torch.utils._pytree import tree_flatten

__all__ = [
    "FingerprintMismatch",
    "hash_tensors",
    "hash_module",
    "hash_callable",
    "fingerprint_as",
    "Fingerprinted",
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


class Fingerprinted:
    """``fn`` with an explicit identity: its fingerprint is ``{"override": identity}``
    instead of a hash of its code, recorded as such in every store it writes. For a
    function whose behaviour changed in a way that does not matter to the stored gradients
    (or whose code cannot be hashed meaningfully); the caller vouches for it."""

    def __init__(self, fn: Callable, identity: str):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if not isinstance(identity, str) or not identity:
            raise ValueError(f"identity must be a non-empty string, got {identity!r}")
        self.fn, self.identity = fn, identity
        for attr in ("per_token", "config"):
            if hasattr(fn, attr):
                setattr(self, attr, getattr(fn, attr))

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __grass_fingerprint__(self):
        return {"override": self.identity}

    def __repr__(self) -> str:
        return f"Fingerprinted({self.fn!r}, {self.identity!r})"


def fingerprint_as(fn: Callable, identity: str) -> Fingerprinted:
    """``fn`` fingerprinted by ``identity`` instead of its code (see ``Fingerprinted``)."""
    return Fingerprinted(fn, identity)


_SIMPLE = (int, float, complex, str, bytes, bool, type(None))


def _hash_value(h, value, seen, depth) -> None:
    """A closure cell, default or referenced global: what it is, as far as it can be said."""
    if isinstance(value, _SIMPLE) or (isinstance(value, (tuple, frozenset)) and
                                      all(isinstance(v, _SIMPLE) for v in value)):
        h.update(b"v|" + repr(value).encode())
    elif isinstance(value, torch.Tensor):
        _update_tensor(h, value)
    elif isinstance(value, types.FunctionType):
        _hash_function(h, value, seen, depth + 1)
    elif isinstance(value, torch.nn.Module):
        h.update(b"module|" + f"{type(value).__module__}.{type(value).__qualname__}".encode())
    else:
        h.update(b"type|" + f"{type(value).__module__}.{type(value).__qualname__}".encode())


def _hash_code(h, code: types.CodeType, doc) -> None:
    # What the code computes: bytecode, constants (nested code recursively; the docstring
    # left out), the global/attribute names it uses. Not its file, line numbers, local
    # variable names or source text, so comments, blank lines, formatting and renaming
    # the function or its locals do not change the hash.
    h.update(b"code|" + code.co_code)
    h.update(b"names|" + repr(code.co_names).encode())
    h.update(f"args|{code.co_argcount}|{code.co_kwonlyargcount}|{code.co_flags}".encode())
    for i, const in enumerate(code.co_consts):
        if isinstance(const, types.CodeType):
            _hash_code(h, const, False if const.co_name in ("<lambda>", "<genexpr>", "<listcomp>",
                                                             "<dictcomp>", "<setcomp>") else None)
        elif i == 0 and doc is not False and (const is None or const == doc):
            h.update(b"doc|")  # a function's first constant: its docstring (or None without one)
        else:
            h.update(b"const|" + repr(const).encode())


def _hash_function(h, fn: types.FunctionType, seen, depth: int) -> None:
    if id(fn) in seen or depth > 8:
        h.update(b"seen|")
        return
    seen.add(id(fn))
    _hash_code(h, fn.__code__, fn.__doc__)
    for value in fn.__defaults__ or ():
        _hash_value(h, value, seen, depth)
    for key, value in sorted((fn.__kwdefaults__ or {}).items()):
        h.update(key.encode())
        _hash_value(h, value, seen, depth)
    for cell in fn.__closure__ or ():
        try:
            _hash_value(h, cell.cell_contents, seen, depth)
        except ValueError:  # an empty cell
            h.update(b"empty|")
    # Functions it calls by global name are part of what it computes.
    names = set()
    stack = [fn.__code__]
    while stack:
        code = stack.pop()
        names.update(code.co_names)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    for name in sorted(names):
        value = fn.__globals__.get(name)
        if isinstance(value, types.FunctionType) and value.__module__ == fn.__module__:
            h.update(b"global|" + name.encode())
            _hash_function(h, value, seen, depth + 1)


def hash_callable(fn: Optional[Callable]) -> Optional[Dict[str, str]]:
    """Identity of a loss or target function: a hash of what it computes, its normalised
    code object (bytecode, constants, names used, recursively for nested code and for the
    module's functions it calls; defaults and simple closure values), never its source
    text, so a comment, formatting or a renamed function or local keep the hash. ``None``
    stays ``None``. An object with a ``__grass_fingerprint__()`` method describes itself
    (``fingerprint_as(fn, "identity")`` records an explicit override); an ``nn.Module`` is
    its class and state; another callable object is its class's ``__call__``.
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
    h = hashlib.blake2b(digest_size=_DIGEST)
    if isinstance(target, types.FunctionType):
        _hash_function(h, target, set(), 0)
    elif isinstance(getattr(type(target), "__call__", None), types.FunctionType):
        h.update(f"object|{type(target).__qualname__}|".encode())
        _hash_function(h, type(target).__call__, set(), 0)
        state = getattr(target, "__dict__", {})
        for key in sorted(state):
            h.update(key.encode())
            _hash_value(h, state[key], set(), 0)
    else:  # builtins, functools.partial, ...
        h.update(b"other|" + repr(target).encode())
    return {"code": h.hexdigest()}


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
