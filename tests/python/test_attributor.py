"""The Attributor end to end: Identity-compressor scores against an independent float64
per-sample loop, fingerprints, saved state, cached test gradients, loader checks."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import grass
from grass import Attributor
from grass.store import FingerprintMismatch, GradientStore

N, M = 64, 6


def ce(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).eval()


def _loaders(n=N, m=M, batch=16):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n + m, 6, generator=g), torch.randint(0, 3, (n + m,), generator=g)
    train = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=batch)
    test = DataLoader(TensorDataset(x[n:], y[n:]), batch_size=4)
    return train, test


def _loop_grads(model, fn, loader, names):
    """Per-sample gradients by a plain autograd loop in float64, ``names`` order."""
    m = copy.deepcopy(model).double()
    params = dict(m.named_parameters())
    rows = []
    for x, y in loader:
        for i in range(x.shape[0]):
            out = fn(m, (x[i:i + 1].double(), y[i:i + 1]))
            rows.append(torch.cat([g.reshape(-1) for g in
                                   torch.autograd.grad(out.sum(), [params[n] for n in names])]))
    return torch.stack(rows)


BLOCKS = [["0.weight", "0.bias"], ["2.weight", "2.bias"]]


def _reference(model, train, test, rel=0.1):
    """τ = −∇fᵀ(F+λI)⁻¹∇ℓ_i (f = −loss) and self-influence, block-diagonal float64."""
    S = torch.zeros(M, N, dtype=torch.float64)
    si = torch.zeros(N, dtype=torch.float64)
    for names in BLOCKS:
        G = _loop_grads(model, ce, train, names)
        T = -_loop_grads(model, ce, test, names)
        F = G.T @ G / N
        A = F + rel * torch.trace(F) / F.shape[0] * torch.eye(F.shape[0], dtype=torch.float64)
        S += -T @ torch.linalg.solve(A, G.T)
        si += (G * torch.linalg.solve(A, G.T).T).sum(1)
    return S, si


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


def test_identity_scores_equal_float64_per_sample_reference(tmp_path):
    model = _model()
    train, test = _loaders()
    attr = Attributor(model, ce, compressor=grass.compress.Identity(), store=tmp_path / "run",
                      progress=False)
    attr.cache(train)
    attr.fit()
    S = attr.scores(test)
    ref, ref_si = _reference(model, train, test)
    assert S.shape == (M, N)
    assert _rel(S, ref) < 1e-4
    assert _rel(attr.self_influence(), ref_si) < 1e-4
    values, indices = attr.top_k(test, k=5)
    assert torch.equal(indices, torch.sort(S, dim=1, descending=True, stable=True).indices[:, :5])
    torch.testing.assert_close(values, torch.gather(S, 1, indices))
    _, worst = attr.top_k(test, k=3, largest=False)
    assert torch.equal(worst, torch.sort(S, dim=1, stable=True).indices[:, :3])
    # the model and its parameters were left as they were
    assert all(p.grad is None for p in model.parameters())


def test_chunked_attributor_scores_do_not_depend_on_chunking(tmp_path):
    model = _model()
    train, test = _loaders()
    a = Attributor(model, ce, compressor=grass.compress.Identity(), store=tmp_path / "a",
                   chunk_rows=7, progress=False)
    a.cache(train)
    a.fit()
    S = a.scores(test).double()
    # float32 products summed in another order: equal up to float32 rounding
    assert _rel(a.scores(test, chunk_rows=64), S) < 1e-6
    assert _rel(a.scores(test, chunk_rows=1), S) < 1e-6


def test_cached_test_gradients_give_the_same_scores(tmp_path):
    model = _model()
    train, test = _loaders()
    attr = Attributor(model, ce, compressor=grass.compress.Gaussian(k=16, seed=3),
                      store=tmp_path / "run", progress=False)
    attr.cache(train)
    attr.fit()
    test_store = attr.cache_test(test, "val")
    assert test_store.fingerprint["role"] == "test:val"
    torch.testing.assert_close(attr.scores(test_store), attr.scores(test))
    with pytest.raises(ValueError, match="not test gradients"):
        attr.scores(attr.train_store())


def test_state_is_saved_with_the_run(tmp_path, monkeypatch):
    model = _model()
    train, test = _loaders()
    spec = grass.compress.Gaussian(k=16, seed=3)
    a = Attributor(model, ce, compressor=spec, store=tmp_path / "run", progress=False)
    a.cache(train)
    a.fit(0.3)
    S = a.scores(test)
    # A new process (a new Attributor) scores without fitting again...
    b = Attributor(model, ce, compressor=spec, store=tmp_path / "run", progress=False)
    torch.testing.assert_close(b.scores(test), S)
    # ...and a refit with another damping reuses the saved Fisher (no pass over the store).
    monkeypatch.setattr(GradientStore, "chunks", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("the store was read again")))
    b.fit(0.3)
    torch.testing.assert_close(b.scores(test), S)
    b.fit(1.0)
    assert not torch.allclose(b.scores(test), S)


def _fresh_attr(tmp_path, model=None, spec=None, dtype="float32"):
    return Attributor(model if model is not None else _model(), ce,
                      compressor=spec or grass.compress.Gaussian(k=16, seed=3),
                      store=tmp_path / "run", dtype=dtype, progress=False)


@pytest.mark.parametrize("change,field", [("weights", "model"), ("seed", "compressor"),
                                          ("dtype", "dtype")])
def test_fingerprint_mismatch_raises_and_names_the_field(tmp_path, change, field):
    train, test = _loaders()
    _fresh_attr(tmp_path).cache(train)
    model, spec, dtype = _model(), None, "float32"
    if change == "weights":
        with torch.no_grad():
            model[0].weight[0, 0] += 1e-3
    elif change == "seed":
        spec = grass.compress.Gaussian(k=16, seed=4)
    else:
        dtype = "bfloat16"
    other = _fresh_attr(tmp_path, model, spec, dtype)
    with pytest.raises(FingerprintMismatch) as e:
        other.cache(train)
    assert field in e.value.fields and field in str(e.value)
    with pytest.raises(FingerprintMismatch):
        other.fit()
    # the stored gradients are untouched and still usable by the original run
    ok = _fresh_attr(tmp_path)
    ok.fit()
    assert torch.isfinite(ok.scores(test)).all()


def test_changed_data_or_loss_is_detected(tmp_path):
    train, _ = _loaders()
    _fresh_attr(tmp_path).cache(train)
    x, y = train.dataset.tensors
    other = DataLoader(TensorDataset(x.flip(0), y.flip(0)), batch_size=16)
    with pytest.raises(FingerprintMismatch, match="data"):
        _fresh_attr(tmp_path).cache(other)
    with pytest.raises(FingerprintMismatch, match="num_rows"):
        _fresh_attr(tmp_path).cache(DataLoader(TensorDataset(x[:-1], y[:-1]), batch_size=16))

    def other_loss(model, batch):
        return ce(model, batch) * 2

    a = Attributor(_model(), other_loss, compressor=grass.compress.Gaussian(k=16, seed=3),
                   store=tmp_path / "run", progress=False)
    with pytest.raises(FingerprintMismatch, match="function"):
        a.cache(train)


def test_bfloat16_store_scores_close_to_float32(tmp_path):
    model = _model()
    train, test = _loaders()
    spec = grass.compress.Gaussian(k=16, seed=3)
    f32 = Attributor(model, ce, compressor=spec, store=tmp_path / "a", progress=False)
    f32.cache(train)
    bf16 = Attributor(model, ce, compressor=spec, store=tmp_path / "b", dtype="bfloat16",
                      progress=False)
    store = bf16.cache(train)
    assert store.gradients().dtype == torch.bfloat16
    s32 = f32.fit().scores(test)
    s16 = bf16.fit().scores(test)
    assert _rel(s16, s32.double()) < 2e-2


def test_methods_identity_and_datainf(tmp_path):
    from grass.score.baselines import DataInf
    model = _model()
    train, test = _loaders()
    attr = _fresh_attr(tmp_path, model)
    store = attr.cache(train)
    T = attr.test_gradients(test)
    G = store.gradients().double()
    attr.fit(method="identity")
    assert _rel(attr.scores(test), (-T.double()) @ G.T) < 1e-6
    attr.fit(method="datainf")
    ref = -DataInf(G, store.block_sizes, progress=False).solve(T.double()) @ G.T
    assert _rel(attr.scores(test), ref) < 1e-5
    with pytest.raises(ValueError, match="method must be one of"):
        attr.fit(method="newton")


def test_choose_damping_with_a_held_out_criterion(tmp_path):
    model = _model()
    train, test = _loaders()
    attr = Attributor(model, ce, compressor=grass.compress.Identity(), store=tmp_path / "run",
                      progress=False)
    attr.cache(train)
    ref, _ = _reference(model, train, test, rel=0.3)

    def criterion(a):  # agreement with a reference computed at damping 0.3
        return -_rel(a.scores(test), ref)

    result = attr.choose_damping(criterion, [0.01, 0.3, 3.0])
    assert result.best == pytest.approx(0.3)
    assert _rel(attr.scores(test), ref) < 1e-4  # left fitted with the best damping


def test_loader_and_argument_checks(tmp_path):
    train, test = _loaders()
    attr = _fresh_attr(tmp_path)
    with pytest.raises(ValueError, match="shuffle=False"):
        attr.cache(DataLoader(train.dataset, batch_size=16, shuffle=True))
    with pytest.raises(ValueError, match="drop_last"):
        attr.cache(DataLoader(train.dataset, batch_size=16, drop_last=True))
    with pytest.raises(ValueError, match="num_examples"):
        attr.cache(iter(list(train)))
    with pytest.raises(RuntimeError, match=r"call cache\(train_loader\) first"):
        attr.fit()
    with pytest.raises(TypeError, match="compressor= must be a compressor spec"):
        Attributor(_model(), ce, store=tmp_path / "x")
    with pytest.raises(ValueError, match="dtype must be one of"):
        Attributor(_model(), ce, compressor=grass.compress.Identity(), dtype="int8")
    attr.cache(list(train))  # a list of batches: its length is known
    with pytest.raises(RuntimeError, match=r"call fit\(\) before scoring"):
        attr.scores(test)
    with pytest.raises(ValueError, match=r"\[M, K=32\]"):
        attr.fit().scores(torch.zeros(2, 31))


def test_temporary_run_directory_is_removed(tmp_path):
    import gc
    import os
    train, test = _loaders()
    attr = Attributor(_model(), ce, compressor=grass.compress.Identity(), progress=False)
    path = attr.run_dir
    attr.cache(train)
    assert os.path.isdir(path)
    del attr
    gc.collect()
    assert not os.path.exists(path)


def test_weights_changed_after_caching_are_noticed(tmp_path):
    train, test = _loaders()
    attr = _fresh_attr(tmp_path)
    attr.cache(train)
    attr.fit()
    with torch.no_grad():
        attr.model[2].bias.add_(1e-4)  # e.g. one more optimizer step
    with pytest.raises(FingerprintMismatch, match="model"):
        attr.scores(test)
    attr.model.load_state_dict(_model().state_dict())  # back to the cached weights
    assert torch.isfinite(attr.fit().scores(test)).all()


def test_selective_masks_are_fitted_saved_and_reloaded(tmp_path):
    import os
    model = _model()
    train, test = _loaders()
    spec = grass.compress.SelectiveMask(k=12, seed=0, fit={"steps": 20, "eval_every": 5})
    attr = Attributor(model, ce, compressor=spec, store=tmp_path / "run", progress=False)
    assert attr.needs_fit
    with pytest.raises(RuntimeError, match="fit_masks"):
        attr.cache(train)
    attr.fit_masks(train, test)
    assert not attr.needs_fit and os.path.isfile(tmp_path / "run" / "compressor.pt")
    attr.cache(train)
    S = attr.fit().scores(test)
    # A later Attributor over the same run picks the learned masks up: same store, same scores.
    again = Attributor(model, ce, compressor=spec, store=tmp_path / "run", progress=False)
    assert not again.needs_fit
    for name, comp in attr.compressors.items():
        for key, value in comp.state_dict().items():
            other = again.compressors[name].state_dict()[key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
    torch.testing.assert_close(again.scores(test), S)
    # Masks learned differently make a different store: reusing this one is refused.
    other = Attributor(model, ce, compressor=spec, store=tmp_path / "other", seed=1, progress=False)
    other.fit_masks(train, test)
    other.run_dir = str(tmp_path / "run")
    with pytest.raises(FingerprintMismatch, match="compressor_state"):
        other.fit()


def test_batch_dependent_models_are_refused_before_caching(tmp_path):
    from grass.capture import BatchDependenceError
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).train()
    train, _ = _loaders()
    attr = Attributor(model, ce, compressor=grass.compress.Identity(), store=tmp_path / "run",
                      progress=False)
    with pytest.raises(BatchDependenceError, match="BatchNorm"):
        attr.cache(train)
    assert GradientStore(tmp_path / "run" / "train").committed_rows == 0
