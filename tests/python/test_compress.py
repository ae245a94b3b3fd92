"""Compressors against explicit float64 references built from the same randomness
(``grass.reference`` re-derives SJLT codes, masks and FJLT parameters from the hash on
its own), plus seeds, per-layer k, configs, scaling and errors."""
import math

import pytest
import torch

import grass.compress as C
from grass import ops, reference
from grass.compress.dense import projection_columns
from grass.compress.grass import GraSSCompressor
from grass.compress.mask import kron_indices
from grass.layers import LayerInfo, derive_seed


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def linear(name="fc", d_in=11, d_out=7, bias=True):
    return LayerInfo(name=name, kind="linear", numel=d_out * (d_in + int(bias)), d_in=d_in,
                     d_out=d_out, bias=bias, param_names=(f"{name}.weight",) + ((f"{name}.bias",) if bias else ()))


def flat(name="emb", p=300):
    return LayerInfo(name=name, kind="flat", numel=p, param_names=(f"{name}.weight",))


def factors(gen, info, B=4, T=3):
    return (torch.randn(B, T, info.d_in, generator=gen), torch.randn(B, T, info.d_out, generator=gen))


def kron64(a, g, bias):
    if bias:
        a = torch.cat([a, torch.ones_like(a[..., :1])], -1)
    return torch.einsum("bto,bti->boi", g.double(), a.double()).reshape(a.shape[0], -1)


# ---- each method against its explicit definition ------------------------------------------------

def test_identity_and_dense(gen):
    info = flat(p=700)
    x = torch.randn(5, 700, generator=gen)
    assert torch.equal(C.Identity().build([info])["emb"].compress(x), x)
    for spec, kind in ((C.Gaussian(k=20, seed=3), "gaussian"), (C.Rademacher(k=20, seed=3), "rademacher")):
        comp = spec.build([info])["emb"]
        P = projection_columns(derive_seed(3, "emb"), 20, 0, 700, kind).double()  # P^T [p, k]
        assert rel(comp.compress(x), x.double() @ P) < 1e-6
    R = projection_columns(5, 16, 0, 700, "rademacher")
    assert torch.equal(R.abs(), torch.full_like(R, 1 / 4))


def test_sjlt_fjlt_randommask_grass(gen):
    info = flat(p=300)
    seed = derive_seed(9, "emb")
    x = torch.randn(6, 300, generator=gen)
    S = reference.sjlt_matrix(300, 32, s=2, seed=seed)
    assert rel(C.SJLT(k=32, s=2, seed=9).build([info])["emb"].compress(x), x.double() @ S.T) < 1e-6
    assert rel(C.FJLT(k=32, seed=9).build([info])["emb"].compress(x), reference.fjlt(x, 32, seed=seed)) < 1e-6
    idx = reference.mask_indices(300, 40, seed=seed)
    want = x.double()[:, idx] * math.sqrt(300 / 40)
    assert rel(C.RandomMask(k=40, seed=9).build([info])["emb"].compress(x), want) < 1e-7
    # GraSS: k' = 4k coordinates, scaled sqrt(p/k'), then the SJLT over those k' columns.
    grass = C.GraSS(k=16, seed=9).build([info])["emb"]
    assert grass.k_mask == 64
    idx = reference.mask_indices(300, 64, seed=seed)
    S = reference.sjlt_matrix(64, 16, seed=seed)
    assert rel(grass.compress(x), math.sqrt(300 / 64) * x.double()[:, idx] @ S.T) < 1e-6


