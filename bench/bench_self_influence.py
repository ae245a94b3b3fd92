"""Self-influence g_iᵀ(F + λI)⁻¹g_i two ways, timed interleaved in one run on the CPU.

    python bench/bench_self_influence.py            # N = 8192 rows, two blocks of 2048
    python bench/bench_self_influence.py --quick    # a tiny configuration (a smoke test)

- whiten: ‖L_l⁻¹ g_i‖² summed over blocks, one triangular solve per block
  (``Preconditioner.whiten``, what ``grass.score.self_influence`` does);
- full solve: ⟨g_i, (F + λI)⁻¹ g_i⟩ through ``Preconditioner.solve`` (grass's
  ``cholesky_solve``: forward and backward substitution).

Both in float64 on the same rows; the script checks they agree and prints the medians and
the ratio (docs/scoring.md quotes it).
"""
from __future__ import annotations

import argparse
import sys

import torch

try:
    from grass.precondition import BlockFisher, Preconditioner
except ImportError as exc:  # pragma: no cover - a message, not a test
    sys.exit(f"bench_self_influence.py needs the grass package (pip install . from the repository root): {exc}")

from _common import interleaved_medians  # bench/_common.py (this script's folder is on sys.path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--N", type=int, default=8192, help="rows of G (training gradients)")
    ap.add_argument("--blocks", type=int, nargs="+", default=[2048, 2048], help="block sizes k_l")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.N, args.blocks, args.reps = 256, [32, 16], 3
    g = torch.Generator().manual_seed(0)
    G = torch.randn(args.N, sum(args.blocks), generator=g)
    P = Preconditioner.fit(BlockFisher(args.blocks).update(G))
    G64 = G.double()

    def whiten():
        return P.whiten(G64).square().sum(1)

    def full_solve():
        return (G64 * P.solve(G64)).sum(1)

    torch.testing.assert_close(whiten(), full_solve(), rtol=1e-9, atol=1e-9)
    t = interleaved_medians({"whiten": whiten, "full solve": full_solve}, args.reps)
    print(f"# bench_self_influence.py: N = {args.N}, blocks {args.blocks}, float64, median of "
          f"{args.reps} interleaved rounds, torch threads {torch.get_num_threads()}\n")
    print("| whiten (one triangular solve) ms | full solve ms | full / whiten |")
    print("|---|---|---|")
    print(f"| {t['whiten'] * 1e3:.1f} | {t['full solve'] * 1e3:.1f} | {t['full solve'] / t['whiten']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
