"""The grass command: `grass run CONFIG` writes the same scores as the Attributor, config
errors name the key, `grass demo` delegates, `grass info` reports the build."""
import json
import os
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


# ---------------------------------------------------------------- validation before compute

def _tree(root):
    """Every path under root except Python's bytecode caches (importing the fixture
    module writes those, grass does not)."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def _run_bad(path, text, capsys, *args):
    """Runs `grass run` on a broken config; returns stderr after checking that it failed
    with exit code 2, without a traceback, and wrote nothing: the store directory (created
    empty beforehand) stays empty and nothing else appears."""
    (path / "run").mkdir(exist_ok=True)
    if isinstance(text, bytes):
        (path / "bad.toml").write_bytes(text)
    else:
        (path / "bad.toml").write_text(text)
    before = _tree(path)
    assert cli.main(["run", str(path / "bad.toml"), "--quiet", *args]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out == ""
    assert os.listdir(path / "run") == []
    assert _tree(path) == before
    return captured.err


@pytest.mark.parametrize("edit,message", [
    # [output] typos: a section name and a key name
    (lambda t: t.replace("[output]", "[outptu]"),
     "grass run: top level: unknown keys ['outptu'] ([outptu] is not a section; did you mean [output]?)"),
    (lambda t: t.replace("top_k = 4", "top-k = 4"),
     "grass run: [output] top-k: unknown key (unknown keys ['top-k']); did you mean 'top_k'?"),
    (lambda t: t.replace("top_k = 4", 'top_k = "ten"'),
     "grass run: [output] top_k: must be an integer >= 0, got str 'ten'"),
    (lambda t: t.replace("top_k = 4", "top_k = -3"), "grass run: [output] top_k: must be >= 0, got -3"),
    (lambda t: t.replace("top_k = 4", "top_k = true"),
     "grass run: [output] top_k: must be an integer >= 0, got bool True"),
    (lambda t: t.replace("damping = 0.2", 'damping = "big"'),
     "grass run: [attribution] damping: must be a number > 0 (or a list of them, one per layer), "
     "got str 'big'"),
    (lambda t: t.replace("damping = 0.2", "damping = -1"), "grass run: [attribution] damping: must be > 0, got -1"),
    (lambda t: t.replace('store = "run"', "store = 5"),
     "grass run: [attribution] store: must be a non-empty path, got int 5"),
    (lambda t: t.replace("damping = 0.2", "chunk_rows = 2.5"),
     "grass run: [attribution] chunk_rows: must be an integer >= 1, got float 2.5"),
    (lambda t: t.replace("damping = 0.2", 'dtype = "float64"'),
     "grass run: [attribution] dtype: must be one of 'float32', 'float16', 'bfloat16', got str 'float64'"),
    (lambda t: t.replace("damping = 0.2", "relative = 1"),
     "grass run: [attribution] relative: must be true or false, got int 1"),
    (lambda t: t.replace("k = 12", "k = 0"),
     "grass run: [compressor] k: must be an integer >= 1 (or a table { layer = k }), got int 0"),
    (lambda t: t.replace("k = 12", "kk = 12"),
     "grass run: [compressor] kk: unknown key (unknown keys ['kk']); did you mean 'k'?"),
    (lambda t: t.replace('test = "', 'test = "no_such_module_xyz.'),
     "grass run: [data] test: cannot import module 'no_such_module_xyz."),
    (lambda t: t.replace("hidden = 8", "hiden = 8"),
     "got an unexpected keyword argument 'hiden'"),
    (lambda t: t.replace("[data]", "[data]\ntrain_kwargs = 3"),
     "grass run: [data] train_kwargs: must be a table of keyword arguments, e.g. { hidden = 64 }, got int 3"),
    (lambda t: t.replace("[model]", "[model]\ncheckpoint = \"nope.pt\""),
     "grass run: [model] checkpoint: "),
])
def test_each_config_mistake_is_named_before_anything_is_written(project, capsys, edit, message):
    path, name = project
    err = _run_bad(path, edit(_toml(name)), capsys)
    assert message in err, err
    assert re.search(r"grass run: 1 problem in .*bad\.toml; nothing was computed or written", err), err


def test_scores_without_a_test_loader(project, capsys):
    path, name = project
    text = re.sub(r'test = ".*"\n', "", _toml(name))
    err = _run_bad(path, text, capsys)
    assert ("grass run: [output] scores: asks for scores (the default scores = true) but [data] has "
            "no test loader; add test = \"module:function\" to [data], or set scores = false") in err
    assert "grass run: [output] top_k: asks for top_k but [data] has no test loader" in err


def test_unwritable_output_directory(project, capsys):
    path, name = project
    (path / "notes.txt").write_text("a file, not a directory")
    err = _run_bad(path, _toml(name, 'dir = "notes.txt/out"'), capsys)
    assert (f"grass run: [output] dir: cannot create {str(path / 'notes.txt/out')!r}: "
            f"{str(path / 'notes.txt')!r} is a file, not a directory") in err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_output_directory(project, capsys):
    path, name = project
    (path / "ro").mkdir()
    os.chmod(path / "ro", 0o500)
    try:
        err = _run_bad(path, _toml(name, 'dir = "ro/out"'), capsys)
    finally:
        os.chmod(path / "ro", 0o700)
    assert f"[output] dir: cannot create {str(path / 'ro/out')!r}: directory {str(path / 'ro')!r} is not writable" in err


def test_non_utf8_config(project, capsys):
    path, name = project
    text = _toml(name).replace('store = "run"', 'store = "r\xe9sum\xe9"').encode("latin-1")
    err = _run_bad(path, text, capsys)
    offset = text.index(b"\xe9")
    line = text[:offset].count(b"\n") + 1
    assert (f"bad.toml: not UTF-8 text (byte 0xe9 at offset {offset}, line {line}); "
            "save the file as UTF-8") in err


def test_every_problem_is_reported_at_once(project, capsys):
    path, name = project
    text = (_toml(name).replace("[output]", "[output]\nscore = true").replace("top_k = 4", "top_k = -3")
            .replace("damping = 0.2", 'damping = "big"\nchunk_rows = 2.5')
            .replace(f'fn = "{name}:ce"', f'fn = "{name}:missing_loss"'))
    err = _run_bad(path, text, capsys)
    lines = [x for x in err.splitlines() if x.startswith("grass run: [")]
    assert lines == [
        "grass run: [attribution] damping: must be a number > 0 (or a list of them, one per layer), got str 'big'",
        "grass run: [attribution] chunk_rows: must be an integer >= 1, got float 2.5",
        "grass run: [output] score: unknown key (unknown keys ['score']); did you mean 'scores'? "
        "[output] takes dir, scores, top_k, self_influence",
        "grass run: [output] top_k: must be >= 0, got -3",
        f"grass run: [loss] fn: module '{name}' has no attribute 'missing_loss'",
    ], err
    assert "grass run: 5 problems in" in err


def test_device_without_cuda_is_a_config_error(project, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is usable here")
    path, name = project
    reason = grass.cuda_available()[1]
    err = _run_bad(path, _toml(name).replace("damping = 0.2", 'device = "cuda"'), capsys)
    assert f"grass run: [attribution] device: is 'cuda', but CUDA cannot be used here: " \
           f"grass.cuda_available() says {reason!r}" in err
    (path / "ok.toml").write_text(_toml(name))
    err = _run_bad(path, _toml(name), capsys, "--device", "cuda:1")
    assert f"grass run: --device: is 'cuda:1', but CUDA cannot be used here: grass.cuda_available() says {reason!r}" in err


def test_model_and_layer_problems_are_found_before_the_store_is_written(project, capsys):
    path, name = project
    err = _run_bad(path, _toml(name).replace("damping = 0.2", 'layers = ["0", "fc9"]'), capsys)
    assert "grass run: [attribution] layers: " in err and "fc9" in err
    err = _run_bad(path, _toml(name).replace(":make_model", ":train_loader").replace("hidden = 8", ""), capsys)
    assert f"grass run: [model] factory: {name}:train_loader returned DataLoader, not a torch.nn.Module" in err


def test_no_traceback_from_the_command_line(project):
    path, name = project
    (path / "bad.toml").write_text(_toml(name).replace("top_k = 4", 'top_k = "ten"'))
    proc = subprocess.run([sys.executable, "-m", "grass.cli", "run", str(path / "bad.toml")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("grass run: [output] top_k: must be an integer >= 0, got str 'ten'\n")
    assert "Traceback" not in proc.stderr and not (path / "run").exists()


# ---------------------------------------------------------------- help and the example config

def test_help_and_example_come_from_the_schema(capsys):
    from grass.run_config import SCHEMA
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--help"])
    assert e.value.code == 0
    help_out = capsys.readouterr().out
    assert cli.main(["run", "--example-config"]) == 0
    example = capsys.readouterr().out
    for section in SCHEMA:
        assert f"[{section.name}]" in help_out and f"\n[{section.name}]\n" in example
        for key in section.keys:
            assert re.search(rf"^  {key.name} +\S", help_out, re.M), key.name
            assert re.search(rf"^(# )?{key.name} = ", example, re.M), key.name
    assert re.search(r"^  top_k +integer >= 0; default: 10$", help_out, re.M)
    assert re.search(r"^  damping +number > 0, or a list of them \(one per layer\); default: 0\.1 \(relative\)$",
                     help_out, re.M)


EXAMPLE_MODULES = {
    "mymodels.py": '''
import torch
from torch import nn


def make_mlp(hidden=16):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 3))
''',
    "mydata.py": '''
import torch
from torch.utils.data import DataLoader, TensorDataset


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def train_loader():
    return DataLoader(TensorDataset(*_data(30, 1)), batch_size=8)


def test_loader():
    return DataLoader(TensorDataset(*_data(5, 2)), batch_size=8)
''',
    "mylosses.py": '''
from torch import nn


def cross_entropy(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")
''',
}


def test_example_config_runs_on_a_tiny_model(tmp_path, capsys):
    assert cli.main(["run", "--example-config"]) == 0
    (tmp_path / "example.toml").write_text(capsys.readouterr().out)
    for file, text in EXAMPLE_MODULES.items():
        (tmp_path / file).write_text(text)
    try:
        assert cli.main(["run", str(tmp_path / "example.toml"), "--quiet"]) == 0
        cfg = cli.load_config(str(tmp_path / "example.toml"))
        out = tmp_path / cfg["attribution"]["store"] / "out"
        scores, si = np.load(out / "scores.npy"), np.load(out / "self_influence.npy")
        topk = np.load(out / "top_k.npz")
        assert scores.shape == (5, 30) and si.shape == (30,)
        k = cfg["output"]["top_k"]
        np.testing.assert_array_equal(topk["indices"], np.argsort(-scores, axis=1, kind="stable")[:, :k])

        # The same run through the Python API, as the example's keys say.
        import mydata
        import mylosses
        import mymodels
        spec = getattr(grass.compress, cfg["compressor"]["method"])(k=cfg["compressor"]["k"],
                                                                    seed=cfg["compressor"]["seed"])
        attr = grass.Attributor(mymodels.make_mlp(**cfg["model"]["kwargs"]).eval(), mylosses.cross_entropy,
                                compressor=spec, store=tmp_path / "api", progress=False)
        attr.cache(mydata.train_loader())
        attr.fit()
        np.testing.assert_allclose(scores, attr.scores(mydata.test_loader()).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(si, attr.self_influence().numpy(), rtol=1e-6)
    finally:
        for module in ("mymodels", "mydata", "mylosses"):
            sys.modules.pop(module, None)
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))
