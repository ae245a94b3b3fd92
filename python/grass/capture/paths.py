"""From recorded (input, output gradient) pairs to each hooked layer's per-sample gradient.

One function per ``LayerInfo.path``; each returns a list of *pieces* whose sum is the
layer's per-sample gradient in the grass layout (``docs/capture.md``):

    ("factors", a [B, T, d_in], g [B, T, d_out])   sum_t g_t (x) [a_t, 1]   (Linear)
    ("patches", patches(columns), g)               the same, a built on demand (Conv; a
                                                   masking compressor asks for its columns)
    ("sparse", csr [B, numel])                     rows of the tokens seen  (Embedding)
    ("grad", dense [B, numel])                     small parameters         (norms, modules)

A compressor takes each piece by its cheapest entry point (``compress_factors``,
``compress_sparse``, ``compress``); the compressors are linear maps, so the compressed
pieces add up to the compressed gradient.
"""
from __future__ import annotations

import warnings
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..layers import LayerInfo
from .hooks import Call

__all__ = ["pieces", "densify", "conv_patches", "embedding_csr"]

Piece = Tuple


def pieces(info: LayerInfo, module: nn.Module, calls: Sequence[Call], B: int,
           model: nn.Module) -> List[Piece]:
    """The pieces of one layer's per-sample gradient from its recorded calls."""
    path = info.path
    device = next((p.device for p in module.parameters()), None)
    if path == "factors":
        return [_linear(info, calls, B, device)]
    if path == "conv":
        return _conv(info, module, calls, B)
    if path == "embedding":
        return [("sparse", embedding_csr(module, calls, B))]
    if path == "norm":
        return [("grad", _norm(info, module, calls, B))]
    if path == "module":
        return [("grad", _module(info, module, calls, B))]
    raise ValueError(f"layer {info.name!r}: path {path!r} is not a hooked path")


def tied_pieces(info: LayerInfo, module: nn.Module, calls, head_calls, B: int) -> List[Piece]:
    """An embedding [vocab, dim] whose weight a head reads as Linear(dim, vocab): the head's
    factors plus the embedding's rows, both in the head's (= the embedding's) layout."""
    head_info = LayerInfo(name=info.tied[0], kind="linear", numel=info.numel, d_in=info.d_in,
                          d_out=info.d_out, bias=False)
    return [_linear(head_info, head_calls, B, module.weight.device),
            ("sparse", embedding_csr(module, calls, B))]


def densify(piece: Piece, info: LayerInfo) -> torch.Tensor:
    """[B, numel] float32: the explicit gradient of one piece."""
    from .. import ops
    if piece[0] == "factors":
        a, g = piece[1], piece[2]
        return ops.kron(a.float().contiguous(), g.float().contiguous(), bias=info.bias)
    if piece[0] == "patches":
        return ops.kron(piece[1]().float().contiguous(), piece[2].float().contiguous(), bias=info.bias)
    if piece[0] == "sparse":
        return piece[1].to_dense().float()
    return piece[1].float()


# ---- linear layers ---------------------------------------------------------------------------

def _check_batch(info: LayerInfo, x: torch.Tensor, g: torch.Tensor, shape, B: int) -> None:
    if x.dim() < 2 or x.shape[0] != B or g.shape[0] != B:
        raise ValueError(
            f"layer {info.name!r} saw input {list(x.shape)} and output {list(shape)}; per-sample "
            f"capture needs the batch ({B}) as the first dimension of every attributed layer's "
            "input (batch_first layouts)")


def _linear(info: LayerInfo, calls: Sequence[Call], B: int, device=None) -> Piece:
    a_parts, g_parts = [], []
    for c in calls:
        _check_batch(info, c.x, c.g, c.shape, B)
        a_parts.append(c.x.reshape(B, -1, info.d_in))
        g_parts.append(c.g.reshape(B, -1, info.d_out))
    return ("factors",) + _join(a_parts, g_parts, B, info, device)


