"""Per-sample gradient capture: hooks vs torch.func vs a plain autograd loop.

The independent reference everywhere is a Python loop over single samples with
``torch.autograd.grad`` on the real parameters, laid out by hand in the grass layout.
"""
import warnings

import pytest
import torch
from torch import nn

import grass.compress as C
from grass.capture import BatchDependenceError, GradientCapture
from grass.capture.batch import take
from grass.testing import devices


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# ---- models ------------------------------------------------------------------------------------

class Conv1D(nn.Module):
    """GPT-2's Conv1D as Hugging Face writes it: weight [d_in, d_out], y = x @ W + b."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.3)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        size_out = x.shape[:-1] + (self.nf,)
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(size_out)


class MLP(nn.Module):
    def __init__(self, d_in=9, hidden=13, d_out=5, bias=True):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, d_out, bias=bias)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class TinyLM(nn.Module):
    """Embedding, LayerNorm, a GPT-2 style Conv1D, a Linear, and an output head tied to
    the embedding."""

    def __init__(self, vocab=17, d=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.ln = nn.LayerNorm(d)
        self.attn = Conv1D(3 * d, d)
        self.proj = nn.Linear(3 * d, d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        h = self.emb(x)
        h = h + self.proj(torch.relu(self.attn(self.ln(h))))
        return self.head(h)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.norm = nn.GroupNorm(1, 3)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.norm(self.conv(x))).flatten(1))


def ce(model, batch):
    x, y = batch
    out = model(x)
    if out.dim() == 3:  # [B, T, V] sequence outputs: sum over tokens
        return nn.functional.cross_entropy(out.transpose(1, 2), y, reduction="none").sum(1)
    return nn.functional.cross_entropy(out, y, reduction="none")


def mlp_batch(gen, B=6, T=None, d_in=9, classes=5):
    shape = (B, d_in) if T is None else (B, T, d_in)
    x = torch.randn(*shape, generator=gen)
    y = torch.randint(0, classes, (B,) if T is None else (B, T), generator=gen)
    return x, y


def reference_per_sample(model, fn, batch, cap):
    """{layer: [B, numel]} by a loop over samples with torch.autograd on the parameters."""
    B = batch[0].shape[0]
    out = {info.name: [] for info in cap.layers}
    modules = dict(model.named_modules())
    for i in range(B):
        loss = fn(model, take(batch, torch.tensor([i])))[0]
        for info in cap.layers:
            params = [model.get_parameter(n) for n in info.param_names]
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
            if info.kind == "linear":
                w = grads[0]
                if type(modules[info.name]).__name__ == "Conv1D":
                    w = w.T
                w = w.reshape(w.shape[0], -1)  # convolutions: [C_out, C_in/groups * kernel]
                if info.bias:
                    w = torch.cat([w, grads[1][:, None]], 1)
                out[info.name].append(w.reshape(-1))
            else:
                out[info.name].append(torch.cat([g.reshape(-1) for g in grads]))
    return {k: torch.stack(v) for k, v in out.items()}


# ---- hooks == torch.func for every compressor --------------------------------------------------

SPECS = [
    C.Identity(),
    C.Gaussian(k=24, seed=1),
    C.Gaussian(k=24, seed=1, cache_bytes=0, chunk=40),  # streamed projection
    C.Rademacher(k=24, seed=2),
    C.SJLT(k=24, seed=3, s=2),
    C.FJLT(k=24, seed=4),
    C.RandomMask(k=24, seed=5),
    C.GraSS(k=12, seed=6),
    C.LoGra(k=20, seed=7),
    C.FactGraSS(k=12, seed=8, s=2),
    C.FactorizedSJLT(k=20, seed=9),
]


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("T", [None, 4])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.method}-{s.config().get('k')}")
def test_hooks_equal_compressed_explicit_gradients(spec, T, bias, device, gen):
    model = MLP(bias=bias).to(device)
    batch = tuple(t.to(device) for t in mlp_batch(gen, T=T))
    cap = GradientCapture(model, ce)
    comps = spec.build(cap.layers)
    got = cap.compressed(batch, comps)
    explicit = cap.per_sample(batch)
    assert list(got) == [i.name for i in cap.layers]
    for info in cap.layers:
        want = comps[info.name].compress(explicit[info.name])
        assert got[info.name].shape == (batch[0].shape[0], comps[info.name].k)
        assert got[info.name].dtype == torch.float32 and got[info.name].device == batch[0].device
        assert rel(got[info.name], want) < 1e-5, (spec, info.name)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.method}-{s.config().get('k')}")
def test_flat_layers_embedding_layernorm_conv(spec, gen):
    """Flat layers (Embedding, LayerNorm, Conv2d, GroupNorm) through torch.func: the
    compressed gradients equal the compressor applied to the explicit ones, and those
    equal a per-sample autograd loop."""
    for model, batch in (
        (TinyLM(), (torch.randint(0, 17, (4, 5), generator=gen), torch.randint(0, 17, (4, 5), generator=gen))),
        (ConvNet(), (torch.randn(4, 2, 6, 6, generator=gen), torch.randint(0, 4, (4,), generator=gen))),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tied head weight
            cap = GradientCapture(model, ce, include_flat=True)
        assert any(i.kind == "flat" for i in cap.layers)
        comps = spec.build(cap.layers)
        got = cap.compressed(batch, comps)
        explicit = cap.per_sample(batch)
        for info in cap.layers:
            assert rel(got[info.name], comps[info.name].compress(explicit[info.name])) < 1e-5, info.name


# ---- explicit per-sample gradients against an autograd loop -------------------------------------

def test_per_sample_matches_autograd_loop_conv1d_and_tied_weights(gen):
    model = TinyLM()
    x = torch.randint(0, 17, (5, 6), generator=gen)
    batch = (x, torch.randint(0, 17, (5, 6), generator=gen))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cap = GradientCapture(model, ce, include_flat=True)
    paths = {i.name: (i.kind, i.path, i.tied) for i in cap.layers}
    # The tied weight is one layer, named after the embedding (its first holder), with both
    # uses (lookup and output head) captured; the head does not attribute it again.
    assert paths == {"emb": ("linear", "tied", ("head",)), "ln": ("flat", "norm", ()),
                     "attn": ("linear", "factors", ()), "proj": ("linear", "factors", ())}
    assert not caught
    attn = next(i for i in cap.layers if i.name == "attn")
    assert (attn.d_in, attn.d_out, attn.bias) == (8, 24, True)
    got = cap.per_sample(batch)
    ref = reference_per_sample(model, ce, batch, cap)
    for name in ref:
        assert got[name].shape == ref[name].shape
        assert rel(got[name], ref[name]) < 1e-5, name
    # The embedding's gradient is the total over both uses (lookup and tied head).
    emb_only = torch.autograd.grad(ce(model, take(batch, torch.tensor([0])))[0], model.emb.weight)[0]
    assert rel(got["emb"][0], emb_only.reshape(-1)) < 1e-5


def test_per_sample_matches_autograd_loop_mlp_and_convnet(gen):
    for model, batch in ((MLP(), mlp_batch(gen, T=3)), (MLP(bias=False), mlp_batch(gen)),
                         (ConvNet(), (torch.randn(3, 2, 6, 6, generator=gen), torch.randint(0, 4, (3,), generator=gen)))):
        cap = GradientCapture(model, ce, include_flat=True)
        got = cap.per_sample(batch)
        ref = reference_per_sample(model, ce, batch, cap)
        for name in ref:
            assert rel(got[name], ref[name]) < 1e-5, name


def test_shared_linear_weight_is_its_own_use_in_hooks_and_per_sample(gen):
    """A linear layer whose weight is tied elsewhere: hooks and per_sample both give the
    gradient of the use inside that module (and discover_layers warns)."""
    model = TinyLM()
    batch = (torch.randint(0, 17, (3, 4), generator=gen), torch.randint(0, 17, (3, 4), generator=gen))
    with pytest.warns(UserWarning, match="shares its weight"):
        cap = GradientCapture(model, ce, layers=["head"])
    got = cap.compressed(batch, C.Identity().build(cap.layers))["head"]
    explicit = cap.per_sample(batch)["head"]
    assert rel(got, explicit) < 1e-5
    # Independent reference: d loss / d logits times the head's input, summed over tokens.
    for i in range(3):
        sample = take(batch, torch.tensor([i]))
        feats = {}
        h = model.head.register_forward_hook(lambda m, a, o: feats.update(a=a[0], o=o))
        loss = ce(model, sample)[0]
        h.remove()
        g = torch.autograd.grad(loss, feats["o"])[0]
        want = torch.einsum("bto,bti->oi", g, feats["a"]).reshape(-1)
        assert rel(explicit[i], want) < 1e-5


def test_layer_called_twice_and_keyword_input(gen):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)
            self.out = nn.Linear(6, 3)

        def forward(self, x):
            return self.out(input=torch.tanh(self.fc(torch.tanh(self.fc(x)))))

    model = Twice()
    batch = (torch.randn(4, 6, generator=gen), torch.randint(0, 3, (4,), generator=gen))
    cap = GradientCapture(model, ce)
    a, g = cap.factors(batch)["fc"]
    assert a.shape == (4, 2, 6) and g.shape == (4, 2, 6)  # both calls, joined along T
    got = cap.compressed(batch, C.Identity().build(cap.layers))
    ref = reference_per_sample(model, ce, batch, cap)
    for name in ref:
        assert rel(got[name], ref[name]) < 1e-5


def test_in_place_ops_after_a_linear_layer(gen):
    """ReLU(inplace=True) and += rewrite a linear layer's output in place; the captured g
    must still be the gradient of the layer's own output."""
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(5, 8)
            self.act = nn.ReLU(inplace=True)
            self.fc2 = nn.Linear(8, 8)
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            h = self.act(self.fc1(x))
            y = self.fc2(h)
            y += h  # residual added in place
            return self.out(y)

    model = InPlace()
    batch = (torch.randn(6, 5, generator=gen), torch.randint(0, 3, (6,), generator=gen))
    cap = GradientCapture(model, ce)
    got = cap.compressed(batch, C.Identity().build(cap.layers))
    ref = reference_per_sample(model, ce, batch, cap)
    for name in ref:
        assert rel(got[name], ref[name]) < 1e-5, name


