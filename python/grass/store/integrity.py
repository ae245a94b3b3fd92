"""Checksums of a store: one per chunk of rows, one over the manifest, and the record of
which chunks this process has already verified.

Chunk checksums (the manifest's ``checksum`` field names the algorithm):

    "xxh3_64"   XXH3 64-bit (the ``xxhash`` package), 16 hex digits; format version 2
    "crc32"     zlib's CRC-32 as an int; format version 1 stores (read and verified, at
                about a third of XXH3's speed)

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
from typing import Any, Callable, Dict, Mapping, Set, Tuple

import xxhash

__all__ = ["StoreDamaged", "CHUNK_HASHES", "DEFAULT_CHUNK_HASH", "chunk_checksum",
           "manifest_checksum", "mark_verified", "is_verified", "forget_verified"]

DEFAULT_CHUNK_HASH = "xxh3_64"


def _xxh3_64(buf) -> str:
    return f"{xxhash.xxh3_64_intdigest(buf):016x}"


def _crc32(buf) -> int:
    return zlib.crc32(buf)


# algorithm name -> function of a contiguous buffer (bytes, memoryview, numpy array)
CHUNK_HASHES: Dict[str, Callable[[Any], Any]] = {"xxh3_64": _xxh3_64, "crc32": _crc32}


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
