"""Thin torch ops over the native kernels of grass.

Every op takes torch tensors on the CPU or a CUDA device (numpy arrays are accepted too:
they are wrapped without a copy, and the result comes back as a numpy array), checks its
arguments with messages that name the argument, what was expected and what came, and
calls ``grass._C``, which exchanges the tensors zero-copy through DLPack.

Rules shared by all ops:

* Inputs are detached (tensors that require grad are accepted; no gradient flows back).
* Inputs must be C-contiguous: a strided view is an error, never silently copied
  (call ``.contiguous()``).
* Results are float32 unless the op says otherwise. ``out=`` must be a contiguous tensor
  of the result's dtype and shape on the input's device; it is written in place and
  returned (never replaced by a new tensor).
* Index tensors (masks, CSR indices) live on the input's device and are range-checked
  before the kernel runs (on CUDA with torch, on the device).
* CUDA work runs on ``torch.cuda.current_stream()`` of the input's device.

Shapes use B for the batch, p for the input dimension and k for the sketch size.
"""
from __future__ import annotations

import numbers
import warnings
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from . import _C

__all__ = [
    "sjlt", "sjlt_transpose", "sjlt_codes", "mask_indices", "mask_gather", "masked_sjlt",
    "fjlt", "fjlt_params", "kron", "factgrass", "fisher_accumulate", "cholesky_factor",
    "cholesky_solve", "build_info", "cuda_available",
]

_MAX_K = 2**31 - 1  # SJLT buckets are 32-bit internally
_MAX_SEED = 2**64
_SKETCH_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_GATHER_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_FISHER_DTYPES = (torch.float32, torch.float64)
_CUDA_COMPILED = bool(_C.build_info()["cuda_compiled"])


# ----------------------------------------------------------------------------- checks

def _fail(fn: str, message: str):
    raise ValueError(f"grass.ops.{fn}: {message}")


