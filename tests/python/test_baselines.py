"""Baselines against independent small computations: TracIn = dot products of explicit
gradients, DataInf's formula computed directly, LiSSA converging to the exact damped
inverse, exact influence = a float64 per-sample autograd loop."""
import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from grass.score import full_scores
from grass.score.baselines import DataInf, ExactInfluence, LiSSA, lissa_ihvp, tracin_terms
from grass.score.baselines.functional import ParamSpace, hvp, per_sample_gradients


def _mlp(seed=0, d_in=5, hidden=6, out=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, out))


def _data(n, d_in=5, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g), torch.randint(0, classes, (n,), generator=g)


def ce(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")


def _loop_grads(model, fn, x, y, names):
    """Per-sample gradients by a plain autograd loop, float64, in ``names`` order."""
    m = copy.deepcopy(model).double()
    params = dict(m.named_parameters())
    rows = []
    for i in range(x.shape[0]):
        out = fn(m, (x[i:i + 1].double(), y[i:i + 1]))
        gs = torch.autograd.grad(out.sum(), [params[n] for n in names])
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    return torch.stack(rows)


# ------------------------------------------------------------------------------- TracIn

def test_tracin_equals_lr_weighted_dot_products_over_checkpoints():
    x, y = _data(20)
    xt, yt = _data(4, seed=9)
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]
    grads, tests, lrs = [], [], [0.1, 0.03]
    for seed in (0, 1):  # two "checkpoints"
        model = _mlp(seed)
        grads.append(_loop_grads(model, ce, x, y, names).float())
        tests.append(-_loop_grads(model, ce, xt, yt, names).float())  # ∇f for f = −loss
    S = full_scores(tracin_terms(tests, grads, lrs), dtype=torch.float64, progress=False)
    ref = sum(lr * (-t.double()) @ g.double().T for lr, t, g in zip(lrs, tests, grads))
    torch.testing.assert_close(S, ref, rtol=1e-6, atol=1e-8)
    # TracIn's proponents: the test example's own gradient gets a positive score
    S_self = full_scores(tracin_terms([-grads[0][:3]], [grads[0]]), progress=False)
    assert (torch.diagonal(S_self[:, :3]) > 0).all()
    with pytest.raises(ValueError, match="one entry per checkpoint"):
        tracin_terms(tests, grads, [0.1])


# ------------------------------------------------------------------------------ DataInf

def test_datainf_matches_its_closed_form_per_block():
    g = torch.Generator().manual_seed(0)
    blocks = [3, 4]
    G = torch.randn(25, 7, generator=g, dtype=torch.float64)
    T = torch.randn(4, 7, generator=g, dtype=torch.float64)
    di = DataInf(G, blocks, progress=False, chunk_rows=6)
    S = full_scores([__import__("grass").score.ScoreTerm(-di.solve(T), G)], dtype=torch.float64,
                    progress=False)
    # Direct: H̃_l⁻¹ = (1/N) Σ_i (g_i g_iᵀ + λ_l I)⁻¹, inverted explicitly, λ_l = 0.1·mean‖g‖²/k_l.
    Gn, Tn = G.numpy(), T.numpy()
    ref, s = np.zeros((4, 25)), 0
    for k in blocks:
        gl, tl = Gn[:, s:s + k], Tn[:, s:s + k]
        lam = 0.1 * np.mean(np.sum(gl ** 2, 1)) / k
        assert di.damping[blocks.index(k)].item() == pytest.approx(lam)
        Hinv = np.mean([np.linalg.inv(np.outer(r, r) + lam * np.eye(k)) for r in gl], axis=0)
        ref += -(tl @ Hinv @ gl.T)
        s += k
    np.testing.assert_allclose(S.numpy(), ref, rtol=1e-9, atol=1e-12)


def test_datainf_absolute_damping_and_checks():
    G = torch.randn(10, 5, dtype=torch.float64)
    di = DataInf(G, [5], 0.3, relative=False, progress=False)
    v = torch.randn(1, 5, dtype=torch.float64)
    Hinv = np.mean([np.linalg.inv(np.outer(r, r) + 0.3 * np.eye(5)) for r in G.numpy()], axis=0)
    np.testing.assert_allclose(di.solve(v).numpy(), v.numpy() @ Hinv, rtol=1e-10)
    with pytest.raises(ValueError, match="block_sizes is required"):
        DataInf(G)
    with pytest.raises(ValueError, match="sum to 4"):
        DataInf(G, [4])
    with pytest.raises(ValueError, match="positive"):
        DataInf(G, [5], 0.0)


# -------------------------------------------------------------------------------- LiSSA

def mse(model, batch):
    x, y = batch
    return 0.5 * (model(x) - y).square().sum(1)


