"""Thin torch ops over the native kernels of grass.

Every op takes torch tensors on the CPU or a CUDA device (numpy arrays are accepted too:
they are wrapped without a copy, and the result comes back as a numpy array) and calls
``grass._C``, which exchanges the tensors zero-copy through DLPack. This module does what
needs torch or Python: it turns Python values into the binding's types (detaching
tensors, wrapping numpy, refusing devices DLPack cannot carry, integers that do not fit
64 bits), allocates results on the input's device, passes the current CUDA stream and
range-checks CUDA index tensors on the device. Arrays are checked once, in the binding
(rank, dtype, device, contiguity, aliasing), and scalar ranges there or in the C++ core;
their errors are raised here under the name of the op the caller used.

Rules shared by all ops:

* Inputs are detached (tensors that require grad are accepted; no gradient flows back).
* Inputs must be C-contiguous: a strided view is an error, never silently copied
  (call ``.contiguous()``).
* Results are float32 unless the op says otherwise. ``out=`` must be a contiguous tensor
  of the result's dtype and shape on the input's device; it is written in place and
  returned (never replaced by a new tensor).
* Index tensors (masks, CSR indices) live on the input's device and are range-checked
  before a kernel reads them: by the C++ core on the CPU (every call, no copy), and on
  CUDA once per index tensor (one device sync the first time; a tensor is checked again
  only after it is modified in place). :func:`check_indices` checks one ahead of time.
* CUDA work runs on ``torch.cuda.current_stream()`` of the input's device.

Shapes use B for the batch, p for the input dimension and k for the sketch size.
"""
from __future__ import annotations

import functools
import numbers
import re
import threading
import warnings
import weakref
from typing import Sequence, Tuple

import numpy as np
import torch

from . import _C

__all__ = [
    "sjlt", "sjlt_transpose", "sjlt_codes", "mask_indices", "mask_gather", "masked_sjlt",
    "fjlt", "fjlt_params", "kron", "factgrass", "fisher_accumulate", "cholesky_factor",
    "cholesky_solve", "check_indices", "build_info", "cuda_available",
]

_INT64 = 2**63
_MAX_SEED = 2**64
_CUDA_COMPILED = bool(_C.build_info()["cuda_compiled"])


# ----------------------------------------------------------------------------- Python values

def _fail(fn: str, message: str):
    raise ValueError(f"grass.ops.{fn}: {message}")


