"""Gradient store: compressed gradients [N, K] on disk, chunked, resumable, fingerprinted.

``StoreWriter`` creates a store (or resumes a matching one) and appends rows;
``GradientStore`` reads the committed rows by memory map; ``fill_store`` runs the
resumable caching loop; ``rewind`` uncommits damaged rows so that caching recomputes them.
See docs/store.md for the format, the crash-safety argument and the integrity checks.
"""
from .cache import fill_store
from .fingerprint import (FingerprintMismatch, check_fingerprint, fingerprint_digest,
                          hash_batch, hash_callable, hash_json, hash_module, hash_tensors)
from .integrity import StoreDamaged
from .store import FORMAT, FORMAT_VERSION, STORE_DTYPES, GradientStore, StoreWriter, rewind

__all__ = [
    "GradientStore", "StoreWriter", "StoreDamaged", "rewind", "fill_store", "FingerprintMismatch", "check_fingerprint",
    "fingerprint_digest", "hash_batch", "hash_callable", "hash_json", "hash_module",
    "hash_tensors", "STORE_DTYPES", "FORMAT", "FORMAT_VERSION",
]