@pytest.mark.parametrize("bias", [True, False])
def test_factored_methods_against_explicit_matrices(bias, gen):
    info = linear(d_in=11, d_out=7, bias=bias)
    d_in = 11 + int(bias)
    a, g = factors(gen, info)
    G = kron64(a, g, bias).reshape(4, 7, d_in)
    seed = derive_seed(2, "fc")

    logra = C.LoGra(k_in=4, k_out=3, seed=2).build([info])["fc"]
    p_in, p_out = logra.projections()
    assert p_in.shape == (4, d_in) and p_out.shape == (3, 7)
    want = (p_out.double() @ G @ p_in.double().T).reshape(4, -1)
    assert logra.k == 12
    assert rel(logra.compress_factors(a, g), want) < 1e-6
    assert rel(logra.compress(G.float().reshape(4, -1)), want) < 1e-6

    fs = C.FactorizedSJLT(k_in=5, k_out=4, seed=2).build([info])["fc"]
    S_in = reference.sjlt_matrix(d_in, 5, seed=derive_seed(seed, "in"))
    S_out = reference.sjlt_matrix(7, 4, seed=derive_seed(seed, "out"))
    want = (S_out @ G @ S_in.T).reshape(4, -1)
    assert rel(fs.compress_factors(a, g), want) < 1e-6
    assert rel(fs.compress(G.float().reshape(4, -1)), want) < 1e-6

    fg = C.FactGraSS(k=6, k_in=5, k_out=4, seed=2).build([info])["fc"]
    idx_in = reference.mask_indices(d_in, 5, seed=derive_seed(seed, "in"))
    idx_out = reference.mask_indices(7, 4, seed=derive_seed(seed, "out"))
    S = reference.sjlt_matrix(20, 6, seed=seed)
    z = G[:, idx_out][:, :, idx_in].reshape(4, -1) * math.sqrt(d_in * 7 / 20)
    assert rel(fg.compress_factors(a, g), z @ S.T) < 1e-6
    assert rel(fg.compress(G.float().reshape(4, -1)), z @ S.T) < 1e-6


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("T", [1, 5])
def test_factgrass_equals_grass_with_kronecker_mask(bias, T, gen):
    info = linear(d_in=23, d_out=17, bias=bias)
    a, g = factors(gen, info, B=5, T=T)
    fg = C.FactGraSS(k=32, seed=4, s=2).build([info])["fc"]
    d_in = 23 + int(bias)
    flat_idx = kron_indices(fg.mask.idx_in, fg.mask.idx_out, d_in)
    assert bool((flat_idx[1:] > flat_idx[:-1]).all())  # o-major order is sorted
    gr = GraSSCompressor(info, 32, fg.seed, k_mask=flat_idx.numel(), s=2, indices=flat_idx)
    grad = ops.kron(a, g, bias=bias)
    want = gr.compress(grad) * fg.mask.scale
    assert rel(fg.compress_factors(a, g), want) < 1e-5
    assert rel(gr.compress_factors(a, g) * fg.mask.scale, want) < 1e-5


@pytest.mark.parametrize("spec", [
    C.Identity(), C.Gaussian(k=9), C.Gaussian(k=9, cache_bytes=0, chunk=30), C.Rademacher(k=9),
    C.SJLT(k=9, s=3), C.FJLT(k=9), C.RandomMask(k=9), C.GraSS(k=9, k_mask=40), C.LoGra(k=9),
    C.FactGraSS(k=9), C.FactorizedSJLT(k=9)], ids=lambda s: s.method)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compress_factors_equals_compress_of_kron(spec, dtype, gen):
    info = linear(d_in=13, d_out=8)
    a, g = (t.to(dtype) for t in factors(gen, info, T=4))
    comp = spec.build([info])["fc"]
    got = comp.compress_factors(a, g)
    assert got.dtype == torch.float32 and got.shape == (4, comp.k)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert rel(got, comp.compress(ops.kron(a, g, bias=True))) < tol


# ---- unbiased inner products ---------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda s: C.RandomMask(k=20, seed=s), lambda s: C.GraSS(k=10, k_mask=40, seed=s),
                                  lambda s: C.FactGraSS(k=10, seed=s), lambda s: C.SJLT(k=10, seed=s)],
                         ids=["random_mask", "grass", "factgrass", "sjlt"])
def test_inner_products_unbiased_over_seeds(make, gen):
    info = linear(d_in=9, d_out=10, bias=False)
    x = torch.randn(2, 90, generator=gen).double()
    x[1] = 0.6 * x[0] + 0.8 * x[1]  # correlated pair: <x0, x1> clearly non-zero
    true = float(x[0] @ x[1])
    est = torch.tensor([float((lambda y: y[0] @ y[1])(make(s).build([info])["fc"].compress(x.float()).double()))
                        for s in range(400)])
    se = float(est.std()) / math.sqrt(len(est))
    assert abs(float(est.mean()) - true) < 4 * se + 1e-9, (float(est.mean()), true, se)