def test_input_modified_in_place_is_an_error(gen):
    class Clobber(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            h = x * 1.0
            y = self.fc(h)
            h.mul_(2)  # the layer's input changes after the layer read it
            return y + h[:, :3]

    cap = GradientCapture(Clobber(), ce)
    batch = (torch.randn(3, 4, generator=gen), torch.randint(0, 3, (3,), generator=gen))
    with pytest.raises(RuntimeError, match="modified in place"):
        cap.factors(batch)


def test_unused_layer_gives_zero(gen):
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 3)
            self.unused = nn.Linear(4, 3)

        def forward(self, x):
            return self.used(x)

    cap = GradientCapture(Skip(), ce)
    batch = (torch.randn(3, 4, generator=gen), torch.randint(0, 3, (3,), generator=gen))
    out = cap.compressed(batch, C.Identity().build(cap.layers))
    assert torch.count_nonzero(out["unused"]) == 0 and torch.count_nonzero(out["used"]) > 0


# ---- side effects ----------------------------------------------------------------------------------

def test_capture_leaves_grads_none_and_state_unchanged(gen):
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    batch = (torch.randn(6, 5, generator=gen), torch.randint(0, 3, (6,), generator=gen))
    model.train()  # BatchNorm updates its running statistics on every forward in train mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cap = GradientCapture(model, ce, layers=["0", "3"])
    with pytest.warns(UserWarning, match=r"training mode.*'1' \(BatchNorm1d\)"):
        cap.compressed(batch, C.SJLT(k=4).build(cap.layers))
    cap.factors(batch)
    for p in model.parameters():
        assert p.grad is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.eval()
    cap = GradientCapture(model, ce, include_flat=True)
    cap.compressed(batch, C.GraSS(k=4).build(cap.layers))
    cap.per_sample(batch)
    for p in model.parameters():
        assert p.grad is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# ---- batch invariance ----------------------------------------------------------------------------

