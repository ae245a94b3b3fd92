"""grass.ops.sjlt, sjlt_transpose and sjlt_codes against the explicit-matrix reference."""
import math

import numpy as np
import pytest
import torch

from grass import _C, ops, reference
from grass.testing import assert_close_sum, devices, dtypes, randn

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

# (B, p, k, s, seed): awkward sizes on purpose (p not a power of two, B = 1, k = 1, s > 1,
# p < k, s = k, a seed above 2**63).
CASES = [
    (1, 1, 1, 1, 0),
    (3, 1000, 1, 1, 1),
    (1, 777, 64, 1, 2),
    (5, 1000, 37, 3, 3),
    (4, 4096, 256, 4, 4),
    (2, 300, 12, 12, 5),
    (6, 2, 512, 2, 2**63 + 11),
]


def sjlt_bound(x, S):
    """|S| |x| and the number of summed terms per bucket, for assert_close_sum."""
    x64 = reference._dense64(x).cpu()
    S = S.cpu()
    return x64.abs() @ S.abs().T, (S != 0).sum(1)


@pytest.mark.parametrize("p, k, s, seed", [(1, 1, 1, 0), (1000, 37, 3, 5), (333, 64, 64, 7),
                                           (50, 2**31 - 1, 5, 2**64 - 1)])
