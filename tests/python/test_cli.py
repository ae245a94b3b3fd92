"""The grass command: `grass run CONFIG` writes the same scores as the Attributor, config
errors name the key, `grass demo` delegates, `grass info` reports the build."""
import json
import re
import subprocess
import sys
import types
import uuid

import numpy as np
import pytest
import torch

import grass
from grass import cli

FIXTURE = '''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_model(hidden=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, hidden), nn.Tanh(), nn.Linear(hidden, 3))


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def train_loader(n=40):
    return DataLoader(TensorDataset(*_data(n, 1)), batch_size=16)


def test_loader(n=7):
    return DataLoader(TensorDataset(*_data(n, 2)), batch_size=4)


def ce(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")
'''


@pytest.fixture
def project(tmp_path):
    name = f"cli_fixture_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(FIXTURE)
    yield tmp_path, name
    sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def _toml(name, extra=""):
    return f'''
[model]
factory = "{name}:make_model"
kwargs = {{ hidden = 8 }}

[data]
train = "{name}:train_loader"
test = "{name}:test_loader"

[loss]
fn = "{name}:ce"

[compressor]
method = "Gaussian"
k = 12
seed = 2

[attribution]
store = "run"
damping = 0.2

[output]
top_k = 4
{extra}
'''


def test_run_writes_the_attributors_scores(project, capsys):
    path, name = project
    (path / "cfg.toml").write_text(_toml(name))
    assert cli.main(["run", str(path / "cfg.toml"), "--quiet"]) == 0
    out = path / "run" / "out"
    scores = np.load(out / "scores.npy")
    topk = np.load(out / "top_k.npz")
    si = np.load(out / "self_influence.npy")
    assert scores.shape == (7, 40) and topk["indices"].shape == (7, 4) and si.shape == (40,)

    # The same workflow through the Python API, in this process.
    mod = sys.modules[name]
    model = mod.make_model(8).eval()
    attr = grass.Attributor(model, mod.ce, compressor=grass.compress.Gaussian(k=12, seed=2),
                            store=path / "api", progress=False)
    attr.cache(mod.train_loader())
    attr.fit(0.2)
    np.testing.assert_allclose(scores, attr.scores(mod.test_loader()).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(si, attr.self_influence().numpy(), rtol=1e-6)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(topk["indices"], order)
    assert "most helpful training examples" in capsys.readouterr().out

    # Running again reuses the store (nothing recomputed) and gives the same files.
    assert cli.main(["run", str(path / "cfg.toml"), "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(out / "scores.npy"), scores)


def test_json_config_and_output_choices(project):
    path, name = project
    cfg = {"model": {"factory": f"{name}:make_model"},
           "data": {"train": f"{name}:train_loader", "train_kwargs": {"n": 24}},
           "loss": {"fn": f"{name}:ce"},
           "compressor": {"method": "Identity"},
           "attribution": {"store": "run2"},
           "output": {"dir": "results", "scores": False, "top_k": 0}}
    (path / "cfg.json").write_text(json.dumps(cfg))
    assert cli.main(["run", str(path / "cfg.json"), "--quiet"]) == 0
    assert sorted(p.name for p in (path / "results").iterdir()) == ["self_influence.npy"]
    assert np.load(path / "results" / "self_influence.npy").shape == (24,)


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("[loss]\nfn", "#[loss]\n#fn"), "has no [loss] section"),
    (lambda t: t.replace("[loss]", "[losses]"), "unknown keys ['losses']"),
    (lambda t: t.replace(":make_model", ":nope"), "has no attribute 'nope'"),
    (lambda t: t.replace('factory = "', 'factory = "missing_module_xyz:'), "cannot import module"),
    (lambda t: t.replace('method = "Gaussian"', 'method = "Nope"'), "not a compressor in grass.compress"),
    (lambda t: t.replace("damping = 0.2", "dampnig = 0.2"), "unknown keys ['dampnig']"),
    (lambda t: re.sub(r'fn = ".*"', 'fn = "cross_entropy"', t), "import path 'module:attribute'"),
])
def test_config_errors_name_the_key(project, capsys, edit, message):
    path, name = project
    (path / "bad.toml").write_text(edit(_toml(name)))
    assert cli.main(["run", str(path / "bad.toml"), "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_missing_or_invalid_config(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "none.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("[model\n")
    assert cli.main(["run", str(tmp_path / "bad.toml")]) == 2
    assert "invalid TOML" in capsys.readouterr().err


def test_demo_delegates_to_grass_eval_demo(monkeypatch):
    seen = []
    fake = types.ModuleType("grass.eval.demo")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "grass.eval.demo", fake)
    assert cli.main(["demo", "--quick", "--out", "x"]) == 0
    assert seen == [["--quick", "--out", "x"]]


def test_demo_says_clearly_when_it_is_missing(monkeypatch, capsys):
    import importlib

    real = importlib.import_module

    def fake_import(name, *args):
        if name == "grass.eval.demo":
            raise ModuleNotFoundError("No module named 'grass.eval.demo'", name="grass.eval.demo")
        return real(name, *args)

    monkeypatch.setattr(cli.importlib, "import_module", fake_import)
    assert cli.main(["demo"]) == 2
    assert "grass.eval.demo is missing" in capsys.readouterr().err


def test_info_in_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "grass.cli", "info"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert grass.build_info()["version"] in proc.stdout
    assert "cuda_available" in proc.stdout
