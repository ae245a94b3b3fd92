"""device="cuda" where CUDA cannot be used: every public entry point that takes a device
says so at the argument, quoting grass.cuda_available(), instead of torch's
"AssertionError: Torch not compiled with CUDA enabled" at the first allocation."""
import pytest
import torch
from torch import nn

import grass
from grass.device import resolve_device
from grass.precondition import BlockFisher
from grass.score.baselines import DataInf, ExactInfluence, LiSSA
from grass.score.influence import self_influence
from grass.store import StoreWriter


@pytest.fixture
def no_cuda(monkeypatch):
    """CUDA unusable, as on a CPU build of torch (also on a machine with a GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return grass.cuda_available()[1]


def _loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")


def _expected(what, device, reason):
    return (f"{what} is {device!r}, but CUDA cannot be used here: grass.cuda_available() says "
            f"{reason!r}")


def test_attributor_refuses_cuda_before_writing_anything(no_cuda, tmp_path):
    model = nn.Linear(4, 3)
    with pytest.raises(ValueError) as e:
        grass.Attributor(model, _loss, compressor=grass.compress.Identity(), store=tmp_path / "run",
                         device="cuda")
    assert _expected("Attributor: device", "cuda", no_cuda) in str(e.value)
    assert "Use device='cpu'" in str(e.value)
    assert not (tmp_path / "run").exists()


def test_every_entry_point_names_itself(no_cuda, tmp_path):
    model = nn.Linear(4, 3)
    with StoreWriter(str(tmp_path / "s"), fingerprint={"t": 1}, num_rows=2, block_sizes=[3]) as w:
        w.append(torch.ones(2, 3))
    store = grass.store.GradientStore(str(tmp_path / "s"))
    calls = {
        "BlockFisher: device": lambda d: BlockFisher([3], device=d),
        "mask_indices: device": lambda d: grass.ops.mask_indices(10, 3, device=d),
        "self_influence: device": lambda d: self_influence(None, store, device=d),
        "DataInf: device": lambda d: DataInf(store, [3], device=d),
        "ExactInfluence: device": lambda d: ExactInfluence(model, _loss, device=d),
        "LiSSA: device": lambda d: LiSSA(model, _loss, device=d),
    }
    for what, call in calls.items():
        for device in ("cuda", "cuda:1", torch.device("cuda")):
            with pytest.raises(ValueError) as e:
                call(device)
            assert _expected(what, str(torch.device(device)), no_cuda) in str(e.value), what


def test_resolve_device():
    assert resolve_device(None) is None
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^f: device must be a device such as 'cpu', 'cuda' or "
                                         r"'cuda:0', got 'gpu'$"):
        resolve_device("gpu", "f: device")
    with pytest.raises(ValueError, match=r"^device must be a device string such as 'cpu' or 'cuda', "
                                         r"or a torch.device, got float 1.5$"):
        resolve_device(1.5)


def test_a_cuda_index_beyond_the_visible_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"^x: device is 'cuda:2', but torch sees 2 CUDA devices "
                                         r"\(indices 0..1\)$"):
        resolve_device("cuda:2", "x: device")
