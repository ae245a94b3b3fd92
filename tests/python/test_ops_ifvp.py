"""The iFVP's steps against torch.linalg: grass.ops.fisher_accumulate, cholesky_factor and
cholesky_solve (the C++ core, CPU) and the batched torch path of grass.precondition.ifvp
(CUDA's, run here on every device of grass.testing.devices, the CPU included)."""
import numpy as np
import pytest
import torch

from grass import ops, reference
from grass.precondition.ifvp import BlockBatches
from grass.testing import devices


class Core:
    """grass.ops (the C++ core)."""
    fisher_accumulate = staticmethod(ops.fisher_accumulate)
    cholesky_factor = staticmethod(ops.cholesky_factor)
    cholesky_solve = staticmethod(ops.cholesky_solve)


class Batched:
    """grass.precondition.ifvp.BlockBatches (torch, batched per block size), with ops'
    signatures."""

    @staticmethod
    def fisher_accumulate(G, sizes, F=None):
        if F is None:
            F = torch.zeros(sum(b * b for b in sizes), dtype=torch.float64, device=G.device)
        return BlockBatches(sizes, G.device).fisher_accumulate(G, F)

    @staticmethod
    def cholesky_factor(F, sizes, damping):
        damping = torch.as_tensor(damping, dtype=torch.float64).expand(len(sizes)).clone()
        return BlockBatches(sizes, F.device).cholesky_factor(F, damping)

    @staticmethod
    def cholesky_solve(L, sizes, V, out=None):
        out = torch.empty_like(V) if out is None else out
        return BlockBatches(sizes, L.device).cholesky_solve(L, V, out)


PATHS = [pytest.param(Core, torch.device("cpu"), id="core-cpu")] + [
    pytest.param(Batched, d, id=f"torch-{d.type}") for d in devices]

BLOCKS = [[1], [5], [3, 1, 8], [40, 2, 17]]


def gradients(N, K, dtype, device, gen):
    return torch.randn(N, K, generator=gen, dtype=torch.float64).to(dtype).to(device)


