"""Scoring a gradient store, with the cost of checking its chunks beside it, in one run.

    python bench/bench_score.py            # N = 16384 rows, K = 4096, M = 64 / 256 / 1024 queries
    python bench/bench_score.py --quick    # a tiny configuration (a smoke test)

Every read of a store checks each chunk against its checksum the first time the process
reads it (docs/store.md, "Integrity"). For each stored dtype and number of test queries M
this writes a store of N x K random rows into --dir (a temporary directory by default) and
times, interleaved, median of --reps:

- scoring: ``full_scores`` ([M, N] = Q G^T streamed over the store's chunks) with every
  chunk already verified, i.e. what scoring costs without the checks;
- verification: checking every chunk once (what the first read in a process adds);
- first pass: scoring in a process that has verified nothing yet (forgotten before each
  repetition), which should be about the sum of the two.

It prints the verification time over the scoring time (the target is < 5 %) and the
verification's throughput next to a read probe (torch summing the same memory map, a
single pass over the bytes, with torch's threads, as the checks use). The store is in the page cache throughout: reading from disk
costs the same with or without checks, since the check reads a chunk first and scoring
then finds it in memory.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import torch

try:
    import grass
    from grass.score.stream import ScoreTerm, full_scores
    from grass.store import GradientStore, StoreWriter
    from grass.store.integrity import forget_verified
except ImportError as exc:  # pragma: no cover - a message, not a test
    sys.exit(f"bench_score.py needs the grass package (pip install . from the repository root): {exc}")

from _common import median_seconds  # bench/_common.py (this script's folder is on sys.path)


def write_store(path: str, n: int, k: int, dtype: str, chunk_rows, seed: int = 0) -> GradientStore:
    g = torch.Generator().manual_seed(seed)
    with StoreWriter(path, fingerprint={"bench": "score", "dtype": dtype}, num_rows=n,
                     block_sizes=[k // 2, k - k // 2], dtype=dtype, chunk_rows=chunk_rows) as w:
        step = 4096
        for s in range(0, n, step):
            w.append(torch.randn(min(step, n - s), k, generator=g))
    return GradientStore(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--N", type=int, default=None, help="rows of the store")
    ap.add_argument("--K", type=int, default=None, help="columns (two blocks)")
    ap.add_argument("--Ms", type=int, nargs="+", default=None, help="numbers of test queries")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--chunk-rows", type=int, default=None, help="default: the store's (~64 MiB)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="where scoring runs (checks run on the CPU)")
    ap.add_argument("--dir", default=None, help="where to write the stores (default: a temporary directory)")
    args = ap.parse_args()
    n = args.N or (512 if args.quick else 16384)
    k = args.K or (64 if args.quick else 4096)
    ms = args.Ms or ([8] if args.quick else [64, 256, 1024])
    reps = args.reps or (1 if args.quick else 5)

    info = grass.build_info()
    print(f"# bench_score.py: N = {n} rows, K = {k}, scoring on {args.device}, median of {reps}, "
          "interleaved")
    print(f"grass {info['version']}, torch {torch.__version__} (threads {torch.get_num_threads()})\n")
    print("| dtype | M | chunks | scoring ms | verification ms | verification / scoring | first pass ms "
          "| verification GB/s | read probe GB/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for dtype in args.dtypes:
            store = write_store(os.path.join(tmp, dtype), n, k, dtype, args.chunk_rows)
            nbytes = os.path.getsize(os.path.join(store.path, "gradients.bin"))
            chunks = len(store.manifest["checksums"])
            raw = torch.from_numpy(np.memmap(os.path.join(store.path, "gradients.bin"),
                                             dtype=np.int64, mode="c"))
            for m in ms:
                q = torch.randn(m, k, generator=torch.Generator().manual_seed(1))
                terms = [ScoreTerm(q, store)]

                def score():
                    return full_scores(terms, device=args.device, progress=False)

                def verify():
                    forget_verified()
                    store._verify_rows(0, store.num_rows)

                def first_pass():
                    forget_verified()
                    return full_scores(terms, device=args.device, progress=False)

                def probe():
                    raw.sum()

                verified = score()  # warm the page cache; every chunk is checked once here
                forget_verified()
                assert torch.equal(first_pass(), verified)
                times = {f: [] for f in ("score", "verify", "first", "probe")}
                for _ in range(reps):  # interleaved, so the machine's load hits each alike
                    times["score"].append(median_seconds(score, 1, warmup=0))
                    times["verify"].append(median_seconds(verify, 1, warmup=0))
                    times["first"].append(median_seconds(first_pass, 1, warmup=0))
                    times["probe"].append(median_seconds(probe, 1, warmup=0))
                med = {f: float(np.median(t)) for f, t in times.items()}
                ratio = float(np.median([v / s for v, s in zip(times["verify"], times["score"])]))
                print(f"| {dtype} | {m} | {chunks} | {med['score'] * 1e3:.1f} | {med['verify'] * 1e3:.1f} "
                      f"| {100 * ratio:.1f} % | {med['first'] * 1e3:.1f} | {nbytes / med['verify'] / 1e9:.2f} "
                      f"| {nbytes / med['probe'] / 1e9:.2f} |", flush=True)
            del raw
    return 0


if __name__ == "__main__":
    sys.exit(main())
