"""grass.ops.kron and factgrass (fused FactGraSS) against einsum and the explicit SJLT."""
import numpy as np
import pytest
import torch

from grass import ops, reference
from grass.testing import assert_close_sum, devices, dtypes, randn

# (B, T, d_in, d_out, bias); T = None means 2-D factors [B, d] (T = 1).
SHAPES = [(1, None, 1, 1, False), (3, None, 7, 5, True), (2, 1, 33, 17, False),
          (4, 9, 13, 6, True), (1, 50, 3, 64, False), (5, 4, 70, 3, True)]


def factors(B, T, d_in, d_out, dtype, device, gen):
    lead = (B,) if T is None else (B, T)
    return (randn(*lead, d_in, dtype=dtype, device=device, generator=gen),
            randn(*lead, d_out, dtype=dtype, device=device, generator=gen))


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("B, T, d_in, d_out, bias", SHAPES)
def test_kron_matches_einsum(B, T, d_in, d_out, bias, dtype, device, gen):
    a, g = factors(B, T, d_in, d_out, dtype, device, gen)
    out = ops.kron(a, g, bias=bias)
    assert out.dtype == torch.float32 and out.shape == (B, d_out * (d_in + bias))
    abs_sum = reference.kron(a.abs(), g.abs(), bias=bias)
    assert_close_sum(out, reference.kron(a, g, bias=bias), abs_sum, T or 1, "kron")


