"""A caching process killed with SIGKILL part-way resumes to the bitwise same store."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from grass.store import GradientStore, StoreWriter, fill_store

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

N, K, B, CHUNK = 400, 24, 10, 40

CHILD = r"""
import sys, time, torch
from grass.store import StoreWriter, fill_store
sys.path.insert(0, sys.argv[2])
from test_store_kill import batches, compute, FP, N, K, CHUNK
slow = float(sys.argv[3])
def slow_compute(batch):
    time.sleep(slow)
    return compute(batch)
with StoreWriter(sys.argv[1], fingerprint=FP, num_rows=N, block_sizes=[K // 2, K // 2],
                 chunk_rows=CHUNK) as w:
    fill_store(w, batches(), slow_compute, progress=False)
"""

FP = {"test": "kill", "n": N}


def batches():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(N, K, generator=g)
    return [x[i:i + B] for i in range(0, N, B)]


def compute(batch):
    return torch.tanh(batch) * 3.0 + batch.square()


def _run_child(path, slow):
    env = dict(os.environ)
    return subprocess.Popen([sys.executable, "-c", CHILD, str(path), os.path.dirname(__file__),
                             str(slow)], env=env)


def _committed(path):
    try:
        return json.loads((path / "manifest.json").read_text())["committed_rows"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    ref = tmp_path / "ref"
    with StoreWriter(ref, fingerprint=FP, num_rows=N, block_sizes=[K // 2, K // 2],
                     chunk_rows=CHUNK) as w:
        fill_store(w, batches(), compute, progress=False)

    path = tmp_path / "killed"
    child = _run_child(path, slow=0.02)
    deadline = time.time() + 300
    while _committed(path) < 3 * CHUNK:
        assert child.poll() is None, "the caching process ended before it could be killed"
        assert time.time() < deadline, "the caching process made no progress"
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    killed_at = _committed(path)
    assert 3 * CHUNK <= killed_at < N  # really part-way

    # What was committed is readable and correct even before resuming.
    partial = GradientStore(path)
    assert not partial.complete
    assert torch.equal(partial.gradients(), GradientStore(ref).gradients()[:killed_at])

    # Resume in a fresh process (the lock of the dead one is gone with it).
    child = _run_child(path, slow=0.0)
    assert child.wait(timeout=600) == 0
    assert (path / "gradients.bin").read_bytes() == (ref / "gradients.bin").read_bytes()
    a, b = (json.loads((p / "manifest.json").read_text()) for p in (ref, path))
    a.pop("meta"), b.pop("meta")
    assert a == b
    GradientStore(path).verify()
