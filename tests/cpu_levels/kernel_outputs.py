"""Every CPU kernel of the installed grass on fixed inputs, written to a file, so that runs at
different CPU levels (GRASS_CPU_CAPABILITY, or a CPU model emulated by qemu-x86_64) can be
compared bit for bit, the FMA-contracted kernels (kron, FactGraSS, Fisher, Cholesky) within
rounding (docs/portability.md).

    python kernel_outputs.py write OUT.npz [--expect-level LEVEL]
    python kernel_outputs.py compare REFERENCE.npz OTHER.npz...

Only numpy and grass's compiled module are used: the module is loaded from the installed
package without running grass/__init__.py, because importing torch under an emulator takes
minutes. The inputs exercise every code path the levels compile differently: full 16-row
blocks and leftover rows, s = 1 and s > 1, several column ranges, float16 input, the
FactGraSS lane path, FJLT's small and blocked transforms, and both Fisher dtypes.
"""
import argparse
import glob
import importlib.util
import os
import sys

import numpy as np


def load_C():
    spec = importlib.util.find_spec("grass")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        sys.exit("grass is not installed")
    paths = []
    for d in spec.submodule_search_locations:
        paths += glob.glob(os.path.join(d, "_C*.so")) + glob.glob(os.path.join(d, "_C*.pyd"))
    if not paths:
        sys.exit(f"no compiled module _C in {list(spec.submodule_search_locations)}")
    mod_spec = importlib.util.spec_from_file_location("grass._C", paths[0])
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def alloc(shape, dtype):
    """The binding's allocator for outputs it sizes itself (dtype by name: "int64", ...)."""
    return np.empty(shape, getattr(np, dtype))


def run_kernels(C):
    rng = np.random.default_rng(2026)
    out = {}

    def normal(*shape, dtype=np.float32):
        return rng.standard_normal(shape).astype(dtype)

    # SJLT, dense: 2 full blocks + 6 rows as a partial block; s = 1 (fused path) and s = 3.
    x = normal(38, 3000)
    for s in (1, 3):
        y = np.empty((38, 256), np.float32)
        C.sjlt(x, y, 256, s, 11, False)
        out[f"sjlt_f32_s{s}"] = y
    # float16 input, 17 rows (a block and one single row).
    xh = normal(17, 2500, dtype=np.float16)
    y = np.empty((17, 128), np.float32)
    C.sjlt(xh, y, 128, 2, 5, False)
    out["sjlt_f16"] = y
    # Several column ranges (p > 2^17), few rows: (row, range) pairs in parallel.
    xr = normal(5, 140_000)
    y = np.empty((5, 64), np.float32)
    C.sjlt(xr, y, 64, 1, 3, False)
    out["sjlt_ranges"] = y
    # CSR of a sparse copy of x.
    xs = x.copy()
    xs[rng.random(xs.shape) < 0.7] = 0
    indptr = np.concatenate([[0], np.cumsum((xs != 0).sum(1))]).astype(np.int64)
    indices = np.nonzero(xs)[1].astype(np.int64)
    values = xs[xs != 0].astype(np.float32)
    y = np.empty((38, 256), np.float32)
    C.sjlt_csr(indptr, indices, values, y, 3000, 256, 2, 7, False)
    out["sjlt_csr"] = y
    yt = np.empty((38, 3000), np.float32)
    C.sjlt_transpose(out["sjlt_f32_s3"], yt, 3000, 3, 11)
    out["sjlt_transpose"] = yt
    # Masks and GraSS.
    idx = C.mask_indices(3000, 900, 13, alloc)
    out["mask_indices"] = idx
    g = np.empty((38, 900), np.float32)
    C.mask_gather(x, idx, g)
    out["mask_gather"] = g
    for name, xin in (("f32", x), ("f16", x.astype(np.float16))):
        y = np.empty((38, 128), np.float32)
        C.masked_sjlt(xin, idx, y, 128, 2, 17, False)
        out[f"masked_sjlt_{name}"] = y
    # FJLT: a small transform (p <= block) and a blocked one.
    for p in (200, 5000):
        xf = normal(9, p)
        y = np.empty((9, 96), np.float32)
        C.fjlt(xf, y, 96, 19)
        out[f"fjlt_p{p}"] = y
    # Kronecker reconstruction and FactGraSS (40 samples: the 16-sample lane path and the rest).
    a = normal(40, 3, 70)
    gr = normal(40, 3, 30)
    kr = np.empty((40, 30 * 71), np.float32)
    C.kron(a, gr, kr, True)
    out["kron"] = kr
    idx_in = np.sort(rng.choice(71, 24, replace=False)).astype(np.int64)
    idx_out = np.sort(rng.choice(30, 12, replace=False)).astype(np.int64)
    y = np.empty((40, 64), np.float32)
    C.factgrass(a, gr, idx_in, idx_out, y, 64, True, 1, 23, False)
    out["factgrass"] = y
    # Fisher accumulation, Cholesky factor and solve (two blocks).
    blocks = np.array([40, 24], np.int64)
    packed = int((blocks ** 2).sum())
    for name, dt in (("f32", np.float32), ("f64", np.float64)):
        G = normal(300, 64, dtype=dt)
        F = np.zeros(packed, np.float64)
        C.fisher_accumulate(G, blocks, F)
        out[f"fisher_{name}"] = F.copy()
        C.cholesky_factor(F, blocks, np.array([0.1, 0.2]))
        out[f"cholesky_factor_{name}"] = F
        V = normal(7, 64, dtype=dt)
        X = np.empty_like(V)
        C.cholesky_solve(F, blocks, V, X)
        out[f"cholesky_solve_{name}"] = X
    return out


