"""Throughput at transformer scale: caching compressed per-sample gradients of a GPT-2-small
model against a plain training step, and scoring / top-k from a float16 store at 1 and 2
processes (docs/distributed.md, bench/README.md).

Caching (one process, --threads threads): a GPT-2-small-sized model (124M parameters,
random weights, built by transformers from a config), sequence length --seq, batches of
--batch sequences (the same batches for every method). Per repetition, in rotating order:

  train      forward + backward with parameter gradients (the loop's step, no optimizer)
  factgrass  grass caching: factors (forward + backward to the layer outputs), FactGraSS,
  logra      LoGra and GraSS compression of every transformer-block linear layer, and the
  grass      append to a float16 store

tokens/s = batch * seq / seconds (median over repetitions); each caching time is split into
its stages (factors, compression, store write). Peak memory: the largest increase of the
process's resident memory during the call (sampled every millisecond), median.

Scoring: a synthetic float16 store of --rows rows of K = --dim, --queries random queries;
top-k (k = 10) streamed over chunks at 1 process (--threads threads) and 2 processes
(torch.distributed, gloo, --threads / 2 threads each), alternating; (train x test pairs)/s
and the peak resident-memory increase per process.

    python bench/bench_throughput.py                       # the full run (tens of minutes)
    python bench/bench_throughput.py --quick               # a smoke run (seconds)
    python bench/bench_throughput.py --part topk-profile   # one top-k chunk, stage by stage
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time

THREADS_DEFAULT = 2


def _early_threads():
    # OpenMP reads its thread count at start-up: set it before torch / grass load.
    n = THREADS_DEFAULT
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            n = int(sys.argv[i + 1])
        elif a.startswith("--threads="):
            n = int(a.split("=", 1)[1])
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


_early_threads()

import torch  # noqa: E402

import grass  # noqa: E402
from grass.capture import GradientCapture  # noqa: E402
from grass.store import StoreWriter  # noqa: E402


# ---------------------------------------------------------------------- memory probe
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Largest resident-set increase over the value at entry, sampled every millisecond."""

    def __enter__(self):
        self.base = _rss()
        self.peak = self.base
        self._stop = threading.Event()

        def poll():
            while not self._stop.is_set():
                self.peak = max(self.peak, _rss())
                time.sleep(0.001)
        self._t = threading.Thread(target=poll, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())
        self.increase = self.peak - self.base


def _mib(b: float) -> str:
    return f"{b / 2**20:.0f} MiB"


# ---------------------------------------------------------------------- caching
def gpt2(args):
    try:
        import transformers
    except ImportError:
        sys.exit("bench_throughput.py needs transformers (pip install transformers with a "
                 "constraints file pinning torch)")
    if args.quick:
        cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=1000, n_positions=64,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    else:  # GPT-2 small: 12 layers, 768 wide, 50257 tokens -> 124M parameters
        cfg = transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    return model, cfg


def token_sum_ce(model, ids):
    """Per-sequence loss: the sum of its next-token losses ([B])."""
    logits = model(input_ids=ids).logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           ids[:, 1:].reshape(-1), reduction="none")
    return ce.view(ids.shape[0], -1).sum(1)