# ---- seeds, per-layer k, small layers, configs ----------------------------------------------------

def test_seeds_per_layer_and_reproducible(gen):
    layers = [flat("a", 200), flat("b", 200)]
    x = torch.randn(3, 200, generator=gen)
    one = C.SJLT(k=16, seed=1).build(layers)
    again = C.SJLT(k=16, seed=1).build(layers)
    other = C.SJLT(k=16, seed=2).build(layers)
    assert torch.equal(one["a"].compress(x), again["a"].compress(x))
    assert not torch.equal(one["a"].compress(x), one["b"].compress(x))  # per-layer seeds differ
    assert not torch.equal(one["a"].compress(x), other["a"].compress(x))
    assert one["a"].seed == derive_seed(1, "a")


def test_per_layer_k_and_small_layers():
    layers = [flat("a", 200), flat("b", 50), linear("c", 10, 6)]
    comps = C.GraSS(k={"a": 16, "b": 8, "c": 12}).build(layers)
    assert [c.k for c in comps.values()] == [16, 8, 12]
    with pytest.raises(ValueError, match="no entry for layer 'c'"):
        C.GraSS(k={"a": 16, "b": 8}).build(layers)
    with pytest.raises(ValueError, match=r"not attributed: \['zz'\]"):
        C.GraSS(k={"a": 16, "b": 8, "c": 4, "zz": 3}).build(layers)
    comps = C.SJLT(k=64).build(layers)
    assert comps["b"].method == "identity" and comps["b"].k == 50  # kept whole
    assert C.LoGra(k=10_000).build(layers)["c"].method == "identity"


@pytest.mark.parametrize("spec", [
    C.Identity(), C.Gaussian(k=8, seed=1), C.Rademacher(k=8), C.SJLT(k=8, s=2), C.FJLT(k=8),
    C.RandomMask(k={"fc": 8, "emb": 5}), C.SelectiveMask(k=8, fit={"steps": 7}), C.GraSS(k=8, mask_factor=2.5),
    C.GraSS(k=8, mask="selective"), C.LoGra(k_in=3, k_out=2, flat=C.Gaussian(k=5)), C.LoGra(k=12), C.FactGraSS(k=8, s=2, flat=C.SJLT(k=5)),
    C.FactGraSS(k=8, mask="selective"), C.FactorizedSJLT(k=9, s=1)], ids=lambda s: s.method)
def test_config_round_trip(spec, gen):
    import json
    cfg = json.loads(json.dumps(spec.config()))
    again = C.from_config(cfg)
    assert again == spec and again.config() == spec.config()
    layers = [linear("fc", 10, 6), flat("emb", 120)]
    a, b = spec.build(layers), again.build(layers)
    assert [c.config() for c in a.values()] == [c.config() for c in b.values()]
    if not spec.needs_fit:
        x = torch.randn(3, 120, generator=gen)
        assert torch.equal(a["emb"].compress(x), b["emb"].compress(x))


def test_factored_specs_on_flat_layers_use_their_flat_method():
    layers = [linear("fc", 30, 20), flat("emb", 500)]
    assert C.FactGraSS(k=16).build(layers)["emb"].method == "grass"
    assert C.LoGra(k=16).build(layers)["emb"].method == "gaussian"
    assert C.FactorizedSJLT(k=16).build(layers)["emb"].method == "sjlt"
    assert C.FactGraSS(k=16, flat=C.RandomMask(k=7)).build(layers)["emb"].method == "random_mask"
    with pytest.raises(ValueError, match="flat method"):
        C.FactGraSS(k=16, flat=C.LoGra(k=4))
    with pytest.raises(ValueError, match="no flat method"):
        C.LoGra(k_in=2, k_out=2).build(layers)


# ---- errors ----------------------------------------------------------------------------------

