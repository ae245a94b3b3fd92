"""Plain reference twins of every kernel in :mod:`grass.ops`, for tests and for readers.

Each function ``name`` here computes what ``grass.ops.name`` computes, the slow and
obvious way, in float64, from explicit matrices:

* the SJLT's S is assembled as a [k, p] matrix from (bucket, sign) pairs that this module
  recomputes itself: the counter-based hash of ``cpp/include/grass/hash.h`` (splitmix64)
  is re-implemented here in numpy, so the codes are checked, not trusted;
* masks are Floyd's algorithm on the same hash, re-implemented in Python, and gathers
  are plain indexing;
* the FJLT is an explicit product with the sign vector and the sampled rows of the
  Walsh-Hadamard matrix (Sylvester order, H[i, j] = (-1)^popcount(i & j));
* the Kronecker reconstruction is an ``einsum``;
* the Fisher, Cholesky and solves use ``torch.linalg`` in float64 on unpacked blocks.

Nothing here calls ``grass._C``. Results are float64 tensors on the input's device.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "mix64", "stream_key", "draw", "sjlt_codes", "sjlt_matrix", "sjlt", "sjlt_transpose",
    "mask_indices", "mask_gather", "masked_sjlt", "fjlt_padded_size", "fjlt_params",
    "hadamard_rows", "fjlt", "kron", "factgrass", "unpack_blocks", "pack_blocks",
    "fisher_accumulate", "cholesky_factor", "cholesky_solve",
]

# ----------------------------------------------------------------------------- the hash
# Mirrors cpp/include/grass/hash.h. Python ints (masked to 64 bits) for scalars, numpy
# uint64 arrays (which wrap silently) for vectors of counters.

_M64 = (1 << 64) - 1
_C1, _C2, _GOLDEN = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0x9E3779B97F4A7C15
STREAM_SJLT = 0x534A4C5400000001
STREAM_MASK = 0x4D41534B00000002
STREAM_FJLT_SIGN = 0x464A4C5400000003
STREAM_FJLT_ROWS = 0x464A4C5400000004


def mix64(z):
    """splitmix64's finaliser (hash.h ``mix64``) on a Python int or a uint64 array."""
    if isinstance(z, np.ndarray):
        z = z.astype(np.uint64)
        with np.errstate(over="ignore"):
            z = (z ^ (z >> np.uint64(30))) * np.uint64(_C1)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(_C2)
            return z ^ (z >> np.uint64(31))
    z &= _M64
    z = ((z ^ (z >> 30)) * _C1) & _M64
    z = ((z ^ (z >> 27)) * _C2) & _M64
    return z ^ (z >> 31)


def stream_key(seed: int, stream: int) -> int:
    """hash.h ``stream_key``: the key of one stream of one seed."""
    return mix64(mix64(seed) ^ stream)


def draw(key: int, counter):
    """hash.h ``draw``: the counter-th 64-bit draw of a stream (int or uint64 array)."""
    if isinstance(counter, np.ndarray):
        c = counter.astype(np.uint64)
        with np.errstate(over="ignore"):
            return mix64(np.uint64(key) + (c + np.uint64(1)) * np.uint64(_GOLDEN))
    return mix64((key + (counter + 1) * _GOLDEN) & _M64)


# ----------------------------------------------------------------------------- SJLT