# Outputs of the sources compiled with FMA contraction at the avx2/avx512 levels
# (GRASS_CPU_CONTRACTED_SOURCES in cmake/grass_cpu_levels.cmake): across levels with and
# without FMA they agree within rounding, not bitwise.
CONTRACTED = ("kron", "factgrass", "fisher_", "cholesky_")


def within_rounding(a, b):
    """|a - b| <= 64 ulps of the array's largest magnitude, elementwise: what one rounding
    more or less per multiply-add gives over these sums (a few thousand terms at most)."""
    eps = np.finfo(a.dtype).eps
    scale = max(float(np.max(np.abs(a))), np.finfo(a.dtype).tiny)
    return bool(np.all(np.abs(a.astype(np.float64) - b.astype(np.float64)) <= 64 * eps * scale))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("out")
    w.add_argument("--expect-level", help="fail unless the kernels ran at this CPU level")
    c = sub.add_parser("compare")
    c.add_argument("reference")
    c.add_argument("others", nargs="+")
    args = parser.parse_args()
    if args.cmd == "write":
        C = load_C()
        info = C.build_info()
        level = info["cpu_level"]
        if not level:
            sys.exit(f"no CPU level can run: {info['cpu_level_error']}")
        if args.expect_level and level != args.expect_level:
            sys.exit(f"expected CPU level {args.expect_level}, ran at {level} (compiled: {info['cpu_levels']})")
        outputs = run_kernels(C)
        np.savez(args.out, cpu_level=np.array(level), **outputs)
        print(f"{args.out}: {len(outputs)} kernel outputs at CPU level {level} (compiled: {info['cpu_levels']})")
        return
    ref = np.load(args.reference)
    failed = False
    for path in args.others:
        other = np.load(path)
        keys = sorted(k for k in ref.files if k != "cpu_level")
        if sorted(k for k in other.files if k != "cpu_level") != keys:
            print(f"{path}: a different set of outputs than {args.reference}")
            failed = True
            continue
        bad, close = [], []
        for k in keys:
            a, b = ref[k], other[k]
            if a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes():
                continue
            if a.dtype == b.dtype and a.shape == b.shape and k.startswith(CONTRACTED) \
                    and within_rounding(a, b):
                close.append(k)
            else:
                bad.append(k)
        levels = f"{other['cpu_level']} vs {ref['cpu_level']}"
        if bad:
            failed = True
            print(f"{path} ({levels}): NOT bitwise equal in {', '.join(bad)}")
        elif close:
            print(f"{path} ({levels}): {len(keys) - len(close)} outputs bitwise equal, "
                  f"{len(close)} within rounding (FMA contraction: {', '.join(close)})")
        else:
            print(f"{path} ({levels}): all {len(keys)} outputs bitwise equal")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