def test_batch_invariance_batchnorm_train_fails_eval_passes(gen):
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    batch = (torch.randn(8, 5, generator=gen), torch.randint(0, 3, (8,), generator=gen))
    cap = GradientCapture(model, ce)
    model.train()
    with pytest.raises(BatchDependenceError, match=r"'1' \(BatchNorm1d\).*model\.eval\(\)"):
        cap.check_batch_invariance(batch)
    model.eval()
    assert cap.check_batch_invariance(batch) < 1e-5


def test_batch_invariance_dropout_and_batch_mean_loss(gen):
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    batch = (torch.randn(8, 5, generator=gen), torch.randint(0, 3, (8,), generator=gen))
    cap = GradientCapture(model, ce)
    model.train()
    with pytest.raises(BatchDependenceError, match="Dropout"):
        cap.check_batch_invariance(batch)
    model.eval()
    cap.check_batch_invariance(batch)

    def divided(model, batch):  # per-sample shape, but scaled by 1/B: a hidden "mean"
        return ce(model, batch) / batch[0].shape[0]
    with pytest.raises(BatchDependenceError, match="batch size"):
        GradientCapture(model, divided).check_batch_invariance(batch)


def test_dropout_in_train_mode_is_a_clear_error_for_torch_func(gen):
    model = nn.Sequential(nn.Embedding(10, 4), nn.Dropout(0.5), nn.Flatten(), nn.Linear(8, 3))
    batch = (torch.randint(0, 10, (4, 2), generator=gen), torch.randint(0, 3, (4,), generator=gen))
    cap = GradientCapture(model, ce, include_flat=True)
    with pytest.raises(ValueError, match=r"random.*model\.eval\(\)"):
        cap.per_sample(batch)