def bench_caching(args, report):
    model, cfg = gpt2(args)
    n_params = sum(p.numel() for p in model.parameters())
    blocks = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g)
               for _ in range(args.reps + 1)]
    capture = GradientCapture(model.eval(), token_sum_ce, layers=blocks)
    specs = {"factgrass": grass.compress.FactGraSS(k=args.k, seed=0),
             "logra": grass.compress.LoGra(k=args.k, seed=0),
             "grass": grass.compress.GraSS(k=args.k, seed=0)}
    compressors = {m: s.build(capture.layers) for m, s in specs.items()}
    K = {m: sum(c.k for c in cs.values()) for m, cs in compressors.items()}
    tmp = tempfile.mkdtemp(prefix="grass-bench-")
    writers = {m: StoreWriter(os.path.join(tmp, m), fingerprint={"bench": m},
                              num_rows=args.batch * (args.reps + 1), block_sizes=[K[m]],
                              dtype="float16") for m in specs}
    names = [info.name for info in capture.layers]

    def train_step(batch):
        model.train()
        t0 = time.perf_counter()
        loss = token_sum_ce(model, batch).mean()
        loss.backward()
        t = time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        model.eval()
        return {"total": t}

    def cache_step(method, batch):
        t0 = time.perf_counter()
        factors = capture.factors(batch, token_sum_ce)
        t1 = time.perf_counter()
        rows = torch.cat([compressors[method][n].compress_factors(*factors.pop(n)).float()
                          for n in names], 1)
        t2 = time.perf_counter()
        writers[method].append(rows)
        t3 = time.perf_counter()
        return {"total": t3 - t0, "factors": t1 - t0, "compress": t2 - t1, "write": t3 - t2}

    methods = ["train", "factgrass", "logra", "grass"]
    run = {m: (lambda b, m=m: train_step(b)) if m == "train" else (lambda b, m=m: cache_step(m, b))
           for m in methods}
    for m in methods:  # warm-up (first-touch allocations, lazily built masks)
        run[m](batches[0])
    times = {m: [] for m in methods}
    peaks = {m: [] for m in methods}
    for r in range(args.reps):
        order = methods[r % 4:] + methods[:r % 4]
        for m in order:
            with PeakRSS() as mem:
                t = run[m](batches[r + 1])
            times[m].append(t)
            peaks[m].append(mem.increase)
            print(f"rep {r} {m:9s} {t['total']:.2f} s  (+{_mib(mem.increase)})", flush=True)
    for w in writers.values():
        w.close()
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)

    tokens = args.batch * args.seq
    med = {m: {k: statistics.median(x[k] for x in times[m]) for k in times[m][0]} for m in methods}
    tput = {m: tokens / med[m]["total"] for m in methods}
    report["caching"] = {
        "params": n_params, "layers": len(blocks), "batch": args.batch, "seq": args.seq, "k": args.k,
        "K": K, "reps": args.reps, "median_seconds": med, "tokens_per_s": tput,
        "peak_rss_increase_bytes": {m: statistics.median(peaks[m]) for m in methods},
        "all_seconds": {m: [x["total"] for x in times[m]] for m in methods}}
    f, lo, gr, tr = tput["factgrass"], tput["logra"], tput["grass"], tput["train"]
    report["targets"] = {
        "factgrass_caching_over_train_step": f / tr,
        "logra_compress_over_factgrass_compress": med["logra"]["compress"] / med["factgrass"]["compress"],
        "factgrass_caching_over_logra_caching": f / lo,
        "grass_caching_over_train_step": gr / tr,
    }


# ---------------------------------------------------------------------- scoring
def make_store(path, rows, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    with StoreWriter(path, fingerprint={"bench": "scoring", "rows": rows, "dim": dim},
                     num_rows=rows, block_sizes=[dim], dtype="float16") as w:
        step = w.chunk_rows
        for s in range(0, rows, step):
            n = min(step, rows - s)
            w.append(torch.randn(n, dim, generator=g, dtype=torch.float32).to(torch.float16))
    return grass.store.GradientStore(path)


def _queries(n, dim):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(2))


def _score_once(store_path, queries, k):
    from grass.distributed import top_k_scores
    from grass.score import ScoreTerm
    store = grass.store.GradientStore(store_path)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        v, i = top_k_scores([ScoreTerm(queries, store)], k, progress=False)
        t = time.perf_counter() - t0
    return t, mem.increase, i


