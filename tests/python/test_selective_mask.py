"""SelectiveMask: learned masks preserve train x test gradient inner products better than
random masks of the same size, on held-out gradients of a real model (an MLP trained
briefly on scikit-learn's digits), through the whole capture -> fit -> compress path."""
import numpy as np
import pytest
import torch
from torch import nn

import grass.compress as C
from grass.capture import GradientCapture
from grass.compress.mask import FactorMaskCompressor, MaskCompressor
from grass.compress.selective import learn_flat_mask


def mean_column_pearson(approx, full):
    """Mean over test gradients (columns) of the Pearson correlation across training
    gradients, by numpy (independent of the library's own objective)."""
    approx, full = approx.detach().double().numpy(), full.detach().double().numpy()
    corrs = []
    for j in range(full.shape[1]):
        if np.ptp(full[:, j]) == 0:
            continue  # nothing to rank for this test gradient
        # A constant approximation (a mask that kept only dead coordinates) ranks nothing: 0.
        corrs.append(0.0 if np.ptp(approx[:, j]) == 0 else np.corrcoef(approx[:, j], full[:, j])[0, 1])
    return float(np.mean(corrs))


@pytest.fixture(scope="module")
def digits_model():
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(X), generator=gen)
    X = torch.tensor(X / 16.0, dtype=torch.float32)[perm]
    y = torch.tensor(y)[perm]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):  # brief training on the first 1000 images
        for i in range(0, 1000, 50):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[i:i + 50]), y[i:i + 50]).backward()
            opt.step()
    model.eval()
    assert (model(X[1000:]).argmax(1) == y[1000:]).float().mean() > 0.85
    return model, X, y


def ce(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")


def loader(X, y, lo, hi, bs=50):
    return [(X[i:min(hi, i + bs)], y[i:min(hi, i + bs)]) for i in range(lo, hi, bs)]


def correlation(comps, name, full_tr, full_te, approx_tr=None, approx_te=None):
    """Held-out inner-product correlation of a compressor set on one layer; the
    compressed gradients default to the compressor applied to the explicit ones."""
    if approx_tr is None:
        approx_tr, approx_te = comps[name].compress(full_tr), comps[name].compress(full_te)
    return mean_column_pearson(approx_tr @ approx_te.T, full_tr @ full_te.T)


def test_selective_beats_random_on_heldout_gradients(digits_model):
    model, X, y = digits_model
    cap = GradientCapture(model, ce)
    fit_train, fit_test = loader(X, y, 0, 300), loader(X, y, 1000, 1100)
    # Held out: training examples and test examples that the fitting never saw.
    eval_train, eval_test = (X[300:700], y[300:700]), (X[1100:1300], y[1100:1300])
    full_tr, full_te = cap.per_sample(eval_train), cap.per_sample(eval_test)

    spec = C.SelectiveMask(k=16, seed=0)
    comps = spec.build(cap.layers)
    assert [type(c) for c in comps.values()] == [FactorMaskCompressor, FactorMaskCompressor]
    reports = spec.fit(comps, cap, fit_train, fit_test, progress=False)
    assert set(reports) == {"0", "2"} and all(not c.needs_fit for c in comps.values())
    flat_spec = C.SelectiveMask(k=16, seed=0, factored=False)
    flat_comps = flat_spec.build(cap.layers)
    assert [type(c) for c in flat_comps.values()] == [MaskCompressor, MaskCompressor]
    C.fit_compressors(flat_comps, cap, fit_train, fit_test, progress=False)

    # The learned masks through the real path: hooks on the held-out batches.
    hooked = {n: (cap.compressed(eval_train, c), cap.compressed(eval_test, c))
              for n, c in (("factored", comps), ("flat", flat_comps))}
    for name in ("0", "2"):
        sel = correlation(comps, name, full_tr[name], full_te[name],
                          hooked["factored"][0][name], hooked["factored"][1][name])
        sel_flat = correlation(flat_comps, name, full_tr[name], full_te[name],
                               hooked["flat"][0][name], hooked["flat"][1][name])
        # Random masks of the same size and structure: flat k, and k_in x k_out factor masks.
        rand_flat = [correlation(C.RandomMask(k=16, seed=s).build(cap.layers), name, full_tr[name], full_te[name])
                     for s in range(5)]
        c = comps[name]
        rand_factor = [correlation({name: FactorMaskCompressor(c.info, c.mask.k_in, c.mask.k_out, seed=s,
                                                               learned=False)}, name, full_tr[name], full_te[name])
                       for s in range(5)]
        assert sel > max(rand_factor) and sel - float(np.mean(rand_factor)) > 0.05, (name, sel, rand_factor)
        assert sel_flat > max(rand_flat) and sel_flat - float(np.mean(rand_flat)) > 0.03, (name, sel_flat, rand_flat)


def test_selective_mask_is_deterministic_and_used_by_grass(digits_model):
    model, X, y = digits_model
    cap = GradientCapture(model, ce)
    batches = loader(X, y, 0, 200)
    masks = []
    for _ in range(2):
        spec = C.FactGraSS(k=16, mask="selective", fit={"steps": 60}, seed=3)
        comps = spec.build(cap.layers)
        spec.fit(comps, cap, batches, progress=False)  # no test batches: half the sample plays test
        masks.append([comps[n].state_dict() for n in comps])
    for a, b in zip(*masks):
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    out = cap.compressed(batches[0], comps)
    assert [v.shape[1] for v in out.values()] == [16, 16]


def test_learned_flat_mask_finds_the_informative_coordinates():
    """Synthetic gradients where 20 of 300 coordinates carry the inner products: the learned
    mask keeps (nearly) those and a random mask of the same size does not."""
    gen = torch.Generator().manual_seed(0)
    p, informative = 300, torch.randperm(300, generator=gen)[:20]
    def sample(n):
        x = 0.05 * torch.randn(n, p, generator=gen)
        x[:, informative] += torch.randn(n, 20, generator=gen) * torch.linspace(0.5, 2, 20)
        return x
    idx, report = learn_flat_mask(sample(200), sample(60), 20, seed=1)
    assert len(set(idx.tolist()) & set(informative.tolist())) >= 18
    assert report["heldout_correlation"] > 0.95 > report["random_mask_correlation"] + 0.3
    tr, te = sample(200), sample(60)
    full = tr @ te.T
    learned = mean_column_pearson(tr[:, idx] @ te[:, idx].T, full)
    rand_idx = torch.randperm(p, generator=gen)[:20]
    assert learned > 0.95 > mean_column_pearson(tr[:, rand_idx] @ te[:, rand_idx].T, full) + 0.3


def test_fit_errors():
    comp = C.SelectiveMask(k=4).build([__import__("grass").layers.LayerInfo("e", "flat", 50)])["e"]
    with pytest.raises(ValueError, match="at least 8 training gradients"):
        comp.fit(torch.randn(5, 50))
    with pytest.raises(ValueError, match="same width"):
        comp.fit(torch.randn(20, 50), torch.randn(20, 49))
    with pytest.raises(ValueError, match="steps must be"):
        C.SelectiveMask(k=4, fit={"steps": 0})
    with pytest.raises(ValueError, match="unknown MaskFit options"):
        C.SelectiveMask(k=4, fit={"step": 3})
