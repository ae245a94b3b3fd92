"""Attributor.cache killed with SIGKILL part-way (a real separate process) resumes to a
store bitwise identical to an uninterrupted run."""
import json
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

N, BATCH, CHUNK = 240, 8, 24

# One caching run. Each example takes a few milliseconds to load, so the parent can
# catch the run between commits.
CHILD = r"""
import sys, time, torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
import grass

N, BATCH, CHUNK = {N}, {BATCH}, {CHUNK}

class Slow(Dataset):
    def __init__(self, delay):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(N, 10, generator=g)
        self.y = torch.randint(0, 4, (N,), generator=g)
        self.delay = delay
    def __len__(self):
        return N
    def __getitem__(self, i):
        time.sleep(self.delay)
        return self.x[i], self.y[i]

def ce(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
attr = grass.Attributor(model, ce, compressor=grass.compress.{SPEC}, store=sys.argv[1],
                        chunk_rows=CHUNK, progress=False)
attr.cache(DataLoader(Slow(float(sys.argv[2])), batch_size=BATCH))
"""


def _child(run_dir, delay, spec):
    code = CHILD.format(N=N, BATCH=BATCH, CHUNK=CHUNK, SPEC=spec)
    return subprocess.Popen([sys.executable, "-c", code, str(run_dir), str(delay)])


def _committed(store_dir):
    try:
        return json.loads((store_dir / "manifest.json").read_text())["committed_rows"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.mark.parametrize("spec", ["Gaussian(k=32, seed=5)", "FactGraSS(k=32, seed=5)"])
def test_killed_caching_run_resumes_bitwise(tmp_path, spec):
    ref = tmp_path / "ref"
    assert _child(ref, 0.0, spec).wait(timeout=600) == 0

    run = tmp_path / "run"
    child = _child(run, 0.004, spec)
    deadline = time.time() + 300
    while _committed(run / "train") < 2 * CHUNK:
        assert child.poll() is None, "the caching run ended before it could be killed"
        assert time.time() < deadline, "the caching run made no progress"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    killed_at = _committed(run / "train")
    assert 2 * CHUNK <= killed_at < N

    assert _child(run, 0.0, spec).wait(timeout=600) == 0
    a = (ref / "train" / "gradients.bin").read_bytes()
    b = (run / "train" / "gradients.bin").read_bytes()
    assert len(a) == N * 32 * 2 * 4 and a == b  # two layers of k = 32, float32
    ma, mb = (json.loads((p / "train" / "manifest.json").read_text()) for p in (ref, run))
    ma.pop("meta"), mb.pop("meta")
    assert ma == mb and ma["committed_rows"] == N
