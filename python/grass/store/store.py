"""A directory of compressed gradients [N, K], written in chunks, read by memory map.

Layout of a store directory (see docs/store.md):

    manifest.json    format, version, fingerprint, N, K, block sizes, layers, dtype,
                     chunk size, committed rows, a checksum per committed chunk (XXH3-64;
                     CRC-32 in version 1 stores) and a checksum of the manifest itself
    gradients.bin    the rows, C order, little endian, [N, K] of the stored dtype
                     (bfloat16 as its raw 16 bits); preallocated (sparse) at creation
    .lock            held (flock) by the one process writing the store

Crash safety: rows are written past the committed ones, made durable (fsync), and only
then does a new manifest naming them replace the old one atomically (write a temporary
file, fsync, ``os.replace``, fsync the directory). Whatever a crash leaves past the
committed rows is never read and is overwritten on resume.

Integrity (docs/store.md, "Integrity"): opening a store checks the manifest (its own
checksum, every field's type and range, the data file's size); the first read of a chunk
in a process checks the chunk's checksum. Either failure raises `StoreDamaged` naming the
store, the chunk and rows, and how to recompute them (`rewind`).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .fingerprint import check_fingerprint, fingerprint_digest
from .integrity import (CHUNK_HASHES, DEFAULT_CHUNK_HASH, StoreDamaged, chunk_checksum,
                        is_verified, manifest_checksum, mark_verified)

try:  # POSIX advisory locks; elsewhere the single-writer rule is the user's to keep
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["GradientStore", "StoreWriter", "StoreDamaged", "rewind", "STORE_DTYPES", "FORMAT",
           "FORMAT_VERSION", "ROWS_VERSION"]

FORMAT = "grass.gradient_store"
# Version 2: XXH3-64 chunk checksums and a manifest checksum. Version 1 stores (CRC-32
# chunk checksums, no manifest checksum) are read, verified and resumed as they are.
FORMAT_VERSION = 2
# What the rows mean (layout and content), as run fingerprints record it: unchanged by
# version 2, which changed only how rows are checked, so version 1 runs keep being reused.
ROWS_VERSION = 1
MANIFEST = "manifest.json"
DATA = "gradients.bin"
LOCK = ".lock"
_TMP = MANIFEST + ".tmp"

# stored dtype name -> (on-disk numpy dtype, torch dtype the rows are viewed as)
STORE_DTYPES: Dict[str, Tuple[np.dtype, torch.dtype]] = {
    "float32": (np.dtype("<f4"), torch.float32),
    "float16": (np.dtype("<f2"), torch.float16),
    "bfloat16": (np.dtype("<u2"), torch.bfloat16),
}
_TARGET_CHUNK_BYTES = 64 << 20


def _check_dtype(dtype: Any) -> str:
    if isinstance(dtype, torch.dtype):
        names = {v[1]: k for k, v in STORE_DTYPES.items()}
        if dtype in names:
            return names[dtype]
    elif isinstance(dtype, str) and dtype in STORE_DTYPES:
        return dtype
    raise ValueError(f"dtype must be one of {sorted(STORE_DTYPES)} (or the torch dtype), got {dtype!r}")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_manifest(directory: str, manifest: Dict[str, Any]) -> None:
    """Replace the manifest atomically: readers and crashes see the old or the new one.
    Sets ``manifest["manifest_checksum"]`` to the checksum of the other fields."""
    manifest["manifest_checksum"] = manifest_checksum(manifest)
    tmp = os.path.join(directory, _TMP)
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(directory, MANIFEST))
    _fsync_dir(directory)


_RECACHE = ("delete the directory and run the caching again (Attributor.cache, or grass run); "
            "a manifest is not meant to be edited by hand")


def _damaged(directory: str, what: str, todo: str = _RECACHE) -> StoreDamaged:
    return StoreDamaged(f"store {directory!r} is damaged: {what}; {todo}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _expected_checksums(num_rows: int, chunk_rows: int, committed: int) -> int:
    """How many chunks of the grid lie wholly below ``committed``."""
    if committed == num_rows:
        return -(-num_rows // chunk_rows)
    return committed // chunk_rows


def _check_manifest(directory: str, m: Any) -> Dict[str, Any]:
    """Every field a reader relies on, checked against each other and the data file."""
    if not isinstance(m, dict):
        raise _damaged(directory, f"{MANIFEST} holds a {type(m).__name__}, not an object")
    if m.get("format") != FORMAT:
        raise ValueError(f"{os.path.join(directory, MANIFEST)} is not a grass gradient store "
                         f"manifest (format {m.get('format')!r}, expected {FORMAT!r})")
    version = m.get("version")
    if not _is_int(version) or version < 1:
        raise _damaged(directory, f"{MANIFEST} has version {version!r}, expected an int >= 1")
    if version > FORMAT_VERSION:
        raise ValueError(f"the store at {directory!r} has format version {version}, newer "
                         f"than this grass reads ({FORMAT_VERSION}); upgrade grass")
    stored = m.get("manifest_checksum")
    if stored is None and version >= 2:
        raise _damaged(directory, f"{MANIFEST} has no manifest_checksum")
    if stored is not None and stored != manifest_checksum(m):
        raise _damaged(directory, f"{MANIFEST} does not match its manifest_checksum (a field "
                                  "was edited or the file was damaged)")

    def bad(key: str, expected: str) -> StoreDamaged:
        return _damaged(directory, f"{MANIFEST} field {key!r} is {m.get(key)!r}, expected {expected}")

    for key in ("num_rows", "dim", "chunk_rows"):
        if not _is_int(m.get(key)) or m[key] < 1:
            raise bad(key, "an int >= 1")
    n, rows = m["num_rows"], m["chunk_rows"]
    if not _is_int(m.get("committed_rows")) or not 0 <= m["committed_rows"] <= n:
        raise bad("committed_rows", f"an int in [0, num_rows={n}]")
    sizes = m.get("block_sizes")
    if not isinstance(sizes, list) or not sizes or not all(_is_int(k) and k >= 1 for k in sizes):
        raise bad("block_sizes", "a non-empty list of ints >= 1")
    if sum(sizes) != m["dim"]:
        raise bad("dim", f"the sum of block_sizes ({sum(sizes)})")
    layers = m.get("layers")
    if not isinstance(layers, list) or len(layers) != len(sizes) or not all(isinstance(x, str) for x in layers):
        raise bad("layers", f"a list of {len(sizes)} names (one per block)")
    if m.get("dtype") not in STORE_DTYPES:
        raise bad("dtype", f"one of {sorted(STORE_DTYPES)}")
    if m.get("byte_order", "little") != "little":
        raise bad("byte_order", "'little'")
    if m.get("data_file", DATA) != DATA:
        raise bad("data_file", repr(DATA))
    if not isinstance(m.get("fingerprint"), dict):
        raise bad("fingerprint", "an object")
    algorithm = m.get("checksum", "crc32" if version == 1 else None)
    if algorithm not in CHUNK_HASHES:
        raise bad("checksum", f"one of {sorted(CHUNK_HASHES)}")
    sums = m.get("checksums")
    want = _expected_checksums(n, rows, m["committed_rows"])
    if not isinstance(sums, list) or len(sums) != want:
        raise _damaged(directory, f"{MANIFEST} lists {len(sums) if isinstance(sums, list) else sums!r} "
                                  f"chunk checksums, {m['committed_rows']} committed rows in chunks "
                                  f"of {rows} need {want}")
    ok = ((lambda c: _is_int(c) and 0 <= c < 2**32) if algorithm == "crc32" else
          (lambda c: isinstance(c, str) and len(c) == 16 and all(ch in "0123456789abcdef" for ch in c)))
    for j, c in enumerate(sums):
        if not ok(c):
            raise _damaged(directory, f"{MANIFEST} has checksum {c!r} for chunk {j}, not a "
                                      f"{algorithm} checksum")
    data = os.path.join(directory, DATA)
    try:
        size = os.path.getsize(data)
    except OSError:
        raise _damaged(directory, f"{DATA} is missing") from None
    expected = n * m["dim"] * STORE_DTYPES[m["dtype"]][0].itemsize
    if size != expected:
        raise _damaged(directory, f"{DATA} has {size} bytes, but {MANIFEST} describes "
                                  f"{n} rows x {m['dim']} x {STORE_DTYPES[m['dtype']][0].itemsize} "
                                  f"bytes ({m['dtype']}) = {expected} bytes (truncated, extended, "
                                  "or the manifest was edited)")
    return m


def _read_manifest(directory: str) -> Dict[str, Any]:
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no gradient store at {directory!r}: {MANIFEST} is missing")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        m = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _damaged(directory, f"{MANIFEST} is not valid JSON ({e})") from None
    return _check_manifest(directory, m)


def _block_sizes(block_sizes: Sequence[int]) -> List[int]:
    sizes = [int(k) for k in block_sizes]
    if not sizes or any(k < 1 for k in sizes):
        raise ValueError(f"block_sizes must be a non-empty list of positive ints, got {list(block_sizes)!r}")
    return sizes


def _lock_store(path: str) -> Optional[int]:
    """Hold the store's writer lock (flock); returns the descriptor to pass to `_unlock_store`."""
    if fcntl is None:  # pragma: no cover
        return None
    fd = os.open(os.path.join(path, LOCK), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"another process is writing the gradient store at {path!r}") from None
    return fd