@pytest.mark.parametrize("path, device", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sizes", BLOCKS)
def test_fisher_accumulate_matches_reference(sizes, dtype, path, device, gen):
    K = sum(sizes)
    G = gradients(37, K, dtype, device, gen)
    F = path.fisher_accumulate(G, sizes)
    assert F.dtype == torch.float64 and F.shape == (sum(b * b for b in sizes),) and F.device == G.device
    expected = reference.fisher_accumulate(G, sizes)
    torch.testing.assert_close(F, expected, rtol=1e-12, atol=1e-12 * float(expected.abs().max()))
    # Accumulating over chunks of rows gives the same as one pass, in place.
    F2 = torch.zeros_like(F)
    for chunk in G.split(10):
        assert path.fisher_accumulate(chunk, sizes, F=F2) is F2
    torch.testing.assert_close(F2, F, rtol=1e-12, atol=1e-12 * float(F.abs().max()))


@pytest.mark.parametrize("path, device", PATHS)
@pytest.mark.parametrize("sizes", BLOCKS)
def test_cholesky_factor_and_solve_match_reference(sizes, path, device, gen):
    K = sum(sizes)
    G = gradients(2 * K + 3, K, torch.float64, device, gen)
    damping = [0.1 * (l + 1) for l in range(len(sizes))]
    F = path.fisher_accumulate(G, sizes)
    expected_L = reference.cholesky_factor(F, sizes, damping)
    L = F.clone()
    assert path.cholesky_factor(L, sizes, damping) is L
    torch.testing.assert_close(L, expected_L, rtol=1e-10, atol=1e-10 * float(expected_L.abs().max()))
    for block in reference.unpack_blocks(L, sizes):  # lower triangular, upper zero
        assert torch.equal(block, block.tril())
    for dtype, tol in [(torch.float64, 1e-9), (torch.float32, 1e-5)]:
        V = gradients(6, K, dtype, device, gen)
        X = path.cholesky_solve(L, sizes, V)
        assert X.dtype == dtype and X.shape == V.shape
        expected_X = reference.cholesky_solve(L, sizes, V)
        torch.testing.assert_close(X.double(), expected_X, rtol=tol, atol=tol * float(expected_X.abs().max()))
        # In place: out may be V itself.
        V2 = V.clone()
        assert path.cholesky_solve(L, sizes, V2, out=V2) is V2
        torch.testing.assert_close(V2, X, rtol=tol, atol=tol * float(X.abs().max()))


@pytest.mark.parametrize("path, device", PATHS)
def test_solve_inverts_the_damped_block_diagonal_matrix(path, device, gen):
    """X (F + damping I) = V for the whole block-diagonal matrix (built explicitly)."""
    sizes = [4, 7]
    G = gradients(20, 11, torch.float64, device, gen)
    F = path.fisher_accumulate(G, sizes)
    L = path.cholesky_factor(F.clone(), sizes, 0.5)
    V = gradients(3, 11, torch.float64, device, gen)
    X = path.cholesky_solve(L, sizes, V)
    full = torch.block_diag(*reference.unpack_blocks(F, sizes)) + 0.5 * torch.eye(11, dtype=torch.float64, device=device)
    torch.testing.assert_close(X @ full, V, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("path, device", PATHS)
def test_not_positive_definite_names_the_block_and_keeps_F(path, device):
    sizes = [2, 3]
    F = reference.pack_blocks([torch.eye(2), -torch.eye(3)]).to(device)
    before = F.clone()
    with pytest.raises(ValueError, match=r"block 1 \(size 3\) is not positive definite.*raise damping"):
        path.cholesky_factor(F, sizes, 0.0)
    assert torch.equal(F, before)
    # Enough damping makes it positive definite.
    path.cholesky_factor(F, sizes, [0.0, 2.0])
    torch.testing.assert_close(reference.unpack_blocks(F, sizes)[1], torch.eye(3, dtype=torch.float64, device=device))


def test_numpy_in_and_out(gen):
    G = gradients(10, 5, torch.float64, "cpu", gen).numpy()
    F = np.zeros(2 * 2 + 3 * 3)
    assert ops.fisher_accumulate(G, [2, 3], F=F) is F
    np.testing.assert_allclose(F[:4].reshape(2, 2), G[:, :2].T @ G[:, :2], rtol=1e-12)
    assert ops.cholesky_factor(F, [2, 3], 1.0) is F
    X = ops.cholesky_solve(F, [2, 3], G)
    assert isinstance(X, np.ndarray) and X.shape == G.shape


FA = r"grass\.ops\.fisher_accumulate: "
CF = r"grass\.ops\.cholesky_factor: "
CS = r"grass\.ops\.cholesky_solve: "
ERRORS = [
    (lambda: ops.fisher_accumulate(torch.ones(3, 5), [2, 2]), FA + r"G must have K = sum\(block_sizes\) = 4 columns, got shape \(3, 5\)"),
    (lambda: ops.fisher_accumulate(torch.ones(3, 4).half(), [2, 2]), FA + r"G must be float32 or float64, got float16"),
    (lambda: ops.fisher_accumulate(torch.ones(3, 4), [2, 0, 2]), FA + r"block_sizes\[1\] must be >= 1, got 0"),
    (lambda: ops.fisher_accumulate(torch.ones(3, 4), []), FA + r"block_sizes must name at least one block"),
    (lambda: ops.fisher_accumulate(torch.ones(3, 4), 4), FA + r"block_sizes must be a sequence of positive integers, got 4"),
    (lambda: ops.fisher_accumulate(torch.ones(3, 4), [2, 2], F=torch.zeros(7, dtype=torch.float64)), FA + r"F must be packed float64 of shape \(8,\)"),
    (lambda: ops.fisher_accumulate(torch.ones(3, 4), [2, 2], F=torch.zeros(8)), FA + r"F must be float64, got float32"),
    (lambda: ops.fisher_accumulate(torch.ones(4, 3).T, [2, 1]), FA + r"G must be contiguous"),
    (lambda: ops.cholesky_factor(torch.zeros(8, dtype=torch.float64), [2, 2], [1.0]), CF + r"damping must be a number or a sequence of 2 numbers"),
    (lambda: ops.cholesky_factor(torch.zeros(8, dtype=torch.float64), [2, 2], -1.0), CF + r"damping must be finite and >= 0, got damping\[0\] = -1.0"),
    (lambda: ops.cholesky_factor(torch.zeros(8, dtype=torch.float64), [2, 2], float("nan")), CF + r"damping must be finite and >= 0"),
    (lambda: ops.cholesky_solve(torch.zeros(8, dtype=torch.float64), [2, 2], torch.ones(3, 5)), CS + r"V must have K = sum\(block_sizes\) = 4 columns, got shape \(3, 5\)"),
    (lambda: ops.cholesky_solve(torch.zeros(8, dtype=torch.float64), [2, 2], torch.ones(3, 4), out=torch.ones(3, 4).double()), CS + r"out must be float32, got float64"),
    (lambda: ops.cholesky_solve(torch.zeros(8, dtype=torch.float64), [2, 2], torch.ones(3, 4).bfloat16()), CS + r"V must be float32 or float64, got bfloat16"),
]


@pytest.mark.parametrize("call, message", ERRORS)
def test_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()