def test_codes_match_the_reference_hash(p, k, s, seed):
    bucket, sign = ops.sjlt_codes(p, k, s=s, seed=seed)
    ref_bucket, ref_sign = reference.sjlt_codes(p, k, s=s, seed=seed)
    assert bucket.dtype == torch.int64 and sign.dtype == torch.int8
    assert bucket.shape == (p, s) and sign.shape == (p, s)
    assert torch.equal(bucket, ref_bucket)
    assert torch.equal(sign, ref_sign)
    # Replica r lands in block r, so the s buckets of a column are distinct.
    r = torch.arange(s)
    assert bool(((bucket >= r * k // s) & (bucket < (r + 1) * k // s)).all())
    assert set(sign.unique().tolist()) <= {-1, 1}


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("B, p, k, s, seed", CASES)
def test_dense_matches_reference(B, p, k, s, seed, dtype, device, gen):
    x = randn(B, p, dtype=dtype, device=device, generator=gen)
    y = ops.sjlt(x, k, s=s, seed=seed)
    assert y.dtype == torch.float32 and y.shape == (B, k) and y.device == x.device
    S = reference.sjlt_matrix(p, k, s=s, seed=seed)
    abs_sum, terms = sjlt_bound(x, S)
    assert_close_sum(y, reference.sjlt(x, k, s=s, seed=seed), abs_sum, terms, "sjlt")


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("density", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("B, p, k, s, seed", [(1, 1, 1, 1, 0), (7, 999, 50, 2, 1), (3, 2048, 33, 5, 2)])
def test_sparse_csr_equals_dense(B, p, k, s, seed, density, dtype, device, gen):
    x = randn(B, p, dtype=dtype, generator=gen)
    x[torch.rand(B, p, generator=gen) >= density] = 0
    x[B // 2] = 0  # an empty row
    x = x.to(device)
    csr = x.to_sparse_csr()
    y_sparse = ops.sjlt(csr, k, s=s, seed=seed)
    y_dense = ops.sjlt(x, k, s=s, seed=seed)
    S = reference.sjlt_matrix(p, k, s=s, seed=seed)
    abs_sum, terms = sjlt_bound(x, S)
    assert_close_sum(y_sparse, y_dense, 2 * abs_sum, terms, "sparse vs dense")
    assert_close_sum(y_sparse, reference.sjlt(csr, k, s=s, seed=seed), abs_sum, terms, "sparse")
    assert not bool(y_sparse[B // 2].any())


@pytest.mark.parametrize("device", devices)
def test_sparse_csr_with_int32_indices(device, gen):
    x = randn(4, 300, generator=gen)
    x[x.abs() < 1] = 0
    csr = x.to_sparse_csr()
    csr32 = torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(),
                                    csr.values(), size=csr.shape, check_invariants=True).to(device)
    assert csr32.crow_indices().dtype == torch.int32
    assert torch.equal(ops.sjlt(csr32, 16, seed=3).cpu(), ops.sjlt(csr.to(device), 16, seed=3).cpu())


@pytest.mark.parametrize("device", devices)
def test_sparse_columns_beyond_2_to_the_31(device):
    """64-bit column indices: a CSR row of width 6 * 2**30 with entries at huge columns."""
    p, k, s, seed = 6 * 2**30, 1000, 3, 9
    cols = torch.tensor([0, 2**31 - 1, 2**31, 2**32 + 5, p - 1], dtype=torch.int64)
    vals = torch.tensor([1.0, -2.0, 3.0, 0.5, 4.0])
    x = torch.sparse_csr_tensor(torch.tensor([0, 5]), cols, vals, size=(1, p), check_invariants=True).to(device)
    y = ops.sjlt(x, k, s=s, seed=seed).cpu().double()
    bucket, sign = reference.sjlt_codes(p, k, s=s, seed=seed, columns=cols.numpy())
    expected = torch.zeros(1, k, dtype=torch.float64)
    for c in range(len(cols)):
        for r in range(s):
            expected[0, bucket[c, r]] += float(sign[c, r]) * float(vals[c]) / math.sqrt(s)
    assert torch.allclose(y, expected, rtol=0, atol=1e-5)
    assert torch.equal(ops.sjlt_codes(1, k, s=s, seed=seed)[0], reference.sjlt_codes(1, k, s=s, seed=seed)[0])


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("B, p, k, s, seed", CASES)
def test_transpose_matches_reference_and_is_the_adjoint(B, p, k, s, seed, device, gen):
    y = randn(B, k, device=device, generator=gen)
    xt = ops.sjlt_transpose(y, p, s=s, seed=seed)
    assert xt.dtype == torch.float32 and xt.shape == (B, p)
    S = reference.sjlt_matrix(p, k, s=s, seed=seed)
    assert_close_sum(xt, reference.sjlt_transpose(y, p, s=s, seed=seed),
                     y.double().abs().cpu() @ S.abs(), (S != 0).sum(0), "sjlt_transpose")
    # <S x, y> = <x, S^T y> per row.
    x = randn(B, p, device=device, generator=gen)
    lhs = (ops.sjlt(x, k, s=s, seed=seed).double() * y.double()).sum(1)
    rhs = (x.double() * xt.double()).sum(1)
    scale = (x.double().abs().cpu() @ S.abs().T * y.double().abs().cpu()).sum(1)
    assert_close_sum(lhs, rhs, scale, p + k, "adjoint")


@pytest.mark.parametrize("s", [1, 4])
def test_norm_is_preserved_in_expectation(s, gen):
    """Over many seeds (and a different vector for each), ||Sx||^2 / ||x||^2 has mean 1 and
    the variance of this construction: for replica blocks of widths w_r,
    Var = (2 / s^2) sum_r (1 - sum x^4 / ||x||^4) / w_r (random signs, uniform buckets)."""
    p, k, n = 300, 64, 400
    widths = torch.tensor([(r + 1) * k // s - r * k // s for r in range(s)], dtype=torch.float64)
    ratios, variances = [], []
    for seed in range(n):
        x = randn(1, p, generator=gen)
        x[0, :10] *= 5  # a few heavy coordinates make the vectors less benign
        nx2 = float(x.double().pow(2).sum())
        ratios.append(float(ops.sjlt(x, k, s=s, seed=seed).double().pow(2).sum()) / nx2)
        flat = 1 - float(x.double().pow(4).sum()) / nx2**2
        variances.append(float(2 / s**2 * (flat / widths).sum()))
    ratios = torch.tensor(ratios, dtype=torch.float64)
    se = math.sqrt(sum(variances)) / n
    assert abs(float(ratios.mean()) - 1) < 5 * se, (float(ratios.mean()), se)
    # The spread matches the theory: the sample variance around the known mean 1, against
    # the mean theoretical variance, within 5 standard errors of that estimate.
    dev2 = (ratios - 1) ** 2
    theory = sum(variances) / n
    se_var = float(dev2.std()) / math.sqrt(n)
    assert abs(float(dev2.mean()) - theory) < 5 * se_var, (float(dev2.mean()), theory, se_var)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("sparse", [False, True])
def test_same_seed_same_output_other_seed_different(device, sparse, gen):
    x = randn(8, 1000, device=device, generator=gen)
    if sparse:
        x = x.to_sparse_csr()
    # CPU is always bitwise reproducible; CUDA is with deterministic=True.
    a = ops.sjlt(x, 64, s=2, seed=5, deterministic=True)
    b = ops.sjlt(x, 64, s=2, seed=5, deterministic=True)
    c = ops.sjlt(x, 64, s=2, seed=6, deterministic=True)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)
    t1 = ops.sjlt_transpose(a, 1000, s=2, seed=5)
    assert torch.equal(t1, ops.sjlt_transpose(a, 1000, s=2, seed=5))
    assert not torch.allclose(t1, ops.sjlt_transpose(a, 1000, s=2, seed=6), atol=1e-3)


@pytest.mark.parametrize("device", devices)
def test_out_is_written_in_place(device, gen):
    x = randn(3, 500, device=device, generator=gen)
    buf = torch.full((6, 40), float("nan"), device=device)
    out = buf[2:5]  # a contiguous view into the caller's buffer
    ptr = out.data_ptr()
    y = ops.sjlt(x, 40, s=2, seed=1, out=out)
    assert y is out and y.data_ptr() == ptr
    assert torch.equal(buf[2:5], ops.sjlt(x, 40, s=2, seed=1))
    assert bool(buf[:2].isnan().all()) and bool(buf[5:].isnan().all())  # nothing else touched
    # The same through the sparse path and the transpose.
    out.fill_(float("nan"))
    assert ops.sjlt(x.to_sparse_csr(), 40, s=2, seed=1, out=out) is out
    assert not bool(out.isnan().any())
    outt = torch.empty(3, 500, device=device)
    assert ops.sjlt_transpose(y, 500, s=2, seed=1, out=outt) is outt


def test_numpy_in_and_out(gen):
    x = randn(3, 200, generator=gen).numpy()
    y = ops.sjlt(x, 16, seed=2)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    np.testing.assert_array_equal(y, ops.sjlt(torch.from_numpy(x), 16, seed=2).numpy())
    out = np.full((3, 16), np.nan, dtype=np.float32)
    assert ops.sjlt(x, 16, seed=2, out=out) is out
    np.testing.assert_array_equal(out, y)
    x.setflags(write=False)  # read-only inputs are fine
    np.testing.assert_array_equal(ops.sjlt(x, 16, seed=2), y)
    # The binding itself takes numpy arrays zero-copy and writes into them.
    out2 = np.zeros((3, 16), dtype=np.float32)
    _C.sjlt(x, out2, 16, 1, 2, False, 0)
    np.testing.assert_array_equal(out2, y)


@pytest.mark.parametrize("device", devices)
def test_requires_grad_inputs_are_accepted(device, gen):
    x = randn(2, 100, device=device, generator=gen).requires_grad_()
    y = ops.sjlt(x, 8, seed=1)
    assert not y.requires_grad
    assert torch.equal(y, ops.sjlt(x.detach(), 8, seed=1))
    yt = ops.sjlt_transpose(y.clone().requires_grad_(), 100, seed=1)
    assert not yt.requires_grad


@pytest.mark.parametrize("device", devices)
def test_empty_inputs(device):
    assert ops.sjlt(torch.empty(0, 10, device=device), 4).shape == (0, 4)
    y = ops.sjlt(torch.empty(3, 0, device=device), 4)
    assert y.shape == (3, 4) and not bool(y.any())
    assert ops.sjlt_transpose(torch.ones(2, 4, device=device), 0).shape == (2, 0)


def _x():
    return torch.ones(3, 8)


SJLT = r"grass\.ops\.sjlt: "
T = r"grass\.ops\.sjlt_transpose: "
CODES = r"grass\.ops\.sjlt_codes: "
ERRORS = [
    (lambda: ops.sjlt(_x().double(), 4), SJLT + r"x must be float32, float16 or bfloat16, got float64"),
    (lambda: ops.sjlt(_x().int(), 4), SJLT + r"x must be float32, float16 or bfloat16, got int32"),
    (lambda: ops.sjlt(torch.ones(3, 4, 5), 4), SJLT + r"x must be a 2-D tensor \[B, p\], got shape \(3, 4, 5\)"),
    (lambda: ops.sjlt(torch.ones(8), 4), SJLT + r"x must be a 2-D tensor \[B, p\], got shape \(8,\)"),
    (lambda: ops.sjlt(torch.ones(8, 3).T, 4), SJLT + r"x must be contiguous .* strides \(1, 3\)"),
    (lambda: ops.sjlt(_x(), 0), SJLT + r"k must be in \[1, 2147483647\], got 0"),
    (lambda: ops.sjlt(_x(), -3), SJLT + r"k must be in \[1, 2147483647\], got -3"),
    (lambda: ops.sjlt(_x(), 2**31), SJLT + r"k must be in \[1, 2147483647\], got 2147483648"),
    (lambda: ops.sjlt(_x(), 4.0), SJLT + r"k must be an integer, got float"),
    (lambda: ops.sjlt(_x(), 4, s=0), SJLT + r"s must be in \[1, 4\] \(1 <= s <= k\), got 0"),
    (lambda: ops.sjlt(_x(), 4, s=5), SJLT + r"s must be in \[1, 4\] \(1 <= s <= k\), got 5"),
    (lambda: ops.sjlt(_x(), 4, seed=-1), SJLT + r"seed must be in \[0, 18446744073709551615\], got -1"),
    (lambda: ops.sjlt(_x(), 4, out=torch.empty(3, 4, dtype=torch.float64)), SJLT + r"out must be float32, got float64"),
    (lambda: ops.sjlt(_x(), 4, out=torch.empty(3, 5)), SJLT + r"out must have shape \(3, 4\), got \(3, 5\)"),
    (lambda: ops.sjlt(_x(), 4, out=torch.empty(4, 3).T), SJLT + r"out must be contiguous"),
    (lambda: ops.sjlt(_x(), 4, out=torch.empty(3, 4, device="meta")), SJLT + r"out must be on x's device cpu, got meta"),
    (lambda: ops.sjlt(_x().to("meta"), 4), SJLT + r"x must be a CPU or CUDA tensor, got device meta"),
    (lambda: ops.sjlt(_x(), 4, out=torch.empty(3, 4, requires_grad=True)), SJLT + r"out must not require grad"),
    (lambda: ops.sjlt(_x().to_sparse(), 4), SJLT + r"x must be a dense tensor or a torch.sparse_csr_tensor, got layout torch.sparse_coo .*to_sparse_csr\(\)"),
    (lambda: ops.sjlt([[1.0]], 4), SJLT + r"x must be a torch.Tensor or numpy.ndarray, got list"),
    (lambda: ops.sjlt(_x().to_sparse_csr().double(), 4), SJLT + r"x.values\(\) must be float32, float16 or bfloat16, got float64"),
    (lambda: ops.sjlt(np.ones((3, 8), np.float32), 4, out=np.ones((4, 3), np.float32)), SJLT + r"out must have shape \(3, 4\), got \(4, 3\)"),
    (lambda: ops.sjlt(np.ones((3, 8), np.float32), 4, out=np.ones((3, 4), np.float64)), SJLT + r"out must be float32, got float64"),
    (lambda: ops.sjlt_transpose(torch.ones(2, 4).double(), 5), T + r"y must be float32, got float64"),
    (lambda: ops.sjlt_transpose(torch.ones(2, 0), 5), T + r"y must have k >= 1 columns"),
    (lambda: ops.sjlt_transpose(torch.ones(2, 4), -1), T + r"p must be >= 0, got -1"),
    (lambda: ops.sjlt_transpose(torch.ones(2, 4), 5, s=5), T + r"s must be in \[1, 4\]"),
    (lambda: ops.sjlt_transpose(torch.ones(2, 4), 5, out=torch.empty(2, 6)), T + r"out must have shape \(2, 5\), got \(2, 6\)"),
    (lambda: ops.sjlt_codes(5, 0), CODES + r"k must be in \[1, 2147483647\], got 0"),
    (lambda: ops.sjlt_codes(-1, 3), CODES + r"p must be >= 0, got -1"),
]


@pytest.mark.parametrize("call, message", ERRORS)
def test_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("device", devices)
def test_csr_index_out_of_range(device):
    """A column index >= p is refused before any kernel runs (C++ on CPU, torch on CUDA)."""
    x = torch.sparse_csr_tensor(torch.tensor([0, 1, 2]), torch.tensor([3, 8]), torch.tensor([1.0, 2.0]),
                                size=(2, 8), check_invariants=False).to(device)
    with pytest.raises(ValueError, match=r"grass\.\S+: .*in \[0, (p = )?8\)"):
        ops.sjlt(x, 4)
    for crow in ([0, 2, 1], [1, 2, 2], [0, 1, 3], [0, 1, 1]):
        bad = torch.sparse_csr_tensor(torch.tensor(crow), torch.tensor([3, 4]), torch.tensor([1.0, 2.0]),
                                      size=(2, 8), check_invariants=False).to(device)
        with pytest.raises(ValueError, match=r"grass\.\S+: .*(indptr|crow_indices)"):
            ops.sjlt(bad, 4)


def test_binding_checks_too():
    """grass._C never converts: a wrong dtype or layout is a ValueError, not a silent copy.
    Its messages are the ones grass.ops users see (ops only renames the function)."""
    x = torch.ones(3, 8)
    with pytest.raises(ValueError, match=r"grass\._C\.sjlt: out must be float32, got float64"):
        _C.sjlt(x, torch.empty(3, 4, dtype=torch.float64), 4, 1, 0, False, 0)
    with pytest.raises(ValueError, match=r"grass\._C\.sjlt: x must be contiguous \(C order\), got shape \(3, 8\) with strides \(1, 3\)"):
        _C.sjlt(torch.ones(8, 3).T, torch.empty(3, 4), 4, 1, 0, False, 0)
    with pytest.raises(ValueError, match=r"grass\._C\.sjlt: out must have shape \(3, 4\), got \(3, 5\)"):
        _C.sjlt(x, torch.empty(3, 5), 4, 1, 0, False, 0)
    with pytest.raises(ValueError, match=r"s must be"):
        _C.sjlt(x, torch.empty(3, 4), 4, 5, 0, False, 0)
    buf = torch.ones(3, 8)
    with pytest.raises(ValueError, match=r"out must not share memory with x"):
        _C.sjlt(buf, buf.view(-1)[:12].view(3, 4), 4, 1, 0, False, 0)
    with pytest.raises(ValueError, match=r"grass\._C\.sjlt_csr: indptr must be int64, got int32"):
        _C.sjlt_csr(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0]), torch.ones(1),
                    torch.empty(1, 4), 8, 4, 1, 0, False, 0)
