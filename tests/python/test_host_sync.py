"""Host synchronisations in the hot path: index tensors are range-checked once (not per
call), a batched factorisation reads its results back once. On CUDA every read of a
device value on the host is a synchronisation; here the reads themselves are counted
(Tensor.tolist / item / bool / int / float), on the same code the CUDA path runs."""
import contextlib

import pytest
import torch

import grass.compress as C
from grass import ops
from grass.layers import LayerInfo
from grass.precondition.ifvp import BlockBatches


@contextlib.contextmanager
def host_reads():
    """Counts the host reads of tensor values made inside the block."""
    counts = {"n": 0}
    names = ["tolist", "item", "__bool__", "__int__", "__float__", "__index__"]
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def wrap(fn):
        def counted(self, *args, **kwargs):
            counts["n"] += 1
            return fn(self, *args, **kwargs)
        return counted

    for n in names:
        setattr(torch.Tensor, n, wrap(saved[n]))
    try:
        yield counts
    finally:
        for n in names:
            setattr(torch.Tensor, n, saved[n])


def test_index_tensor_is_checked_once_until_modified():
    idx = torch.tensor([0, 3, 1])
    with host_reads() as reads:
        ops.check_indices(idx, 4)
    assert reads["n"] == 1  # one reduction read back
    with host_reads() as reads:
        for _ in range(5):
            ops._require_in_range("masked_sjlt", "idx", idx, 4)
    assert reads["n"] == 0  # O(1) on the host: the cached bounds
    with pytest.raises(ValueError, match=r"idx must hold indices in \[0, 3\), got idx\[1\] = 3"):
        ops._require_in_range("masked_sjlt", "idx", idx, 3)  # a smaller bound: still refused
    idx[2] = 7  # an in-place change invalidates the cached bounds
    with pytest.raises(ValueError, match=r"grass\.ops\.masked_sjlt: idx must hold indices in \[0, 4\), got idx\[2\] = 7"):
        ops._require_in_range("masked_sjlt", "idx", idx, 4)


def test_compressor_checks_its_indices_when_it_builds_them(gen):
    info = LayerInfo(name="emb", kind="flat", numel=500, param_names=("emb.weight",))
    comp = C.GraSS(32, k_mask=64).build([info])["emb"]
    x = torch.randn(4, 500, generator=gen)
    first = comp.compress(x)
    idx = comp._cached("idx", x.device, lambda: None)
    assert ops._bounds(idx) is not None  # checked when the copy was made
    with host_reads() as reads:
        second = comp.compress(x)
    assert reads["n"] == 0
    assert torch.equal(first, second)


def test_batched_factorisation_reads_back_once(gen):
    sizes = [3, 5, 3, 2, 5]
    K = sum(sizes)
    G = torch.randn(4 * K, K, generator=gen, dtype=torch.float64)
    batches = BlockBatches(sizes, "cpu")
    F = batches.fisher_accumulate(G, torch.zeros(sum(b * b for b in sizes), dtype=torch.float64))
    damping = torch.full((len(sizes),), 0.1, dtype=torch.float64)
    with host_reads() as reads:
        L = batches.cholesky_factor(F.clone(), damping)
    assert reads["n"] == 1
    torch.testing.assert_close(L, ops.cholesky_factor(F.clone(), sizes, damping), rtol=1e-10, atol=1e-12)
    with host_reads() as reads:
        batches.cholesky_solve(L, torch.randn(3, K, generator=gen, dtype=torch.float64),
                               torch.empty(3, K, dtype=torch.float64))
    assert reads["n"] == 0


def test_mask_indices_names_the_range_of_p():
    with pytest.raises(ValueError, match=r"grass\.ops\.mask_indices: p must be in \[1, 9223372036854775807\], got 9223372036854775808"):
        ops.mask_indices(2**63, 5)
