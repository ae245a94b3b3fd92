"""grass.ops.mask_indices, mask_gather and masked_sjlt (GraSS) against the reference."""
import math

import numpy as np
import pytest
import torch

from grass import ops, reference
from grass.testing import assert_close_sum, devices, dtypes, gather_dtypes, randn


@pytest.mark.parametrize("p, k, seed", [(1, 1, 0), (10, 10, 3), (1000, 1, 1), (4096, 4000, 9),
                                        (10**7, 37, 5), (2**40, 3, 2**64 - 1)])
def test_mask_indices_match_reference(p, k, seed):
    """Floyd's algorithm on the hash, both the bitmap and the hash-set paths (large p)."""
    idx = ops.mask_indices(p, k, seed=seed)
    assert idx.dtype == torch.int64 and idx.shape == (k,)
    assert torch.equal(idx, reference.mask_indices(p, k, seed=seed))
    assert bool((idx[1:] > idx[:-1]).all())  # sorted and distinct
    assert int(idx[0]) >= 0 and int(idx[-1]) < p


def test_mask_indices_are_uniform():
    """Each index is kept with probability k/p: over n seeds the inclusion counts c_j are
    Binomial(n, k/p), so sum_j (c_j - n q)^2 / (n q (1 - q)) has mean p and standard
    deviation about sqrt(2 p); allow 5 of them."""
    p, k, n = 60, 12, 3000
    counts = torch.zeros(p, dtype=torch.float64)
    for seed in range(n):
        counts[ops.mask_indices(p, k, seed=seed)] += 1
    q = k / p
    chi2 = float(((counts - n * q) ** 2).sum()) / (n * q * (1 - q))
    assert abs(chi2 - p) < 5 * math.sqrt(2 * p), chi2


@pytest.mark.parametrize("device", devices)
def test_mask_indices_seed_and_device(device):
    a = ops.mask_indices(1000, 50, seed=4, device=device)
    assert a.device.type == device.type
    assert torch.equal(a, ops.mask_indices(1000, 50, seed=4, device=device))
    assert not torch.equal(a, ops.mask_indices(1000, 50, seed=5, device=device))


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", gather_dtypes)
@pytest.mark.parametrize("B, p, idx", [(1, 1, [0]), (4, 50, [49, 0, 7, 7, 3]), (3, 1000, None)])
def test_mask_gather_matches_indexing(B, p, idx, dtype, device, gen):
    x = randn(B, p, dtype=dtype, device=device, generator=gen)
    idx = ops.mask_indices(p, 100, seed=1) if idx is None else torch.tensor(idx)
    idx = idx.to(device)
    out = ops.mask_gather(x, idx)
    assert out.dtype == dtype and out.device == x.device
    assert torch.equal(out, reference.mask_gather(x, idx))  # a gather is exact


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("B, p, kp, k, s, seed", [(1, 1, 1, 1, 1, 0), (3, 1000, 1, 5, 1, 1),
                                                  (5, 777, 300, 37, 3, 2), (2, 4096, 1024, 1, 1, 3),
                                                  (4, 5000, 999, 512, 8, 4)])
def test_masked_sjlt_matches_reference_and_composition(B, p, kp, k, s, seed, dtype, device, gen):
    x = randn(B, p, dtype=dtype, device=device, generator=gen)
    idx = ops.mask_indices(p, kp, seed=seed, device=device)
    y = ops.masked_sjlt(x, idx, k, s=s, seed=seed)
    assert y.dtype == torch.float32 and y.shape == (B, k)
    S = reference.sjlt_matrix(kp, k, s=s, seed=seed)
    xm = x.double().cpu()[:, idx.cpu()]
    abs_sum, terms = xm.abs() @ S.abs().T, (S != 0).sum(1)
    assert_close_sum(y, reference.masked_sjlt(x, idx, k, s=s, seed=seed), abs_sum, terms, "masked_sjlt")
    # The fused kernel equals its unfused composition: mask_gather, then sjlt.
    unfused = ops.sjlt(ops.mask_gather(x, idx), k, s=s, seed=seed)
    assert_close_sum(y, unfused, 2 * abs_sum, terms, "fused vs unfused")