def _worker(rank, world, port, store_path, nq, dim, k, threads, conn):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(threads)
    import torch.distributed as dist
    dist.init_process_group("gloo")
    queries = _queries(nq, dim)
    dist.barrier()
    t, mem, idx = _score_once(store_path, queries, k)
    dist.barrier()
    # numpy, not a tensor: a tensor would travel as a shared-memory handle that dies
    # with this process
    conn.put((rank, t, mem, idx.numpy() if rank == 0 else None))
    dist.destroy_process_group()


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(store_path, nq, dim, k, threads):
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, store_path, nq, dim, k, threads, q))
             for r in range(2)]
    for p in procs:
        p.start()
    out = [q.get() for _ in procs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    out.sort(key=lambda x: x[0])
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError("a scoring worker failed")
    # rank 0's time runs from the first barrier to the second: the sharded scoring and merge
    return out[0][1], [x[2] for x in out], torch.from_numpy(out[0][3]), wall


def bench_scoring(args, report):
    tmp = tempfile.mkdtemp(prefix="grass-bench-store-")
    path = os.path.join(tmp, "store")
    t0 = time.perf_counter()
    make_store(path, args.rows, args.dim)
    print(f"synthetic store {args.rows} x {args.dim} float16 written in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    queries = _queries(args.queries, args.dim)
    one, two = [], []
    try:
        for r in range(args.score_reps):
            for mode in (("1", "2") if r % 2 == 0 else ("2", "1")):
                if mode == "1":
                    torch.set_num_threads(args.threads)
                    t, mem, idx1 = _score_once(path, queries, 10)
                    one.append((t, mem))
                else:
                    t, mems, idx2, wall = _two_processes(path, args.queries, args.dim, 10,
                                                         max(1, args.threads // 2))
                    two.append((t, max(mems)))
                print(f"rep {r} scoring, {mode} process(es): {t:.2f} s", flush=True)
        same = torch.equal(idx1, idx2)
    finally:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    pairs = args.rows * args.queries
    report["scoring"] = {
        "rows": args.rows, "queries": args.queries, "dim": args.dim, "store_dtype": "float16",
        "k": 10, "reps": args.score_reps,
        "processes": {
            "1": {"threads": args.threads, "median_seconds": statistics.median(x[0] for x in one),
                  "pairs_per_s": pairs / statistics.median(x[0] for x in one),
                  "peak_rss_increase_bytes": statistics.median(x[1] for x in one)},
            "2": {"threads_each": max(1, args.threads // 2),
                  "median_seconds": statistics.median(x[0] for x in two),
                  "pairs_per_s": pairs / statistics.median(x[0] for x in two),
                  "peak_rss_increase_bytes_per_process": statistics.median(x[1] for x in two)}},
        "top_k_identical_1_vs_2_processes": bool(same)}


def profile_topk_chunk(args, report):
    """Where one chunk of top-k scoring spends its time: the float16 -> float32 read, the
    matmul, the exact integer keys of grass.score.stream.TopK, torch.topk on them, and the
    whole TopK.add (medians of --score-reps after a warm-up)."""
    from grass.score.stream import TopK, _order_keys
    rows = (64 << 20) // (args.dim * 2)  # a float16 store's default chunk (64 MiB)
    g = torch.Generator().manual_seed(0)
    G16 = torch.randn(rows, args.dim, generator=g).half()
    Q = _queries(args.queries, args.dim)
    G = G16.float()
    S = Q @ G.T
    keys = _order_keys(S, 0, True)

    def med(fn):
        fn()
        ts = []
        for _ in range(max(1, args.score_reps)):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    def whole():
        TopK(args.queries, 10).add(0, Q @ G16.float().T)
    report["topk_chunk_profile"] = {
        "chunk_rows": rows, "queries": args.queries, "dim": args.dim,
        "seconds": {"float16_to_float32": med(lambda: G16.float()), "matmul": med(lambda: Q @ G.T),
                    "order_keys": med(lambda: _order_keys(S, 0, True)),
                    "topk_on_keys": med(lambda: torch.topk(keys, 10, dim=1, sorted=True)),
                    "read_matmul_topk_add": med(whole)}}


# ---------------------------------------------------------------------- report
def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch": torch.__version__,
            "grass": grass.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": load,
            "torch_threads": torch.get_num_threads(), "omp_threads": os.environ.get("OMP_NUM_THREADS")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny model and store (smoke run)")
    p.add_argument("--threads", type=int, default=THREADS_DEFAULT)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--k", type=int, default=4096, help="compressed size per layer")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--dim", type=int, default=512, help="K of the synthetic scoring store")
    p.add_argument("--score-reps", type=int, default=3)
    p.add_argument("--part", choices=["all", "caching", "scoring", "topk-profile"], default="all",
                   help="topk-profile: the stages of one chunk of top-k scoring (not in 'all')")
    p.add_argument("--json", help="write the report as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.seq, args.k, args.reps, args.batch = 32, 64, 1, 2
        args.rows, args.queries, args.dim, args.score_reps = 5000, 20, 32, 1
    torch.set_num_threads(args.threads)
    report = {"machine": machine(), "args": vars(args)}
    if args.part in ("all", "caching"):
        bench_caching(args, report)
    if args.part in ("all", "scoring"):
        bench_scoring(args, report)
    if args.part == "topk-profile":
        profile_topk_chunk(args, report)
    report["machine"]["load_average_end"] = os.getloadavg()
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
