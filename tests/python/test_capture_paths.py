"""Every hooked capture path against a per-sample autograd loop on the real parameters:
convolutions through unfolded patches (a grid of stride / padding / dilation / groups /
bias / padding modes), embeddings through their sparse rows, norms from their normalised
input, any leaf module by torch.func on the module alone, tied embedding + head; and
default coverage."""
import itertools
import warnings

import pytest
import torch
from torch import nn

import grass.compress as C
from grass import ops
from grass.capture import GradientCapture
from grass.capture.batch import take
from grass.capture.paths import embedding_csr
from grass.compress.grass import GraSSCompressor
from grass.compress.mask import kron_indices


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def reference(model, fn, batch, layers):
    """{layer: [B, numel]} from a loop over single samples with torch.autograd, laid out by
    hand: linear kinds as [d_out, d_in (+bias column)], flat ones concatenated."""
    B = batch_size = next(t for t in batch if isinstance(t, torch.Tensor)).shape[0]
    out = {info.name: [] for info in layers}
    for i in range(batch_size):
        loss = fn(model, take(batch, torch.tensor([i])))[0]
        for info in layers:
            params = [model.get_parameter(n) for n in info.param_names]
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
            if info.kind == "linear":
                w = grads[0]
                if type(model.get_submodule(info.name)).__name__ == "Conv1D":
                    w = w.T
                w = w.reshape(info.d_out, -1)
                if info.bias:
                    w = torch.cat([w, grads[1][:, None]], 1)
                out[info.name].append(w.reshape(-1))
            else:
                out[info.name].append(torch.cat([g.reshape(-1) for g in grads]))
    assert B == batch_size
    return {k: torch.stack(v) for k, v in out.items()}


