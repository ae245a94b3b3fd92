"""How well learned masks keep inner products, next to random masks: the table of
docs/compress.md ("Measured on held-out gradients ...").

    python bench/selective_mask_quality.py           # k' = 16 and 64, three fitting seeds
    python bench/selective_mask_quality.py --quick   # one k', one seed, few steps (a smoke test)
    python bench/selective_mask_quality.py --init-std 1e-2   # another start for the learned masks

An MLP 64-32-10 trained briefly on scikit-learn's digits (as tests/python/test_selective_mask.py
sets it up); masks are fitted on 300 training and 100 test examples and judged on 400 training
and 200 test examples the fitting never saw: the mean over test gradients of the Pearson
correlation, across training gradients, between masked and full inner products. Learned masks
(flat and factored SelectiveMask) over the fitting seeds: min – max; random masks of the same
size and structure (RandomMask; k_in x k_out factor masks) over five seeds: mean / best.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from torch import nn

try:
    import grass.compress as C
    from grass.capture import GradientCapture
    from grass.compress.mask import FactorMaskCompressor
except ImportError as exc:  # pragma: no cover - a message, not a test
    sys.exit(f"selective_mask_quality.py needs the grass package (pip install .): {exc}")


def mean_column_pearson(approx: torch.Tensor, full: torch.Tensor) -> float:
    approx, full = approx.detach().double().numpy(), full.detach().double().numpy()
    corrs = []
    for j in range(full.shape[1]):
        if np.ptp(full[:, j]) == 0:
            continue
        corrs.append(0.0 if np.ptp(approx[:, j]) == 0 else np.corrcoef(approx[:, j], full[:, j])[0, 1])
    return float(np.mean(corrs))


def digits_model():
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    X, y = torch.tensor(X / 16.0, dtype=torch.float32)[perm], torch.tensor(y)[perm]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for i in range(0, 1000, 50):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[i:i + 50]), y[i:i + 50]).backward()
            opt.step()
    return model.eval(), X, y


def ce(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--seeds", type=int, default=3, help="fitting seeds of the learned masks")
    ap.add_argument("--init-std", type=float, default=None,
                    help="MaskFit init_std of the learned masks (default: MaskFit's)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    fit_options = {} if args.init_std is None else {"init_std": args.init_std}
    if args.quick:
        args.ks, args.seeds, fit_options = [16], 1, {**fit_options, "steps": 20}
    model, X, y = digits_model()
    cap = GradientCapture(model, ce)
    batches = lambda lo, hi: [(X[i:min(hi, i + 50)], y[i:min(hi, i + 50)]) for i in range(lo, hi, 50)]  # noqa: E731
    fit_train, fit_test = batches(0, 300), batches(1000, 1100)
    eval_train, eval_test = (X[300:700], y[300:700]), (X[1100:1300], y[1100:1300])
    full_tr, full_te = cap.per_sample(eval_train), cap.per_sample(eval_test)
    names = [info.name for info in cap.layers]

    def corr(comp, name, tr=None, te=None):
        if tr is None:
            tr, te = comp.compress(full_tr[name]), comp.compress(full_te[name])
        return mean_column_pearson(tr @ te.T, full_tr[name] @ full_te[name].T)

    print(f"# selective_mask_quality.py: digits MLP, fitting seeds 0..{args.seeds - 1}, random masks "
          f"over seeds 0..4, MaskFit options {fit_options or 'default'}\n")
    print("| layer, k' | learned flat | RandomMask | learned factored | random factor masks |")
    print("|---|---|---|---|---|")
    for k in args.ks:
        learned = {name: {"flat": [], "factored": []} for name in names}
        shapes = {}
        for seed in range(args.seeds):
            for kind, factored in (("factored", True), ("flat", False)):
                spec = C.SelectiveMask(k=k, seed=seed, factored=factored, fit=fit_options)
                comps = spec.build(cap.layers)
                spec.fit(comps, cap, fit_train, fit_test, progress=False)
                tr, te = cap.compressed(eval_train, comps), cap.compressed(eval_test, comps)
                for name in names:
                    learned[name][kind].append(corr(comps[name], name, tr[name], te[name]))
                    if factored:
                        shapes[name] = comps[name]
        for name in names:
            rand_flat = [corr(C.RandomMask(k=k, seed=s).build(cap.layers)[name], name) for s in range(5)]
            c = shapes[name]
            rand_factor = [corr(FactorMaskCompressor(c.info, c.mask.k_in, c.mask.k_out, seed=s, learned=False),
                                name) for s in range(5)]
            lf, lo = learned[name]["flat"], learned[name]["factored"]
            print(f"| {name} ({full_tr[name].shape[1]} coords), {k} | {min(lf):.3f} – {max(lf):.3f} "
                  f"| {np.mean(rand_flat):.2f} / {max(rand_flat):.2f} | {min(lo):.3f} – {max(lo):.3f} "
                  f"| {np.mean(rand_factor):.2f} / {max(rand_factor):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
