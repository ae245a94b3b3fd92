"""Masking next to sketching on the CPU, measured in one run: is a mask cheaper than SJLT?

    python bench/bench_mask.py                  # B = 500, p = 100480 (the first layer of the
                                                # MNIST MLP in docs/results.md), k = 2048 ... 8192
    python bench/bench_mask.py --quick          # a tiny configuration (a smoke test)

For each k it prints median times of ``mask_gather`` with k random columns, ``sjlt`` of the
whole row to k, ``masked_sjlt`` (GraSS) with k' = k, torch's ``index_select`` of the same
columns, and a copy of the batch; then gathers of evenly spaced columns, which show how the
time follows the number of cache lines touched rather than the number of columns kept.
"""
from __future__ import annotations

import argparse
import sys

import torch

try:
    from grass import ops
except ImportError as exc:  # pragma: no cover - a message, not a test
    sys.exit(f"bench_mask.py needs the grass package (pip install . from the repository root): {exc}")

from _common import median_seconds  # bench/_common.py (this script's folder is on sys.path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--B", type=int, default=500)
    ap.add_argument("--p", type=int, default=100480)
    ap.add_argument("--ks", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--strides", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.B, args.p, args.ks, args.strides, args.reps = 8, 5000, [64], [16], 3
    x = torch.randn(args.B, args.p)
    dst = torch.empty_like(x)
    ms = lambda fn: median_seconds(fn, args.reps) * 1e3  # noqa: E731
    print(f"# bench_mask.py: B = {args.B}, p = {args.p}, float32, median of {args.reps} runs, "
          f"torch threads {torch.get_num_threads()}\n")
    print(f"copy of the batch ({x.numel() * 4 / 1e6:.0f} MB): {ms(lambda: dst.copy_(x)):.2f} ms\n")
    print("| k | mask_gather ms | sjlt ms | masked_sjlt (k' = k) ms | torch index_select ms |")
    print("|---|---|---|---|---|")
    for k in args.ks:
        idx = ops.mask_indices(args.p, k, seed=1)
        print(f"| {k} | {ms(lambda: ops.mask_gather(x, idx)):.2f} | {ms(lambda: ops.sjlt(x, k)):.2f} | "
              f"{ms(lambda: ops.masked_sjlt(x, idx, k)):.2f} | {ms(lambda: x.index_select(1, idx)):.2f} |")
    print("\n| evenly spaced columns, stride (floats) | kept | mask_gather ms |")
    print("|---|---|---|")
    for stride in args.strides:
        idx = torch.arange(0, args.p, stride)
        print(f"| {stride} | {len(idx)} | {ms(lambda: ops.mask_gather(x, idx)):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
