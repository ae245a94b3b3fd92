"""Block-diagonal Fisher, damping and the Cholesky solve against plain float64 numpy."""
import numpy as np
import pytest
import torch

from grass.precondition import (BlockFisher, DampingSearch, IdentityPreconditioner, Preconditioner,
                                choose_damping, resolve_damping)
from grass.store import GradientStore, StoreWriter

BLOCKS = [3, 5, 4]


def _G(n=60, seed=0):
    return torch.randn(n, sum(BLOCKS), generator=torch.Generator().manual_seed(seed))


def _np_blocks(G, blocks=BLOCKS):
    G = G.double().numpy()
    out, s = [], 0
    for k in blocks:
        out.append(G[:, s:s + k])
        s += k
    return out


def test_fisher_over_chunks_equals_gram_over_n():
    G = _G()
    f = BlockFisher(BLOCKS)
    for i in range(0, 60, 17):  # uneven chunks
        f.update(G[i:i + 17])
    assert f.num_rows == 60
    for l, g in enumerate(_np_blocks(G)):
        np.testing.assert_allclose(f.block(l).numpy(), g.T @ g / 60, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(f.traces().numpy(), [np.trace(g.T @ g) / 60 for g in _np_blocks(G)],
                               rtol=1e-12)


def test_fisher_from_store_matches_in_memory(tmp_path):
    G = _G()
    with StoreWriter(tmp_path / "s", fingerprint={"x": 1}, num_rows=60, block_sizes=BLOCKS,
                     chunk_rows=11) as w:
        w.append(G)
    f = BlockFisher.from_store(GradientStore(tmp_path / "s"), progress=False)
    g = BlockFisher(BLOCKS).update(G)
    torch.testing.assert_close(f.sums, g.sums, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("damping,relative", [(None, True), (0.5, True), (1e-2, False),
                                              ([0.1, 0.2, 0.3], False)])
def test_solve_equals_damped_inverse(damping, relative):
    G = _G()
    f = BlockFisher(BLOCKS).update(G)
    P = Preconditioner.fit(f, damping, relative=relative)
    V = torch.randn(7, sum(BLOCKS), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    X = P.solve(V)
    assert X.dtype == torch.float64
    d = [0.1] * 3 if damping is None else ([damping] * 3 if np.isscalar(damping) else damping)
    s = 0
    for l, g in enumerate(_np_blocks(G)):
        k = g.shape[1]
        F = g.T @ g / 60
        lam = d[l] * np.trace(F) / k if relative else d[l]
        assert P.damping[l].item() == pytest.approx(lam, rel=1e-12)
        ref = np.linalg.solve(F + lam * np.eye(k), V.numpy()[:, s:s + k].T).T
        np.testing.assert_allclose(X[:, s:s + k].numpy(), ref, rtol=1e-9, atol=1e-12)
        s += k
    # float32 in, float32 out (work in float64)
    assert P.solve(V.float()).dtype == torch.float32


def test_whiten_is_the_inverse_cholesky_factor():
    f = BlockFisher(BLOCKS).update(_G())
    P = Preconditioner.fit(f)
    V = torch.randn(5, 12, dtype=torch.float64)
    W = P.whiten(V)
    # ‖L⁻¹v‖² = vᵀ(F+λI)⁻¹v, and rows of W·Wᵀ give the same bilinear form
    torch.testing.assert_close(W @ W.T, V @ P.solve(V).T, rtol=1e-10, atol=1e-12)


def test_refit_with_new_damping_keeps_the_fisher():
    f = BlockFisher(BLOCKS).update(_G())
    before = f.sums.clone()
    Preconditioner.fit(f, 0.1)
    Preconditioner.fit(f, 1.0)
    assert torch.equal(f.sums, before)


def test_zero_block_gets_unit_damping_with_a_warning():
    G = _G()
    G[:, 3:8] = 0
    f = BlockFisher(BLOCKS).update(G)
    with pytest.warns(UserWarning, match=r"blocks \[1\] have an all-zero Fisher"):
        lam = resolve_damping(f)
    assert lam[1].item() == 1.0
    with pytest.raises(ValueError, match="damping must be > 0"):
        resolve_damping(f, 0.0, relative=False)


def test_damping_argument_checks():
    f = BlockFisher(BLOCKS).update(_G())
    with pytest.raises(ValueError, match=r"one per block \(3\), got 2"):
        resolve_damping(f, [0.1, 0.2])
    with pytest.raises(ValueError, match="finite and >= 0"):
        resolve_damping(f, -1.0)
    with pytest.raises(ValueError, match=r"\[M, K=12\]"):
        Preconditioner.fit(f).solve(torch.zeros(2, 11))
    with pytest.raises(ValueError, match=r"\[n, K=12\]"):
        f.update(torch.zeros(3, 5))
    with pytest.raises(RuntimeError, match="no rows yet"):
        BlockFisher(BLOCKS).traces()


def test_not_positive_definite_says_raise_the_damping():
    # A Fisher is never indefinite, so craft one (eigenvalues 3 and -1) to make it fail.
    f = BlockFisher([2])
    f.sums = torch.tensor([1.0, 2.0, 2.0, 1.0], dtype=torch.float64)  # eigenvalues 3, -1
    f.num_rows = 1
    with pytest.raises(ValueError, match="raise the damping"):
        Preconditioner.fit(f, 0.5, relative=False)


def test_state_dict_round_trip():
    f = BlockFisher(BLOCKS).update(_G())
    P = Preconditioner.fit(f)
    Q = Preconditioner.from_state_dict(P.state_dict())
    V = torch.randn(3, 12)
    assert torch.equal(P.solve(V), Q.solve(V))
    g = BlockFisher.from_state_dict(f.state_dict())
    assert torch.equal(g.sums, f.sums) and g.num_rows == f.num_rows


def test_identity_preconditioner():
    V = torch.randn(3, 12)
    assert torch.equal(IdentityPreconditioner(BLOCKS).solve(V), V)


def test_choose_damping_picks_the_best_held_out_value():
    f = BlockFisher(BLOCKS).update(_G())
    seen = []

    def evaluate(d):
        P = Preconditioner.fit(f, d)
        seen.append(d)
        return -abs(np.log10(d) + 1.0)  # best at 0.1

    res = choose_damping(evaluate, [1e-3, 1e-2, 1e-1, 1.0])
    assert isinstance(res, DampingSearch)
    assert res.best == pytest.approx(0.1) and seen == [1e-3, 1e-2, 1e-1, 1.0]
    assert "<- best" in str(res)
    # NaN is never chosen; ties go to the first candidate.
    assert choose_damping(lambda d: float("nan") if d == 1.0 else 0.0, [1.0, 2.0, 3.0]).best == 2.0
    with pytest.raises(ValueError, match="NaN for every"):
        choose_damping(lambda d: float("nan"), [1.0])
