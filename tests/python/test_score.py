"""Streamed scoring: chunked = full, top-k = sorting the full matrix, self-influence, sign."""
import numpy as np
import pytest
import torch

from grass.precondition import BlockFisher, Preconditioner
from grass.score import (ScoreTerm, TopK, full_scores, influence_scores, influence_top_k,
                         self_influence, top_k_scores)
from grass.store import GradientStore, StoreWriter

BLOCKS = [4, 6]
N, M = 97, 5


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, 10, generator=g), torch.randn(M, 10, generator=g)


def _store(tmp_path, G, chunk_rows=13):
    with StoreWriter(tmp_path / "s", fingerprint={"t": 1}, num_rows=G.shape[0], block_sizes=BLOCKS,
                     chunk_rows=chunk_rows) as w:
        w.append(G)
    return GradientStore(tmp_path / "s")


def _reference(G, T, rel=0.1):
    """τ = −∇fᵀ(F+λI)⁻¹∇ℓ_i in float64 numpy, block by block."""
    G, T = G.double().numpy(), T.double().numpy()
    out, s = np.zeros((T.shape[0], G.shape[0])), 0
    for k in BLOCKS:
        g, t = G[:, s:s + k], T[:, s:s + k]
        F = g.T @ g / G.shape[0]
        A = F + rel * np.trace(F) / k * np.eye(k)
        out += -(np.linalg.solve(A, t.T).T @ g.T)
        s += k
    return out


def _precond(G):
    return Preconditioner.fit(BlockFisher(BLOCKS).update(G))


@pytest.mark.parametrize("chunk_rows", [1, 13, 50, 97, 500])
def test_chunked_scores_equal_the_reference(tmp_path, chunk_rows):
    G, T = _data()
    store = _store(tmp_path, G)
    S = influence_scores(T, _precond(G), store, chunk_rows=chunk_rows, progress=False)
    assert S.shape == (M, N) and S.dtype == torch.float32
    ref = _reference(G, T)
    assert np.abs(S.double().numpy() - ref).max() / np.abs(ref).max() < 1e-5
    # store and in-memory rows agree exactly
    assert torch.equal(S, influence_scores(T, _precond(G), G, chunk_rows=chunk_rows, progress=False))


def test_scores_into_out(tmp_path):
    G, T = _data()
    out = torch.full((M, N), float("nan"))
    S = influence_scores(T, _precond(G), G, out=out, chunk_rows=10, progress=False)
    assert S is out and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"out must have shape \[5, 97\]"):
        influence_scores(T, _precond(G), G, out=torch.empty(5, 96), progress=False)


def test_sign_convention_helpful_is_positive():
    # A training gradient equal to the test loss gradient raises the test log-likelihood
    # (f = −loss, so ∇f = −∇ℓ_test): τ must be positive; the opposite gradient negative.
    G, _ = _data()
    g_test = G[3:4]
    T = -g_test  # ∇f for f = −loss
    P = _precond(G)
    rows = torch.cat([g_test, -g_test])
    s = influence_scores(T, P, rows, progress=False)
    assert s[0, 0] > 0 and s[0, 1] < 0
    torch.testing.assert_close(s[0, 0], -s[0, 1])


def _sorted_reference(S, k, largest):
    # stable sort of each row by value (desc or asc), ties by smaller index
    out_v, out_i = [], []
    for row in S.numpy():
        key = -row if largest else row
        order = np.lexsort((np.arange(row.size), key))[:k]
        out_i.append(order)
        out_v.append(row[order])
    return np.array(out_v), np.array(out_i)


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("chunk_rows", [1, 7, 40, 97])
def test_top_k_equals_sorting_the_full_matrix_with_ties(largest, chunk_rows):
    # Integer-valued gradients make many exactly equal scores (ties).
    g = torch.Generator().manual_seed(3)
    G = torch.randint(-1, 2, (N, 10), generator=g).float()
    T = torch.randint(-1, 2, (M, 10), generator=g).float()
    terms = [ScoreTerm(T, G)]
    S = full_scores(terms, progress=False)
    assert len(torch.unique(S[0])) < N // 3  # there are ties to break
    for k in (1, 10, N):
        v, i = top_k_scores(terms, k, largest=largest, chunk_rows=chunk_rows, progress=False)
        rv, ri = _sorted_reference(S, k, largest)
        np.testing.assert_array_equal(i.numpy(), ri)
        np.testing.assert_array_equal(v.numpy(), rv)


