"""Dense projections generated in seed blocks: one matrix whatever the chunking, and never
the whole k x p matrix in memory when streaming."""
import pytest
import torch

import grass.compress as C
from grass.compress.dense import BLOCK, projection_columns
from grass.layers import LayerInfo, derive_seed


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_columns_do_not_depend_on_the_chunking(kind):
    p, k = 3 * BLOCK + 37, 12
    full = projection_columns(11, k, 0, p, kind)
    assert full.shape == (p, k)
    for chunk in (1, 7, 100, BLOCK, BLOCK + 1, 1000):
        parts = [projection_columns(11, k, c, min(p, c + chunk), kind) for c in range(0, p, chunk)]
        assert torch.equal(torch.cat(parts), full), chunk
    # A column depends on (seed, k, j) only: a longer matrix starts with the same columns.
    assert torch.equal(projection_columns(11, k, 0, p + 500, kind)[:p], full)
    assert not torch.equal(projection_columns(12, k, 0, p, kind), full)


def test_entry_statistics():
    G = projection_columns(3, 64, 0, 4096, "gaussian")
    assert abs(float(G.mean())) < 4 * (1 / 8) / 512          # N(0, 1/k), 262144 draws
    assert abs(float(G.var()) * 64 - 1) < 0.02
    R = projection_columns(3, 64, 0, 4096, "rademacher")
    assert torch.equal(R.abs(), torch.full_like(R, 1 / 8))
    assert abs(float((R > 0).float().mean()) - 0.5) < 0.01


@pytest.mark.parametrize("chunk", [1, 300, 1000])
@pytest.mark.parametrize("spec_cls", [C.Gaussian, C.Rademacher])
def test_streamed_projection_never_holds_the_matrix(spec_cls, chunk):
    p, k = 5 * BLOCK + 11, 16
    flat = LayerInfo(name="emb", kind="flat", numel=p, param_names=("emb.weight",))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, p, generator=gen)
    streamed = spec_cls(k=k, seed=5, chunk=chunk, cache_bytes=0).build([flat])["emb"]
    cached = spec_cls(k=k, seed=5).build([flat])["emb"]
    assert cached.cached and not streamed.cached
    P = projection_columns(derive_seed(5, "emb"), k, 0, p, spec_cls.kind).double()
    want = x.double() @ P
    assert rel(streamed.compress(x), want) < 1e-6
    assert rel(cached.compress(x), want) < 1e-6
    # Memory: the largest slab of P generated at once is the chunk (rounded up to whole
    # blocks), far from all p columns.
    assert streamed.peak_columns <= max(BLOCK, -(-chunk // BLOCK) * BLOCK)
    assert streamed.peak_columns < p


def test_streamed_projection_from_factors():
    d_in, d_out, k = 40, 30, 8
    info = LayerInfo(name="fc", kind="linear", numel=d_out * (d_in + 1), d_in=d_in, d_out=d_out,
                     bias=True, param_names=("fc.weight", "fc.bias"))
    gen = torch.Generator().manual_seed(1)
    a, g = torch.randn(2, 5, d_in, generator=gen), torch.randn(2, 5, d_out, generator=gen)
    comp = C.Gaussian(k=k, seed=1, chunk=BLOCK, cache_bytes=0).build([info])["fc"]
    a1 = torch.cat([a, torch.ones(2, 5, 1)], -1).double()
    G = torch.einsum("bto,bti->boi", g.double(), a1).reshape(2, -1)
    P = projection_columns(derive_seed(1, "fc"), k, 0, info.numel).double()
    assert rel(comp.compress_factors(a, g), G @ P) < 1e-6
    assert comp.peak_columns <= BLOCK < info.numel