def _int(fn: str, name: str, value, lo: int = -_INT64) -> int:
    """value as an int that fits int64 (the binding or the core checks its range; lo only
    phrases the message for values too large to pass)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail(fn, f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if not -_INT64 <= value < _INT64:
        _fail(fn, f"{name} must be in [{lo}, {_INT64 - 1}], got {value}")
    return value


def _seed(fn: str, seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        _fail(fn, f"seed must be an integer, got {type(seed).__name__} {seed!r}")
    if not 0 <= int(seed) < _MAX_SEED:
        _fail(fn, f"seed must be in [0, {_MAX_SEED - 1}], got {int(seed)}")
    return int(seed)


def _tensor(fn: str, name: str, value, *, ref_name: str = "", ref=None,
            writable: bool = False) -> Tuple[torch.Tensor, bool]:
    """A torch view of value (a tensor, or a numpy array wrapped without a copy) on a device
    DLPack carries, and whether it came from numpy. None stays None."""
    if value is None:
        return None, False
    from_numpy = isinstance(value, np.ndarray)
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            if writable:
                _fail(fn, f"{name} must not require grad (it is written in place)")
            value = value.detach()
    elif from_numpy:
        if not value.flags.writeable and writable:
            _fail(fn, f"{name} is a read-only numpy array, but it is written in place")
        with warnings.catch_warnings():  # read-only input: we never write through it
            warnings.simplefilter("ignore", UserWarning)
            value = torch.from_numpy(value)
    else:
        _fail(fn, f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
    if value.layout != torch.strided:
        _fail(fn, f"{name} must be a dense (strided) tensor, got layout {value.layout}")
    if value.device.type not in ("cpu", "cuda"):
        if ref is not None:
            _fail(fn, f"{name} must be on {ref_name}'s device {ref.device}, got {value.device}")
        _fail(fn, f"{name} must be a CPU or CUDA tensor, got device {value.device}")
    if value.device.type == "cuda" and not _CUDA_COMPILED:
        _fail(fn, f"{name} is a CUDA tensor, but {cuda_available()[1]}")
    return value, from_numpy


@functools.lru_cache(maxsize=None)
def _allocator(device: torch.device):
    return lambda shape, dtype: torch.empty(shape, dtype=getattr(torch, dtype), device=device)


_BINDING_NAME = re.compile(r"grass\.[\w.]+: ")


def _call(fn: str, kernel, device: torch.device, *args):
    """kernel(*args) with torch's allocator for device and, on CUDA, its current stream
    (the device made current); errors are named after grass.ops.fn."""
    try:
        if device.type == "cuda":
            with torch.cuda.device(device):
                return kernel(*args, stream=torch.cuda.current_stream(device).cuda_stream,
                              alloc=_allocator(device))
        return kernel(*args, alloc=_allocator(device))
    except ValueError as e:
        message = str(e)
        match = _BINDING_NAME.match(message)
        if match is None:
            raise
        raise ValueError(f"grass.ops.{fn}: {message[match.end():]}") from None


def _result(result, out, from_numpy: bool):
    """What an op returns: the caller's out= object itself, else the new tensor (a numpy
    array when the input was one)."""
    if out is not None:
        return out
    return result.numpy() if from_numpy else result


# ----------------------------------------------------------------------------- CUDA indices

# id(tensor) -> (weak reference, tensor._version, data_ptr, min, max) of index tensors
# already checked; in-place changes bump _version and invalidate the entry.
_checked: dict = {}
_checked_lock = threading.Lock()


def _bounds(idx: torch.Tensor):
    entry = _checked.get(id(idx))
    if entry is not None:
        ref, version, ptr, lo, hi = entry
        if ref() is idx and version == idx._version and ptr == idx.data_ptr():
            return lo, hi
    return None


def _require_in_range(fn: str, name: str, idx: torch.Tensor, n: int):
    """Every entry of idx in [0, n), from the cached bounds or one reduction (one sync on
    CUDA) whose bounds are then cached for this tensor."""
    if idx.numel() == 0:
        return
    bounds = _bounds(idx)
    if bounds is None:
        lo, hi = (int(v) for v in torch.stack(torch.aminmax(idx)).tolist())
        key = id(idx)
        with _checked_lock:
            _checked[key] = (weakref.ref(idx, lambda _, k=key: _checked.pop(k, None)),
                             idx._version, idx.data_ptr(), lo, hi)
        bounds = lo, hi
    if bounds[0] < 0 or bounds[1] >= n:
        bad = (idx < 0) | (idx >= n)
        position = int(bad.nonzero()[0, 0])
        _fail(fn, f"{name} must hold indices in [0, {n}), got {name}[{position}] = "
                  f"{int(idx[position])}")


def _device_indices(fn: str, name: str, idx, n, device: torch.device):
    """On CUDA, range-check a 1-D int64 index tensor on its device (cached); the CPU core
    checks its own. Anything malformed is left to the binding's messages."""
    if (device.type == "cuda" and isinstance(idx, torch.Tensor) and idx.device == device
            and idx.dim() == 1 and idx.dtype == torch.int64 and n is not None):
        _require_in_range(fn, name, idx, n)


def check_indices(idx: torch.Tensor, n: int, *, name: str = "idx") -> torch.Tensor:
    """Checks once that every entry of the int64 tensor idx is in [0, n) and remembers it,
    so that the ops reading idx on CUDA skip the device sync while it is unchanged.
    Compressors call this when they build (or move) their indices.

    Returns:
        idx.
    """
    fn = "check_indices"
    if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int64:
        _fail(fn, f"{name} must be an int64 tensor, got "
                  f"{getattr(idx, 'dtype', type(idx).__name__)}")
    _require_in_range(fn, name, idx, _int(fn, "n", n))
    return idx


