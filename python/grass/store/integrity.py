"""Checksums of a store: one per chunk of rows, one over the manifest, and the record of
which chunks this process has already verified.

Chunk checksums (the manifest's ``checksum`` field names the algorithm):

    "xxh3_64/4MiB"  the chunk's bytes cut into 4 MiB segments (the last one shorter), XXH3
                    64-bit (the ``xxhash`` package) of each, and XXH3 64-bit of their
                    8-byte big-endian digests in order; 16 hex digits. Format version 2.
                    Segments are hashed on torch's threads at once (xxhash releases the
                    GIL), so checking keeps up with scoring that uses every core.
    "crc32"         zlib's CRC-32 of the chunk as an int; format version 1 stores (read,
                    verified and resumed as they are, on one thread, at a fraction of the
                    speed)

The manifest checksum is SHA-256 over the canonical JSON of every field except itself and
``meta`` (informative only: creation time, versions), so a hand-edited ``num_rows``,
``dtype`` or checksum is caught before any row is read.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Mapping, Optional, Set, Tuple

import torch
import xxhash

__all__ = ["StoreDamaged", "CHUNK_HASHES", "DEFAULT_CHUNK_HASH", "chunk_checksum",
           "manifest_checksum", "mark_verified", "is_verified", "forget_verified"]

DEFAULT_CHUNK_HASH = "xxh3_64/4MiB"
SEGMENT_BYTES = 4 << 20

_pool: Optional[ThreadPoolExecutor] = None
_pool_size = 0
_pool_lock = threading.Lock()


def _forget_pool() -> None:  # a forked child has none of its parent's threads
    global _pool, _pool_size
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _threads() -> Optional[ThreadPoolExecutor]:
    global _pool, _pool_size
    n = max(1, torch.get_num_threads())
    if n == 1:
        return None
    with _pool_lock:
        if _pool is None or _pool_size != n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(n, thread_name_prefix="grass-checksum"), n
        return _pool


def _xxh3_64_segments(buf) -> str:
    view = memoryview(buf).cast("B")
    segments = [view[i:i + SEGMENT_BYTES] for i in range(0, len(view), SEGMENT_BYTES)] or [view]
    pool = _threads() if len(segments) > 1 else None
    digests = (pool.map(xxhash.xxh3_64_digest, segments) if pool is not None else
               map(xxhash.xxh3_64_digest, segments))
    return f"{xxhash.xxh3_64_intdigest(b''.join(digests)):016x}"


def _crc32(buf) -> int:
    return zlib.crc32(buf)


# algorithm name -> function of a contiguous buffer (bytes, memoryview, numpy array)
CHUNK_HASHES: Dict[str, Callable[[Any], Any]] = {"xxh3_64/4MiB": _xxh3_64_segments,
                                                 "crc32": _crc32}


class StoreDamaged(ValueError):
    """A store whose manifest or data do not pass their checks; the message names the
    store, what is wrong and how to recompute it."""


def chunk_checksum(algorithm: str, buf) -> Any:
    """The checksum of one chunk's raw bytes, as the manifest stores it."""
    return CHUNK_HASHES[algorithm](buf)


def manifest_checksum(manifest: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the manifest without ``manifest_checksum`` and ``meta``."""
    body = {k: v for k, v in manifest.items() if k not in ("manifest_checksum", "meta")}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


# Chunks verified in this process, per data file. The key holds the file's identity and
# modification time, so a file replaced or written since is verified again.
_verified: Dict[Tuple[int, int, int, int], Set[Tuple[int, str]]] = {}
_lock = threading.Lock()


def _file_key(st: os.stat_result) -> Tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def is_verified(st: os.stat_result, chunk: int, checksum: Any) -> bool:
    with _lock:
        return (chunk, str(checksum)) in _verified.get(_file_key(st), ())


def mark_verified(st: os.stat_result, chunk: int, checksum: Any) -> None:
    with _lock:
        _verified.setdefault(_file_key(st), set()).add((chunk, str(checksum)))


def forget_verified() -> None:
    """Forget every verification of this process (the next read of each chunk checks it
    again); for tests and benchmarks."""
    with _lock:
        _verified.clear()