def check_all_paths(model, fn, batch, *, layers=None, tol=1e-4, include_flat=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cap = GradientCapture(model, fn, layers=layers, include_flat=include_flat)
    want = reference(model, fn, batch, cap.layers)
    got = cap.compressed(batch, C.Identity().build(cap.layers))
    hooks = cap.per_sample(batch, via="hooks")
    for info in cap.layers:
        assert rel(got[info.name], want[info.name]) < tol, info
        assert rel(hooks[info.name], want[info.name]) < tol, info
    return cap, want


def ce(model, batch):
    x, y = batch
    out = model(x)
    if out.dim() == 3:
        return nn.functional.cross_entropy(out.transpose(1, 2), y, reduction="none").sum(1)
    return nn.functional.cross_entropy(out, y, reduction="none")


# ---- convolutions ---------------------------------------------------------------------------

class ConvHead(nn.Module):
    def __init__(self, conv, classes=3):
        super().__init__()
        self.conv = conv
        self.fc = nn.LazyLinear(classes)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


CONV_GRID = [c for c in itertools.product(
    [1, 2],                 # stride
    [0, 1, "same"],         # padding
    [1, 2],                 # dilation
    [1, 2],                 # groups
    [True, False],          # bias
) if not (c[1] == "same" and c[0] != 1)]  # torch refuses padding='same' with stride > 1


@pytest.mark.parametrize("stride,padding,dilation,groups,bias", CONV_GRID)
@pytest.mark.parametrize("dim", [1, 2])
def test_conv_capture_equals_explicit(dim, stride, padding, dilation, groups, bias, gen):
    torch.manual_seed(0)
    Conv = nn.Conv1d if dim == 1 else nn.Conv2d
    conv = Conv(4, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    model = ConvHead(conv)
    shape = (5, 4, 11) if dim == 1 else (5, 4, 9, 8)
    x = torch.randn(*shape, generator=gen)
    model(x)  # materialise the lazy head
    batch = (x, torch.randint(0, 3, (5,), generator=gen))
    cap, _ = check_all_paths(model, ce, batch)
    info = next(i for i in cap.layers if i.name == "conv")
    assert (info.kind, info.path, info.d_in, info.d_out) == ("linear", "conv", 4 // groups * 3 ** dim, 6)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_conv_padding_modes_and_even_same(mode, gen):
    for conv in (nn.Conv2d(3, 4, (2, 3), padding=1, padding_mode=mode),
                 nn.Conv1d(3, 4, 4, padding="same", padding_mode=mode)):
        model = ConvHead(conv)
        x = torch.randn(4, 3, 7, 6, generator=gen) if isinstance(conv, nn.Conv2d) else torch.randn(4, 3, 9, generator=gen)
        model(x)
        check_all_paths(model, ce, (x, torch.randint(0, 3, (4,), generator=gen)))


@pytest.mark.parametrize("bias", [True, False])
def test_factgrass_on_conv_equals_grass_with_kronecker_mask(bias, gen):
    model = ConvHead(nn.Conv2d(3, 8, 3, padding=1, bias=bias))
    x = torch.randn(6, 3, 7, 7, generator=gen)
    model(x)
    batch = (x, torch.randint(0, 3, (6,), generator=gen))
    cap = GradientCapture(model, ce, layers=["conv"])
    fg = C.FactGraSS(k=16, seed=3, s=2).build(cap.layers)["conv"]
    explicit = reference(model, ce, batch, cap.layers)["conv"]
    flat_idx = kron_indices(fg.mask.idx_in, fg.mask.idx_out, fg.info.d_in + int(bias))
    gr = GraSSCompressor(fg.info, 16, fg.seed, k_mask=flat_idx.numel(), s=2, indices=flat_idx)
    want = gr.compress(explicit) * fg.mask.scale
    got = cap.compressed(batch, {"conv": fg})["conv"]
    assert rel(got, want) < 1e-4
    a, g = cap.factors(batch)["conv"]  # the factors: patches [B, T, 27] and gradients [B, T, 8]
    assert a.shape == (6, 49, 27) and g.shape == (6, 49, 8)


def test_grouped_conv_with_factgrass_equals_flat_map(gen):
    model = ConvHead(nn.Conv2d(4, 8, 3, groups=4))
    x = torch.randn(5, 4, 6, 6, generator=gen)
    model(x)
    batch = (x, torch.randint(0, 3, (5,), generator=gen))
    cap = GradientCapture(model, ce, layers=["conv"])
    comps = C.FactGraSS(k=8, seed=1).build(cap.layers)
    got = cap.compressed(batch, comps)["conv"]
    want = comps["conv"].compress(reference(model, ce, batch, cap.layers)["conv"])
    assert rel(got, want) < 1e-4


# ---- embeddings -------------------------------------------------------------------------------

class Bag(nn.Module):
    def __init__(self, vocab=50, d=6, padding_idx=None):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=padding_idx)
        self.pos = nn.Embedding(8, d)
        self.out = nn.Linear(d, 3)

    def forward(self, tokens):
        T = tokens.shape[1]
        h = self.emb(tokens) + self.pos(torch.arange(T)[None])  # position ids broadcast [1, T]
        return self.out(torch.tanh(h).mean(1))


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding_capture_equals_explicit_and_touches_seen_rows(padding_idx, gen):
    model = Bag(padding_idx=padding_idx)
    tokens = torch.randint(0, 50, (5, 7), generator=gen)
    tokens[:, 0] = 0
    tokens[1, 3] = tokens[1, 4]  # a repeated token adds up
    batch = (tokens, torch.randint(0, 3, (5,), generator=gen))
    cap, want = check_all_paths(model, ce, batch)
    assert {i.name: i.path for i in cap.layers} == {"emb": "embedding", "pos": "embedding", "out": "factors"}
    # The sparse per-sample gradient stores the rows of the tokens seen, nothing else.
    from grass.capture.hooks import HookRecorder
    entries = [e for e in cap._entries if e[0].name == "emb"]
    with HookRecorder(entries, model, 5) as rec:
        total = ce(model, batch).sum()
        calls = rec.backward(total)
    csr = embedding_csr(model.emb, calls["emb"], 5)
    for b in range(5):
        seen = set(tokens[b].tolist()) - ({padding_idx} if padding_idx is not None else set())
        lo, hi = int(csr.crow_indices()[b]), int(csr.crow_indices()[b + 1])
        assert hi - lo == len(seen) * 6
        assert set((csr.col_indices()[lo:hi] // 6).tolist()) == seen
    assert rel(csr.to_dense(), want["emb"]) < 1e-5


@pytest.mark.parametrize("spec", [C.SJLT(k=16, s=2), C.GraSS(k=16), C.RandomMask(k=40), C.FactGraSS(k=16),
                                  C.Gaussian(k=16)], ids=lambda s: s.method)
def test_embedding_compressed_through_csr_equals_compressed_explicit(spec, gen):
    model = Bag()
    batch = (torch.randint(0, 50, (4, 6), generator=gen), torch.randint(0, 3, (4,), generator=gen))
    cap = GradientCapture(model, ce)
    comps = spec.build(cap.layers)
    got = cap.compressed(batch, comps)
    want = reference(model, ce, batch, cap.layers)
    for info in cap.layers:
        assert rel(got[info.name], comps[info.name].compress(want[info.name])) < 1e-5, info.name


def test_compress_sparse_checks_its_input():
    from grass.layers import LayerInfo
    comp = C.SJLT(k=4).build([LayerInfo("e", "flat", 10)])["e"]
    with pytest.raises(TypeError, match="sparse CSR"):
        comp.compress_sparse(torch.zeros(2, 10))
    with pytest.raises(ValueError, match=r"shape \[B, 10\]"):
        comp.compress_sparse(torch.zeros(2, 9).to_sparse_csr())


class TinyLM(nn.Module):
    def __init__(self, vocab=23, d=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.ln = nn.LayerNorm(d)
        self.mid = nn.Linear(d, d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        return self.head(self.ln(self.emb(x) + torch.relu(self.mid(self.emb(x)))))


@pytest.mark.parametrize("spec", [C.Identity(), C.FactGraSS(k=16, s=2), C.GraSS(k=16), C.SJLT(k=16)],
                         ids=lambda s: s.method)
def test_tied_embedding_and_head_once_with_both_uses(spec, gen):
    model = TinyLM()
    batch = (torch.randint(0, 23, (4, 5), generator=gen), torch.randint(0, 23, (4, 5), generator=gen))
    cap = GradientCapture(model, ce)
    assert [(i.name, i.path, i.tied) for i in cap.layers] == [
        ("emb", "tied", ("head",)), ("ln", "norm", ()), ("mid", "factors", ())]
    assert cap.coverage["attributed"] == cap.coverage["total"]
    want = reference(model, ce, batch, cap.layers)
    comps = spec.build(cap.layers)
    got = cap.compressed(batch, comps)
    for info in cap.layers:
        assert rel(got[info.name], comps[info.name].compress(want[info.name])) < 1e-5, info.name
    # the reference is the weight's total gradient (lookup twice and head)
    full = torch.autograd.grad(ce(model, take(batch, torch.tensor([2])))[0], model.emb.weight)[0]
    assert rel(want["emb"][2], full.reshape(-1)) < 1e-6


# ---- norms and leaf modules ------------------------------------------------------------------

class ScaledRMS(nn.Module):
    """A custom RMS norm (as transformers models write their own): a leaf module."""

    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d))
        self.eps = 1e-6

    def forward(self, x):
        v = x.float().pow(2).mean(-1, keepdim=True)
        return (1 + self.weight) * (x * torch.rsqrt(v + self.eps)).to(x.dtype)


class NormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.ln = nn.LayerNorm(8)
        self.rms = nn.RMSNorm(8)
        self.custom = ScaledRMS(8)
        self.ln2 = nn.LayerNorm([3, 8], bias=False)
        self.out = nn.Linear(8, 4)

    def forward(self, x):  # x [B, 3, 6]
        h = self.custom(self.rms(self.ln(self.fc(x))))
        return self.out(self.ln2(h).sum(1))


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.bn1 = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.gn(torch.relu(self.bn(self.conv(x))))
        return self.fc(self.bn1(h.mean((2, 3))))


def test_norms_and_leaf_modules_equal_explicit(gen):
    model = NormNet()
    with torch.no_grad():
        for m in (model.ln, model.rms):
            m.weight.normal_()
        model.ln.bias.normal_()
    batch = (torch.randn(5, 3, 6, generator=gen), torch.randint(0, 4, (5,), generator=gen))
    cap, _ = check_all_paths(model, ce, batch)
    assert {i.name: i.path for i in cap.layers} == {
        "fc": "factors", "ln": "norm", "rms": "norm", "custom": "module", "ln2": "norm", "out": "factors"}


def test_batchnorm_in_eval_mode_uses_running_statistics(gen):
    model = ConvBN()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 5, 5, generator=gen) * 2 + 1)  # running statistics
        for bn in (model.bn, model.bn1, model.gn):
            bn.weight.normal_()
            bn.bias.normal_()
    model.eval()
    batch = (torch.randn(4, 3, 5, 5, generator=gen), torch.randint(0, 3, (4,), generator=gen))
    cap, _ = check_all_paths(model, ce, batch)
    assert {i.name: i.path for i in cap.layers} == {
        "conv": "conv", "bn": "norm", "gn": "norm", "bn1": "norm", "fc": "factors"}
    assert cap.coverage["attributed"] == cap.coverage["total"]


# ---- default coverage -------------------------------------------------------------------------

class WithParam(nn.Module):
    """A container that uses its own parameter (a class token): needs torch.func."""

    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.randn(40, 6))
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x + self.token.sum(0))