def _regression(n=24, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x, torch.randn(n, 2, generator=g, dtype=torch.float64)


def _small():
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _exact_hessian(model, x, y, space):
    theta = space.flatten(space.current())

    def f(flat):
        return space.call(mse, space.unflatten(flat), (x, y)).mean()
    return torch.autograd.functional.hessian(f, theta, vectorize=True)


def test_hvp_matches_the_explicit_hessian_and_gauss_newton():
    model = _small()
    x, y = _regression()
    space = ParamSpace(model, [["0.weight", "0.bias"], ["2.weight", "2.bias"]])
    H = _exact_hessian(model, x, y, space)
    v = torch.randn(space.dim, dtype=torch.float64)
    torch.testing.assert_close(hvp(space, mse, (x, y), v), H @ v)
    # Gauss–Newton for 0.5‖out − y‖²: H_out = I, so GN = (1/N) Σ J_iᵀ J_i.
    theta = space.flatten(space.current())
    J = torch.autograd.functional.jacobian(
        lambda flat: space.call(lambda m, b: m(b[0]), space.unflatten(flat), (x, y)), theta)
    GN = torch.einsum("noP,noQ->PQ", J, J) / x.shape[0]
    got = hvp(space, mse, (x, y), v, curvature="gauss_newton",
              output_fn=lambda m, b: m(b[0]), output_loss_fn=lambda o, b: 0.5 * (o - b[1]).square().sum(1))
    torch.testing.assert_close(got, GN @ v)


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
def test_lissa_converges_to_the_exact_damped_inverse(curvature):
    model = _small()
    x, y = _regression()
    space = ParamSpace(model, [["0.weight", "0.bias", "2.weight", "2.bias"]])
    theta = space.flatten(space.current())
    if curvature == "hessian":
        H = _exact_hessian(model, x, y, space)
    else:
        J = torch.autograd.functional.jacobian(
            lambda flat: space.call(lambda m, b: m(b[0]), space.unflatten(flat), (x, y)), theta)
        H = torch.einsum("noP,noQ->PQ", J, J) / x.shape[0]
    eig = torch.linalg.eigvalsh(H)
    damping = max(0.0, -eig.min().item()) + 1.0   # H + λI positive definite
    scale = (eig.max().item() + damping) * 1.2    # eigenvalues of (H + λI)/s in (0, 1)
    V = torch.randn(2, space.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = torch.linalg.solve(H + damping * torch.eye(space.dim, dtype=torch.float64), V.T).T
    opts = dict(output_fn=lambda m, b: m(b[0]),
                output_loss_fn=lambda o, b: 0.5 * (o - b[1]).square().sum(1))
    est = lissa_ihvp(space, mse, V, [(x, y)], damping=damping, scale=scale, depth=120,
                     curvature=curvature, progress=False, **opts)
    assert ((est - exact).norm() / exact.norm()).item() < 1e-6
    shallow = lissa_ihvp(space, mse, V, [(x, y)], damping=damping, scale=scale, depth=5,
                         curvature=curvature, progress=False, **opts)
    assert ((shallow - exact).norm() / exact.norm()).item() > 1e-3  # the depth matters


def test_lissa_diverges_loudly_when_the_scale_is_too_small():
    model = _small()
    x, y = _regression()
    space = ParamSpace(model, [["2.weight"]])
    with pytest.raises(FloatingPointError, match="raise the scale"):
        lissa_ihvp(space, mse, torch.ones(space.dim, dtype=torch.float64), [(x, y)],
                   damping=0.0, scale=1e-3, depth=2000, progress=False)


def test_lissa_scores_equal_exact_inverse_hessian_influence():
    model = _small()
    x, y = _regression()
    xt, yt = _regression(3, seed=8)
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]
    space = ParamSpace(model, [names])
    H = _exact_hessian(model, x, y, space)
    eig = torch.linalg.eigvalsh(H)
    damping = max(0.0, -eig.min().item()) + 1.0
    scale = (eig.max().item() + damping) * 1.2
    lissa = LiSSA(model, mse, damping=damping, scale=scale, depth=120, progress=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    S = lissa.scores(loader, DataLoader(TensorDataset(xt, yt), batch_size=2),
                     curvature_batches=[(x, y)])
    G = _loop_grads(model, mse, x, y, names)
    T = -_loop_grads(model, mse, xt, yt, names)  # ∇f, f = −loss
    ref = -T @ torch.linalg.solve(H + damping * torch.eye(space.dim, dtype=torch.float64), G.T)
    torch.testing.assert_close(S, ref, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------- exact influence

def _reference_block_influence(model, x, y, xt, yt, blocks, rel=0.1):
    """Independent float64: per-sample loop gradients, F_l = GᵀG/N, λ_l = rel·tr(F_l)/p_l,
    τ = −∇fᵀ(F+λI)⁻¹∇ℓ_i with f = −loss."""
    out = torch.zeros(xt.shape[0], x.shape[0], dtype=torch.float64)
    for names in blocks:
        G = _loop_grads(model, ce, x, y, names)
        T = -_loop_grads(model, ce, xt, yt, names)
        F = G.T @ G / x.shape[0]
        lam = rel * torch.trace(F) / F.shape[0]
        out += -T @ torch.linalg.solve(F + lam * torch.eye(F.shape[0], dtype=torch.float64), G.T)
    return out


def test_exact_influence_equals_a_per_sample_loop_in_float64():
    model = _mlp()
    x, y = _data(40)
    xt, yt = _data(5, seed=7)
    ex = ExactInfluence(model, ce, progress=False).fit(DataLoader(TensorDataset(x, y), batch_size=16))
    S = ex.scores(DataLoader(TensorDataset(xt, yt), batch_size=3))
    ref = _reference_block_influence(model, x, y, xt, yt,
                                     [["0.weight", "0.bias"], ["2.weight", "2.bias"]])
    assert S.dtype == torch.float64
    assert ((S - ref).norm() / ref.norm()).item() < 1e-10
    v, i = ex.top_k(DataLoader(TensorDataset(xt, yt), batch_size=3), 4)
    assert torch.equal(i, torch.sort(S, dim=1, descending=True, stable=True).indices[:, :4])
    # self-influence: ∇ℓ_iᵀ(F+λI)⁻¹∇ℓ_i
    si = ex.self_influence()
    ref_si = torch.zeros(40, dtype=torch.float64)
    for names in (["0.weight", "0.bias"], ["2.weight", "2.bias"]):
        G = _loop_grads(model, ce, x, y, names)
        F = G.T @ G / 40
        A = F + 0.1 * torch.trace(F) / F.shape[0] * torch.eye(F.shape[0], dtype=torch.float64)
        ref_si += (G * torch.linalg.solve(A, G.T).T).sum(1)
    torch.testing.assert_close(si, ref_si, rtol=1e-10, atol=0)
    # the user's model was not converted to float64
    assert next(model.parameters()).dtype == torch.float32


def test_exact_influence_with_a_flat_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Linear(6, 3))
    x, y = _data(30)
    xt, yt = _data(4, seed=5)
    ex = ExactInfluence(model, ce, layers=["1", "2"], progress=False)
    ex.fit(DataLoader(TensorDataset(x, y), batch_size=8), damping=0.05)
    S = ex.scores(DataLoader(TensorDataset(xt, yt), batch_size=4))
    ref = _reference_block_influence(model, x, y, xt, yt,
                                     [["1.weight", "1.bias"], ["2.weight", "2.bias"]], rel=0.05)
    assert ((S - ref).norm() / ref.norm()).item() < 1e-10


def test_per_sample_gradients_check_reduction():
    model = _mlp()
    space = ParamSpace(model, [["2.weight"]])
    x, y = _data(4)
    with pytest.raises(ValueError, match="per-sample values"):
        per_sample_gradients(space, lambda m, b: ce(m, b).mean(), (x, y))


# ------------------------------------------------------------------ the TracIn class, end to end

def test_tracin_class_over_checkpoints(tmp_path):
    import grass
    from grass import TracIn
    x, y = _data(40)
    xt, yt = _data(5, seed=9)
    train = DataLoader(TensorDataset(x, y), batch_size=16)
    test = DataLoader(TensorDataset(xt, yt), batch_size=5)
    model, other = _mlp(0), _mlp(1)
    torch.save(other.state_dict(), tmp_path / "ckpt.pt")
    lrs = [0.1, 0.02]
    tr = TracIn(model, ce, grass.compress.Identity(), store=tmp_path / "tracin",
                checkpoints=[None, tmp_path / "ckpt.pt"], learning_rates=lrs, progress=False)
    tr.cache(train)
    S = tr.scores(test)
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]
    ref = torch.zeros(5, 40, dtype=torch.float64)
    ref_si = torch.zeros(40, dtype=torch.float64)
    for lr, m in zip(lrs, (model, other)):
        G = _loop_grads(m, ce, x, y, names)
        T = _loop_grads(m, ce, xt, yt, names)  # ∇ℓ(test)
        ref += lr * T @ G.T
        ref_si += lr * G.square().sum(1)
    assert ((S.double() - ref).norm() / ref.norm()).item() < 1e-5
    assert ((tr.self_influence() - ref_si).norm() / ref_si.norm()).item() < 1e-5
    _, idx = tr.top_k(test, 4)
    assert torch.equal(idx, torch.sort(S, dim=1, descending=True, stable=True).indices[:, :4])
    assert torch.equal(model[0].weight, _mlp(0)[0].weight)  # own weights restored