# ----------------------------------------------------------------------------- SJLT

def sjlt(x, k: int, *, s: int = 1, seed: int = 0, out=None, deterministic: bool = False):
    """Sparse JL sketch of each row: ``y[b] = S x[b]``.

    S is [k, p] with s non-zeros per column, each +-1/sqrt(s), at the (bucket, sign) pairs
    of :func:`sjlt_codes`; it is never stored (memory O(1) in p).

    Args:
        x: [B, p] float32, float16 or bfloat16 (accumulation is float32), or a
            ``torch.sparse_csr_tensor`` [B, p] with values of those dtypes (costs O(nnz);
            its index arrays are converted to int64 if they are int32).
        k: sketch size, 1 <= k < 2**31.
        s: non-zeros per column of S, 1 <= s <= k.
        seed: selects S; the same seed gives the same S on CPU and CUDA.
        out: optional [B, k] float32 on x's device, written in place.
        deterministic: CUDA only: use the order-fixed (bitwise reproducible) path instead
            of atomics. CPU results are always bitwise reproducible.

    Returns:
        [B, k] float32 (``out`` when given).
    """
    fn = "sjlt"
    k, s, seed = _int(fn, "k", k), _int(fn, "s", s), _seed(fn, seed)
    if isinstance(x, torch.Tensor) and x.layout == torch.sparse_csr:
        return _sjlt_csr(fn, x, k, s, seed, out, deterministic)
    if isinstance(x, torch.Tensor) and x.layout != torch.strided:
        _fail(fn, f"x must be a dense tensor or a torch.sparse_csr_tensor, got layout {x.layout}"
                  f" (convert with x.to_sparse_csr())")
    xt, from_numpy = _tensor(fn, "x", x)
    ot, _ = _tensor(fn, "out", out, ref_name="x", ref=xt, writable=True)
    y = _call(fn, _C.sjlt, xt.device, xt, ot, k, s, seed, bool(deterministic))
    return _result(y, out, from_numpy)


def _sjlt_csr(fn, x: torch.Tensor, k, s, seed, out, deterministic):
    x = x.detach()
    if x.dim() != 2 or x.values().dim() != 1:
        _fail(fn, f"a sparse CSR x must be 2-D [B, p] with scalar values, got shape "
                  f"{tuple(x.shape)} with values of shape {tuple(x.values().shape)}")
    values, _ = _tensor(fn, "x.values()", x.values())
    indptr = x.crow_indices().to(torch.int64).contiguous()
    indices = x.col_indices().to(torch.int64).contiguous()
    B, p = x.shape
    # The CPU core checks the structure itself (no copy). On CUDA check it all here, on
    # the device, in one reduction and one sync, so that no kernel reads out of bounds
    # (CSR input comes from users; the attribution pipeline never sketches CSR).
    if x.device.type == "cuda" and B > 0:
        steps = indptr[1:] - indptr[:-1]
        bad = (indptr[0] != 0) | (indptr[-1] != values.shape[0]) | (steps < 0).any()
        if indices.numel() > 0:
            bad = bad | (indices < 0).any() | (indices >= p).any()
        if bool(bad):
            _fail(fn, f"x has an invalid CSR structure: crow_indices must start at 0, be "
                      f"non-decreasing and end at nnz = {values.shape[0]}, and col_indices "
                      f"must be in [0, p = {p})")
    ot, _ = _tensor(fn, "out", out, ref_name="x", ref=values, writable=True)
    y = _call(fn, _C.sjlt_csr, x.device, indptr, indices, values, ot, p, k, s, seed,
              bool(deterministic))
    return _result(y, out, False)


