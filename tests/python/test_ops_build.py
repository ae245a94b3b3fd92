"""grass.build_info, grass.cuda_available, the device list of grass.testing, and the
binding's behaviour around threads (the GIL is released while kernels run)."""
import importlib.metadata
import sys
import threading
import time

import torch

import grass
from grass import ops, testing


def test_build_info():
    info = grass.build_info()
    assert info["version"] == grass.__version__ == importlib.metadata.version("grass")
    assert isinstance(info["cuda_compiled"], bool)
    assert info["openmp_max_threads"] >= 1
    assert info["simd"] in {"avx512f", "avx2", "sse4.2", "neon", "native", "none"}
    # The level the kernels run at is one of those compiled in (docs/portability.md).
    assert info["cpu_level"] in info["cpu_levels"].split(","), info
    assert info["cpu_level_error"] == ""
    assert isinstance(info["cuda_build_note"], str) and info["cuda_build_note"]
    assert info["compiler"]
    assert (info["cuda_available"], info["cuda_reason"]) == grass.cuda_available()


def test_grass_info_says_why_cuda_is_or_is_not_usable():
    import subprocess
    proc = subprocess.run([sys.executable, "-m", "grass.cli", "info"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    ok, reason = grass.cuda_available()
    usable = [line for line in lines if line.startswith("CUDA usable: ")]
    assert usable == (["CUDA usable: yes"] if ok else [f"CUDA usable: no: {reason}"])
    assert "\n" not in reason and reason.strip() == reason
    info = grass.build_info()
    assert f"CPU kernels: {info['cpu_level']} (chosen for this CPU; compiled: {info['cpu_levels']})" in lines
    assert f"torch: {torch.__version__} " in proc.stdout


def test_cuda_available_says_why_not():
    ok, reason = grass.cuda_available()
    assert isinstance(ok, bool) and isinstance(reason, str)
    assert ok == (reason == "")
    if not grass.build_info()["cuda_compiled"]:
        assert not ok and "without CUDA" in reason
    if not torch.cuda.is_available():
        assert not ok
    assert (torch.device("cuda") in testing.devices) == ok


def test_concurrent_calls_agree_with_serial(gen):
    x = torch.randn(64, 5000, generator=gen)
    expected = [ops.sjlt(x, 256, s=2, seed=seed) for seed in range(4)]
    results = [None] * 4

    def work(i):
        for _ in range(3):
            results[i] = ops.sjlt(x, 256, s=2, seed=i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r, e in zip(results, expected):
        assert torch.equal(r, e)


def test_gil_is_released_during_kernels():
    """While one thread is inside a long kernel, another thread runs Python code. With the
    GIL held, no Python code could run between the kernel's start and end."""
    n = 1400  # a dense Cholesky of n^3 / 3 flops: long enough to observe, small in memory
    F = torch.eye(n, dtype=torch.float64).reshape(-1) * 2.0
    window = {}

    def kernel():
        window["start"] = time.perf_counter()
        ops.cholesky_factor(F, [n], 0.0)
        window["end"] = time.perf_counter()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        stamps = []
        thread = threading.Thread(target=kernel)
        thread.start()
        while thread.is_alive():
            stamps.append(time.perf_counter())
        thread.join()
    finally:
        sys.setswitchinterval(old)
    start, end = window["start"], window["end"]
    margin = 0.2 * (end - start)
    inside = [t for t in stamps if start + margin < t < end - margin]
    assert inside, f"no Python progress during a {end - start:.3f} s kernel: the GIL was held"
    torch.testing.assert_close(F.view(n, n), (2.0 ** 0.5) * torch.eye(n, dtype=torch.float64))
