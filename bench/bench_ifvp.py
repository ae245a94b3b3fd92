"""grass's two iFVP paths on the CPU, measured side by side in one run: the C++ core
(``grass.ops``, what the CPU uses) and the batched torch path that
``grass.precondition.ifvp`` runs on CUDA (``BlockBatches``: LAPACK/BLAS here).

    python bench/bench_ifvp.py            # N = 4096 rows, M = 256 right-hand sides
    python bench/bench_ifvp.py --quick    # a tiny configuration (a smoke test)

For a few block layouts it times, median of --reps runs:

- accumulation: ``grass.ops.fisher_accumulate(G, sizes)`` vs ``BlockBatches.fisher_accumulate``
  (float64 ``bmm`` per block size),
- factorisation: ``grass.ops.cholesky_factor`` vs ``BlockBatches.cholesky_factor``
  (``torch.linalg.cholesky_ex``),
- solve: ``grass.ops.cholesky_solve`` vs ``BlockBatches.cholesky_solve`` (``torch.cholesky_solve``),

and prints GFLOP/s (multiply + add = 2 flops: accumulation N k^2 per block, as for one
triangle; Cholesky k^3 / 3; solve 2 M k^2) and torch's time over grass's. Both sides are
checked against each other.
"""
from __future__ import annotations

import argparse
import sys

import torch

try:
    import grass
    from grass import ops
    from grass.precondition.ifvp import BlockBatches
except ImportError as exc:  # pragma: no cover - a message, not a test
    sys.exit(f"bench_ifvp.py needs the grass package (pip install . from the repository root): {exc}")

from _common import median_seconds  # bench/_common.py (this script's folder is on sys.path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--N", type=int, default=None, help="rows of G")
    ap.add_argument("--M", type=int, default=None, help="right-hand sides")
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args()
    N = args.N or (300 if args.quick else 4096)
    M = args.M or (20 if args.quick else 256)
    reps = args.reps or (1 if args.quick else 3)
    layouts = ([("3 blocks of 40..130", [40, 70, 130])] if args.quick else
               [("1 x 4096", [4096]), ("8 x 1024", [1024] * 8), ("32 x 256", [256] * 32),
                ("mixed 2048..64", [2048, 1024, 512, 256, 128, 64])])

    info = grass.build_info()
    print(f"# bench_ifvp.py: N = {N} rows of G (float32), M = {M} right-hand sides, median of {reps}")
    print(f"grass {info['version']} (OpenMP threads {info['openmp_max_threads']}), torch {torch.__version__} "
          f"(threads {torch.get_num_threads()})\n")
    print("| layout | accumulate: grass GFLOP/s | torch | torch / grass time | Cholesky: grass GFLOP/s | torch "
          "| torch / grass time | solve: grass GFLOP/s | torch | torch / grass time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    failures = 0
    for name, sizes in layouts:
        K = sum(sizes)
        g = torch.Generator().manual_seed(1)
        G = torch.rand(N, K, generator=g) - 0.5
        V = torch.rand(M, K, generator=g) - 0.5
        damping = 1e-3 * N
        syrk = sum(N * b * b for b in sizes)
        chol = sum(b**3 / 3 for b in sizes)
        solve = sum(2 * M * b * b for b in sizes)

        batches = BlockBatches(sizes, "cpu")
        lam = torch.full((len(sizes),), damping, dtype=torch.float64)
        packed = sum(b * b for b in sizes)
        t_acc = median_seconds(lambda: ops.fisher_accumulate(G, sizes), reps)
        t_acc_torch = median_seconds(
            lambda: batches.fisher_accumulate(G, torch.zeros(packed, dtype=torch.float64)), reps)

        F = ops.fisher_accumulate(G, sizes)
        t_chol = median_seconds(lambda: ops.cholesky_factor(F.clone(), sizes, damping), reps)
        t_clone = median_seconds(lambda: F.clone(), reps)
        t_chol_torch = median_seconds(lambda: batches.cholesky_factor(F.clone(), lam), reps)

        L = ops.cholesky_factor(F.clone(), sizes, damping)
        L_torch = batches.cholesky_factor(F.clone(), lam)
        t_solve = median_seconds(lambda: ops.cholesky_solve(L, sizes, V), reps)
        t_solve_torch = median_seconds(lambda: batches.cholesky_solve(L_torch, V, torch.empty_like(V)), reps)

        # Both sides agree.
        X = ops.cholesky_solve(L, sizes, V.double())
        X_ref = batches.cholesky_solve(L_torch, V.double(), torch.empty_like(V.double()))
        if not torch.allclose(X, X_ref, rtol=1e-8, atol=1e-10):
            print(f"ERROR: grass and torch solves differ on {name}")
            failures += 1

        t_chol_net = max(t_chol - t_clone, 1e-9)
        t_chol_torch = max(t_chol_torch - t_clone, 1e-9)
        print(f"| {name} | {syrk / t_acc / 1e9:.1f} | {syrk / t_acc_torch / 1e9:.1f} | {t_acc_torch / t_acc:.2f} "
              f"| {chol / t_chol_net / 1e9:.1f} | {chol / t_chol_torch / 1e9:.1f} | {t_chol_torch / t_chol_net:.2f} "
              f"| {solve / t_solve / 1e9:.1f} | {solve / t_solve_torch / 1e9:.1f} | {t_solve_torch / t_solve:.2f} |",
              flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
