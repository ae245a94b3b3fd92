"""The reference twins themselves, checked against facts that do not come from grass:
published splitmix64 outputs, scipy's Hadamard matrix, autograd's per-sample gradients and
dense linear algebra."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from grass import reference


def test_hash_is_splitmix64():
    """draw(0, i) is the i-th output of splitmix64 seeded with 0 (its published sequence)."""
    expected = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC]
    assert [reference.draw(0, i) for i in range(4)] == expected
    assert reference.draw(0, np.arange(4, dtype=np.uint64)).tolist() == expected


def test_numpy_and_int_hash_agree():
    rng = np.random.default_rng(0)
    z = rng.integers(0, 2**63, size=100, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    assert reference.mix64(z).tolist() == [reference.mix64(int(v)) for v in z]


@pytest.mark.parametrize("p, k, s", [(1, 1, 1), (200, 10, 3), (50, 7, 7)])
def test_sjlt_matrix_structure(p, k, s):
    S = reference.sjlt_matrix(p, k, s=s, seed=3)
    assert S.shape == (k, p) and S.dtype == torch.float64
    # Every column: exactly s non-zeros of +-1/sqrt(s), one in each replica block.
    assert torch.equal((S != 0).sum(0), torch.full((p,), s))
    assert torch.allclose(S[S != 0].abs(), torch.full_like(S[S != 0], 1 / math.sqrt(s)))
    for r in range(s):
        block = S[r * k // s:(r + 1) * k // s]
        assert torch.equal((block != 0).sum(0), torch.ones(p, dtype=torch.int64))
    assert torch.equal(reference.sjlt_matrix(p, k, s=s, seed=3, sparse=True).to_dense(), S)
    assert torch.allclose((S * S).sum(0), torch.ones(p, dtype=torch.float64))  # unit columns


def test_sjlt_codes_are_balanced():
    """Buckets are uniform over [0, k) and signs fair: chi-square over many columns within
    5 standard deviations of its mean (k - 1 degrees of freedom)."""
    p, k = 200_000, 50
    bucket, sign = reference.sjlt_codes(p, k, seed=1)
    counts = torch.bincount(bucket[:, 0], minlength=k).double()
    chi2 = float(((counts - p / k) ** 2 / (p / k)).sum())
    assert abs(chi2 - (k - 1)) < 5 * math.sqrt(2 * (k - 1)), chi2
    assert abs(float(sign.double().mean())) < 5 / math.sqrt(p)


@pytest.mark.parametrize("P", [1, 2, 4, 64, 256])
def test_hadamard_rows_are_scipys_hadamard(P):
    H = reference.hadamard_rows(torch.arange(P), P)
    assert torch.equal(H, torch.from_numpy(scipy.linalg.hadamard(P).astype(np.float64)))
    assert torch.equal(H @ H.T, P * torch.eye(P, dtype=torch.float64))


def test_fjlt_reference_is_the_dense_product():
    p, k, seed = 37, 16, 5
    x = torch.randn(3, p, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    signs, rows = reference.fjlt_params(p, k, seed=seed)
    P = reference.fjlt_padded_size(p)
    assert P == 64
    x_pad = torch.zeros(3, P, dtype=torch.float64)
    x_pad[:, :p] = x * signs.double()
    H = torch.from_numpy(scipy.linalg.hadamard(P).astype(np.float64))
    expected = x_pad @ H[rows].T / math.sqrt(k)
    torch.testing.assert_close(reference.fjlt(x, k, seed=seed), expected, rtol=1e-12, atol=1e-12)


def test_mask_indices_reference_is_a_sorted_subset():
    for p, k in [(1, 1), (10, 10), (100, 30), (10**9, 5)]:
        idx = reference.mask_indices(p, k, seed=2)
        assert idx.shape == (k,) and bool((idx[1:] > idx[:-1]).all())
        assert 0 <= int(idx[0]) and int(idx[-1]) < p


def test_kron_reference_is_the_per_sample_gradient():
    """torch.func per-sample gradients of a Linear layer, flattened like cat([W, b], 1)."""
    B, T, d_in, d_out = 4, 3, 5, 2
    gen = torch.Generator().manual_seed(1)
    layer = torch.nn.Linear(d_in, d_out).double()
    x = torch.randn(B, T, d_in, generator=gen, dtype=torch.float64)
    target = torch.randn(B, T, d_out, generator=gen, dtype=torch.float64)
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(params, xb, tb):
        return ((torch.func.functional_call(layer, params, (xb,)) - tb) ** 2).sum()

    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, target)
    flat = torch.cat([grads["weight"], grads["bias"][:, :, None]], 2).reshape(B, -1)
    g = 2 * (layer(x) - target).detach()  # dloss/dy
    torch.testing.assert_close(reference.kron(x, g, bias=True), flat)
    torch.testing.assert_close(reference.kron(x, g), grads["weight"].reshape(B, -1))


def test_fisher_cholesky_solve_reference_against_dense_algebra():
    sizes = [3, 1, 4]
    gen = torch.Generator().manual_seed(2)
    G = torch.randn(12, 8, generator=gen, dtype=torch.float64)
    F = reference.fisher_accumulate(G, sizes)
    dense = scipy.linalg.block_diag(*[G[:, o:o + b].T.numpy() @ G[:, o:o + b].numpy()
                                      for o, b in zip([0, 3, 4], sizes)])
    np.testing.assert_allclose(scipy.linalg.block_diag(*[b.numpy() for b in reference.unpack_blocks(F, sizes)]),
                               dense, rtol=1e-12)
    L = reference.cholesky_factor(F, sizes, [0.1, 0.2, 0.3])
    V = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    X = reference.cholesky_solve(L, sizes, V)
    damped = dense + np.diag(np.repeat([0.1, 0.2, 0.3], sizes))
    np.testing.assert_allclose(X.numpy(), V.numpy() @ np.linalg.inv(damped), rtol=1e-9, atol=1e-12)