def test_errors(gen):
    info = linear()
    comp = C.SJLT(k=8).build([info])["fc"]
    with pytest.raises(ValueError, match=r"shape \[B, 84\]"):
        comp.compress(torch.randn(2, 83))
    with pytest.raises(ValueError, match=r"expected a \[\.\.\., 11\]"):
        comp.compress_factors(torch.randn(2, 3, 10), torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match="agree on"):
        comp.compress_factors(torch.randn(2, 3, 11), torch.randn(2, 4, 7))
    flat_comp = C.SJLT(k=8).build([flat()])["emb"]
    with pytest.raises(ValueError, match="is for linear layers"):
        flat_comp.compress_factors(torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="positive int"):
        C.SJLT(k=0)
    with pytest.raises(ValueError, match="s .*positive int"):
        C.SJLT(k=4, s=0)
    with pytest.raises(ValueError, match="mask must be one of"):
        C.GraSS(k=4, mask="magic")
    with pytest.raises(ValueError, match="unknown compressor method"):
        C.from_config({"method": "nope"})
    with pytest.raises(TypeError, match="LayerInfo"):
        C.SJLT(k=4).build(["fc"])
    with pytest.raises(ValueError, match="k_in and k_out"):
        C.LoGra(k_in=3)
    with pytest.raises(ValueError, match="fit options apply"):
        C.GraSS(k=4, fit={"steps": 3})


@pytest.mark.parametrize("spec", [C.SelectiveMask(k=8), C.GraSS(k=4, mask="selective"),
                                  C.FactGraSS(k=4, mask="selective")], ids=lambda s: s.method)
def test_learned_masks_refuse_to_run_unfitted(spec, gen):
    info = linear(d_in=20, d_out=12)
    comp = spec.build([info])["fc"]
    assert spec.needs_fit and comp.needs_fit
    with pytest.raises(RuntimeError, match="not been fitted"):
        comp.compress(torch.randn(2, info.numel))
    with pytest.raises(RuntimeError, match="never used in its place"):
        comp.compress_factors(*factors(gen, info))


def test_selective_state_round_trip_and_bad_state(gen):
    info = linear(d_in=20, d_out=12)
    a, g = factors(gen, info, B=24, T=1)
    for spec in (C.SelectiveMask(k=30, fit={"steps": 10}), C.SelectiveMask(k=30, factored=False, fit={"steps": 10}),
                 C.GraSS(k=8, mask="selective", fit={"steps": 10}), C.FactGraSS(k=8, mask="selective", fit={"steps": 10})):
        comp = spec.build([info])["fc"]
        report = comp.fit((a, g))
        assert not comp.needs_fit and -1 <= report["heldout_correlation"] <= 1
        state = C.state_dict({"fc": comp})
        fresh = spec.build([info])
        C.load_state_dict(fresh, state)
        assert torch.equal(fresh["fc"].compress_factors(a, g), comp.compress_factors(a, g))
        key = next(iter(state["fc"]))
        bad = {k: v.clone() for k, v in state["fc"].items()}
        bad[key] = bad[key][:-1]
        with pytest.raises(ValueError, match="must hold"):
            spec.build([info])["fc"].load_state_dict(bad)
        with pytest.raises(ValueError, match="state must have keys"):
            spec.build([info])["fc"].load_state_dict({"wrong": bad[key]})
    with pytest.raises(ValueError, match="do not have"):
        C.load_state_dict({"fc": comp}, {"other": {}})


def test_rank_deficient_sketches_warn():
    """A mask smaller than k leaves the sketch rank-deficient: k_mask < k (GraSS) and
    k_in * k_out < k (FactGraSS) warn with the rank; a mask of k or more does not."""
    import warnings
    lin, emb = linear("fc", 40, 30), flat("emb", 1000)
    with pytest.warns(UserWarning, match=r"layer 'emb': k_mask = 16 < k = 64: the sketch has rank at most min\(k, k_mask\) = 16"):
        C.GraSS(64, k_mask=16).build([emb])
    with pytest.warns(UserWarning, match=r"layer 'fc': k_in \* k_out = 20 < k = 100: the sketch has rank at most .* = 20"):
        C.FactGraSS(100, k_in=4, k_out=5).build([lin])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        C.GraSS(64, k_mask=64).build([emb])
        C.FactGraSS(100, k_in=10, k_out=10).build([lin])
        C.FactGraSS(100).build([lin])
