"""Reopening a run: Attributor.load restores the compressor spec, layers, target and fit
from the run directory (plain JSON), and a fresh process gives bitwise the same scores.
Loss fingerprints hash what the function computes, not its source text."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import grass
from grass.store import FingerprintMismatch, hash_callable
from grass.store.fingerprint import fingerprint_as

MODEL_SRC = '''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.ln = nn.LayerNorm(4)
        self.emb = nn.Embedding(11, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, batch):
        x, tok = batch
        h = self.conv(x).mean(2) + self.emb(tok).sum(1)
        return self.fc(torch.tanh(self.ln(h)))

def loss_fn(model, batch):
    x, tok, y = batch
    return nn.functional.cross_entropy(model((x, tok)), y, reduction="none")
'''


def batches(seed, n, B):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, 2, 5, generator=g), torch.randint(0, 11, (B, 3), generator=g),
             torch.randint(0, 3, (B,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("method", ["fisher", "identity"])
def test_reloaded_run_in_a_fresh_process_gives_bitwise_equal_scores(tmp_path, method):
    (tmp_path / "netdef.py").write_text(MODEL_SRC)
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib
        netdef = importlib.import_module("netdef")
        importlib.reload(netdef)
    finally:
        sys.path.pop(0)
    torch.manual_seed(3)
    model = netdef.Net().eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    torch.save({"train": batches(1, 3, 5), "test": batches(2, 2, 4)}, tmp_path / "data.pt")
    run = tmp_path / "run"
    attr = grass.Attributor(model, netdef.loss_fn, grass.compress.FactGraSS(k=8, seed=5),
                            store=str(run), progress=False)
    data = torch.load(tmp_path / "data.pt")
    attr.cache(data["train"], num_examples=15)
    attr.fit(0.3, method=method)
    want = attr.scores(data["test"])
    desc = json.loads((run / "run.json").read_text())
    assert desc["fit"]["method"] == method and desc["compressor"]["method"] == "factgrass"

    script = textwrap.dedent(f'''
        import sys, torch, grass
        sys.path.insert(0, {str(tmp_path)!r})
        import netdef
        model = netdef.Net().eval()
        model.load_state_dict(torch.load({str(tmp_path / "weights.pt")!r}))
        attr = grass.Attributor.load({str(run)!r}, model, netdef.loss_fn, progress=False)
        data = torch.load({str(tmp_path / "data.pt")!r})
        torch.save(attr.scores(data["test"]), {str(tmp_path / "scores.pt")!r})
        print(repr(attr.spec), [i.name for i in attr.layers])
    ''')
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = torch.load(tmp_path / "scores.pt")
    assert torch.equal(got, want)  # bitwise
    assert "FactGraSS" in out.stdout and "conv" in out.stdout


def test_load_refuses_another_loss_and_accepts_an_override(tmp_path):
    model = nn.Linear(3, 2)

    def loss_a(m, b):
        return nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")

    def loss_b(m, b):
        return nn.functional.cross_entropy(m(b[0]), b[1], reduction="none") * 2

    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 3, generator=g), torch.randint(0, 2, (4,), generator=g))]
    attr = grass.Attributor(model, loss_a, grass.compress.Identity(), store=str(tmp_path / "r"),
                            progress=False)
    attr.cache(data, num_examples=4)
    with pytest.raises(FingerprintMismatch, match="loss_fn does not compute"):
        grass.Attributor.load(str(tmp_path / "r"), model, loss_b)
    with pytest.raises(FileNotFoundError, match="no run.json"):
        grass.Attributor.load(str(tmp_path / "nothing"), model, loss_a)
    # An explicit override is recorded as such.
    attr2 = grass.Attributor(model, fingerprint_as(loss_b, "ce-v2"), grass.compress.Identity(),
                             store=str(tmp_path / "r2"), progress=False)
    attr2.cache(data, num_examples=4)
    assert json.loads((tmp_path / "r2" / "run.json").read_text())["loss"] == {"override": "ce-v2"}
    grass.Attributor.load(str(tmp_path / "r2"), model, fingerprint_as(loss_b, "ce-v2"))


def _ce(m, b):
    return nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")


def test_loss_fingerprint_ignores_comments_formatting_and_names_but_not_computation():
    ns = {}
    exec(textwrap.dedent('''
        import torch
        def loss(m, b):
            return torch.nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")
        def loss_commented(m, b):
            # a comment

            return torch.nn.functional.cross_entropy(
                m(b[0]), b[1],   reduction="none")  # another
        def renamed(model, batch):
            """A docstring."""
            return torch.nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="none")
        def scaled(m, b):
            return torch.nn.functional.cross_entropy(m(b[0]), b[1], reduction="none") * 2
        def smoothed(m, b):
            return torch.nn.functional.cross_entropy(m(b[0]), b[1], reduction="none", label_smoothing=0.1)
    '''), ns)
    h = hash_callable(ns["loss"])
    assert hash_callable(ns["loss_commented"]) == h
    assert hash_callable(ns["renamed"]) == h
    assert hash_callable(ns["scaled"]) != h
    assert hash_callable(ns["smoothed"]) != h
    # a closure's value is part of what the function computes
    def make(scale):
        return lambda m, b: _ce(m, b) * scale
    assert hash_callable(make(1.0)) != hash_callable(make(2.0))
    assert hash_callable(make(1.0)) == hash_callable(make(1.0))