def test_influence_top_k_matches_full(tmp_path):
    G, T = _data()
    store = _store(tmp_path, G)
    P = _precond(G)
    S = influence_scores(T, P, store, progress=False)
    v, i = influence_top_k(T, P, store, 8, progress=False)
    rv, ri = _sorted_reference(S, 8, True)
    np.testing.assert_array_equal(i.numpy(), ri)
    np.testing.assert_array_equal(v.numpy(), rv)
    with pytest.raises(ValueError, match=r"k must be in \[1, N=97\]"):
        influence_top_k(T, P, store, 98, progress=False)


def test_top_k_rejects_out_of_order_chunks():
    t = TopK(2, 3)
    t.add(5, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="increasing column order"):
        t.add(0, torch.zeros(2, 4))


def test_self_influence_equals_quadratic_form(tmp_path):
    G, _ = _data()
    store = _store(tmp_path, G)
    si = self_influence(_precond(G), store, chunk_rows=9, progress=False)
    assert si.dtype == torch.float64 and si.shape == (N,)
    Gd = G.double().numpy()
    expect, s = np.zeros(N), 0
    for k in BLOCKS:
        g = Gd[:, s:s + k]
        F = g.T @ g / N
        A = F + 0.1 * np.trace(F) / k * np.eye(k)
        expect += np.einsum("ij,ji->i", g, np.linalg.solve(A, g.T))
        s += k
    np.testing.assert_allclose(si.numpy(), expect, rtol=1e-9)
    assert (si > 0).all()


def test_weighted_terms_sum_like_the_formula():
    G, T = _data()
    G2, T2 = _data(1)
    w = torch.rand(N, generator=torch.Generator().manual_seed(2))
    S = full_scores([ScoreTerm(T, G, weights=w, scale=0.5), ScoreTerm(T2, G2, scale=-2.0)],
                    chunk_rows=11, progress=False)
    ref = 0.5 * (T.double() @ G.double().T) * w.double() - 2.0 * (T2.double() @ G2.double().T)
    torch.testing.assert_close(S.double(), ref, rtol=1e-5, atol=1e-5)


def test_term_checks():
    G, T = _data()
    with pytest.raises(ValueError, match=r"queries must be \[M, K=10\]"):
        full_scores([ScoreTerm(T[:, :9], G)], progress=False)
    with pytest.raises(ValueError, match="every term must score the same"):
        full_scores([ScoreTerm(T, G), ScoreTerm(T, G[:50])], progress=False)
    with pytest.raises(ValueError, match="one entry per training row"):
        full_scores([ScoreTerm(T, G, weights=torch.ones(3))], progress=False)
    bad = T.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        full_scores([ScoreTerm(bad, G)], progress=False)
    with pytest.raises(TypeError, match="GradientStore or a \\[N, K\\] tensor"):
        full_scores([ScoreTerm(T, G.numpy())], progress=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("largest", [True, False])
def test_top_k_handles_signed_zeros_infinities_and_dtypes(dtype, largest):
    row = torch.tensor([[0.0, -0.0, 1.5, -2.0, float("inf"), -0.0, 0.0, float("-inf"), 1.5, -2.0]],
                       dtype=dtype)
    top = TopK(1, 10, largest=largest, dtype=dtype)
    for s in range(0, 10, 3):
        top.add(s, row[:, s:s + 3])
    ref = sorted(range(10), key=lambda i: ((-1 if largest else 1) * row[0, i].item(), i))
    assert top.indices[0].tolist() == ref
    assert torch.equal(top.values, row[:, ref])