def _dtype_names(dtypes) -> str:
    names = [str(d).replace("torch.", "") for d in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _int(fn: str, name: str, value, lo: int, hi: Optional[int] = None, hint: str = "") -> int:
    """value as an int in [lo, hi] (hi inclusive, None for unbounded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail(fn, f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        want = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        _fail(fn, f"{name} must be {want}{hint}, got {value}")
    return value


def _seed(fn: str, seed) -> int:
    return _int(fn, "seed", seed, 0, _MAX_SEED - 1)


def _sjlt_ks(fn: str, k, s) -> Tuple[int, int]:
    k = _int(fn, "k", k, 1, _MAX_K)
    s = _int(fn, "s", s, 1, k, hint=" (1 <= s <= k)")
    return k, s


class _Arg:
    """A tensor argument after conversion: the tensor and whether it came from numpy."""

    __slots__ = ("tensor", "from_numpy")

    def __init__(self, tensor: torch.Tensor, from_numpy: bool):
        self.tensor = tensor
        self.from_numpy = from_numpy


def _as_tensor(fn: str, name: str, value, *, writable: bool = False) -> _Arg:
    """A torch view of value (a tensor, or a numpy array wrapped without a copy)."""
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            if writable:
                _fail(fn, f"{name} must not require grad (it is written in place)")
            value = value.detach()
        return _Arg(value, False)
    if isinstance(value, np.ndarray):
        if value.flags.writeable:
            return _Arg(torch.from_numpy(value), True)
        if writable:
            _fail(fn, f"{name} is a read-only numpy array, but it is written in place")
        with warnings.catch_warnings():  # read-only input: we never write through it
            warnings.simplefilter("ignore", UserWarning)
            return _Arg(torch.from_numpy(value), True)
    _fail(fn, f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _check_ndim(fn: str, name: str, t: torch.Tensor, ndims, layout: str):
    ndims = (ndims,) if isinstance(ndims, int) else tuple(ndims)
    if t.dim() not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        _fail(fn, f"{name} must be a {want} tensor {layout}, got shape {_shape(t)}")


def _check_dtype(fn: str, name: str, t: torch.Tensor, dtypes, hint: str = ""):
    if t.dtype not in dtypes:
        _fail(fn, f"{name} must be {_dtype_names(dtypes)}, got {str(t.dtype).replace('torch.', '')}{hint}")


def _check_device(fn: str, name: str, t: torch.Tensor):
    if t.device.type not in ("cpu", "cuda"):
        _fail(fn, f"{name} must be a CPU or CUDA tensor, got device {t.device}")
    if t.device.type == "cuda" and not _CUDA_COMPILED:
        _fail(fn, f"{name} is a CUDA tensor, but {cuda_available()[1]}")


def _check_same_device(fn: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor):
    if t.device != ref.device:
        _fail(fn, f"{name} must be on {ref_name}'s device {ref.device}, got {t.device}")


def _check_contiguous(fn: str, name: str, t: torch.Tensor, written: bool = False):
    if not t.is_contiguous():
        hint = ("it is written in place, so pass a contiguous tensor" if written
                else f"call {name}.contiguous() first")
        _fail(fn, f"{name} must be contiguous (C order), got shape {_shape(t)} with strides "
                  f"{tuple(t.stride())}; {hint}")


def _input(fn: str, name: str, value, ndims, layout: str, dtypes, dtype_hint: str = "") -> _Arg:
    """Converts and checks one input tensor: ndim, dtype, device, contiguity."""
    arg = _as_tensor(fn, name, value)
    t = arg.tensor
    if t.layout != torch.strided:
        _fail(fn, f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    _check_ndim(fn, name, t, ndims, layout)
    _check_dtype(fn, name, t, dtypes, dtype_hint)
    _check_device(fn, name, t)
    _check_contiguous(fn, name, t)
    return arg


def _index(fn: str, name: str, value, n: int, ref_name: str, ref: torch.Tensor) -> torch.Tensor:
    """A 1-D int64 index tensor on ref's device with every entry in [0, n)."""
    arg = _as_tensor(fn, name, value)
    idx = arg.tensor
    _check_ndim(fn, name, idx, 1, "[k']")
    _check_dtype(fn, name, idx, (torch.int64,), hint=f" (convert with {name}.long())")
    _check_same_device(fn, name, idx, ref_name, ref)
    _check_contiguous(fn, name, idx)
    _check_range(fn, name, idx, n)
    return idx


def _check_range(fn: str, name: str, idx: torch.Tensor, n: int):
    """Every entry of idx in [0, n); on CUDA computed on the device (one sync)."""
    if idx.numel() == 0:
        return
    bad = (idx < 0) | (idx >= n)
    if bool(bad.any()):
        position = int(bad.nonzero()[0, 0])
        _fail(fn, f"{name} must hold indices in [0, {n}), got {name}[{position}] = "
                  f"{int(idx[position])}")


def _output(fn: str, out, shape: Tuple[int, ...], dtype: torch.dtype, ref_name: str,
            ref: torch.Tensor) -> _Arg:
    """A new result tensor, or the checked out= argument (written in place)."""
    if out is None:
        return _Arg(torch.empty(shape, dtype=dtype, device=ref.device), False)
    arg = _as_tensor(fn, "out", out, writable=True)
    t = arg.tensor
    if tuple(t.shape) != tuple(shape):
        _fail(fn, f"out must have shape {tuple(shape)}, got {_shape(t)}")
    _check_dtype(fn, "out", t, (dtype,))
    _check_same_device(fn, "out", t, ref_name, ref)
    _check_contiguous(fn, "out", t, written=True)
    return arg


def _result(out_arg: _Arg, out, input_from_numpy: bool):
    """What an op returns: the caller's out= object itself, else a tensor (or numpy array
    when the input was one)."""
    if out is not None:
        return out
    return out_arg.tensor.numpy() if input_from_numpy else out_arg.tensor


def _launch(device: torch.device, kernel, *args):
    """Calls a device kernel with the stream argument last: torch's current stream of
    device (made current for the call) on CUDA, 0 on the CPU."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            return kernel(*args, torch.cuda.current_stream(device).cuda_stream)
    return kernel(*args, 0)


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
    k, s = _sjlt_ks(fn, k, s)
    seed = _seed(fn, seed)
    if isinstance(x, torch.Tensor) and x.layout == torch.sparse_csr:
        return _sjlt_csr(fn, x, k, s, seed, out, deterministic)
    if isinstance(x, torch.Tensor) and x.layout != torch.strided:
        _fail(fn, f"x must be a dense tensor or a torch.sparse_csr_tensor, got layout {x.layout}"
                  f" (convert with x.to_sparse_csr())")
    xa = _input(fn, "x", x, 2, "[B, p]", _SKETCH_DTYPES, " (convert with x.float())")
    xt = xa.tensor
    oa = _output(fn, out, (xt.shape[0], k), torch.float32, "x", xt)
    if oa.tensor.numel() > 0:
        if xt.shape[1] == 0:
            oa.tensor.zero_()
        else:
            _launch(xt.device, _C.sjlt, xt, oa.tensor, k, s, seed, bool(deterministic))
    return _result(oa, out, xa.from_numpy)


def _sjlt_csr(fn, x: torch.Tensor, k, s, seed, out, deterministic):
    x = x.detach()
    if x.dim() != 2 or x.values().dim() != 1:
        _fail(fn, f"a sparse CSR x must be 2-D [B, p] with scalar values, got shape "
                  f"{_shape(x)} with values of shape {_shape(x.values())}")
    _check_device(fn, "x", x)
    values = x.values()
    _check_dtype(fn, "x.values()", values, _SKETCH_DTYPES, " (convert with x.float())")
    _check_contiguous(fn, "x.values()", values)
    indptr = x.crow_indices().to(torch.int64).contiguous()
    indices = x.col_indices().to(torch.int64).contiguous()
    B, p = x.shape
    nnz = values.shape[0]
    # On the CPU the C++ core validates the CSR structure (indptr[0] == 0, non-decreasing,
    # column indices in [0, p)) in its O(nnz) pass; the binding checks indptr[B] == nnz.
    # On CUDA check it all here, on the device, so that no kernel reads out of bounds.
    if x.device.type == "cuda" and B > 0:
        steps = indptr[1:] - indptr[:-1]
        bad = (indptr[0] != 0) | (indptr[-1] != nnz) | (steps < 0).any()
        if bool(bad):
            _fail(fn, f"x has an invalid CSR structure: crow_indices must start at 0, be "
                      f"non-decreasing and end at nnz = {nnz}")
        _check_range(fn, "x.col_indices()", indices, p)
    oa = _output(fn, out, (B, k), torch.float32, "x", x)
    if oa.tensor.numel() > 0:
        _launch(x.device, _C.sjlt_csr, indptr, indices, values, oa.tensor, p, k, s, seed,
                bool(deterministic))
    return _result(oa, out, False)


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
    ya = _input(fn, "y", y, 2, "[B, k]", (torch.float32,), " (convert with y.float())")
    yt = ya.tensor
    k = yt.shape[1]
    if k < 1:
        _fail(fn, f"y must have k >= 1 columns, got shape {_shape(yt)}")
    k, s = _sjlt_ks(fn, k, s)
    p = _int(fn, "p", p, 0)
    seed = _seed(fn, seed)
    oa = _output(fn, out, (yt.shape[0], p), torch.float32, "y", yt)
    if oa.tensor.numel() > 0:
        _launch(yt.device, _C.sjlt_transpose, yt, oa.tensor, s, seed)
    return _result(oa, out, ya.from_numpy)


def sjlt_codes(p: int, k: int, *, s: int = 1, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The explicit S of :func:`sjlt`: for column j and replica r, entry
    ``S[bucket[j, r], j] = sign[j, r] / sqrt(s)``.

    Returns:
        bucket int64 [p, s] in [0, k) and sign int8 [p, s] in {+1, -1}, on the CPU.
        Replica r's bucket lies in [r*k//s, (r+1)*k//s), so a column's buckets are distinct.
    """
    fn = "sjlt_codes"
    k, s = _sjlt_ks(fn, k, s)
    p = _int(fn, "p", p, 0)
    seed = _seed(fn, seed)
    bucket = torch.empty((p, s), dtype=torch.int64)
    sign = torch.empty((p, s), dtype=torch.int8)
    if p > 0:
        _C.sjlt_codes(0, bucket, sign, k, s, seed)
    return bucket, sign


# ----------------------------------------------------------------------------- masks

def mask_indices(p: int, k: int, *, seed: int = 0, device=None) -> torch.Tensor:
    """A random mask: k distinct indices of [0, p), sorted ascending, drawn from seed.

    Returns:
        int64 [k] on ``device`` (default: CPU). Drawn on the CPU in O(k log k).
    """
    fn = "mask_indices"
    p = _int(fn, "p", p, 1)
    k = _int(fn, "k", k, 1, p, hint=f" (1 <= k <= p = {p})")
    seed = _seed(fn, seed)
    idx = torch.empty(k, dtype=torch.int64)
    _C.mask_indices(p, idx, seed)
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
    xa = _input(fn, "x", x, 2, "[B, p]", _GATHER_DTYPES)
    xt = xa.tensor
    it = _index(fn, "idx", idx, xt.shape[1], "x", xt)
    oa = _output(fn, out, (xt.shape[0], it.shape[0]), xt.dtype, "x", xt)
    if oa.tensor.numel() > 0:
        _launch(xt.device, _C.mask_gather, xt, it, oa.tensor)
    return _result(oa, out, xa.from_numpy)


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
    k, s = _sjlt_ks(fn, k, s)
    seed = _seed(fn, seed)
    xa = _input(fn, "x", x, 2, "[B, p]", _SKETCH_DTYPES, " (convert with x.float())")
    xt = xa.tensor
    it = _index(fn, "idx", idx, xt.shape[1], "x", xt)
    oa = _output(fn, out, (xt.shape[0], k), torch.float32, "x", xt)
    if oa.tensor.numel() > 0:
        if it.shape[0] == 0:
            oa.tensor.zero_()
        else:
            _launch(xt.device, _C.masked_sjlt, xt, it, oa.tensor, k, s, seed, bool(deterministic))
    return _result(oa, out, xa.from_numpy)


# ----------------------------------------------------------------------------- FJLT

def _fjlt_k(fn: str, p: int, k) -> Tuple[int, int]:
    P = _C.fjlt_padded_size(p)
    k = _int(fn, "k", k, 1, P, hint=f" (P = {P}, the next power of two >= p = {p})")
    return k, P


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
    seed = _seed(fn, seed)
    xa = _input(fn, "x", x, 2, "[B, p]", _SKETCH_DTYPES, " (convert with x.float())")
    xt = xa.tensor
    if xt.shape[1] < 1:
        _fail(fn, f"x must have p >= 1 columns, got shape {_shape(xt)}")
    k, _ = _fjlt_k(fn, xt.shape[1], k)
    oa = _output(fn, out, (xt.shape[0], k), torch.float32, "x", xt)
    if oa.tensor.numel() > 0:
        _launch(xt.device, _C.fjlt, xt, oa.tensor, seed)
    return _result(oa, out, xa.from_numpy)


def fjlt_params(p: int, k: int, *, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The explicit parameters of :func:`fjlt`.

    Returns:
        signs int8 [p] in {+1, -1} (the diagonal D) and rows int64 [k], the sorted rows of
        H in [0, P) that R keeps, on the CPU.
    """
    fn = "fjlt_params"
    p = _int(fn, "p", p, 1)
    k, _ = _fjlt_k(fn, p, k)
    seed = _seed(fn, seed)
    signs = torch.empty(p, dtype=torch.int8)
    rows = torch.empty(k, dtype=torch.int64)
    _C.fjlt_signs(p, seed, signs)
    _C.fjlt_rows(p, seed, rows)
    return signs, rows


# ----------------------------------------------------------------------------- Kronecker

def _factors(fn: str, a, g):
    """a, g as [B, T, d] tensors (2-D [B, d] means T = 1) with one dtype and device."""
    aa = _input(fn, "a", a, (2, 3), "[B, T, d_in] or [B, d_in]", _SKETCH_DTYPES,
                " (convert with a.float())")
    ga = _input(fn, "g", g, (2, 3), "[B, T, d_out] or [B, d_out]", _SKETCH_DTYPES,
                " (convert with g.float())")
    at, gt = aa.tensor, ga.tensor
    if at.dim() != gt.dim():
        _fail(fn, f"a and g must both be 3-D [B, T, d] or both 2-D [B, d], got shapes "
                  f"{_shape(at)} and {_shape(gt)}")
    if gt.dtype != at.dtype:
        _fail(fn, f"g must have a's dtype {str(at.dtype).replace('torch.', '')}, got "
                  f"{str(gt.dtype).replace('torch.', '')}")
    _check_same_device(fn, "g", gt, "a", at)
    if at.dim() == 2:
        at, gt = at.unsqueeze(1), gt.unsqueeze(1)
    if gt.shape[:2] != at.shape[:2]:
        _fail(fn, f"g must match a in B and T, got a {_shape(at)} and g {_shape(gt)}")
    if at.shape[2] < 1 or gt.shape[2] < 1:
        _fail(fn, f"a and g must have d_in >= 1 and d_out >= 1 features, got a {_shape(at)} "
                  f"and g {_shape(gt)}")
    return at, gt, aa.from_numpy


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
    at, gt, from_numpy = _factors(fn, a, g)
    B, T, d_in = at.shape
    d_out = gt.shape[2]
    oa = _output(fn, out, (B, d_out * (d_in + int(bool(bias)))), torch.float32, "a", at)
    if oa.tensor.numel() > 0:
        if T == 0:
            oa.tensor.zero_()
        else:
            _launch(at.device, _C.kron, at, gt, oa.tensor, bool(bias))
    return _result(oa, out, from_numpy)


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
    k, s = _sjlt_ks(fn, k, s)
    seed = _seed(fn, seed)
    at, gt, from_numpy = _factors(fn, a, g)
    B, T, d_in = at.shape
    ii = _index(fn, "idx_in", idx_in, d_in + int(bool(bias)), "a", at)
    io = _index(fn, "idx_out", idx_out, gt.shape[2], "a", at)
    oa = _output(fn, out, (B, k), torch.float32, "a", at)
    if oa.tensor.numel() > 0:
        if T == 0 or ii.numel() == 0 or io.numel() == 0:
            oa.tensor.zero_()
        else:
            _launch(at.device, _C.factgrass, at, gt, ii, io, oa.tensor, k, bool(bias), s, seed,
                    bool(deterministic))
    return _result(oa, out, from_numpy)


# ----------------------------------------------------------------------------- Fisher, Cholesky

def _block_sizes(fn: str, block_sizes) -> Tuple[list, torch.Tensor]:
    if isinstance(block_sizes, (torch.Tensor, np.ndarray)):
        block_sizes = block_sizes.tolist()
    if isinstance(block_sizes, numbers.Integral) or not isinstance(block_sizes, Sequence):
        _fail(fn, f"block_sizes must be a sequence of positive integers, got {block_sizes!r}")
    if len(block_sizes) == 0:
        _fail(fn, "block_sizes must name at least one block, got []")
    sizes = [_int(fn, f"block_sizes[{i}]", b, 1) for i, b in enumerate(block_sizes)]
    return sizes, torch.tensor(sizes, dtype=torch.int64)


def _packed(fn: str, name: str, F, sizes, ref_name: Optional[str] = None,
            ref: Optional[torch.Tensor] = None, writable: bool = True) -> _Arg:
    """A packed float64 [sum k_l^2] tensor (written in place unless writable=False)."""
    fa = _as_tensor(fn, name, F, writable=writable)
    ft = fa.tensor
    packed = sum(b * b for b in sizes)
    if tuple(ft.shape) != (packed,):
        _fail(fn, f"{name} must be packed float64 of shape ({packed},) = (sum(block_sizes**2),), "
                  f"got shape {_shape(ft)}")
    _check_dtype(fn, name, ft, (torch.float64,))
    _check_device(fn, name, ft)
    if ref is not None:
        _check_same_device(fn, name, ft, ref_name, ref)
    _check_contiguous(fn, name, ft, written=writable)
    return fa


def _blocks(F: torch.Tensor, sizes):
    """Views [k_l, k_l] of each block of a packed tensor."""
    views, offset = [], 0
    for b in sizes:
        views.append(F[offset:offset + b * b].view(b, b))
        offset += b * b
    return views


def fisher_accumulate(G, block_sizes, F=None):
    """Accumulates the block-diagonal Fisher: ``F_l += G_l^T G_l`` for every block.

    Columns of G split into consecutive blocks of ``block_sizes`` (one per layer). F is
    unnormalised (divide by N for the mean) and packed: block l is a row-major
    [k_l, k_l] float64 matrix at offset sum_{m<l} k_m^2. Call once per chunk of rows.

    Args:
        G: [N, K] float32 or float64, K = sum(block_sizes). CPU: the C++ core;
            CUDA: torch (float64 matmul), since this toolkit ships no cuBLAS/cuSOLVER.
        block_sizes: sequence of L positive ints.
        F: optional packed float64 [sum k_l^2] on G's device, accumulated in place;
            a new zero tensor when None.

    Returns:
        F.
    """
    fn = "fisher_accumulate"
    sizes, sizes_t = _block_sizes(fn, block_sizes)
    ga = _input(fn, "G", G, 2, "[N, K]", _FISHER_DTYPES)
    gt = ga.tensor
    K = sum(sizes)
    if gt.shape[1] != K:
        _fail(fn, f"G must have K = sum(block_sizes) = {K} columns, got shape {_shape(gt)}")
    if F is None:
        F_out = torch.zeros(sum(b * b for b in sizes), dtype=torch.float64, device=gt.device)
        fa = _Arg(F_out, ga.from_numpy)
    else:
        fa = _packed(fn, "F", F, sizes, "G", gt)
    ft = fa.tensor
    if gt.shape[0] > 0:
        if gt.device.type == "cpu":
            _C.fisher_accumulate(gt, sizes_t, ft)
        else:
            offset = 0
            for b, Fl in zip(sizes, _blocks(ft, sizes)):
                Gl = gt[:, offset:offset + b].to(torch.float64)
                Fl.addmm_(Gl.T, Gl)
                offset += b
    if F is not None:
        return F
    return ft.numpy() if fa.from_numpy else ft


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

    Afterwards the lower triangle of each block holds L_l and its strict upper triangle
    is zero. A block that is not positive definite raises ValueError naming it (raise the
    damping) and leaves F unchanged, so the caller can retry with more damping.

    Args:
        F: packed float64 [sum k_l^2] (from :func:`fisher_accumulate`), CPU (C++ core) or
            CUDA (``torch.linalg.cholesky_ex``).
        block_sizes: sequence of L positive ints.
        damping: a number, or L numbers (one per block), each finite and >= 0.

    Returns:
        F (now holding the factors).
    """
    fn = "cholesky_factor"
    sizes, sizes_t = _block_sizes(fn, block_sizes)
    fa = _packed(fn, "F", F, sizes)
    ft = fa.tensor
    damp = _damping(fn, damping, len(sizes))
    if ft.device.type == "cpu":
        _C.cholesky_factor(ft, sizes_t, damp)
    else:
        # All factors first, then the copy: a failure leaves F as it came (as on the CPU).
        factors = []
        for l, (b, Fl) in enumerate(zip(sizes, _blocks(ft, sizes))):
            A = Fl + float(damp[l]) * torch.eye(b, dtype=torch.float64, device=ft.device)
            factor, info = torch.linalg.cholesky_ex(A)
            if int(info) != 0:
                _fail(fn, f"block {l} (size {b}) is not positive definite: leading minor "
                          f"{int(info)} fails after damping {float(damp[l])}; raise damping "
                          f"(F was left unchanged)")
            factors.append(factor)
        for Fl, factor in zip(_blocks(ft, sizes), factors):
            Fl.copy_(factor)
    return F


def cholesky_solve(L, block_sizes, V, *, out=None):
    """Solves every block: ``X[:, block l] = (L_l L_l^T)^{-1} V[:, block l]``.

    Args:
        L: packed float64 factors from :func:`cholesky_factor`, on V's device.
        block_sizes: sequence of L positive ints.
        V: [M, K] float32 or float64 right-hand sides, K = sum(block_sizes); work is in
            float64. CPU: the C++ core; CUDA: ``torch.cholesky_solve``.
        out: optional [M, K] of V's dtype on V's device, written in place; may be V itself.

    Returns:
        [M, K] with V's dtype.
    """
    fn = "cholesky_solve"
    sizes, sizes_t = _block_sizes(fn, block_sizes)
    va = _input(fn, "V", V, 2, "[M, K]", _FISHER_DTYPES)
    vt = va.tensor
    La = _packed(fn, "L", L, sizes, "V", vt, writable=False)
    K = sum(sizes)
    if vt.shape[1] != K:
        _fail(fn, f"V must have K = sum(block_sizes) = {K} columns, got shape {_shape(vt)}")
    oa = _output(fn, out, tuple(vt.shape), vt.dtype, "V", vt)
    ot = oa.tensor
    if vt.shape[0] > 0:
        if vt.device.type == "cpu":
            _C.cholesky_solve(La.tensor, sizes_t, vt, ot)
        else:
            offset = 0
            for b, Ll in zip(sizes, _blocks(La.tensor, sizes)):
                Vl = vt[:, offset:offset + b].to(torch.float64)
                ot[:, offset:offset + b] = torch.cholesky_solve(Vl.T, Ll).T.to(ot.dtype)
                offset += b
    return _result(oa, out, va.from_numpy)


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
