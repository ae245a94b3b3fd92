"""FactGraSS next to LoGra on one linear layer's factors, measured in one run on the CPU.

    python bench/bench_factored.py            # an MLP layer and two transformer-sized layers
    python bench/bench_factored.py --quick    # a tiny configuration (a smoke test)

Both compress a layer's per-sample gradient sum_t a_t (x) g_t without forming it, from the
inputs a [B, T, d_in] and output gradients g [B, T, d_out] that capture hands over, to k
dimensions. LoGra projects each factor densely (cost ~ T (d_in k_in + d_out k_out) per
sample); FactGraSS masks each factor to k_in' x k_out' = k' (4k by default) coordinates,
forms their Kronecker sum and applies an SJLT (cost ~ T k'), so it should pull ahead as
layers and sequences grow. Prints median times per batch and the ratio.
"""
from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

try:
    import grass
    from grass.capture.select import discover_layers
except ImportError as exc:  # pragma: no cover - a message, not a test
    sys.exit(f"bench_factored.py needs the grass package (pip install . from the repository root): {exc}")

from _common import median_seconds  # bench/_common.py (this script's folder is on sys.path)

# (name, d_in, d_out, T, B)
SHAPES = [("MLP layer of docs/results.md", 784, 128, 1, 500),
          ("transformer projection", 1024, 1024, 128, 8),
          ("transformer MLP", 1024, 4096, 128, 8)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    shapes = [("tiny", 20, 12, 3, 4)] if args.quick else SHAPES
    if args.quick:
        args.k, args.reps = 64, 2
    print(f"# bench_factored.py: k = {args.k} per layer, float32, median of {args.reps} runs, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| layer | d_in x d_out | T | B | LoGra ms | FactGraSS ms | LoGra / FactGraSS |")
    print("|---|---|---|---|---|---|---|")
    for name, d_in, d_out, T, B in shapes:
        info = discover_layers(nn.Linear(d_in, d_out))[0][0]
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(B, T, d_in, generator=gen)
        g = torch.randn(B, T, d_out, generator=gen)
        times = {}
        for label, spec in (("LoGra", grass.compress.LoGra(k=args.k, seed=0)),
                            ("FactGraSS", grass.compress.FactGraSS(k=args.k, seed=0))):
            comp = spec.build([info])[info.name]
            times[label] = median_seconds(lambda: comp.compress_factors(a, g), args.reps)
        print(f"| {name} | {d_in} x {d_out} | {T} | {B} | {times['LoGra'] * 1e3:.2f} | "
              f"{times['FactGraSS'] * 1e3:.2f} | {times['LoGra'] / times['FactGraSS']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
