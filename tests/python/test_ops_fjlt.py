"""grass.ops.fjlt and fjlt_params against an explicit Hadamard product."""
import math

import numpy as np
import pytest
import torch

from grass import ops, reference
from grass.testing import assert_close_sum, devices, dtypes, randn


@pytest.mark.parametrize("p, k, seed", [(1, 1, 0), (5, 8, 1), (1000, 64, 2), (1024, 1024, 3),
                                        (3000, 100, 2**64 - 1)])
def test_params_match_reference(p, k, seed):
    signs, rows = ops.fjlt_params(p, k, seed=seed)
    ref_signs, ref_rows = reference.fjlt_params(p, k, seed=seed)
    assert signs.dtype == torch.int8 and signs.shape == (p,)
    assert rows.dtype == torch.int64 and rows.shape == (k,)
    assert torch.equal(signs, ref_signs) and torch.equal(rows, ref_rows)
    assert bool((rows[1:] > rows[:-1]).all()) and int(rows[-1]) < reference.fjlt_padded_size(p)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("B, p, k, seed", [(1, 1, 1, 0), (3, 5, 8, 1), (2, 1000, 64, 2),
                                           (4, 1024, 1024, 3), (1, 3000, 100, 4), (2, 4097, 1, 5)])
def test_matches_explicit_hadamard(B, p, k, seed, dtype, device, gen):
    x = randn(B, p, dtype=dtype, device=device, generator=gen)
    y = ops.fjlt(x, k, seed=seed)
    assert y.dtype == torch.float32 and y.shape == (B, k) and y.device == x.device
    expected = reference.fjlt(x, k, seed=seed)
    # Each output is a +-1 combination of all p inputs over log2(P) butterfly stages.
    stages = int(math.log2(reference.fjlt_padded_size(p)))
    abs_sum = x.double().abs().sum(1, keepdim=True).cpu().expand(B, k) / math.sqrt(k)
    assert_close_sum(y, expected, abs_sum, stages + 1, "fjlt")


def test_norm_is_preserved_in_expectation(gen):
    """E ||y||^2 = ||x||^2 over the random signs and rows: the mean ratio over many seeds
    (a new vector for each) is 1 within 5 standard errors of the sample."""
    p, k, n = 700, 32, 300
    ratios = []
    for seed in range(n):
        x = randn(1, p, generator=gen)
        x[0, :5] *= 8
        ratios.append(float(ops.fjlt(x, k, seed=seed).double().pow(2).sum() / x.double().pow(2).sum()))
    ratios = torch.tensor(ratios, dtype=torch.float64)
    se = float(ratios.std()) / math.sqrt(n)
    assert abs(float(ratios.mean()) - 1) < 5 * se, (float(ratios.mean()), se)


@pytest.mark.parametrize("device", devices)
def test_seeds_out_and_grad(device, gen):
    x = randn(3, 600, device=device, generator=gen).requires_grad_()
    a = ops.fjlt(x, 40, seed=1)
    assert not a.requires_grad
    assert torch.equal(a, ops.fjlt(x, 40, seed=1))
    assert not torch.allclose(a, ops.fjlt(x, 40, seed=2), atol=1e-3)
    out = torch.full((3, 40), float("nan"), device=device)
    ptr = out.data_ptr()
    assert ops.fjlt(x, 40, seed=1, out=out) is out and out.data_ptr() == ptr
    assert torch.equal(out, a)


def test_numpy_in_and_out(gen):
    x = randn(2, 20, generator=gen).numpy()
    out = np.zeros((2, 8), dtype=np.float32)
    assert ops.fjlt(x, 8, seed=3, out=out) is out
    np.testing.assert_allclose(out, reference.fjlt(torch.from_numpy(x), 8, seed=3).numpy(), rtol=1e-5, atol=1e-5)


F = r"grass\.ops\.fjlt: "
ERRORS = [
    (lambda: ops.fjlt(torch.ones(2, 5), 9), F + r"k must be in \[1, 8\] \(P = 8, the next power of two >= p = 5\), got 9"),
    (lambda: ops.fjlt(torch.ones(2, 5), 0), F + r"k must be in \[1, 8\]"),
    (lambda: ops.fjlt(torch.ones(2, 0), 1), F + r"x must have p >= 1 columns, got shape \(2, 0\)"),
    (lambda: ops.fjlt(torch.ones(2, 5).double(), 4), F + r"x must be float32, float16 or bfloat16, got float64"),
    (lambda: ops.fjlt(torch.ones(5), 4), F + r"x must be a 2-D tensor \[B, p\], got shape \(5,\)"),
    (lambda: ops.fjlt(torch.ones(5, 2).T, 4), F + r"x must be contiguous"),
    (lambda: ops.fjlt(torch.ones(2, 5), 4, out=torch.ones(2, 4, dtype=torch.float16)), F + r"out must be float32, got float16"),
    (lambda: ops.fjlt(torch.ones(2, 5), 4, seed=2**64), F + r"seed must be in \[0, 18446744073709551615\]"),
    (lambda: ops.fjlt_params(5, 9), r"grass\.ops\.fjlt_params: k must be in \[1, 8\]"),
]


@pytest.mark.parametrize("call, message", ERRORS)
def test_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