# ---- errors ----------------------------------------------------------------------------------

def test_loss_must_be_per_sample(gen):
    model = MLP()
    batch = mlp_batch(gen)
    mean_loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])
    cap = GradientCapture(model, mean_loss)
    comps = C.Identity().build(cap.layers)
    with pytest.raises(ValueError, match="scalar"):
        cap.compressed(batch, comps)
    with pytest.raises(ValueError, match="scalar"):
        cap.per_sample(batch)
    wrong = GradientCapture(model, lambda m, b: ce(m, b)[:2])
    with pytest.raises(ValueError, match=r"shape \[B\] = \[6\]"):
        wrong.compressed(batch, comps)


def test_compressor_errors(gen):
    model = MLP()
    cap = GradientCapture(model, ce)
    batch = mlp_batch(gen)
    with pytest.raises(ValueError, match="no compressor for layers"):
        cap.compressed(batch, {"fc1": C.SJLT(k=4).build(cap.layers)["fc1"]})
    other = GradientCapture(MLP(d_in=4), ce)
    with pytest.raises(ValueError, match="built for another layer"):
        cap.compressed(batch, C.SJLT(k=4).build(other.layers))
    with pytest.raises(ValueError, match="not captured"):
        cap.per_sample(batch, layers=["nope"])
    with pytest.raises(TypeError, match="loss_fn"):
        GradientCapture(model, "ce")


def test_batch_must_lead_linear_inputs(gen):
    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):  # x [B, T, d] used as [T, B, d]
            return self.fc(x.transpose(0, 1)).transpose(0, 1).sum(1)

    cap = GradientCapture(SeqFirst(), ce)
    batch = (torch.randn(3, 5, 4, generator=gen), torch.randint(0, 3, (3,), generator=gen))
    with pytest.raises(ValueError, match="batch .* first dimension"):
        cap.factors(batch)