def _join(a_parts, g_parts, B, info, device=None):
    if not a_parts:  # not called: zero factors with T = 1
        return (torch.zeros(B, 1, info.d_in, device=device), torch.zeros(B, 1, info.d_out, device=device))
    a = a_parts[0] if len(a_parts) == 1 else torch.cat(a_parts, dim=1)
    g = g_parts[0] if len(g_parts) == 1 else torch.cat(g_parts, dim=1)
    return a, g


# ---- convolutions ----------------------------------------------------------------------------

def _patch_view(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A strided view [B, C_in, kh, kw, H_out, W_out] of the padded input: entry
    (b, c, u, v, i, j) is the input the kernel tap (u, v) of channel c meets at output (i, j).
    Padding of every mode (zeros, reflect, replicate, circular, 'same', 'valid') is applied
    first, exactly as the module pads."""
    pad = list(module._reversed_padding_repeated_twice)
    if any(pad):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pad, mode=mode)
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, dilation, stride = ((1,) + tuple(module.kernel_size), (1,) + tuple(module.dilation),
                                    (1,) + tuple(module.stride))
    else:
        kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    B, C, H, W = x.shape
    Ho = (H - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    Wo = (W - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    sB, sC, sH, sW = x.stride()
    return x.as_strided((B, C, kernel[0], kernel[1], Ho, Wo),
                        (sB, sC, sH * dilation[0], sW * dilation[1], sH * stride[0], sW * stride[1]),
                        x.storage_offset())


def conv_patches(module: nn.Module, x: torch.Tensor, columns=None) -> torch.Tensor:
    """The unfolded input patches of ``nn.Conv1d`` / ``nn.Conv2d`` as [B, C_in * prod(kernel), T]
    (T the output positions; entries ordered (channel, kernel position) like
    ``weight[o].reshape(-1)``), or only the entries ``columns`` (int64 [n]) when given,
    gathered straight from the input (a masking compressor reads only those)."""
    v = _patch_view(module, x)
    B, C, kh, kw, Ho, Wo = v.shape
    if columns is None:
        return v.reshape(B, C * kh * kw, Ho * Wo)
    columns = columns.to(x.device)
    c, rest = columns // (kh * kw), columns % (kh * kw)
    return v[:, c, rest // kw, rest % kw].reshape(B, columns.numel(), Ho * Wo)


def _conv(info: LayerInfo, module: nn.Module, calls: Sequence[Call], B: int) -> List[Piece]:
    G = int(module.groups)
    xs, g_parts = [], []
    for c in calls:
        if c.x.dim() != (3 if isinstance(module, nn.Conv1d) else 4) or c.x.shape[0] != B:
            raise ValueError(f"convolution {info.name!r} saw input {list(c.x.shape)}; per-sample "
                             f"capture needs batched input [B = {B}, C, ...]")
        xs.append(c.x)
        g_parts.append(c.g.reshape(B, c.g.shape[1], -1))   # [B, C_out, T]
    if not xs:
        a, g = _join([], [], B, info, module.weight.device)
        return [("factors", a, g)]
    # Channels-first, as the convolution lays them out; handed over as [B, T, d] views.
    g = (g_parts[0] if len(g_parts) == 1 else torch.cat(g_parts, dim=2)).transpose(1, 2)
    if G == 1:
        def patches(columns=None):
            parts = [conv_patches(module, x, columns) for x in xs]
            return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)).transpose(1, 2)
        return [("patches", patches, g)]
    # groups > 1: output channel o reads only the inputs of its group, so the gradient is G
    # independent [C_out/G, C_in/G * K] blocks stacked as weight [C_out, C_in/G * K]. It is
    # formed from the per-group factors with one einsum (1/G of a dense convolution's size).
    a = torch.cat([conv_patches(module, x) for x in xs], dim=2).transpose(1, 2)
    T = a.shape[1]
    a = a.float().reshape(B, T, G, info.d_in)
    gg = g.float().reshape(B, T, G, info.d_out // G)
    w = torch.einsum("btgi,btgo->bgoi", a, gg).reshape(B, info.d_out, info.d_in)
    if info.bias:
        w = torch.cat([w, gg.sum(1).reshape(B, info.d_out, 1)], dim=2)
    return [("grad", w.reshape(B, -1))]


# ---- embeddings ------------------------------------------------------------------------------

def embedding_csr(module: nn.Embedding, calls: Sequence[Call], B: int) -> torch.Tensor:
    """The per-sample gradient of an embedding's weight [vocab, dim] as a CSR tensor
    [B, vocab * dim]: for each sample, one row of ``dim`` values per distinct token seen
    (repeated tokens summed in float32; ``padding_idx`` gets no gradient, as in torch).
    vocab x dim is never formed."""
    V, D = module.weight.shape
    toks, grads = [], []
    for c in calls:
        if c.x.dim() < 1 or c.x.shape[0] != B:
            raise ValueError(f"embedding {module!r} saw indices {list(c.x.shape)}; per-sample "
                             f"capture needs the batch ({B}) as their first dimension")
        toks.append(c.x.reshape(B, -1))
        grads.append(c.g.reshape(B, -1, D))
    device = module.weight.device
    if not toks:
        return _csr(torch.zeros(B + 1, dtype=torch.int64, device=device),
                    torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(0, device=device),
                    (B, V * D))
    tok = torch.cat(toks, 1).to(torch.int64)
    g = torch.cat(grads, 1).reshape(-1, D)
    key = (torch.arange(B, device=tok.device)[:, None] * V + tok).reshape(-1)
    if module.padding_idx is not None:
        keep = tok.reshape(-1) != module.padding_idx
        key, g = key[keep], g[keep]
    uniq, inverse = torch.unique(key, sorted=True, return_inverse=True)
    rows = torch.zeros(uniq.numel(), D, dtype=torch.float32, device=g.device)
    rows.index_add_(0, inverse, g.float())
    sample, token = uniq // V, uniq % V
    crow = torch.zeros(B + 1, dtype=torch.int64, device=g.device)
    crow[1:] = torch.cumsum(torch.bincount(sample, minlength=B) * D, 0)
    col = (token[:, None] * D + torch.arange(D, device=g.device)).reshape(-1)
    return _csr(crow, col, rows.reshape(-1), (B, V * D))


def _csr(crow, col, values, size):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, col, values, size=size)


# ---- norms -----------------------------------------------------------------------------------

def _normalised(module: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """(x_hat float32, where the parameters sit): the input as the module normalises it,
    before its affine parameters; -1 for per-channel parameters (dim 1: BatchNorm,
    GroupNorm), else the first of the trailing dimensions they cover (LayerNorm, RMSNorm)."""
    x = x.float()
    if isinstance(module, nn.LayerNorm):
        dims = tuple(range(x.dim() - len(module.normalized_shape), x.dim()))
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + module.eps), dims[0]
    if hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm):
        dims = tuple(range(x.dim() - len(module.normalized_shape), x.dim()))
        eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
        return x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps), dims[0]
    if isinstance(module, nn.GroupNorm):
        B, C = x.shape[:2]
        xg = x.reshape(B, module.num_groups, -1)
        mean = xg.mean(-1, keepdim=True)
        var = xg.var(-1, unbiased=False, keepdim=True)
        return ((xg - mean) * torch.rsqrt(var + module.eps)).reshape(x.shape), -1
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if module.training or module.running_mean is None:  # batch statistics, as forward used
            dims = (0,) + tuple(range(2, x.dim()))
            mean = x.mean(dims, keepdim=True)
            var = x.var(dims, unbiased=False, keepdim=True)
        else:
            mean = module.running_mean.float().reshape(shape)
            var = module.running_var.float().reshape(shape)
        return (x - mean) * torch.rsqrt(var + module.eps), -1
    raise TypeError(f"no normalisation formula for {type(module).__name__}")


def _norm(info: LayerInfo, module: nn.Module, calls: Sequence[Call], B: int) -> torch.Tensor:
    """Affine parameters y = x_hat * weight + bias: d weight = sum g * x_hat, d bias = sum g,
    summed over every position that shares the parameter."""
    weight = getattr(module, "weight", None)
    out = {n: 0 for n in info.param_names}
    w_name = next((n for n in info.param_names if weight is not None and n.endswith("weight")), None)
    b_name = next((n for n in info.param_names if n.endswith("bias")), None)
    running = (isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.training
               and module.running_mean is not None)
    for c in calls:
        _check_batch(info, c.x, c.g, c.shape, B)
        if running:  # x_hat = (x - mean) * inv_std per channel: no [B, C, ...] temporary
            x3, g3 = c.x.float().reshape(B, c.x.shape[1], -1), c.g.float().reshape(B, c.x.shape[1], -1)
            inv_std = torch.rsqrt(module.running_var.float() + module.eps)
            gs = g3.sum(-1)
            if w_name is not None:
                gx = torch.einsum("bcs,bcs->bc", g3, x3)
                out[w_name] = out[w_name] + inv_std * (gx - module.running_mean.float() * gs)
            if b_name is not None:
                out[b_name] = out[b_name] + gs
            continue
        x_hat, start = _normalised(module, c.x)
        g = c.g.float()
        if start == -1:  # per channel: channel dim 1, reduce the rest
            red = lambda t: t.reshape(B, t.shape[1], -1).sum(-1)  # noqa: E731
        else:           # per feature: the last dims, reduce dims 1 .. start-1
            red = lambda t: t.reshape(B, -1, *t.shape[start:]).sum(1).reshape(B, -1)  # noqa: E731
        if w_name is not None:
            out[w_name] = out[w_name] + red(g * x_hat)
        if b_name is not None:
            out[b_name] = out[b_name] + red(g)
    parts = []
    for n in info.param_names:
        v = out[n]
        if isinstance(v, int):
            v = torch.zeros(B, info_numel(module, n), device=module.weight.device)
        parts.append(v.reshape(B, -1))
    return torch.cat(parts, 1)


def info_numel(module: nn.Module, full_name: str) -> int:
    return getattr(module, full_name.rsplit(".", 1)[-1]).numel()


# ---- any leaf module: torch.func on the module alone -------------------------------------------

def _module(info: LayerInfo, module: nn.Module, calls: Sequence[Call], B: int) -> torch.Tensor:
    """vmap(grad) of <module(x_i), g_i> over the samples, on the module alone, from its
    recorded arguments: exact for any module whose output for a sample depends only on that
    sample's inputs, and it never vmaps the rest of the model (attention masks, data-dependent
    control flow)."""
    prefix = info.name + "." if info.name else ""
    local = {n[len(prefix):]: n for n in info.param_names}
    primals = {ln: module.get_parameter(ln).detach() for ln in local}
    total = {ln: None for ln in local}
    for c in calls:
        _check_batch(info, c.x, c.g, c.shape, B)
        leaves = list(c.args) + list(c.kwargs.values())
        keys = list(c.kwargs)
        n_args = len(c.args)
        dims = [0 if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == B else None
                for v in leaves]

        def one(prim, sample, g_i, dims=dims, n_args=n_args, keys=keys):
            vals = [v.unsqueeze(0) if d == 0 else v for v, d in zip(sample, dims)]
            out = functional_call(module, prim, tuple(vals[:n_args]), dict(zip(keys, vals[n_args:])),
                                  strict=False)
            return (out.float() * g_i.float().unsqueeze(0)).sum()

        with torch.enable_grad():
            grads = vmap(grad(one), in_dims=(None, dims, 0))(primals, leaves, c.g)
        for ln in local:
            total[ln] = grads[ln] if total[ln] is None else total[ln] + grads[ln]
    parts = [(total[ln] if total[ln] is not None else torch.zeros(B, *primals[ln].shape))
             .float().reshape(B, -1) for ln in local]
    return torch.cat(parts, 1)

