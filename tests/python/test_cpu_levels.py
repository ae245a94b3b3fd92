"""Run-time CPU dispatch (docs/portability.md): every CPU level this machine can run gives
bitwise the same kernel outputs (the FMA-contracted kron, FactGraSS, Fisher and Cholesky:
within rounding between levels with and without FMA), GRASS_CPU_CAPABILITY forces a level, and a level that is
unknown or beyond this CPU is refused with an error naming the variable. Each level runs in
a subprocess, since the level is chosen once per process."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import grass

SCRIPT = Path(__file__).resolve().parents[1] / "cpu_levels" / "kernel_outputs.py"
INFO = grass.build_info()
LEVELS = INFO["cpu_levels"].split(",")


def _run(args, level=None, threads=2):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("GRASS_CPU_CAPABILITY", None)
    if level is not None:
        env["GRASS_CPU_CAPABILITY"] = level
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600)


def _forced_info(level):
    code = "import grass._C as C, json; print(json.dumps(C.build_info()))"
    proc = _run(["-c", code], level)
    assert proc.returncode == 0, proc.stderr
    import json
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_levels_agree(tmp_path):
    runnable = [lv for lv in LEVELS if _forced_info(lv)["cpu_level"] == lv]
    assert INFO["cpu_level"] in runnable  # the automatic choice is one of them, the best
    assert INFO["cpu_level"] == runnable[-1]
    outputs = []
    for level in runnable:
        out = tmp_path / f"{level}.npz"
        proc = _run([str(SCRIPT), "write", str(out), "--expect-level", level], level)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        outputs.append(str(out))
    # The automatic choice with one thread: levels and thread counts together.
    auto = tmp_path / "auto1.npz"
    proc = _run([str(SCRIPT), "write", str(auto)], threads=1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _run([str(SCRIPT), "compare", outputs[0], *outputs[1:], str(auto)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("bitwise equal") == len(outputs)


def test_compare_detects_a_difference(tmp_path):
    import numpy as np
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, cpu_level=np.array("x"), y=np.array([1.0, 2.0], np.float32))
    np.savez(b, cpu_level=np.array("x"), y=np.array([1.0, np.nextafter(np.float32(2), np.float32(3))], np.float32))
    proc = _run([str(SCRIPT), "compare", str(a), str(b)])
    assert proc.returncode == 1 and "NOT bitwise equal in y" in proc.stdout


def test_compare_allows_rounding_only_in_contracted_kernels(tmp_path):
    import numpy as np
    one_ulp = np.nextafter(np.float32(2), np.float32(3))
    a, b, c = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
    np.savez(a, cpu_level=np.array("x"), kron=np.array([1.0, 2.0], np.float32),
             sjlt=np.array([1.0, 2.0], np.float32))
    np.savez(b, cpu_level=np.array("y"), kron=np.array([1.0, one_ulp], np.float32),
             sjlt=np.array([1.0, 2.0], np.float32))
    np.savez(c, cpu_level=np.array("y"), kron=np.array([1.0, 2.001], np.float32),
             sjlt=np.array([1.0, 2.0], np.float32))
    proc = _run([str(SCRIPT), "compare", str(a), str(b)])
    assert proc.returncode == 0 and "1 within rounding (FMA contraction: kron)" in proc.stdout
    proc = _run([str(SCRIPT), "compare", str(a), str(c)])
    assert proc.returncode == 1 and "NOT bitwise equal in kron" in proc.stdout


@pytest.mark.parametrize("value", ["avx3", "AVX2 ", "sse"])
def test_unknown_level_is_refused(value):
    info = _forced_info(value)
    assert info["cpu_level"] == ""
    assert f"GRASS_CPU_CAPABILITY must be one of baseline, avx2, avx512" in info["cpu_level_error"]
    assert repr(value) in info["cpu_level_error"] or f"'{value}'" in info["cpu_level_error"]
    code = ("import torch, grass\n"
            "try:\n    grass.ops.sjlt(torch.ones(2, 3), 4)\nexcept ValueError as e:\n    print('ValueError:', e)")
    proc = _run(["-c", code], value)
    assert proc.returncode == 0, proc.stderr
    assert "ValueError: grass: GRASS_CPU_CAPABILITY must be one of" in proc.stdout


def test_level_not_compiled_or_not_supported_is_refused():
    if "native" not in LEVELS:  # a dispatching build has no -march=native level
        err = _forced_info("native")["cpu_level_error"]
        assert err.startswith("GRASS_CPU_CAPABILITY=native, but this build of grass has only the CPU level(s) "), err
    # Under an emulated older CPU (scripts/test.sh runs qemu) the unsupported ones show up here.
    for level in ("baseline", "avx2", "avx512"):
        info = _forced_info(level)
        if info["cpu_level"] == level:
            continue
        assert info["cpu_level"] == ""
        err = info["cpu_level_error"]
        assert err.startswith(f"GRASS_CPU_CAPABILITY={level}, but "), err
        assert ("this CPU lacks" in err) or ("has only the CPU level" in err), err