def test_kron_is_the_per_sample_weight_gradient(gen):
    """The layout of Linear.weight with the bias as an extra last input column."""
    B, T, d_in, d_out = 3, 5, 6, 4
    layer = torch.nn.Linear(d_in, d_out)
    x = randn(B, T, d_in, generator=gen)
    target = randn(B, T, d_out, generator=gen)
    a_list, g_list = [], []
    grads = []
    for b in range(B):
        layer.zero_grad()
        h = x[b].clone()
        y = layer(h)
        y.retain_grad()
        ((y - target[b]) ** 2).sum().backward()
        grads.append(torch.cat([layer.weight.grad, layer.bias.grad[:, None]], 1).flatten())
        a_list.append(h)
        g_list.append(y.grad)
    out = ops.kron(torch.stack(a_list), torch.stack(g_list), bias=True)
    torch.testing.assert_close(out, torch.stack(grads), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("B, T, d_in, d_out, bias", SHAPES)
@pytest.mark.parametrize("k, s", [(1, 1), (64, 3)])
def test_factgrass_matches_reference_and_composition(B, T, d_in, d_out, bias, k, s, dtype, device, gen):
    a, g = factors(B, T, d_in, d_out, dtype, device, gen)
    d_aug = d_in + bias
    idx_in = ops.mask_indices(d_aug, max(1, d_aug // 2), seed=1, device=device)
    if bias:  # make sure the ones column takes part
        idx_in = torch.unique(torch.cat([idx_in, torch.tensor([d_in], device=device)]))
    idx_out = ops.mask_indices(d_out, max(1, (2 * d_out) // 3), seed=2, device=device)
    seed = 7
    y = ops.factgrass(a, g, idx_in, idx_out, k, bias=bias, s=s, seed=seed)
    assert y.dtype == torch.float32 and y.shape == (B, k)
    # Bound: |S| applied to the masked Kronecker product of |a|, |g|.
    kin, kout = idx_in.numel(), idx_out.numel()
    S = reference.sjlt_matrix(kin * kout, k, s=s, seed=seed)
    z_abs = reference.kron(a.abs(), g.abs(), bias=bias).cpu().view(B, d_out, d_aug)[:, idx_out.cpu()][:, :, idx_in.cpu()]
    abs_sum = z_abs.reshape(B, -1) @ S.abs().T
    terms = (S != 0).sum(1) + (T or 1)
    expected = reference.factgrass(a, g, idx_in, idx_out, k, bias=bias, s=s, seed=seed)
    assert_close_sum(y, expected, abs_sum, terms, "factgrass")
    # Fused == unfused: kron of the masked factors, then sjlt.
    a3 = a if T is not None else a[:, None]
    g3 = g if T is not None else g[:, None]
    if bias:
        a3 = torch.cat([a3, torch.ones_like(a3[..., :1])], -1)
    unfused = ops.sjlt(ops.kron(a3[..., idx_in].contiguous(), g3[..., idx_out].contiguous()), k, s=s, seed=seed)
    assert_close_sum(y, unfused, 2 * abs_sum, terms, "fused vs unfused")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B, T, d_in, d_out, bias, k, s", [
    (37, None, 30, 20, True, 64, 3),       # batch in blocks of samples, the last one partial
    (40, 5, 25, 9, False, 128, 1),         # T > 1
    (32, None, 1024, 600, False, 256, 8),  # codes in two tiles of output rows
])
def test_factgrass_batched_equals_one_sample_at_a_time(B, T, d_in, d_out, bias, k, s, dtype, gen):
    """The CPU kernel's batched path (samples in lanes) must give, bitwise, what each sample
    gives alone (the per-sample path): same sums in the same order."""
    a, g = factors(B, T, d_in, d_out, dtype, "cpu", gen)
    idx_in = ops.mask_indices(d_in + bias, max(1, (d_in + bias) // 2), seed=1)
    idx_out = ops.mask_indices(d_out, max(1, d_out // 2), seed=2)
    y = ops.factgrass(a, g, idx_in, idx_out, k, bias=bias, s=s, seed=5)
    one = torch.cat([ops.factgrass(a[b:b + 1], g[b:b + 1], idx_in, idx_out, k, bias=bias, s=s, seed=5)
                     for b in range(B)])
    assert torch.equal(y, one)
    expected = reference.factgrass(a, g, idx_in, idx_out, k, bias=bias, s=s, seed=5)
    torch.testing.assert_close(y, expected.float(), rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("device", devices)
def test_factgrass_full_masks_equal_sjlt_of_kron(device, gen):
    """With identity masks FactGraSS is the SJLT of the whole per-sample gradient."""
    a, g = factors(3, 4, 10, 6, torch.float32, device, gen)
    y = ops.factgrass(a, g, torch.arange(11, device=device), torch.arange(6, device=device), 32,
                      bias=True, s=2, seed=3)
    full = ops.sjlt(ops.kron(a, g, bias=True), 32, s=2, seed=3)
    torch.testing.assert_close(y, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", devices)
def test_seeds_out_grad(device, gen):
    a, g = factors(2, 3, 20, 10, torch.float32, device, gen)
    a.requires_grad_()
    ii = torch.arange(0, 20, 2, device=device)
    io = torch.arange(0, 10, 3, device=device)
    y = ops.factgrass(a, g, ii, io, 16, seed=1, deterministic=True)
    assert not y.requires_grad
    assert torch.equal(y, ops.factgrass(a, g, ii, io, 16, seed=1, deterministic=True))
    assert not torch.allclose(y, ops.factgrass(a, g, ii, io, 16, seed=2, deterministic=True), atol=1e-3)
    out = torch.full((2, 16), float("nan"), device=device)
    ptr = out.data_ptr()
    assert ops.factgrass(a, g, ii, io, 16, seed=1, out=out, deterministic=True) is out
    assert out.data_ptr() == ptr and torch.equal(out, y)
    outk = torch.full((2, 200), float("nan"), device=device)
    assert ops.kron(a, g, out=outk) is outk and torch.equal(outk, ops.kron(a, g))


def test_numpy_in_and_out(gen):
    a = randn(2, 3, generator=gen).numpy()
    g = randn(2, 4, generator=gen).numpy()
    out = np.zeros((2, 12), dtype=np.float32)
    assert ops.kron(a, g, out=out) is out
    np.testing.assert_allclose(out, np.einsum("bo,bi->boi", g, a).reshape(2, 12), rtol=1e-6)
    y = ops.factgrass(a, g, np.array([0, 2]), np.array([1]), 4)
    assert isinstance(y, np.ndarray) and y.shape == (2, 4)


K = r"grass\.ops\.kron: "
FG = r"grass\.ops\.factgrass: "
A, G = torch.ones(2, 3, 4), torch.ones(2, 3, 5)
I_IN, I_OUT = torch.tensor([0, 1]), torch.tensor([4])
ERRORS = [
    (lambda: ops.kron(A, G.double()), K + r"g must be float32, float16 or bfloat16, got float64"),
    (lambda: ops.kron(A, G.half()), K + r"g must have a's dtype float32, got float16"),
    (lambda: ops.kron(A, torch.ones(2, 4, 5)), K + r"g must match a in B and T, got a \(2, 3, 4\) and g \(2, 4, 5\)"),
    (lambda: ops.kron(A, torch.ones(2, 5)), K + r"a and g must both be 3-D"),
    (lambda: ops.kron(torch.ones(2), torch.ones(2)), K + r"a must be a 2-D or 3-D tensor \[B, T, d_in\] or \[B, d_in\], got shape \(2,\)"),
    (lambda: ops.kron(torch.ones(2, 4, 3).transpose(1, 2), G), K + r"a must be contiguous"),
    (lambda: ops.kron(A, G, out=torch.empty(2, 21)), K + r"out must have shape \(2, 20\), got \(2, 21\)"),
    (lambda: ops.kron(A, G, bias=True, out=torch.empty(2, 20)), K + r"out must have shape \(2, 25\), got \(2, 20\)"),
    (lambda: ops.kron(A, G.to("meta")), K + r"g must be a CPU or CUDA tensor, got device meta"),
    (lambda: ops.factgrass(A, G, torch.tensor([4]), I_OUT, 8), FG + r"idx_in must hold indices in \[0, 4\), got idx_in\[0\] = 4"),
    (lambda: ops.factgrass(A, G, torch.tensor([5]), I_OUT, 8, bias=True), FG + r"idx_in must hold indices in \[0, 5\), got idx_in\[0\] = 5"),
    (lambda: ops.factgrass(A, G, I_IN, torch.tensor([5]), 8), FG + r"idx_out must hold indices in \[0, 5\), got idx_out\[0\] = 5"),
    (lambda: ops.factgrass(A, G, I_IN.int(), I_OUT, 8), FG + r"idx_in must be int64, got int32"),
    (lambda: ops.factgrass(A, G, I_IN, I_OUT, 0), FG + r"k must be in \[1, 2147483647\], got 0"),
    (lambda: ops.factgrass(A, G, I_IN, I_OUT, 8, s=9), FG + r"s must be in \[1, 8\] \(1 <= s <= k\), got 9"),
    (lambda: ops.factgrass(A, G, I_IN, I_OUT, 8, out=torch.empty(3, 8)), FG + r"out must have shape \(2, 8\), got \(3, 8\)"),
]


@pytest.mark.parametrize("call, message", ERRORS)
def test_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