def _unlock_store(fd: Optional[int]) -> None:
    if fd is not None:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class _StoreLayout:
    """What the manifest says, shared by the reader and the writer (``self._manifest``)."""

    _manifest: Dict[str, Any]

    @property
    def manifest(self) -> Dict[str, Any]:
        return json.loads(json.dumps(self._manifest))

    @property
    def fingerprint(self) -> Dict[str, Any]:
        return dict(self._manifest["fingerprint"])

    @property
    def digest(self) -> str:
        """A short hash of the fingerprint, for files derived from this store."""
        return fingerprint_digest(self._manifest["fingerprint"])

    @property
    def num_rows(self) -> int:
        """N, the number of rows the finished store holds."""
        return int(self._manifest["num_rows"])

    @property
    def committed_rows(self) -> int:
        return int(self._manifest["committed_rows"])

    @property
    def complete(self) -> bool:
        return self.committed_rows == self.num_rows

    @property
    def dim(self) -> int:
        """K = sum of the block sizes."""
        return int(self._manifest["dim"])

    @property
    def block_sizes(self) -> List[int]:
        return list(self._manifest["block_sizes"])

    @property
    def layers(self) -> List[str]:
        return list(self._manifest["layers"])

    @property
    def dtype(self) -> str:
        return self._manifest["dtype"]

    @property
    def torch_dtype(self) -> torch.dtype:
        return STORE_DTYPES[self.dtype][1]

    @property
    def chunk_rows(self) -> int:
        return int(self._manifest["chunk_rows"])

    @property
    def checksum_algorithm(self) -> str:
        """How chunks are checksummed: "xxh3_64/4MiB", or "crc32" in version 1 stores."""
        return self._manifest.get("checksum", "crc32")

    @property
    def meta(self) -> Dict[str, Any]:
        return dict(self._manifest.get("meta", {}))

    def block_slices(self) -> List[slice]:
        """Column slice of each block (layer) in [N, K]."""
        out, start = [], 0
        for k in self.block_sizes:
            out.append(slice(start, start + k))
            start += k
        return out