def sjlt_transpose(y, p: int, *, s: int = 1, seed: int = 0, out=None):
    """The adjoint sketch: ``x[b] = S^T y[b]``, so that <S x, y> = <x, S^T y>.

    Args:
        y: [B, k] float32 (k is read from its shape).
        p: input dimension of S, >= 0.
        s, seed: as in :func:`sjlt`.
        out: optional [B, p] float32 on y's device, written in place.

    Returns:
        [B, p] float32.
    """
    fn = "sjlt_transpose"
    p, s, seed = _int(fn, "p", p, 0), _int(fn, "s", s), _seed(fn, seed)
    yt, from_numpy = _tensor(fn, "y", y)
    ot, _ = _tensor(fn, "out", out, ref_name="y", ref=yt, writable=True)
    x = _call(fn, _C.sjlt_transpose, yt.device, yt, ot, p, s, seed)
    return _result(x, out, from_numpy)


def sjlt_codes(p: int, k: int, *, s: int = 1, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The explicit S of :func:`sjlt`: for column j and replica r, entry
    ``S[bucket[j, r], j] = sign[j, r] / sqrt(s)``.

    Returns:
        bucket int64 [p, s] in [0, k) and sign int8 [p, s] in {+1, -1}, on the CPU.
        Replica r's bucket lies in [r*k//s, (r+1)*k//s), so a column's buckets are distinct.
    """
    fn = "sjlt_codes"
    return _call(fn, _C.sjlt_codes, torch.device("cpu"), _int(fn, "p", p, 0), _int(fn, "k", k),
                 _int(fn, "s", s), _seed(fn, seed))


# ----------------------------------------------------------------------------- masks

def mask_indices(p: int, k: int, *, seed: int = 0, device=None) -> torch.Tensor:
    """A random mask: k distinct indices of [0, p), sorted ascending, drawn from seed.

    Args:
        p: 1 <= p < 2**63; k: 1 <= k <= p.

    Returns:
        int64 [k] on ``device`` (default: CPU). Drawn on the CPU in O(k log k).
    """
    fn = "mask_indices"
    idx = _call(fn, _C.mask_indices, torch.device("cpu"), _int(fn, "p", p, 1),
                _int(fn, "k", k, 1), _seed(fn, seed))
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        # what grass.device.resolve_device says (it imports this module, so not used here)
        raise ValueError(f"mask_indices: device is {str(torch.device(device))!r}, but CUDA cannot be "
                         f"used here: grass.cuda_available() says {cuda_available()[1]!r}, and torch "
                         f"{torch.__version__} sees no CUDA device. Use device='cpu' (or leave device unset)")
    return idx if device is None else idx.to(device)


def mask_gather(x, idx, *, out=None):
    """Keeps the masked columns: ``out[b, j] = x[b, idx[j]]``.

    Args:
        x: [B, p] float32, float16, bfloat16 or float64.
        idx: int64 [k'] on x's device, entries in [0, p) (any order, repeats allowed).
        out: optional [B, k'] of x's dtype on x's device, written in place.

    Returns:
        [B, k'] with x's dtype.
    """
    fn = "mask_gather"
    xt, from_numpy = _tensor(fn, "x", x)
    it, _ = _tensor(fn, "idx", idx, ref_name="x", ref=xt)
    _device_indices(fn, "idx", it, xt.shape[1] if xt.dim() == 2 else None, xt.device)
    ot, _ = _tensor(fn, "out", out, ref_name="x", ref=xt, writable=True)
    y = _call(fn, _C.mask_gather, xt.device, xt, it, ot)
    return _result(y, out, from_numpy)


def masked_sjlt(x, idx, k: int, *, s: int = 1, seed: int = 0, out=None,
                deterministic: bool = False):
    """GraSS in one pass: ``y[b] = S (x[b, idx])`` without writing the masked vector.

    S is the SJLT of :func:`sjlt` with p' = len(idx) columns (column j takes x[:, idx[j]]),
    so the result equals ``sjlt(mask_gather(x, idx), k, s=s, seed=seed)``.

    Args:
        x: [B, p] float32, float16 or bfloat16.
        idx: int64 [k'] on x's device, entries in [0, p).
        k, s, seed, deterministic: as in :func:`sjlt`.
        out: optional [B, k] float32 on x's device, written in place.

    Returns:
        [B, k] float32.
    """
    fn = "masked_sjlt"
    k, s, seed = _int(fn, "k", k), _int(fn, "s", s), _seed(fn, seed)
    xt, from_numpy = _tensor(fn, "x", x)
    it, _ = _tensor(fn, "idx", idx, ref_name="x", ref=xt)
    _device_indices(fn, "idx", it, xt.shape[1] if xt.dim() == 2 else None, xt.device)
    ot, _ = _tensor(fn, "out", out, ref_name="x", ref=xt, writable=True)
    y = _call(fn, _C.masked_sjlt, xt.device, xt, it, ot, k, s, seed, bool(deterministic))
    return _result(y, out, from_numpy)


# ----------------------------------------------------------------------------- FJLT

def fjlt(x, k: int, *, seed: int = 0, out=None):
    """Subsampled randomized Hadamard transform: ``y = (1/sqrt(k)) R H D x~``, O(p log p).

    x~ is x zero-padded to P = the next power of two >= p, D the random signs and R the
    k sampled rows of the Walsh-Hadamard matrix H (both from :func:`fjlt_params`).
    E||y||^2 = ||x||^2.

    Args:
        x: [B, p] float32, float16 or bfloat16, p >= 1.
        k: 1 <= k <= P.
        out: optional [B, k] float32 on x's device, written in place.

    Returns:
        [B, k] float32.
    """
    fn = "fjlt"
    k, seed = _int(fn, "k", k), _seed(fn, seed)
    xt, from_numpy = _tensor(fn, "x", x)
    ot, _ = _tensor(fn, "out", out, ref_name="x", ref=xt, writable=True)
    y = _call(fn, _C.fjlt, xt.device, xt, ot, k, seed)
    return _result(y, out, from_numpy)


def fjlt_params(p: int, k: int, *, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The explicit parameters of :func:`fjlt`.

    Returns:
        signs int8 [p] in {+1, -1} (the diagonal D) and rows int64 [k], the sorted rows of
        H in [0, P) that R keeps, on the CPU.
    """
    fn = "fjlt_params"
    return _call(fn, _C.fjlt_params, torch.device("cpu"), _int(fn, "p", p, 1), _int(fn, "k", k),
                 _seed(fn, seed))


# ----------------------------------------------------------------------------- Kronecker

def kron(a, g, *, bias: bool = False, out=None):
    """A linear layer's per-sample weight gradient from its factors:
    ``out[b] = vec(sum_t g[b, t] (x) a~[b, t])``, laid out like ``Linear.weight``.

    ``out[b, o * d_in' + i] = sum_t g[b, t, o] * a~[b, t, i]`` with a~ = a (d_in' = d_in),
    or with ``bias=True`` a~ = [a, 1] (d_in' = d_in + 1; column d_in of each output row
    is the bias gradient).

    Args:
        a: layer inputs [B, T, d_in] or [B, d_in] (T = 1), float32/float16/bfloat16.
        g: output gradients [B, T, d_out] or [B, d_out], a's dtype and device.
        out: optional [B, d_out * d_in'] float32, written in place.

    Returns:
        [B, d_out * d_in'] float32.
    """
    fn = "kron"
    at, from_numpy = _tensor(fn, "a", a)
    gt, _ = _tensor(fn, "g", g)
    ot, _ = _tensor(fn, "out", out, ref_name="a", ref=at, writable=True)
    y = _call(fn, _C.kron, at.device, at, gt, ot, bool(bias))
    return _result(y, out, from_numpy)


def factgrass(a, g, idx_in, idx_out, k: int, *, bias: bool = False, s: int = 1, seed: int = 0,
              out=None, deterministic: bool = False):
    """Fused FactGraSS: mask both factors, rebuild their Kronecker product and SJLT it to
    k, without the [B, k_in * k_out] intermediate.

    Equal to ``sjlt(kron(a~[..., idx_in], g[..., idx_out]), k, s=s, seed=seed)`` where
    a~ is a with a ones column appended when ``bias`` (index d_in selects it).

    Args:
        a: [B, T, d_in] or [B, d_in]; g: [B, T, d_out] or [B, d_out] (as in :func:`kron`).
        idx_in: int64 [k_in] in [0, d_in + bias); idx_out: int64 [k_out] in [0, d_out);
            both on a's device.
        k, s, seed, deterministic: as in :func:`sjlt`.
        out: optional [B, k] float32, written in place.

    Returns:
        [B, k] float32.
    """
    fn = "factgrass"
    k, s, seed = _int(fn, "k", k), _int(fn, "s", s), _seed(fn, seed)
    at, from_numpy = _tensor(fn, "a", a)
    gt, _ = _tensor(fn, "g", g)
    ii, _ = _tensor(fn, "idx_in", idx_in, ref_name="a", ref=at)
    io, _ = _tensor(fn, "idx_out", idx_out, ref_name="a", ref=at)
    if at.dim() in (2, 3) and gt.dim() in (2, 3):
        _device_indices(fn, "idx_in", ii, at.shape[-1] + int(bool(bias)), at.device)
        _device_indices(fn, "idx_out", io, gt.shape[-1], at.device)
    ot, _ = _tensor(fn, "out", out, ref_name="a", ref=at, writable=True)
    y = _call(fn, _C.factgrass, at.device, at, gt, ii, io, ot, k, bool(bias), s, seed,
              bool(deterministic))
    return _result(y, out, from_numpy)


# ----------------------------------------------------------------------------- Fisher, Cholesky (CPU)

def _block_sizes(fn: str, block_sizes) -> torch.Tensor:
    """block_sizes as an int64 CPU tensor (the core checks that each is >= 1)."""
    if isinstance(block_sizes, (torch.Tensor, np.ndarray)):
        block_sizes = block_sizes.tolist()
    if isinstance(block_sizes, numbers.Integral) or not isinstance(block_sizes, Sequence):
        _fail(fn, f"block_sizes must be a sequence of positive integers, got {block_sizes!r}")
    if len(block_sizes) == 0:
        _fail(fn, "block_sizes must name at least one block, got []")
    return torch.tensor([_int(fn, f"block_sizes[{i}]", b, 1) for i, b in enumerate(block_sizes)],
                        dtype=torch.int64)


def fisher_accumulate(G, block_sizes, F=None):
    """Accumulates the block-diagonal Fisher: ``F_l += G_l^T G_l`` for every block.

    Columns of G split into consecutive blocks of ``block_sizes`` (one per layer). F is
    unnormalised (divide by N for the mean) and packed: block l is a row-major
    [k_l, k_l] float64 matrix at offset sum_{m<l} k_m^2. Call once per chunk of rows.

    Args:
        G: [N, K] float32 or float64 on the CPU (the C++ core), K = sum(block_sizes).
            The CUDA path of the iFVP is :mod:`grass.precondition.ifvp` (torch).
        block_sizes: sequence of L positive ints.
        F: optional packed float64 [sum k_l^2] on the CPU, accumulated in place;
            a new zero tensor when None.

    Returns:
        F.
    """
    fn = "fisher_accumulate"
    sizes = _block_sizes(fn, block_sizes)
    gt, from_numpy = _tensor(fn, "G", G)
    ft, _ = _tensor(fn, "F", F, ref_name="G", ref=gt, writable=True)
    result = _call(fn, _C.fisher_accumulate, gt.device, gt, sizes, ft)
    return _result(result, F, from_numpy)


def _damping(fn: str, damping, L: int) -> torch.Tensor:
    if isinstance(damping, (torch.Tensor, np.ndarray)) and damping.ndim == 0:
        damping = damping.item()
    if isinstance(damping, numbers.Real) and not isinstance(damping, bool):
        values = [float(damping)] * L
    else:
        if isinstance(damping, (torch.Tensor, np.ndarray)):
            damping = damping.tolist()
        if not isinstance(damping, Sequence) or len(damping) != L:
            _fail(fn, f"damping must be a number or a sequence of {L} numbers (one per block), "
                      f"got {damping!r}")
        values = [float(d) for d in damping]
    for i, d in enumerate(values):
        if not (d >= 0.0 and np.isfinite(d)):
            _fail(fn, f"damping must be finite and >= 0, got damping[{i}] = {d}")
    return torch.tensor(values, dtype=torch.float64)


def cholesky_factor(F, block_sizes, damping):
    """Factors every block in place: ``F_l + damping_l I = L_l L_l^T``.

    Only the lower triangle of each block is read (the Fisher is symmetric; the upper
    triangle may hold anything). Afterwards the lower triangle of each block holds L_l and
    its strict upper triangle is zero. A block that is not positive definite raises ValueError naming it (raise the
    damping) and leaves F unchanged, so the caller can retry with more damping.

    Args:
        F: packed float64 [sum k_l^2] on the CPU (from :func:`fisher_accumulate`); the
            C++ core factors it. CUDA: :mod:`grass.precondition.ifvp`.
        block_sizes: sequence of L positive ints.
        damping: a number, or L numbers (one per block), each finite and >= 0.

    Returns:
        F (now holding the factors).
    """
    fn = "cholesky_factor"
    sizes = _block_sizes(fn, block_sizes)
    damp = _damping(fn, damping, len(sizes))
    ft, _ = _tensor(fn, "F", F, writable=True)
    _call(fn, _C.cholesky_factor, torch.device("cpu"), ft, sizes, damp)
    return F


def cholesky_solve(L, block_sizes, V, *, out=None):
    """Solves every block: ``X[:, block l] = (L_l L_l^T)^{-1} V[:, block l]``.

    Args:
        L: packed float64 factors from :func:`cholesky_factor`, on the CPU.
        block_sizes: sequence of L positive ints.
        V: [M, K] float32 or float64 right-hand sides, K = sum(block_sizes); work is in
            float64, by the C++ core (CUDA: :mod:`grass.precondition.ifvp`).
        out: optional [M, K] of V's dtype written in place; may be V itself.

    Returns:
        [M, K] with V's dtype.
    """
    fn = "cholesky_solve"
    sizes = _block_sizes(fn, block_sizes)
    vt, from_numpy = _tensor(fn, "V", V)
    lt, _ = _tensor(fn, "L", L, ref_name="V", ref=vt)
    ot, _ = _tensor(fn, "out", out, ref_name="V", ref=vt, writable=True)
    X = _call(fn, _C.cholesky_solve, vt.device, lt, sizes, vt, ot)
    return _result(X, out, from_numpy)


# ----------------------------------------------------------------------------- build

def cuda_available() -> Tuple[bool, str]:
    """Whether grass can run its CUDA kernels here, and if not, why.

    Returns:
        (True, "") or (False, reason). Never raises; works without a GPU driver.
    """
    if not _CUDA_COMPILED:
        return False, _C.cuda_runtime_status()["reason"]
    status = _C.cuda_runtime_status()  # grass's own (statically linked) CUDA runtime
    torch_reason = "" if torch.cuda.is_available() else (
        f"torch {torch.__version__} cannot use CUDA here (a CPU-only build of torch, or no "
        f"device visible to it)")
    if not status["available"]:
        return False, status["reason"] + (f"; {torch_reason}" if torch_reason else "")
    if torch_reason:
        return False, torch_reason
    return True, ""


def build_info() -> dict:
    """What this build of grass contains: version, cuda_compiled, openmp_max_threads, simd,
    compiler, and whether CUDA can run now (cuda_available, cuda_reason)."""
    info = dict(_C.build_info())
    info["cuda_available"], info["cuda_reason"] = cuda_available()
    return info