@pytest.mark.parametrize("device", devices)
def test_masked_sjlt_learned_unsorted_mask(device, gen):
    """A learned mask is any index array: unsorted, with repeats."""
    x = randn(3, 40, device=device, generator=gen)
    idx = torch.tensor([39, 2, 2, 17, 0], device=device)
    y = ops.masked_sjlt(x, idx, 8, s=2, seed=6)
    ref = reference.masked_sjlt(x, idx, 8, s=2, seed=6)
    assert torch.allclose(y.double().cpu(), ref.cpu(), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("device", devices)
def test_same_seed_same_output(device, gen):
    x = randn(6, 800, device=device, generator=gen)
    idx = ops.mask_indices(800, 200, seed=1, device=device)
    a = ops.masked_sjlt(x, idx, 32, s=2, seed=3, deterministic=True)
    assert torch.equal(a, ops.masked_sjlt(x, idx, 32, s=2, seed=3, deterministic=True))
    assert not torch.allclose(a, ops.masked_sjlt(x, idx, 32, s=2, seed=4, deterministic=True), atol=1e-3)


@pytest.mark.parametrize("device", devices)
def test_out_is_written_in_place(device, gen):
    x = randn(4, 100, device=device, generator=gen).requires_grad_()  # requires_grad accepted
    idx = ops.mask_indices(100, 10, seed=2, device=device)
    out = torch.full((4, 10), float("nan"), device=device)
    ptr = out.data_ptr()
    assert ops.mask_gather(x, idx, out=out) is out and out.data_ptr() == ptr
    assert torch.equal(out, x.detach()[:, idx])
    out16 = torch.full((4, 16), float("nan"), device=device)
    assert ops.masked_sjlt(x, idx, 16, seed=1, out=out16) is out16
    assert torch.equal(out16, ops.masked_sjlt(x.detach(), idx, 16, seed=1))


def test_numpy_in_and_out(gen):
    x = randn(3, 30, dtype=torch.float64, generator=gen).numpy()
    idx = np.array([3, 1, 29])
    out = np.zeros((3, 3))
    assert ops.mask_gather(x, idx, out=out) is out
    np.testing.assert_array_equal(out, x[:, idx])
    y = ops.masked_sjlt(x.astype(np.float32), idx, 4, seed=1)
    assert isinstance(y, np.ndarray) and y.shape == (3, 4)


M = r"grass\.ops\.mask_indices: "
G = r"grass\.ops\.mask_gather: "
GS = r"grass\.ops\.masked_sjlt: "
ERRORS = [
    (lambda: ops.mask_indices(10, 0), M + r"k must be in \[1, 10\] \(1 <= k <= p = 10\), got 0"),
    (lambda: ops.mask_indices(10, 11), M + r"k must be in \[1, 10\] \(1 <= k <= p = 10\), got 11"),
    (lambda: ops.mask_indices(0, 1), M + r"p must be >= 1, got 0"),
    (lambda: ops.mask_gather(torch.ones(2, 5), torch.tensor([0, 5])), G + r"idx must hold indices in \[0, 5\), got idx\[1\] = 5"),
    (lambda: ops.mask_gather(torch.ones(2, 5), torch.tensor([-1])), G + r"idx must hold indices in \[0, 5\), got idx\[0\] = -1"),
    (lambda: ops.mask_gather(torch.ones(2, 5), torch.tensor([0], dtype=torch.int32)), G + r"idx must be int64, got int32"),
    (lambda: ops.mask_gather(torch.ones(2, 5), torch.tensor([[0]])), G + r"idx must be a 1-D tensor"),
    (lambda: ops.mask_gather(torch.ones(2, 5), torch.tensor([0], device="meta")), G + r"idx must be on x's device cpu, got meta"),
    (lambda: ops.mask_gather(torch.ones(2, 5).int(), torch.tensor([0])), G + r"x must be float32, float16, bfloat16 or float64, got int32"),
    (lambda: ops.mask_gather(torch.ones(2, 5), torch.tensor([0]), out=torch.empty(2, 1).double()), G + r"out must be float32, got float64"),
    (lambda: ops.mask_gather(torch.ones(5, 2).T, torch.tensor([0])), G + r"x must be contiguous"),
    (lambda: ops.masked_sjlt(torch.ones(2, 5), torch.tensor([0, 9]), 4), GS + r"idx must hold indices in \[0, 5\), got idx\[1\] = 9"),
    (lambda: ops.masked_sjlt(torch.ones(2, 5).double(), torch.tensor([0]), 4), GS + r"x must be float32, float16 or bfloat16, got float64"),
    (lambda: ops.masked_sjlt(torch.ones(2, 5), torch.tensor([0]), 0), GS + r"k must be in \[1, 2147483647\], got 0"),
    (lambda: ops.masked_sjlt(torch.ones(2, 5), torch.tensor([0]), 4, s=0), GS + r"s must be in \[1, 4\]"),
    (lambda: ops.masked_sjlt(torch.ones(2, 5, 1), torch.tensor([0]), 4), GS + r"x must be a 2-D tensor \[B, p\], got shape \(2, 5, 1\)"),
    (lambda: ops.masked_sjlt(torch.ones(2, 5), torch.tensor([0]), 4, out=torch.empty(2, 5)), GS + r"out must have shape \(2, 4\), got \(2, 5\)"),
]


@pytest.mark.parametrize("call, message", ERRORS)
def test_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("device", devices)
def test_out_of_range_index_on_device(device):
    """Range checks run where the indices live (on CUDA: on the device, before the kernel)."""
    x = torch.ones(2, 5, device=device)
    with pytest.raises(ValueError, match=r"idx must hold indices in \[0, 5\), got idx\[2\] = 7"):
        ops.masked_sjlt(x, torch.tensor([0, 1, 7], device=device), 4)