def sjlt_codes(p: int, k: int, *, s: int = 1, seed: int = 0,
               columns=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Twin of ``grass.ops.sjlt_codes`` (``SjltHash::code`` in hash.h), in numpy.

    Replica r of column j draws h = draw(key, j*s + r); its bucket is
    r*k//s + ((h >> 32) * width) >> 32 with width the size of block r, its sign negative
    when h is odd.

    Args:
        columns: optional column indices (any in [0, 2^63)) to compute instead of 0..p-1,
            e.g. a few columns of a matrix too wide to list.

    Returns:
        bucket int64 [p, s], sign int8 [p, s] (CPU); [len(columns), s] with ``columns``.
    """
    key = stream_key(seed, STREAM_SJLT)
    if columns is None:
        columns = np.arange(p, dtype=np.uint64)
    j = np.asarray(columns, dtype=np.int64).astype(np.uint64)[:, None]
    r = np.arange(s, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        h = draw(key, j * np.uint64(s) + r)  # [p, s]
    lo = (np.arange(s, dtype=np.int64) * k) // s
    width = (np.arange(1, s + 1, dtype=np.int64) * k) // s - lo
    offset = ((h >> np.uint64(32)) * width.astype(np.uint64)[None, :]) >> np.uint64(32)
    bucket = lo[None, :] + offset.astype(np.int64)
    sign = np.where((h & np.uint64(1)) == 1, -1, 1).astype(np.int8)
    return torch.from_numpy(bucket), torch.from_numpy(sign)


def sjlt_matrix(p: int, k: int, *, s: int = 1, seed: int = 0, codes=None, device=None,
                sparse: bool = False) -> torch.Tensor:
    """The explicit SJLT matrix S [k, p] in float64: S[bucket[j, r], j] = sign[j, r] / sqrt(s).

    Args:
        codes: optional (bucket, sign) to build from; by default :func:`sjlt_codes`.
        sparse: return a sparse COO tensor instead of a dense one.
    """
    bucket, sign = codes if codes is not None else sjlt_codes(p, k, s=s, seed=seed)
    bucket, sign = bucket.cpu(), sign.cpu()
    rows = bucket.reshape(-1)
    cols = torch.arange(p, dtype=torch.int64).repeat_interleave(s)
    values = sign.reshape(-1).to(torch.float64) / math.sqrt(s)
    if sparse:
        S = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (k, p),
                                    check_invariants=True).coalesce()
    else:
        S = torch.zeros(k, p, dtype=torch.float64).index_put_((rows, cols), values, accumulate=True)
    return S.to(device) if device is not None else S


def _dense64(x) -> torch.Tensor:
    """x (dense or sparse CSR) as a dense float64 tensor on its device."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    x = x.detach()
    if x.layout != torch.strided:
        x = x.to_dense()
    return x.to(torch.float64)


def sjlt(x, k: int, *, s: int = 1, seed: int = 0) -> torch.Tensor:
    """Twin of ``grass.ops.sjlt`` (``sjlt_cpu`` / ``sjlt_csr_cpu`` / ``sjlt_cuda``):
    x [B, p] (dense or CSR) -> x S^T [B, k] with the explicit S."""
    x = _dense64(x)
    S = sjlt_matrix(x.shape[1], k, s=s, seed=seed, device=x.device)
    return x @ S.T


def sjlt_transpose(y, p: int, *, s: int = 1, seed: int = 0) -> torch.Tensor:
    """Twin of ``grass.ops.sjlt_transpose`` (``sjlt_transpose_cpu``): y [B, k] -> y S [B, p]."""
    y = _dense64(y)
    S = sjlt_matrix(p, y.shape[1], s=s, seed=seed, device=y.device)
    return y @ S


# ----------------------------------------------------------------------------- masks

def mask_indices(p: int, k: int, *, seed: int = 0) -> torch.Tensor:
    """Twin of ``grass.ops.mask_indices`` (``random_mask_indices`` in mask.cpp).

    Floyd's algorithm on the mask stream, key = stream_key(seed, STREAM_MASK): for i < k,
    j = p - k + i, draw t = floor(draw(key, i) * (j + 1) / 2^64); keep t unless taken,
    else j. Sorted.

    Returns:
        int64 [k] (CPU).
    """
    if not 1 <= k <= p:
        raise ValueError(f"k must be in [1, p = {p}], got {k}")
    key = stream_key(seed, STREAM_MASK)
    bits = draw(key, np.arange(k, dtype=np.uint64))
    taken = set()
    for i in range(k):
        j = p - k + i
        t = (int(bits[i]) * (j + 1)) >> 64
        pick = t if t not in taken else j
        taken.add(pick)
    return torch.tensor(sorted(taken), dtype=torch.int64)


def mask_gather(x, idx) -> torch.Tensor:
    """Twin of ``grass.ops.mask_gather`` (``mask_gather_cpu``): x[:, idx], keeping x's dtype."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return x.detach()[:, torch.as_tensor(idx, device=x.device)]


def masked_sjlt(x, idx, k: int, *, s: int = 1, seed: int = 0) -> torch.Tensor:
    """Twin of ``grass.ops.masked_sjlt`` (``masked_sjlt_cpu``): x[:, idx] S'^T with S' the
    explicit SJLT of len(idx) columns."""
    return sjlt(_dense64(x)[:, torch.as_tensor(idx)], k, s=s, seed=seed)


# ----------------------------------------------------------------------------- FJLT

def fjlt_padded_size(p: int) -> int:
    """The next power of two >= p (``fjlt_padded_size``)."""
    P = 1
    while P < p:
        P *= 2
    return P


def fjlt_params(p: int, k: int, *, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Twin of ``grass.ops.fjlt_params`` (``fjlt_signs`` / ``fjlt_rows`` in fjlt.cpp).

    Returns:
        signs int8 [p]: -1 where draw(key_sign, j) is odd; rows int64 [k]: the random mask
        of k out of P drawn with seed stream_key(seed, STREAM_FJLT_ROWS).
    """
    h = draw(stream_key(seed, STREAM_FJLT_SIGN), np.arange(p, dtype=np.uint64))
    signs = torch.from_numpy(np.where((h & np.uint64(1)) == 1, -1, 1).astype(np.int8))
    rows = mask_indices(fjlt_padded_size(p), k, seed=stream_key(seed, STREAM_FJLT_ROWS))
    return signs, rows


def hadamard_rows(rows, P: int, *, device=None) -> torch.Tensor:
    """Rows of the unnormalised P x P Walsh-Hadamard matrix in Sylvester (natural) order,
    H[i, j] = (-1)^popcount(i & j), as float64 [len(rows), P]."""
    i = np.asarray(torch.as_tensor(rows).cpu(), dtype=np.int64)[:, None]
    j = np.arange(P, dtype=np.int64)[None, :]
    v = i & j
    parity = np.zeros_like(v)
    while np.any(v):
        parity ^= v & 1
        v = v >> 1
    H = torch.from_numpy(1.0 - 2.0 * parity.astype(np.float64))
    return H.to(device) if device is not None else H


def fjlt(x, k: int, *, seed: int = 0, params=None) -> torch.Tensor:
    """Twin of ``grass.ops.fjlt`` (``fjlt_cpu`` / ``fjlt_cuda``): (1/sqrt(k)) R H D x~ with
    the explicit sign vector and sampled Hadamard rows.

    Args:
        params: optional (signs, rows) to use; by default :func:`fjlt_params`.
    """
    x = _dense64(x)
    p = x.shape[1]
    P = fjlt_padded_size(p)
    signs, rows = params if params is not None else fjlt_params(p, k, seed=seed)
    H = hadamard_rows(rows, P, device=x.device)[:, :p]  # the padding columns meet zeros
    D = signs.to(device=x.device, dtype=torch.float64)
    return (x * D) @ H.T / math.sqrt(k)


# ----------------------------------------------------------------------------- Kronecker

def _factors64(a, g, bias: bool):
    a, g = _dense64(a), _dense64(g)
    if a.dim() == 2:
        a, g = a[:, None, :], g[:, None, :]
    if bias:
        a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
    return a, g


def kron(a, g, *, bias: bool = False) -> torch.Tensor:
    """Twin of ``grass.ops.kron`` (``kron_cpu`` / ``kron_cuda``):
    out[b, o * d_in' + i] = sum_t g[b, t, o] * a~[b, t, i], a~ = [a, 1] with bias."""
    a, g = _factors64(a, g, bias)
    return torch.einsum("bto,bti->boi", g, a).reshape(a.shape[0], -1)


def factgrass(a, g, idx_in, idx_out, k: int, *, bias: bool = False, s: int = 1,
              seed: int = 0) -> torch.Tensor:
    """Twin of ``grass.ops.factgrass`` (``factgrass_cpu`` / ``factgrass_cuda``): the explicit
    masked Kronecker product, then the explicit SJLT of k_in * k_out columns."""
    a, g = _factors64(a, g, bias)
    a = a[..., torch.as_tensor(idx_in, device=a.device)]
    g = g[..., torch.as_tensor(idx_out, device=g.device)]
    z = torch.einsum("bto,bti->boi", g, a).reshape(a.shape[0], -1)
    return sjlt(z, k, s=s, seed=seed)


# ----------------------------------------------------------------------------- Fisher

def unpack_blocks(F: torch.Tensor, block_sizes: Sequence[int]):
    """The [k_l, k_l] blocks of a packed float64 tensor (copies, float64)."""
    out, offset = [], 0
    for b in block_sizes:
        out.append(F[offset:offset + b * b].reshape(b, b).to(torch.float64).clone())
        offset += b * b
    return out


def pack_blocks(blocks) -> torch.Tensor:
    """The packed layout of a list of square blocks: each row-major, one after another."""
    return torch.cat([B.reshape(-1) for B in blocks]).to(torch.float64)


def fisher_accumulate(G, block_sizes: Sequence[int], F=None) -> torch.Tensor:
    """Twin of ``grass.ops.fisher_accumulate`` (``fisher_accumulate_cpu``):
    packed F + [G_l^T G_l for each block], in float64."""
    G = _dense64(G)
    blocks, offset = [], 0
    for b in block_sizes:
        Gl = G[:, offset:offset + b]
        blocks.append(Gl.T @ Gl)
        offset += b
    packed = pack_blocks(blocks)
    return packed if F is None else _dense64(F) + packed


def cholesky_factor(F, block_sizes: Sequence[int], damping) -> torch.Tensor:
    """Twin of ``grass.ops.cholesky_factor`` (``cholesky_factor_cpu``): packed lower
    Cholesky factors of F_l + damping_l I (upper triangles zero), by torch.linalg."""
    L = len(block_sizes)
    damping = [float(damping)] * L if np.isscalar(damping) else [float(d) for d in damping]
    factors = []
    for Fl, d, b in zip(unpack_blocks(_dense64(F), block_sizes), damping, block_sizes):
        factors.append(torch.linalg.cholesky(Fl + d * torch.eye(b, dtype=torch.float64,
                                                                  device=Fl.device)))
    return pack_blocks(factors)


def cholesky_solve(L, block_sizes: Sequence[int], V) -> torch.Tensor:
    """Twin of ``grass.ops.cholesky_solve`` (``cholesky_solve_cpu``): for each block,
    solve (L_l L_l^T) X_l^T = V_l^T with the explicit matrix and torch.linalg.solve."""
    V = _dense64(V)
    out, offset = [], 0
    for Ll, b in zip(unpack_blocks(_dense64(L), block_sizes), block_sizes):
        A = Ll @ Ll.T
        out.append(torch.linalg.solve(A, V[:, offset:offset + b].T).T)
        offset += b
    return torch.cat(out, dim=1)