def test_default_coverage_warns_naming_modules_and_include_flat_covers_them(gen):
    model = WithParam()
    with pytest.warns(UserWarning, match=r"240 of 261 trainable parameters .*'\(root\)'.*include_flat=True"):
        cap = GradientCapture(model, ce)
    assert cap.coverage["left_out"] == [("(root)", 240)]
    assert cap.coverage["paths"] == {"factors": {"layers": 1, "params": 21}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cap = GradientCapture(model, ce, include_flat=True)
    assert cap.coverage["attributed"] == 261
    batch = (torch.randn(3, 6, generator=gen), torch.randint(0, 3, (3,), generator=gen))
    check_all_paths(model, ce, batch, include_flat=True)


def test_frozen_weight_with_trainable_bias_and_a_conv_frozen(gen):
    model = ConvHead(nn.Conv2d(2, 3, 3))
    x = torch.randn(3, 2, 5, 5, generator=gen)
    model(x)
    model.conv.weight.requires_grad_(False)
    model.fc.weight.requires_grad_(False)
    cap, _ = check_all_paths(model, ce, (x, torch.randint(0, 3, (3,), generator=gen)))
    assert {i.name: (i.kind, i.path) for i in cap.layers} == {"conv": ("flat", "module"), "fc": ("flat", "module")}


def test_attributor_reports_coverage_in_repr_and_store_meta(gen, tmp_path):
    import grass
    model = WithParam()
    with pytest.warns(UserWarning, match="not attributed"):
        attr = grass.Attributor(model, ce, C.FactGraSS(k=4), store=str(tmp_path / "r"), progress=False)
    assert "coverage 21/261 trainable parameters (8.0%): factors 1 layer / 21; left out (root) (240)" in repr(attr)
    data = [(torch.randn(3, 6, generator=gen), torch.randint(0, 3, (3,), generator=gen))]
    store = attr.cache(data, num_examples=3)
    assert store.meta["coverage"]["attributed"] == 21 and store.meta["coverage"]["total"] == 261