class GradientStore(_StoreLayout):
    """Read access to a store's committed rows.

    ``GradientStore(path, fingerprint=None)`` opens the store at ``path`` and checks its
    manifest (raises `StoreDamaged`); when a fingerprint is given, a store written by a
    different run raises `FingerprintMismatch` naming the fields that differ. Every read
    checks each chunk it touches against the chunk's checksum the first time this process
    reads it (`StoreDamaged` names the chunk and its rows).
    """

    def __init__(self, path: str, fingerprint: Optional[Mapping[str, Any]] = None):
        self.path = os.fspath(path)
        self._manifest = _read_manifest(self.path)
        if fingerprint is not None:
            check_fingerprint(self._manifest["fingerprint"], fingerprint, where=repr(self.path))
        self._np_dtype = STORE_DTYPES[self._manifest["dtype"]][0]

    def refresh(self) -> "GradientStore":
        """Re-read the manifest (rows committed by a writer since this store was opened)."""
        self._manifest = _read_manifest(self.path)
        self._np_dtype = STORE_DTYPES[self._manifest["dtype"]][0]
        return self

    def require_complete(self) -> None:
        if not self.complete:
            raise RuntimeError(
                f"the gradient store at {self.path!r} is incomplete: {self.committed_rows} of "
                f"{self.num_rows} rows committed; run the caching again to resume it")

    def __repr__(self) -> str:
        return (f"GradientStore({self.path!r}, rows={self.committed_rows}/{self.num_rows}, "
                f"K={self.dim}, blocks={len(self.block_sizes)}, dtype={self.dtype})")

    # -- reading -----------------------------------------------------------------------
    def _memmap(self, start: int, stop: int) -> np.ndarray:
        row_bytes = self.dim * self._np_dtype.itemsize
        return np.memmap(os.path.join(self.path, DATA), dtype=self._np_dtype, mode="c",
                         offset=start * row_bytes, shape=(stop - start, self.dim))

    def _range(self, start: int, stop: Optional[int]) -> Tuple[int, int]:
        stop = self.committed_rows if stop is None else int(stop)
        start = int(start)
        if not 0 <= start <= stop <= self.committed_rows:
            raise IndexError(f"rows [{start}, {stop}) are outside the committed rows "
                             f"[0, {self.committed_rows}) of {self.path!r}")
        return start, stop

    def _chunk_range(self, j: int) -> Tuple[int, int]:
        return j * self.chunk_rows, min((j + 1) * self.chunk_rows, self.num_rows)

    def _check_chunk(self, j: int) -> None:
        """Raise `StoreDamaged` unless chunk j's bytes match its checksum."""
        start, stop = self._chunk_range(j)
        rows = self._memmap(start, stop)
        stored = self._manifest["checksums"][j]
        got = chunk_checksum(self.checksum_algorithm, rows)
        if got == stored:
            return
        view = torch.from_numpy(rows)
        view = view.view(torch.bfloat16) if self.dtype == "bfloat16" else view
        bad = (~torch.isfinite(view)).any(dim=1).nonzero().flatten()
        nonfinite = (f"; rows {[start + int(i) for i in bad[:5]]}{' ...' if len(bad) > 5 else ''} "
                     "hold NaN or inf") if len(bad) else ""
        raise _damaged(
            self.path,
            f"chunk {j} (rows {start}..{stop}) of {DATA} fails its checksum ({self.checksum_algorithm} "
            f"{got!r}, the manifest says {stored!r}){nonfinite}",
            f"recompute rows from {start} on with grass.store.rewind({self.path!r}, {start}) "
            "(it keeps the rows before) and run the caching again (Attributor.cache, or grass "
            "run), or delete the directory and cache everything again")

    def _verify_rows(self, start: int, stop: int) -> None:
        """Check every checksummed chunk overlapping [start, stop) not yet checked in this
        process (rows of an incomplete store's last, partial chunk have no checksum yet)."""
        if stop <= start:
            return
        sums = self._manifest["checksums"]
        first, last = start // self.chunk_rows, min(len(sums), -(-stop // self.chunk_rows))
        if first >= last:
            return
        st = os.stat(os.path.join(self.path, DATA))
        for j in range(first, last):
            if not is_verified(st, j, sums[j]):
                self._check_chunk(j)
                mark_verified(st, j, sums[j])

    def gradients(self, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        """Rows [start, stop) of the committed gradients, memory-mapped: [stop-start, K]
        in the stored dtype. Pages are read from disk on first touch; writes to the
        tensor stay in memory (copy-on-write) and never reach the file. The chunks holding
        the rows are checked against their checksums on their first read in this process."""
        start, stop = self._range(start, stop)
        if stop == start:
            return torch.empty(0, self.dim, dtype=self.torch_dtype)
        self._verify_rows(start, stop)
        t = torch.from_numpy(self._memmap(start, stop))
        return t.view(torch.bfloat16) if self.dtype == "bfloat16" else t

    def chunks(self, chunk_rows: Optional[int] = None, *, dtype: torch.dtype = torch.float32,
               device=None, start: int = 0, stop: Optional[int] = None
               ) -> Iterator[Tuple[int, torch.Tensor]]:
        """Yield ``(first_row, rows [c, K])`` over the committed rows, converted to
        ``dtype`` on ``device``; at most one chunk is resident at a time."""
        start, stop = self._range(start, stop)
        step = self.chunk_rows if chunk_rows is None else int(chunk_rows)
        if step < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        for s in range(start, stop, step):
            e = min(stop, s + step)
            view = self.gradients(s, e)
            yield s, view.to(device=device, dtype=dtype, copy=True)

    def verify(self) -> None:
        """Check every committed chunk against its checksum now (also those this process
        checked before); raises `StoreDamaged` naming the first damaged chunk."""
        self.refresh()
        st = os.stat(os.path.join(self.path, DATA))
        for j, c in enumerate(self._manifest["checksums"]):
            self._check_chunk(j)
            mark_verified(st, j, c)


def rewind(path: str, row: int) -> int:
    """Uncommit the rows of a store from the chunk holding ``row`` on, so that the next
    caching run (``Attributor.cache``, ``fill_store``) recomputes them; rows before that
    chunk are kept. Returns the number of rows still committed. Takes the writer lock."""
    path = os.fspath(path)
    row = int(row)
    fd = _lock_store(path)
    try:
        m = _read_manifest(path)
        if not 0 <= row <= m["committed_rows"]:
            raise ValueError(f"row must be in [0, committed_rows={m['committed_rows']}] of "
                             f"{path!r}, got {row}")
        j = row // m["chunk_rows"]
        keep = min(m["committed_rows"], j * m["chunk_rows"])
        m = dict(m, committed_rows=keep, checksums=m["checksums"][:j])
        meta = dict(m.get("meta", {}))
        meta.pop("completed", None)
        m["meta"] = meta
        _write_manifest(path, m)
        return keep
    finally:
        _unlock_store(fd)


class StoreWriter(_StoreLayout):
    """Creates a store, or resumes one whose fingerprint matches, and appends rows.

    ``append(rows)`` writes rows after the last committed one; every ``chunk_rows`` rows
    (and on ``commit()``/``close()``, also when leaving a ``with`` block on an
    exception) the written rows are made durable and committed. Rows written but not yet
    committed when the process dies are lost and recomputed on resume; committed rows are
    never lost. One process writes a store at a time (an advisory lock).
    """

    def __init__(self, path: str, *, fingerprint: Mapping[str, Any], num_rows: int,
                 block_sizes: Sequence[int], dtype: Any = "float32",
                 chunk_rows: Optional[int] = None, layers: Optional[Sequence[str]] = None,
                 meta: Optional[Mapping[str, Any]] = None):
        self.path = os.fspath(path)
        self._fd = None
        self._lock_fd = None
        dtype = _check_dtype(dtype)
        sizes = _block_sizes(block_sizes)
        num_rows = int(num_rows)
        if num_rows < 1:
            raise ValueError(f"num_rows must be >= 1, got {num_rows}")
        layers = [str(x) for x in layers] if layers is not None else [f"block{i}" for i in range(len(sizes))]
        if len(layers) != len(sizes):
            raise ValueError(f"layers has {len(layers)} names but block_sizes has {len(sizes)} blocks")
        fingerprint = json.loads(json.dumps(dict(fingerprint), sort_keys=True, default=str))
        dim = sum(sizes)
        self._np_dtype = STORE_DTYPES[dtype][0]
        self._row_bytes = dim * self._np_dtype.itemsize

        os.makedirs(self.path, exist_ok=True)
        self._lock_fd = _lock_store(self.path)
        try:
            if os.path.exists(os.path.join(self.path, MANIFEST)):
                # Checks the manifest and the data file's size against it.
                m = _read_manifest(self.path)
                check_fingerprint(m["fingerprint"], fingerprint, where=repr(self.path))
                # Layout fields normally sit in the fingerprint too; check them anyway,
                # since writing with another layout would corrupt the file.
                for key, value in (("num_rows", num_rows), ("block_sizes", sizes), ("dtype", dtype)):
                    if m[key] != value:
                        raise ValueError(f"the store at {self.path!r} has {key}={m[key]!r}, "
                                         f"this run has {value!r}")
                self._manifest = m
            else:
                self._create(fingerprint, num_rows, sizes, dtype, chunk_rows, layers, meta)
            self._fd = os.open(os.path.join(self.path, DATA), os.O_RDWR)
        except BaseException:
            self._unlock()
            raise
        self._written = self.committed_rows  # rows on disk, committed or not

    # -- set-up --------------------------------------------------------------------------
    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        _unlock_store(fd)

    def _create(self, fingerprint, num_rows, sizes, dtype, chunk_rows, layers, meta) -> None:
        leftovers = set(os.listdir(self.path)) - {DATA, _TMP, LOCK}
        if leftovers:
            raise FileExistsError(
                f"{self.path!r} is not empty and holds no gradient store ({sorted(leftovers)[:5]} "
                "...); choose an empty or new directory")
        if chunk_rows is None:
            chunk_rows = max(1, min(num_rows, _TARGET_CHUNK_BYTES // self._row_bytes))
        chunk_rows = int(chunk_rows)
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        data = os.path.join(self.path, DATA)
        # Nothing is committed yet, so an old data file (from a crash before the first
        # manifest) is simply replaced.
        fd = os.open(data, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, num_rows * self._row_bytes)  # sparse: no disk used until written
            os.fsync(fd)
        finally:
            os.close(fd)
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._manifest = {
            "format": FORMAT, "version": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "num_rows": num_rows, "dim": sum(sizes), "block_sizes": sizes, "layers": list(layers),
            "dtype": dtype, "byte_order": "little", "data_file": DATA,
            "chunk_rows": chunk_rows, "committed_rows": 0,
            "checksum": DEFAULT_CHUNK_HASH, "checksums": [],
            "meta": dict(meta or {}, created=now),
        }
        _write_manifest(self.path, self._manifest)

    # -- state ---------------------------------------------------------------------------
    @property
    def written_rows(self) -> int:
        """Rows appended so far (committed or waiting for the next commit)."""
        return self._written
    # -- writing -------------------------------------------------------------------------
    def append(self, rows: torch.Tensor) -> None:
        """Write rows [b, K] after the last written row (any float dtype; cast to the
        stored dtype). Non-finite values, or values that overflow float16, are errors."""
        if self._fd is None:
            raise RuntimeError(f"the writer of {self.path!r} is closed")
        if not isinstance(rows, torch.Tensor) or rows.dim() != 2 or rows.shape[1] != self.dim:
            shape = tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
            raise ValueError(f"rows must be a tensor [b, K={self.dim}], got {shape}")
        if not rows.is_floating_point():
            raise ValueError(f"rows must be floating point, got {rows.dtype}")
        b = int(rows.shape[0])
        if b == 0:
            return
        if self._written + b > self.num_rows:
            raise ValueError(f"appending {b} rows after row {self._written} would exceed the "
                             f"store's num_rows={self.num_rows}")
        if not bool(torch.isfinite(rows).all()):
            bad = (~torch.isfinite(rows)).any(dim=1).nonzero().flatten()[:5].tolist()
            raise ValueError(f"rows {[self._written + i for i in bad]} hold NaN or inf; a store "
                             "never holds non-finite gradients (check the loss and the model)")
        stored = rows.detach().to(device="cpu", dtype=STORE_DTYPES[self._manifest["dtype"]][1])
        if self._manifest["dtype"] == "float16" and not bool(torch.isfinite(stored).all()):
            raise ValueError("gradients overflow float16 (|x| > 65504); store them as bfloat16 "
                             "or float32")
        raw = stored.contiguous()
        if raw.dtype == torch.bfloat16:
            raw = raw.view(torch.int16)
        data = memoryview(raw.numpy()).cast("B")
        offset = self._written * self._row_bytes
        view = 0
        while view < len(data):  # pwrite may write less than asked
            view += os.pwrite(self._fd, data[view:], offset + view)
        self._written += b
        if self._written - self.committed_rows >= self.chunk_rows or self._written == self.num_rows:
            self.commit()

    def commit(self) -> None:
        """Make the written rows durable, then name them in a new manifest."""
        if self._fd is None or self._written == self.committed_rows:
            return
        if hasattr(os, "fdatasync"):
            os.fdatasync(self._fd)
        else:  # pragma: no cover
            os.fsync(self._fd)
        m = dict(self._manifest)
        m["committed_rows"] = self._written
        m["checksums"] = self._checksums(self._written)
        if self._written == self.num_rows:
            m["meta"] = dict(m.get("meta", {}), completed=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        _write_manifest(self.path, m)
        self._manifest = m

    def _checksums(self, committed: int) -> List[int]:
        # One checksum per full chunk of the fixed grid [j*chunk_rows, (j+1)*chunk_rows),
        # so the manifest of a resumed store equals that of an uninterrupted one.
        sums = list(self._manifest["checksums"])
        rows = self.chunk_rows
        while True:
            j = len(sums)
            start, stop = j * rows, min((j + 1) * rows, self.num_rows)
            if start >= self.num_rows or stop > committed:
                return sums
            data = os.pread(self._fd, (stop - start) * self._row_bytes, start * self._row_bytes)
            sums.append(chunk_checksum(self.checksum_algorithm, data))

    def close(self) -> None:
        """Commit what was written and release the store."""
        try:
            self.commit()
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._unlock()

    def store(self) -> GradientStore:
        """A reader over what is committed now."""
        return GradientStore(self.path)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # a forgotten writer still releases its lock (rows stay uncommitted)
        try:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._unlock()
        except Exception:
            pass
