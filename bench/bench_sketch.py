"""grass sketches next to what torch offers, measured in one run on the CPU.

    python bench/bench_sketch.py            # p = 131072, B = 128, k = 32 ... 16384
    python bench/bench_sketch.py --quick    # a tiny configuration (a smoke test)

For each input sparsity (fraction of exact zeros) and each k it prints median times of:

- grass SJLT on the dense float32 input and on the same data as a torch sparse CSR tensor,
- grass GraSS (``masked_sjlt`` with k' = min(p, 4k) random columns) and FJLT,
- torch's dense projection ``x @ P`` (P a Gaussian [p, k]; its creation is not timed;
  timed interleaved with grass's dense SJLT in ``--torch-reps`` rounds), and
- the same SJLT (grass's own codes, s = 1) written in torch, every way we found
  (``torch_sjlt_formulations``: ``index_add_`` along the columns or over the flattened
  batch, ``scatter_add_``, both into 2k signed buckets, ``bincount``, ``index_put_``,
  ``segment_reduce`` over columns sorted by bucket, ``index_add_`` over the rows of x^T,
  ``torch.sparse.mm`` with S as CSR or COO, dense @ sparse), each checked against grass
  and timed interleaved with grass's dense SJLT (every round runs each once, in turn;
  medians), so that their ratios to grass come from the same moments of a noisy machine,

with the speed-ups of grass's dense SJLT over x @ P and over the fastest torch SJLT, and
GB/s next to a copy probe (``dst.copy_(src)`` of the input, torch's threads) taken in the
same run. A second table per sparsity lists every torch formulation.
GB/s counts bytes read + written, as in bench/cpp/bench_sketch.cpp. The torch dense
projection needs P of p * k * 4 bytes, so it is skipped (and says so) where P would not
fit in --max-dense-gib.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch

try:
    import grass
    from grass import ops
except ImportError as exc:  # pragma: no cover - a message, not a test
    sys.exit(f"bench_sketch.py needs the grass package (pip install . from the repository root): {exc}")

from _common import interleaved_medians, median_seconds  # bench/_common.py (this script's folder is on sys.path)


def ms(t: float) -> str:
    return f"{t * 1e3:.3g}"


def ratio(a: float, b: float) -> str:
    r = a / b
    return f"{r:.0f}x" if r >= 10 else f"{r:.1f}x" if r >= 1 else f"{r:.2f}x"


def make_input(B: int, p: int, zeros: float, seed: int = 1234) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, p, generator=g)
    if zeros > 0:
        x[torch.rand(B, p, generator=g) < zeros] = 0.0
    return x


def torch_sjlt_formulations(bucket: torch.Tensor, sign: torch.Tensor, B: int, k: int):
    """The SJLT ``y[b, bucket[j]] += sign[j] * x[b, j]`` (s = 1) written with torch alone,
    every formulation we tried, as ``{name: f(x [B, p]) -> y [B, k]}``. Index tensors,
    sparse matrices and output buffers are built here, once, and are not timed.

    bucket: int64 [p] in [0, k); sign: float32 [p] of +-1.
    """
    p = bucket.numel()
    cols = torch.arange(p)
    rows_flat = torch.arange(B)[:, None] * k                       # [B, 1]
    flat = (rows_flat + bucket[None, :]).reshape(-1)                 # [B * p] into y.view(-1)
    # Signed buckets: column j goes to bucket[j] (+) or k + bucket[j] (-), and
    # y = y2[:, :k] - y2[:, k:]: no pass over x to multiply by the signs.
    bucket2 = bucket + k * (sign < 0).to(torch.int64)
    flat2 = ((torch.arange(B)[:, None] * (2 * k)) + bucket2[None, :]).reshape(-1)
    with warnings.catch_warnings():  # torch flags sparse CSR as beta
        warnings.simplefilter("ignore")
        S_coo = torch.sparse_coo_tensor(torch.stack([bucket, cols]), sign, (k, p)).coalesce()  # [k, p]
        S_csr = S_coo.to_sparse_csr()
        St_csr = torch.sparse_coo_tensor(torch.stack([cols, bucket]), sign, (p, k)).coalesce().to_sparse_csr()
    # Columns sorted by bucket, for a segmented sum; and the transposed [2k, B] output.
    order = torch.argsort(bucket, stable=True)
    sign_sorted = sign[order]
    lengths = torch.bincount(bucket, minlength=k).expand(B, k)
    y = torch.empty(B, k)
    y2 = torch.empty(B, 2 * k)
    yt2 = torch.empty(2 * k, B)

    def signed_out():
        return torch.sub(y2[:, :k], y2[:, k:], out=y)

    def index_add_cols(x):
        y.zero_()
        return y.index_add_(1, bucket, x * sign)

    def index_add_flat(x):
        y.zero_()
        y.view(-1).index_add_(0, flat, (x * sign).view(-1))
        return y

    def scatter_add(x):
        y.zero_()
        return y.scatter_add_(1, bucket.expand(x.shape[0], p), x * sign)

    def index_add_cols_signed(x):
        y2.zero_()
        y2.index_add_(1, bucket2, x)
        return signed_out()

    def index_add_flat_signed(x):
        y2.zero_()
        y2.view(-1).index_add_(0, flat2, x.reshape(-1))
        return signed_out()

    def scatter_add_signed(x):
        y2.zero_()
        y2.scatter_add_(1, bucket2.expand(x.shape[0], p), x)
        return signed_out()

    def bincount(x):
        return torch.bincount(flat, (x * sign).view(-1), minlength=B * k).view(B, k)

    def index_put(x):
        y.zero_()
        y.view(-1).index_put_((flat,), (x * sign).view(-1), accumulate=True)
        return y

    def segment_sum(x):
        return torch.segment_reduce(x[:, order] * sign_sorted, "sum", lengths=lengths, axis=1)

    def transpose_rows_signed(x):
        yt2.zero_()
        yt2.index_add_(0, bucket2, x.t().contiguous())  # whole rows of x^T, vectorised over B
        torch.sub(yt2[:k], yt2[k:], out=y.t())  # y^T, written through a transposed view
        return y

    def sparse_csr(x):
        return torch.sparse.mm(S_csr, x.t()).t()

    def sparse_coo(x):
        return torch.sparse.mm(S_coo, x.t()).t()

    def dense_at_sparse(x):
        return x @ St_csr

    return {
        "index_add_ cols": index_add_cols,          # y.index_add_(1, bucket, x * sign)
        "index_add_ flat": index_add_flat,          # over the flattened batch
        "scatter_add_": scatter_add,
        "index_add_ cols 2k": index_add_cols_signed,
        "index_add_ flat 2k": index_add_flat_signed,
        "scatter_add_ 2k": scatter_add_signed,
        "bincount flat": bincount,
        "index_put_ flat": index_put,
        "segment_reduce": segment_sum,              # columns sorted by bucket
        "x^T index_add_ rows 2k": transpose_rows_signed,
        "sparse.mm CSR": sparse_csr,                # (S @ x^T)^T, S [k, p] CSR
        "sparse.mm COO": sparse_coo,
        "x @ S^T CSR": dense_at_sparse,
    }


def copy_probe_gbs(x: torch.Tensor, reps: int) -> float:
    dst = torch.empty_like(x)
    t = median_seconds(lambda: dst.copy_(x), reps, warmup=2)
    return 2 * x.numel() * x.element_size() / t / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny configuration (smoke test)")
    ap.add_argument("--p", type=int, default=None)
    ap.add_argument("--B", type=int, default=None)
    ap.add_argument("--ks", type=str, default=None, help="comma-separated sketch sizes")
    ap.add_argument("--sparsity", type=str, default=None, help="comma-separated fractions of zeros")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--torch-reps", type=int, default=3, help="repetitions of the (slow) torch dense projection")
    ap.add_argument("--max-dense-gib", type=float, default=2.5, help="largest P for the torch dense projection")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time the interleaved comparisons (torch SJLT, x @ P) in CPU time of the calling "
                         "thread instead of wall time: for an oversubscribed machine; needs one thread "
                         "(OMP_NUM_THREADS=1)")
    args = ap.parse_args()
    clock = time.perf_counter
    if args.cpu_time:
        if torch.get_num_threads() != 1 or grass.build_info()["openmp_max_threads"] != 1:
            sys.exit("--cpu-time counts the calling thread only: run with OMP_NUM_THREADS=1")
        clock = time.thread_time

    p = args.p or (4099 if args.quick else 131072)
    B = args.B or (8 if args.quick else 128)
    ks = [int(v) for v in (args.ks or ("32,256" if args.quick else "32,64,128,256,512,1024,2048,4096,8192,16384")).split(",")]
    sparsity = [float(v) for v in (args.sparsity or ("0,0.9" if args.quick else "0,0.3,0.6,0.9")).split(",")]
    reps = args.reps or (3 if args.quick else 7)

    info = grass.build_info()
    print(f"# bench_sketch.py: p = {p}, B = {B}, float32 input, median of {reps} runs "
          f"(torch dense projection: {args.torch_reps}); comparisons with torch in "
          f"{'CPU time of the calling thread' if args.cpu_time else 'wall time'}")
    print(f"grass {info['version']} ({info['compiler']}, SIMD {info['simd']}, OpenMP threads "
          f"{info['openmp_max_threads']}), torch {torch.__version__} (threads {torch.get_num_threads()})\n")

    # Inputs for every sparsity first, then k in the outer loop, so that each Gaussian P
    # (up to p * k * 4 bytes) is drawn once and used for every sparsity.
    inputs = []
    for zeros in sparsity:
        x = make_input(B, p, zeros)
        with warnings.catch_warnings():  # torch flags sparse CSR as beta
            warnings.simplefilter("ignore")
            x_csr = x.to_sparse_csr()
        inputs.append((zeros, x, x_csr))
    rows = {zeros: [] for zeros in sparsity}
    form_rows = {zeros: [] for zeros in sparsity}
    form_names = []
    copies = {zeros: [] for zeros in sparsity}
    failures = 0
    for k in ks:
        P = None
        if p * k * 4 <= args.max_dense_gib * 2**30:
            P = torch.randn(p, k, generator=torch.Generator().manual_seed(5)) / k**0.5
        bucket, sign = ops.sjlt_codes(p, k, seed=7)  # the same S, for the torch SJLT
        bucket, sign = bucket[:, 0].contiguous(), sign[:, 0].to(torch.float32)
        forms = torch_sjlt_formulations(bucket, sign, B, k)
        kp = min(p, 4 * k)
        idx = ops.mask_indices(p, kp, seed=99)
        for zeros, x, x_csr in inputs:
            in_bytes = x.numel() * 4
            out_bytes = B * k * 4
            copy = copy_probe_gbs(x, max(reps, 5))  # next to this row's measurements
            copies[zeros].append(copy)
            y = torch.empty(B, k)
            t_sjlt = median_seconds(lambda: ops.sjlt(x, k, seed=7, out=y), reps)
            y_csr = torch.empty(B, k)
            t_csr = median_seconds(lambda: ops.sjlt(x_csr, k, seed=7, out=y_csr), reps)
            t_grass = median_seconds(lambda: ops.masked_sjlt(x, idx, k, seed=7, out=y_csr), reps)
            if k <= 1 << (p - 1).bit_length():
                fjlt_cell = ms(median_seconds(lambda: ops.fjlt(x, k, seed=7, out=y_csr), max(3, reps // 2)))
            else:
                fjlt_cell = "-"

            # The same S written in torch, every formulation, interleaved with grass.
            timed = interleaved_medians({"grass": lambda: ops.sjlt(x, k, seed=7, out=y),
                                         **{name: (lambda f=f: f(x)) for name, f in forms.items()}}, reps,
                                        clock=clock)
            expected = ops.sjlt(x, k, seed=7)
            for name, f in forms.items():
                if not torch.allclose(f(x).float(), expected, rtol=1e-4, atol=1e-3):
                    print(f"ERROR: grass SJLT and the torch SJLT '{name}' differ at k = {k}", flush=True)
                    failures += 1
            t_ref = timed.pop("grass")
            best = min(timed, key=timed.get)
            form_rows[zeros].append(f"| {k} | {ms(t_ref)} | "
                                    + " | ".join(f"{ms(t)} ({ratio(t, t_ref)})" for t in timed.values()) + " |")

            if P is not None:  # interleaved with grass too, in --torch-reps rounds (x @ P is slow)
                paired = interleaved_medians({"grass": lambda: ops.sjlt(x, k, seed=7, out=y),
                                              "x @ P": lambda: x @ P}, args.torch_reps, clock=clock)
                t_dense = paired["x @ P"]
                dense_cells = f"{ms(t_dense)} | {ratio(t_dense, paired['grass'])}"
            else:
                dense_cells = f"- (P = {p * k * 4 / 2**30:.0f} GiB) | -"

            gbs = (in_bytes + out_bytes) / t_sjlt / 1e9
            rows[zeros].append(f"| {k} | {ms(t_sjlt)} | {gbs:.1f} | {gbs / copy:.2f} | {ms(t_csr)} "
                               f"| {ms(t_grass)} ({kp}) | {fjlt_cell} | {dense_cells} "
                               f"| {ms(timed[best])} ({best}) | {ratio(timed[best], t_ref)} |")
            print(f"  done k = {k}, sparsity {zeros:.0%}", file=sys.stderr, flush=True)
        form_names = list(forms)
        del P, forms

    for zeros, x, x_csr in inputs:
        nnz = x_csr.values().numel()
        print(f"## sparsity {zeros:.0%} (nnz = {nnz} of {x.numel()}), copy probe "
              f"{statistics.median(copies[zeros]):.1f} GB/s (median over the table; each row uses the "
              f"probe taken just before it)\n")
        print("| k | SJLT dense ms | GB/s | /copy | SJLT CSR ms | GraSS ms (k') | FJLT ms "
              "| torch x@P ms | x@P / SJLT | fastest torch SJLT ms | fastest torch SJLT / SJLT |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for row in rows[zeros]:
            print(row)
        print()
        print(f"SJLT written in torch at sparsity {zeros:.0%}: ms (time / grass SJLT), every formulation "
              f"timed interleaved with grass's dense SJLT, median of {reps} rounds\n")
        print("| k | grass SJLT ms | " + " | ".join(form_names) + " |")
        print("|---" * (len(form_names) + 2) + "|")
        for row in form_rows[zeros]:
            print(row)
        print()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
