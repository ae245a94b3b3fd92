"""TRAK: the margin, the kernel with the Q re-weighting, and both ensembling rules, checked
against a direct float64 computation of the formulas."""
import numpy as np
import pytest
import torch

from grass.precondition import BlockFisher, Preconditioner
from grass.score import classification_margin, correct_class_probability, full_scores, trak_terms


def test_margin_is_log_odds_of_the_correct_class():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64) * 5
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    p = torch.softmax(logits, 1)[torch.arange(6), labels]
    torch.testing.assert_close(correct_class_probability(logits, labels), p)
    torch.testing.assert_close(classification_margin(logits, labels), torch.log(p / (1 - p)))
    # stable where p is ~1 in float32 (log(p/(1-p)) would be inf)
    big = torch.tensor([[60.0, 0.0, 0.0]])
    m = classification_margin(big, torch.tensor([0]))
    assert torch.isfinite(m).all() and m.item() == pytest.approx(60.0 - np.log(2.0), rel=1e-6)
    with pytest.raises(ValueError, match=r"logits \[B, C\] and labels \[B\]"):
        classification_margin(torch.zeros(3, 2), torch.zeros(2))


def _checkpoint(n, m, k, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g), torch.randn(m, k, generator=g),
            torch.rand(n, generator=g, dtype=torch.float64))


def _reference_single(Phi, phi, p, rel):
    Phi, phi = Phi.double().numpy(), phi.double().numpy()
    K = Phi.T @ Phi
    A = K + rel * np.trace(K) / K.shape[0] * np.eye(K.shape[0])  # relative damping, unnormalised
    return phi @ np.linalg.solve(A, Phi.T), 1.0 - p.numpy()


@pytest.mark.parametrize("ensemble", ["mean", "trak"])
def test_trak_terms_equal_the_formula(ensemble):
    n, m, k, rel = 40, 3, 6, 1e-3
    ckpts = [_checkpoint(n, m, k, s) for s in (0, 1, 2)]
    pres = [Preconditioner.fit(BlockFisher([k]).update(Phi), rel) for Phi, _, _ in ckpts]
    S = full_scores(trak_terms([c[1] for c in ckpts], [c[0] for c in ckpts], [c[2] for c in ckpts],
                               pres, ensemble=ensemble), dtype=torch.float64, progress=False)
    parts = [_reference_single(Phi, phi, p, rel) for Phi, phi, p in ckpts]
    if ensemble == "mean":  # mean over checkpoints of φᵀ(ΦᵀΦ)⁻¹Φᵀ Q
        ref = np.mean([kern * q for kern, q in parts], axis=0)
    else:  # TRAK's estimator: (mean of the kernel terms) · (mean of Q)
        ref = np.mean([kern for kern, _ in parts], axis=0) * np.mean([q for _, q in parts], axis=0)
    np.testing.assert_allclose(S.numpy(), ref, rtol=1e-5, atol=1e-8)


def test_trak_with_block_diagonal_kernel():
    n, m, rel = 30, 2, 1e-2
    Phi, phi, p = _checkpoint(n, m, 7, 5)
    pre = Preconditioner.fit(BlockFisher([3, 4]).update(Phi), rel)
    S = full_scores(trak_terms([phi], [Phi], [p], [pre]), dtype=torch.float64, progress=False)
    ref = 0
    for s in (slice(0, 3), slice(3, 7)):
        kern, q = _reference_single(Phi[:, s], phi[:, s], p, rel)
        ref = ref + kern * q
    np.testing.assert_allclose(S.numpy(), ref, rtol=1e-5, atol=1e-8)


def test_trak_terms_checks():
    Phi, phi, p = _checkpoint(10, 2, 3, 0)
    pre = Preconditioner.fit(BlockFisher([3]).update(Phi))
    with pytest.raises(ValueError, match="ensemble must be"):
        trak_terms([phi], [Phi], [p], [pre], ensemble="median")
    with pytest.raises(ValueError, match="one entry per checkpoint"):
        trak_terms([phi, phi], [Phi], [p], [pre])


# ------------------------------------------------------------------ the TRAK class, end to end

def _setup(tmp_path):
    import copy
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(130, 5, generator=g), torch.randint(0, 3, (130,), generator=g)
    train = DataLoader(TensorDataset(x[:120], y[:120]), batch_size=32)
    test = DataLoader(TensorDataset(x[120:], y[120:]), batch_size=5)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).eval())
    return models, train, test


def _margin_grads(model, loader):
    """Per-sample gradients of the margin and p_correct by an autograd loop, float64."""
    import copy
    m = copy.deepcopy(model).double()
    params = list(m.parameters())
    grads, probs = [], []
    for x, y in loader:
        for i in range(x.shape[0]):
            logits = m(x[i:i + 1].double())
            p = torch.softmax(logits, 1)[0, y[i]]
            f = torch.log(p / (1 - p))
            grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(f, params)]))
            probs.append(p.detach())
    return torch.stack(grads), torch.stack(probs)


@pytest.mark.parametrize("ensemble", ["mean", "trak"])
def test_trak_class_over_checkpoints_matches_explicit_gradients(tmp_path, ensemble):
    import grass
    from grass import TRAK
    models, train, test = _setup(tmp_path)
    model = models[0]
    own = {k: v.clone() for k, v in model.state_dict().items()}
    trak = TRAK(model, lambda m, b: (m(b[0]), b[1]), grass.compress.Identity(),
                store=tmp_path / "trak", checkpoints=[None, models[1].state_dict()],
                ensemble=ensemble, progress=False)
    trak.cache(train)
    trak.fit(damping=0.05)
    S = trak.scores(test)
    parts = []
    for m in models:
        Phi, p = _margin_grads(m, train)
        phi, _ = _margin_grads(m, test)
        K = Phi.T @ Phi
        A = K + 0.05 * torch.trace(K) / K.shape[0] * torch.eye(K.shape[0], dtype=torch.float64)
        parts.append((phi @ torch.linalg.solve(A, Phi.T), 1 - p))
    if ensemble == "mean":
        ref = sum(k * q for k, q in parts) / 2
    else:
        ref = (sum(k for k, _ in parts) / 2) * (sum(q for _, q in parts) / 2)
    assert ((S.double() - ref).norm() / ref.norm()).item() < 1e-4
    v, i = trak.top_k(test, 3)
    assert torch.equal(i, torch.sort(S, dim=1, descending=True, stable=True).indices[:, :3])
    # the model's own weights are back
    assert all(torch.equal(own[k], v) for k, v in model.state_dict().items())
