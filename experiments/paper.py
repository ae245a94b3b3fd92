"""The paper's tables (docs/results.md), one command each; numbers, tables and PNG plots
are written by the command that computes them. A reproduction script beside the package,
built from its reusable evaluation pieces (grass.eval: study, lds, mislabel, removal, ...);
scripts/results.sh runs every command.

    python experiments/paper.py lds-table   [--dataset mnist|fashion_mnist] [--ks ...]
    python experiments/paper.py mislabel
    python experiments/paper.py removal
    python experiments/paper.py stability
    python experiments/paper.py lora
    python experiments/paper.py sequence

Every command works under ``--out`` (default ``runs/eval``): ground truth, trained models,
gradient stores and per-job results are cached there, so an interrupted command resumes
where it stopped and a finished one reprints its table at once. ``--img`` is where the
plots go (``docs/img`` for the committed results). Results: ``<out>/<experiment>/results.md``
and ``results.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from grass.eval import datasets, lds, metrics, mislabel, models, objectives, plots, presets, removal
from grass.eval.exact import KernelExactInfluence
from grass.eval.jobs import JobCache, atomic_write_json, config_hash
from grass.eval.methods import COMPRESSORS, Method, Run, batches, compression_time, layer_infos
from grass.eval.study import (DAMPING_GRID, Context, lds_of_exact, lds_of_method, matching_damping,
                              mislabel_of_exact, mislabel_of_method)
from grass.eval.train import TrainConfig, train

#: Published GraSS numbers for MLP + MNIST at k = 4096 (GraSS, NeurIPS 2025; GPU, their
#: data split and training): LDS and compression time.
PUBLISHED_MNIST_MLP = {"SJLT": {"lds": 0.4280, "time": 0.52}, "Gaussian": {"lds": 0.4253, "time": 5.54}}


def _fmt_est(d: Optional[dict]) -> str:
    if not d:
        return "–"
    return f"{d['mean']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


def _write(out_dir: str, name: str, markdown: str, payload: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.md.tmp"), "w") as f:
        f.write(markdown)
    os.replace(os.path.join(out_dir, f"{name}.md.tmp"), os.path.join(out_dir, f"{name}.md"))
    atomic_write_json(os.path.join(out_dir, f"{name}.json"), payload)


# ----------------------------------------------------------------------------- lds-table
def cmd_lds_table(args) -> int:
    preset = presets.get(args.preset, args.dataset)
    if args.models:
        preset = preset.with_(n_models=args.models)
    out = os.path.join(args.out, f"lds-{preset.dataset}-{preset.name}")
    ctx = Context(preset, out, threads=args.threads, progress=not args.quiet)
    ctx.ground_truth()
    acc = objectives.accuracy(ctx.model(), ctx.split.x_test, ctx.split.y_test)
    cache = JobCache(os.path.join(out, "jobs"), {"preset": dataclasses.asdict(preset),
                                                 "grid": list(args.grid), "format": 1})
    rows = []
    exact = cache.run("exact", lambda: lds_of_exact(ctx, args.grid))
    for k in args.ks:
        for name in args.compressors:
            for kind in args.kinds:
                m = Method(kind, name, k, seed=args.seed)
                rows.append(cache.run(m.key, lambda: lds_of_method(ctx, m, args.grid,
                                                                  keep_store=args.keep_stores)))
    tracin = [cache.run(Method("tracin", "SJLT", k, args.seed).key,
                        lambda: lds_of_method(ctx, Method("tracin", "SJLT", k, args.seed), args.grid))
              for k in args.ks[:1]] if args.tracin else []

    # Compression time, all compressors back to back in this run (round-robin repeats).
    timings = {}
    model = ctx.model()
    infos = layer_infos(model)
    s = ctx.split
    for k in args.ks:
        key = f"timing-k{k}"
        got = None if args.retime else cache.get(key)
        if got is None or got.get("format") != 2:
            comps = {}
            for name in args.compressors:
                spec = Method("influence", name, k, seed=args.seed).spec()
                built = spec.build(infos)
                if any(getattr(c, "needs_fit", False) for c in built.values()):
                    _fit_for_timing(model, spec, built, s, ctx)
                comps[name] = built
            with lds.torch_threads(args.threads):
                got = compression_time(model, comps, s.x_train, s.y_train, ctx.loss_fn,
                                       repeats=args.repeats, progress=not args.quiet)
            got = {"timings": got, "format": 2, "when": time.strftime("%Y-%m-%d %H:%M"),
                   "threads": torch.get_num_threads(), "n": s.n_train}
            cache.put(key, got)
        timings[k] = got

    md, payload = _lds_table_markdown(preset, acc, exact, rows, tracin, timings, args)
    _write(out, "results", md, payload)
    # plots
    pts = []
    for r in rows:
        if r["method"] != "influence":
            continue
        for mode, panel in (("gradient", "from per-sample gradients"),
                            ("factors", "from layer inputs and output gradients (as cached)")):
            t = timings[r["k"]]["timings"][r["compressor"]][mode]["median_s"]
            pts.append({"method": r["compressor"], "k": r["k"], "time": t, "lds": r["lds"]["mean"],
                        "low": r["lds"]["low"], "high": r["lds"]["high"], "panel": panel})
    ref = [{"method": n, "time": v["time"], "lds": v["lds"]} for n, v in PUBLISHED_MNIST_MLP.items()
           if preset.dataset == "mnist" and n in args.compressors]
    if pts:
        path = os.path.join(args.img, f"lds_vs_time_{preset.dataset}.png")
        plots.frontier(pts, path, title=f"MLP on {preset.dataset}: LDS vs compression time "
                       f"(influence, k = {', '.join(map(str, args.ks))})", reference=ref)
        print(f"wrote {path}")
    print(md)
    return 0


def _fit_for_timing(model, spec, built, s, ctx):
    """Learn selective masks for a timing-only build (the same way Run.prepare does)."""
    from grass.attributor import Attributor
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        attr = Attributor(model, ctx.loss_fn, compressor=spec, store=d, progress=False)
        attr.fit_masks(batches(s.x_train, s.y_train, 500),
                       batches(s.x_test[ctx.val], s.y_test[ctx.val], 500))
        for n, c in attr.compressors.items():
            built[n].load_state_dict(c.state_dict())


def _lds_table_markdown(preset, acc, exact, rows, tracin, timings, args):
    by = {(r["method"], r["compressor"], r["k"]): r for r in rows}
    lines = [f"MLP {preset.hidden} on {preset.dataset}: {preset.n_train} training / "
             f"{preset.n_test - preset.n_val} reported test examples ({preset.n_val} more choose "
             f"the damping), {preset.n_models} subset models, α = {preset.alpha}, target "
             f"{preset.target}; test accuracy of the attributed model {acc:.3f}.", "",
             f"Uncompressed influence function (exact, float64): LDS {_fmt_est(exact['lds'])} "
             f"(damping {exact['damping']:g} x mean eigenvalue).", ""]
    kinds = list(args.kinds)
    head = "| compressor | k | " + " | ".join(f"{'IF' if k == 'influence' else 'TRAK'} LDS [95% CI]" for k in kinds)
    head += (" | compression time (s) from gradients | vs Gaussian | from factors (s) | vs Gaussian"
             " | caching time (s) |")
    if preset.dataset == "mnist":
        head += " published LDS / time (s) |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for k in args.ks:
        tk = timings[k]["timings"]
        gauss = tk.get("Gaussian", {})
        for name in args.compressors:
            cells = [name, str(k)]
            for kind in kinds:
                r = by.get((kind, name, k))
                cells.append(_fmt_est(r["lds"]) if r else "–")
            for mode in ("gradient", "factors"):
                t = tk[name][mode]["median_s"]
                cells.append(f"{t:.3f}")
                t_g = gauss.get(mode, {}).get("median_s")
                cells.append(f"{t_g / t:.1f}x" if t_g else "–")
            r = by.get(("influence", name, k))
            cells.append(f"{r['times'].get('cache_s', float('nan')):.1f}" if r else "–")
            if preset.dataset == "mnist":
                p = PUBLISHED_MNIST_MLP.get(name) if k == 4096 else None
                cells.append(f"{p['lds']:.4f} / {p['time']:.2f}" if p else "")
            lines.append("| " + " | ".join(cells) + " |")
    for r in tracin:
        lines += ["", f"TracIn (gradient dot product, SJLT k = {r['k']}): LDS {_fmt_est(r['lds'])}."]
    lines += ["", "Damping chosen per row on the validation examples (factor of each layer's mean "
              "eigenvalue): " + ", ".join(f"{r['compressor']}/{r['k']}/{r['method']}: {r['damping']:g}"
                                          for r in rows if r.get("damping") is not None) + "."]
    payload = {"preset": dataclasses.asdict(preset), "accuracy": acc, "exact": exact, "rows": rows,
               "tracin": tracin, "timings": {str(k): v for k, v in timings.items()}}
    return "\n".join(lines) + "\n", payload


# ----------------------------------------------------------------------------- mislabel
def _noisy_context(args, name: str, preset: presets.Preset):
    out = os.path.join(args.out, f"{name}-{preset.dataset}-{preset.name}")
    ctx = Context(preset, out, threads=args.threads, progress=not args.quiet)
    y_noisy, flipped = mislabel.flip_labels(ctx.split.y_train, args.fraction, ctx.split.classes,
                                            seed=args.seed)
    return ctx, y_noisy, flipped


def cmd_mislabel(args) -> int:
    preset = presets.get(args.preset, args.dataset)
    ctx, y_noisy, flipped = _noisy_context(args, "mislabel", preset)
    s = ctx.split
    model = ctx.trained("noisy", s.x_train, y_noisy, preset.model_seed)
    acc = objectives.accuracy(model, s.x_test, s.y_test)
    cache = JobCache(os.path.join(ctx.out, "jobs"), {"preset": dataclasses.asdict(preset),
                                                     "fraction": args.fraction, "seed": args.seed,
                                                     "k": args.k, "format": 1})
    lam = matching_damping(model, y_noisy, ctx, args.k)
    results = {"exact": cache.run("exact", lambda: mislabel_of_exact(ctx, model, y_noisy, flipped, lam))}
    for name in args.compressors:
        m = Method("influence", name, args.k, seed=0)
        results[name] = cache.run(m.key, lambda: mislabel_of_method(ctx, model, y_noisy, flipped, m))
    lines = [f"MLP {preset.hidden} on {preset.dataset}, {preset.n_train} training examples with "
             f"{int(flipped.sum())} labels ({args.fraction:.0%}) flipped; test accuracy of the model "
             f"trained on them {acc:.3f}. Influence with the pipeline's default damping (0.1 x mean "
             f"eigenvalue of each compressed layer Fisher) at k = {args.k}; the exact uncompressed "
             "influence uses the same absolute damping per layer.", "",
             "| method | self-influence AUC | found in top 10% | top 20% | validation-harm AUC | top 10% | top 20% |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        label = "uncompressed IF (exact)" if name == "exact" else f"IF {name}"
        v = r.get("validation", {})
        lines.append(f"| {label} | {r['self']['auc']:.4f} | {r['self']['found@0.1']:.3f} | "
                     f"{r['self']['found@0.2']:.3f} | {v.get('auc', float('nan')):.4f} | "
                     f"{v.get('found@0.1', float('nan')):.3f} | {v.get('found@0.2', float('nan')):.3f} |")
    md = "\n".join(lines) + "\n"
    _write(ctx.out, "results", md, {"accuracy": acc, "results": results, "damping_exact": lam})
    curves = {("uncompressed IF" if n == "exact" else n): (np.array(r["curve"][0]), np.array(r["curve"][1]))
              for n, r in results.items()}
    path = os.path.join(args.img, f"mislabel_{preset.dataset}.png")
    plots.detection_curves(curves, path, title=f"Mislabel detection by self-influence ({preset.dataset}, "
                           f"k = {args.k})", aucs={("uncompressed IF" if n == "exact" else n): r["self"]["auc"]
                                                   for n, r in results.items()},
                           flipped_fraction=args.fraction)
    print(f"wrote {path}")
    print(md)
    return 0


# ----------------------------------------------------------------------------- stability
def cmd_stability(args) -> int:
    preset = presets.get(args.preset, args.dataset)
    ctx, y_noisy, flipped = _noisy_context(args, "mislabel", preset)
    s = ctx.split
    model = ctx.trained("noisy", s.x_train, y_noisy, preset.model_seed)
    cache = JobCache(os.path.join(ctx.out, "stability"), {"preset": dataclasses.asdict(preset),
                                                          "fraction": args.fraction, "seed": args.seed,
                                                          "format": 1})
    series: Dict[str, Dict[int, List[float]]] = {}
    for name in args.compressors:
        for k in args.ks:
            for seed in range(args.seeds):
                m = Method("influence", name, k, seed=seed)
                r = cache.run(m.key, lambda: mislabel_of_method(ctx, model, y_noisy, flipped, m,
                                                                validation=False))
                series.setdefault(name, {}).setdefault(k, []).append(r["self"]["auc"])
    lines = [f"Self-influence mislabel AUC over {args.seeds} compressor seeds (same noisy model as "
             f"the mislabel table), min / mean / max:", "",
             "| k | " + " | ".join(args.compressors) + " |", "|---|" + "---|" * len(args.compressors)]
    for k in args.ks:
        cells = []
        for name in args.compressors:
            v = np.array(series[name][k])
            cells.append(f"{v.min():.3f} / {v.mean():.3f} / {v.max():.3f}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    md = "\n".join(lines) + "\n"
    _write(ctx.out, "stability", md, {"series": {n: {str(k): v for k, v in d.items()} for n, d in series.items()}})
    path = os.path.join(args.img, f"stability_{preset.dataset}.png")
    plots.band(series, path, ylabel="self-influence AUC (mean, min–max over seeds)",
               title=f"Mislabel AUC at small k ({args.seeds} seeds)")
    print(f"wrote {path}")
    print(md)
    return 0


# ----------------------------------------------------------------------------- removal
def cmd_removal(args) -> int:
    preset = presets.get(args.preset, args.dataset)
    out = os.path.join(args.out, f"removal-{preset.dataset}-{preset.name}")
    ctx = Context(preset, out, threads=args.threads, progress=not args.quiet)
    s = ctx.split
    model = ctx.model()
    group = ctx.rep[:args.group]
    xg, yg = s.x_test[group], s.y_test[group]
    cache = JobCache(os.path.join(out, "rankings"), {"preset": dataclasses.asdict(preset),
                                                     "group": len(group), "k": args.k, "format": 1})
    rankings = {}
    for name in args.compressors:
        m = Method("influence", name, args.k, seed=0)

        def rank(m=m):
            run = Run(m, model, s.x_train, s.y_train, os.path.join(out, "stores", m.key),
                      target=preset.target, loss_fn=ctx.loss_fn, progress=ctx.progress)
            run.prepare(mask_sample=(s.x_test[ctx.val], s.y_test[ctx.val])).fit(args.damping)
            order = removal.removal_order(removal.helpfulness(run.scores(xg, yg)))
            run.remove_store()
            return {"order": order.tolist()}
        rankings[f"IF {name}"] = np.array(cache.run(m.key, rank)["order"])
    if args.exact:
        def rank_exact():
            ex = KernelExactInfluence(model, ctx.loss_fn, s.x_train, s.y_train).fit(args.exact_damping)
            sc = ex.scores(xg, yg, objectives.target_fn(preset.target))
            return {"order": removal.removal_order(removal.helpfulness(sc)).tolist()}
        rankings["IF exact"] = np.array(cache.run("exact", rank_exact)["order"])
    with lds.torch_threads(args.threads):
        res = removal.run_removal(s, ctx.spec, preset.train, rankings, group, args.fractions,
                                  args.seeds, os.path.join(out, "retrain"), target=preset.target,
                                  loss_fn=ctx.loss_fn, progress=not args.quiet)
    summ = removal.summarise_removal(res, "accuracy")
    base = summ.pop("none")[0.0]
    lines = [f"Accuracy on a group of {len(group)} test examples after removing the training "
             f"examples most helpful to the group (by each method, k = {args.k}) or random ones, "
             f"retrained with {args.seeds} seeds; mean ± std [min, max]. Without removal (same "
             f"seeds): {base['mean']:.3f} ± {base['std']:.3f} [{base['min']:.3f}, {base['max']:.3f}].",
             "", "| removed | " + " | ".join(summ) + " |", "|---|" + "---|" * len(summ)]
    for f in args.fractions:
        cells = [f"{summ[n][f]['mean']:.3f} ± {summ[n][f]['std']:.3f} [{summ[n][f]['min']:.3f}, "
                 f"{summ[n][f]['max']:.3f}]" for n in summ]
        lines.append(f"| {f:.0%} | " + " | ".join(cells) + " |")
    acc_before = base["mean"]
    md = "\n".join(lines) + "\n"
    _write(out, "results", md, {"summary": {n: {str(f): v for f, v in d.items()} for n, d in summ.items()},
                                "before": acc_before, "raw": {n: {str(f): v for f, v in d.items()} for n, d in res.items()}})
    path = os.path.join(args.img, f"removal_{preset.dataset}.png")
    plots.removal(summ, path, before=acc_before,
                  title=f"Removing the most helpful training examples ({preset.dataset})")
    print(f"wrote {path}")
    print(md)
    return 0


# ----------------------------------------------------------------------------- LoRA
def cmd_lora(args) -> int:
    """A base MLP pre-trained on Fashion-MNIST (or digits) and fine-tuned on MNIST with
    LoRA adapters only, 20% of the fine-tuning labels flipped; attribution restricted to
    the adapter matrices (``layers = lora_modules(model)``)."""
    preset = presets.get(args.preset, "mnist")
    ctx, y_noisy, flipped = _noisy_context(args, "lora", preset)
    s = ctx.split
    try:
        pre = datasets.fashion_mnist(n_train=args.pretrain, n_test=1, seed=args.seed)
    except FileNotFoundError as e:
        print(f"grass.eval lora: the base model is pre-trained on Fashion-MNIST: {e}", file=sys.stderr)
        return 2
    base = ctx.trained("pretrained", pre.x_train, pre.y_train, preset.model_seed,
                       config=preset.train)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(preset.model_seed)  # the adapters' A initialisation
        lora = models.add_lora(base, rank=args.rank, alpha=2.0 * args.rank)
    lora_cfg = TrainConfig(epochs=args.epochs, batch_size=preset.train.batch_size, lr=args.lr)
    lora = ctx.trained("lora-noisy", s.x_train, y_noisy, preset.model_seed,
                       spec={"lora_rank": args.rank, "base": ctx.spec}, config=lora_cfg, model=lora)
    acc = objectives.accuracy(lora, s.x_test, s.y_test)
    layers = models.lora_modules(lora)
    cache = JobCache(os.path.join(ctx.out, "jobs"), {"preset": dataclasses.asdict(preset),
                                                     "rank": args.rank, "k": args.k, "lr": args.lr,
                                                     "epochs": args.epochs, "pretrain": args.pretrain,
                                                     "fraction": args.fraction, "format": 1})
    n_adapter = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    results = {}
    for name in ["Identity", *args.compressors]:
        m = Method("influence", name, args.k, seed=0)
        results[name] = cache.run(m.key, lambda: mislabel_of_method(ctx, lora, y_noisy, flipped, m,
                                                                    layers=layers))
    lines = [f"LoRA (rank {args.rank}) on every linear layer of an MLP {preset.hidden} pre-trained on "
             f"{args.pretrain} Fashion-MNIST images, fine-tuned (adapters only, {n_adapter} "
             f"parameters) on {s.n_train} MNIST digits with {args.fraction:.0%} of the labels "
             f"flipped; test accuracy {acc:.3f}. Attribution restricted to the adapter matrices "
             f"({len(layers)} layers), default damping, k = {args.k} per layer (an adapter matrix "
             "with at most k entries is kept whole).", "",
             "| method | self-influence AUC | top 10% | top 20% | validation-harm AUC |", "|---|---|---|---|---|"]
    for name, r in results.items():
        label = "uncompressed (Identity)" if name == "Identity" else name
        lines.append(f"| {label} | {r['self']['auc']:.4f} | {r['self']['found@0.1']:.3f} | "
                     f"{r['self']['found@0.2']:.3f} | {r['validation']['auc']:.4f} |")
    md = "\n".join(lines) + "\n"
    _write(ctx.out, "results", md, {"accuracy": acc, "results": results, "adapter_params": n_adapter})
    curves = {n: (np.array(r["curve"][0]), np.array(r["curve"][1])) for n, r in results.items()}
    path = os.path.join(args.img, "mislabel_lora.png")
    plots.detection_curves(curves, path, title="Mislabel detection, LoRA adapters only",
                           aucs={n: r["self"]["auc"] for n, r in results.items()},
                           flipped_fraction=args.fraction)
    print(f"wrote {path}")
    print(md)
    return 0


# ----------------------------------------------------------------------------- sequence model
def cmd_sequence(args) -> int:
    """LDS of a character-level transformer; every projection is an nn.Linear, and all of
    them are attributed (LoGra and FactGraSS on their factors)."""
    split = datasets.char_corpus(n_train=args.n_train, n_test=args.n_test, seq_len=args.seq_len,
                                 seed=0, path=args.text)
    spec = models.transformer_spec(split.classes, args.seq_len, d_model=args.d_model, heads=4,
                                   layers=args.layers)
    cfg = TrainConfig(epochs=args.epochs, batch_size=64, lr=3e-3)
    preset = presets.Preset("sequence", "chars", args.n_train, args.n_test, args.n_val, (),
                            cfg, args.models, target="logprob")
    out = os.path.join(args.out, f"sequence-{split.name}")
    ctx = Context(preset, out, threads=args.threads, progress=not args.quiet, split=split,
                  model_spec=spec)
    ctx.ground_truth()
    model = ctx.model()
    acc = objectives.accuracy(model, split.x_test, split.y_test)
    cache = JobCache(os.path.join(out, "jobs"), {"spec": spec, "train": cfg.to_dict(),
                                                 "models": args.models, "grid": list(args.grid),
                                                 "data": split.fingerprint(), "format": 1})
    rows = []
    for k in args.ks:
        for name in args.compressors:
            m = Method("influence", name, k, seed=0)
            rows.append(cache.run(m.key, lambda: lds_of_method(ctx, m, args.grid)))
    infos = layer_infos(model)
    lines = [f"Character-level transformer ({args.layers} blocks, d = {args.d_model}, context "
             f"{args.seq_len}; {sum(p.numel() for p in model.parameters())} parameters) on "
             f"{split.name}: {split.n_train} training windows, {split.n_test - args.n_val} "
             f"reported test windows, {args.models} subset models, target: mean log-likelihood "
             f"of the window; next-character accuracy {acc:.3f}. All {len(infos)} linear layers "
             "attributed.", "", "| compressor | k per layer | LDS [95% CI] | damping | caching time (s) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['compressor']} | {r['k']} | {_fmt_est(r['lds'])} | {r['damping']:g} | "
                     f"{r['times'].get('cache_s', float('nan')):.1f} |")
    md = "\n".join(lines) + "\n"
    _write(out, "results", md, {"rows": rows, "accuracy": acc})
    print(md)
    return 0


# ----------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python experiments/paper.py",
                                description="grass evaluation tables (LDS, mislabel detection, removal)")
    p.add_argument("--out", default="runs/eval", help="cache and results directory (default runs/eval)")
    p.add_argument("--img", default="docs/img", help="where PNG plots go (default docs/img)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(q, ks=(4096,)):
        q.add_argument("--preset", default="paper", choices=sorted(presets.PRESETS))
        q.add_argument("--dataset", default=None, choices=sorted(datasets.DATASETS))
        q.add_argument("--compressors", nargs="+", default=list(COMPRESSORS))
        q.add_argument("--seed", type=int, default=0)
        return q

    q = common(sub.add_parser("lds-table", help="LDS and compression time per compressor and k"))
    q.add_argument("--ks", type=int, nargs="+", default=[2048, 4096, 8192])
    q.add_argument("--kinds", nargs="+", default=["influence", "trak"], choices=["influence", "trak"])
    q.add_argument("--grid", type=float, nargs="+", default=list(DAMPING_GRID))
    q.add_argument("--models", type=int, default=None, help="override the number of subset models")
    q.add_argument("--repeats", type=int, default=7)
    q.add_argument("--retime", action="store_true", help="measure compression time again")
    q.add_argument("--keep-stores", action="store_true")
    q.add_argument("--tracin", action="store_true", help="add a TracIn (gradient dot) row")
    q.set_defaults(fn=cmd_lds_table)

    q = common(sub.add_parser("mislabel", help="mislabel detection AUC vs the uncompressed IF"))
    q.add_argument("--k", type=int, default=4096)
    q.add_argument("--fraction", type=float, default=0.2)
    q.set_defaults(fn=cmd_mislabel)

    q = common(sub.add_parser("stability", help="mislabel AUC over compressor seeds at small k"))
    q.set_defaults(compressors=["RandomMask", "Gaussian"])
    q.add_argument("--ks", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    q.add_argument("--seeds", type=int, default=5)
    q.add_argument("--fraction", type=float, default=0.2)
    q.set_defaults(fn=cmd_stability)

    q = common(sub.add_parser("removal", help="retrain without the most helpful examples"))
    q.set_defaults(compressors=["GraSS", "FactGraSS", "Gaussian"])
    q.add_argument("--k", type=int, default=4096)
    q.add_argument("--group", type=int, default=200, help="size of the test group")
    q.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.3])
    q.add_argument("--seeds", type=int, default=5)
    q.add_argument("--damping", type=float, default=None)
    q.add_argument("--exact", action="store_true", help="add the exact influence ranking")
    q.add_argument("--exact-damping", type=float, default=10.0)
    q.set_defaults(fn=cmd_removal)

    q = common(sub.add_parser("lora", help="mislabel detection with attribution on LoRA adapters only"))
    q.set_defaults(compressors=["GraSS", "FactGraSS", "LoGra", "RandomMask", "Gaussian"])
    q.add_argument("--k", type=int, default=1024)
    q.add_argument("--rank", type=int, default=8)
    q.add_argument("--pretrain", type=int, default=10000)
    q.add_argument("--epochs", type=int, default=20)
    q.add_argument("--lr", type=float, default=3e-3)
    q.add_argument("--fraction", type=float, default=0.2)
    q.set_defaults(fn=cmd_lora)

    q = sub.add_parser("sequence", help="LDS of a character-level transformer")
    q.add_argument("--text", default=None, help="a UTF-8 text file (default: CPython's bundled docs)")
    q.add_argument("--compressors", nargs="+", default=["FactGraSS", "LoGra", "GraSS", "SJLT"])
    q.add_argument("--ks", type=int, nargs="+", default=[1024])
    q.add_argument("--grid", type=float, nargs="+", default=[0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0])
    q.add_argument("--n-train", type=int, default=2000)
    q.add_argument("--n-test", type=int, default=300)
    q.add_argument("--n-val", type=int, default=60)
    q.add_argument("--seq-len", type=int, default=32)
    q.add_argument("--d-model", type=int, default=64)
    q.add_argument("--layers", type=int, default=2)
    q.add_argument("--epochs", type=int, default=8)
    q.add_argument("--models", type=int, default=50)
    q.set_defaults(fn=cmd_sequence)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
