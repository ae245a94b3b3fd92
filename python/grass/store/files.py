"""The cache files of a run directory (``fisher.pt``, ``preconditioner.pt``,
``compressor.pt``, ``trak_probabilities.pt``): written atomically with a checksum of their
content, read without ever unpickling code.

A run directory may come from someone else, so reading one must not run anything:
`load_cache` uses ``torch.load(weights_only=True)``, which rebuilds only tensors and plain
values (dicts, lists, strings, numbers) and refuses any other object. What it returns has
also passed its content checksum (XXH3-128 over every value, tensors by dtype, shape and
bytes). A file that cannot be read, holds anything else, or fails its checksum is reported
with a `CacheFileWarning` naming the file and why, and treated as missing: the caller
recomputes it. Files written before the checksum existed (no ``grass_cache`` header) are
read, still with ``weights_only=True``.

Small records (``fit.json``: how the preconditioner was fitted) are plain JSON with a
SHA-256 of their content, read and checked the same way by `load_json`.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Any, Optional

import torch
import xxhash

__all__ = ["CacheFileWarning", "save_cache", "load_cache", "save_json", "load_json",
           "content_checksum"]

_HEADER = "grass_cache"
_VERSION = 1


class CacheFileWarning(UserWarning):
    """A cache file of a run directory could not be used and is recomputed."""


def _update(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}|".encode())
        for k in sorted(obj, key=repr):
            _update(h, k)
            _update(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}|".encode())
        for x in obj:
            _update(h, x)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        h.update(f"{type(obj).__name__}:{obj!r}|".encode())
    else:
        raise TypeError(f"a cache file holds tensors and plain values only, got {type(obj).__name__}")


def content_checksum(obj: Any) -> str:
    """XXH3-128 (hex) of a nest of dicts, lists, tuples, tensors and plain values."""
    h = xxhash.xxh3_128()
    _update(h, obj)
    return h.hexdigest()


def save_cache(obj: Any, path: str) -> None:
    """Write ``obj`` (tensors and plain values) to ``path`` atomically (temporary file,
    fsync, ``os.replace``) with its content checksum."""
    payload = {_HEADER: _VERSION, "checksum": content_checksum(obj), "content": obj}
    tmp = path + ".tmp"
    torch.save(payload, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if "weights_only" in str(e) or "Unsupported global" in str(e):
        return ("it holds objects other than tensors and plain values (a pickle that could run "
                "code); it was not unpickled")
    return f"{type(e).__name__}: {text[:200]}"


def load_cache(path: str, what: str, *, then: str = "recomputing it") -> Optional[Any]:
    """The content saved by `save_cache` at ``path``; None when there is no file, or (with a
    `CacheFileWarning` saying why and ``then``) when it cannot be read safely and intact.
    ``what`` names the file's content in the warning."""
    if not os.path.exists(path):
        return None

    def fail(why: str) -> None:
        warnings.warn(f"{path} ({what}) cannot be used: {why}; {then}", CacheFileWarning,
                      stacklevel=3)
        return None

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or a pickle of arbitrary objects
        return fail(_reason(e))
    if not isinstance(saved, dict):
        return fail(f"it holds a {type(saved).__name__}, not a grass cache file")
    if _HEADER not in saved:  # written before cache files carried a checksum
        return saved
    if saved.get(_HEADER) != _VERSION or "content" not in saved:
        return fail(f"unknown cache file version {saved.get(_HEADER)!r}")
    try:
        ok = content_checksum(saved["content"]) == saved.get("checksum")
    except TypeError as e:
        return fail(str(e))
    if not ok:
        return fail("its content does not match its checksum (the file is damaged)")
    return saved["content"]


def _json_checksum(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def save_json(obj: Any, path: str) -> None:
    """Write a JSON-able ``obj`` to ``path`` atomically, with its SHA-256."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({_HEADER: _VERSION, "checksum": _json_checksum(obj), "content": obj}, f,
                  indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_json(path: str, what: str, *, then: str) -> Optional[Any]:
    """The content saved by `save_json`; None when there is no file, or (with a
    `CacheFileWarning`) when it is not valid JSON or fails its checksum."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            saved = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        warnings.warn(f"{path} ({what}) cannot be used: {type(e).__name__}: {e}; {then}",
                      CacheFileWarning, stacklevel=2)
        return None
    if (not isinstance(saved, dict) or saved.get(_HEADER) != _VERSION
            or _json_checksum(saved.get("content")) != saved.get("checksum")):
        warnings.warn(f"{path} ({what}) cannot be used: its content does not match its checksum "
                      f"(the file is damaged or was edited); {then}", CacheFileWarning, stacklevel=2)
        return None
    return saved["content"]
