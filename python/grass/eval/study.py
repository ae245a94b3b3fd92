"""The evaluation's reusable steps: a Context (one preset's data split, trained models and
LDS ground truth, cached on disk), the LDS of a compressed method or of exact influence
with the damping chosen on validation examples, and mislabel detection by either. The
paper's tables are built from these by experiments/paper.py (outside the package) and the
demo (grass.eval.demo)."""
from __future__ import annotations

import hashlib
import os
import time
from typing import Callable, Dict, Optional, Sequence

import torch

from . import datasets, lds, metrics, mislabel, models, objectives, presets
from .exact import KernelExactInfluence
from .jobs import config_hash
from .methods import Method, Run
from .train import TrainConfig, train

__all__ = ["DAMPING_GRID", "Context", "lds_of_method", "lds_of_exact", "mislabel_of_method",
           "mislabel_of_exact", "matching_damping", "hashlib_tensors"]

DAMPING_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


# ----------------------------------------------------------------------------- context
class Context:
    """Data, ground truth and the attributed model of one preset, cached under ``out``."""

    def __init__(self, preset: presets.Preset, out: str, threads: Optional[int] = None,
                 progress: bool = True, split: Optional[datasets.Split] = None,
                 model_spec: Optional[dict] = None, loss_fn: Callable = objectives.cross_entropy):
        self.preset = preset
        self.out = out
        self.threads = threads
        self.progress = progress
        self.loss_fn = loss_fn
        self.split = split if split is not None else preset.split()
        self.spec = model_spec or preset.model_spec(self.split)
        self.val, self.rep = lds.split_test(self.split.n_test, preset.n_val)
        os.makedirs(out, exist_ok=True)
        self._gt = None

    def ground_truth(self) -> lds.GroundTruth:
        if self._gt is None:
            cfg = lds.GroundTruthConfig(model=self.spec, train=self.preset.train,
                                        target=self.preset.target, n_models=self.preset.n_models,
                                        alpha=self.preset.alpha, seed=0)
            gt = lds.GroundTruth(os.path.join(self.out, "ground_truth"), self.split, cfg, self.loss_fn)
            gt.build(progress=self.progress, threads=self.threads)
            self._gt = gt
            self.masks, self.targets = gt.load()
        return self._gt

    def trained(self, name: str, x: torch.Tensor, y: torch.Tensor, seed: int,
                spec: Optional[dict] = None, config: Optional[TrainConfig] = None,
                model: Optional[torch.nn.Module] = None) -> torch.nn.Module:
        """A model trained on (x, y), saved under ``out/models`` and reloaded on rerun (so
        stores fingerprinted on its weights stay valid whatever the thread count)."""
        spec = spec or self.spec
        config = config or self.preset.train
        data = hashlib_tensors(x, y)
        key = config_hash({"spec": spec, "train": config.to_dict(), "seed": seed, "data": data,
                           "init": None if model is None else hashlib_tensors(*model.state_dict().values())})
        path = os.path.join(self.out, "models", f"{name}-{key}.pt")
        net = model if model is not None else models.build(spec, seed)
        if os.path.exists(path):
            net.load_state_dict(torch.load(path, weights_only=True))
            return net.eval()
        with lds.torch_threads(self.threads):
            train(net, x, y, config, seed, self.loss_fn)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(net.state_dict(), path + ".tmp")
        os.replace(path + ".tmp", path)
        return net.eval()

    def model(self) -> torch.nn.Module:
        s = self.split
        return self.trained("attributed", s.x_train, s.y_train, self.preset.model_seed)

    def lds(self, scores, index) -> lds.LDSResult:
        self.ground_truth()
        return lds.score_lds(scores, self.masks, self.targets, index)


def hashlib_tensors(*tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        a = t.detach().cpu().contiguous()
        h.update(str((a.dtype, tuple(a.shape))).encode())
        h.update(a.numpy().tobytes() if a.dtype != torch.bfloat16 else a.float().numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- LDS of one method
def lds_of_method(ctx: Context, method: Method, grid: Sequence[float] = DAMPING_GRID,
                  keep_store: bool = False, checkpoints=None, layers=None) -> dict:
    """Cache, choose the damping on the validation test examples, report LDS on the rest."""
    ctx.ground_truth()
    s = ctx.split
    model = ctx.model()
    run_dir = os.path.join(ctx.out, "stores", method.key)
    run = Run(method, model, s.x_train, s.y_train, run_dir, target=ctx.preset.target,
              loss_fn=ctx.loss_fn, layers=layers, progress=ctx.progress, checkpoints=checkpoints)
    xv, yv = s.x_test[ctx.val], s.y_test[ctx.val]
    xr, yr = s.x_test[ctx.rep], s.y_test[ctx.rep]
    run.prepare(mask_sample=(xv, yv))
    t = time.perf_counter()
    if method.kind == "tracin":
        best, table = None, {}
        run.fit()
    else:
        best, table = lds.choose_damping(
            lambda d: run.fit(d).scores(xv, yv).double().numpy(), grid, ctx.masks,
            ctx.targets[:, ctx.val])
        run.fit(best)
    scores = run.scores(xr, yr)
    run.times["fit_score_s"] = time.perf_counter() - t
    res = ctx.lds(scores, ctx.rep)
    if not keep_store:
        run.remove_store()
    return {"method": method.kind, "compressor": method.compressor, "k": method.k,
            "lds": res.to_dict(), "damping": best, "val_lds": {str(k): v for k, v in table.items()},
            "times": run.times, "dim": int(sum(run.engine.block_sizes)) if hasattr(run.engine, "block_sizes") else None}


def lds_of_exact(ctx: Context, grid: Sequence[float] = DAMPING_GRID) -> dict:
    """The uncompressed block-diagonal influence function (exact, float64)."""
    ctx.ground_truth()
    s = ctx.split
    t = time.perf_counter()
    ex = KernelExactInfluence(ctx.model(), ctx.loss_fn, s.x_train, s.y_train)
    tgt = objectives.target_fn(ctx.preset.target)
    xv, yv = s.x_test[ctx.val], s.y_test[ctx.val]
    best, table = lds.choose_damping(lambda d: ex.fit(d).scores(xv, yv, tgt).numpy(), grid,
                                     ctx.masks, ctx.targets[:, ctx.val])
    scores = ex.fit(best).scores(s.x_test[ctx.rep], s.y_test[ctx.rep], tgt)
    res = ctx.lds(scores.numpy(), ctx.rep)
    return {"method": "influence", "compressor": "none (exact)", "k": None, "lds": res.to_dict(),
            "damping": best, "val_lds": {str(k): v for k, v in table.items()},
            "times": {"total_s": time.perf_counter() - t}}


def mislabel_of_method(ctx, model, y_noisy, flipped, method: Method, layers=None,
                       damping=None, validation=True, keep_store=False) -> dict:
    s = ctx.split
    run_dir = os.path.join(ctx.out, "stores", method.key)
    run = Run(method, model, s.x_train, y_noisy, run_dir, target="logprob", loss_fn=ctx.loss_fn,
              layers=layers, progress=ctx.progress)
    run.prepare(mask_sample=(s.x_test[ctx.val], s.y_test[ctx.val]))
    run.fit(damping)
    out = {"compressor": method.compressor, "k": method.k, "seed": method.seed,
           "self": mislabel.detection_report(run.self_influence(), flipped), "times": run.times}
    if validation:
        sc = run.scores(s.x_test[ctx.val], s.y_test[ctx.val])
        out["validation"] = mislabel.detection_report(mislabel.harm_to_validation(sc), flipped)
    x, y = metrics.detection_curve(run.self_influence().numpy(), flipped)
    out["curve"] = [x[::max(1, len(x) // 200)].tolist(), y[::max(1, len(y) // 200)].tolist()]
    if not keep_store:
        run.remove_store()
    return out


def mislabel_of_exact(ctx, model, y_noisy, flipped, damping: Dict[str, float], layers=None) -> dict:
    s = ctx.split
    ex = KernelExactInfluence(model, ctx.loss_fn, s.x_train, y_noisy, layers=layers).fit(damping, relative=False)
    si = ex.self_influence().numpy()
    sc = ex.scores(s.x_test[ctx.val], s.y_test[ctx.val], objectives.log_prob)
    x, y = metrics.detection_curve(si, flipped)
    return {"compressor": "none (exact)", "k": None, "damping": damping,
            "self": mislabel.detection_report(si, flipped),
            "validation": mislabel.detection_report(mislabel.harm_to_validation(sc), flipped),
            "curve": [x[::max(1, len(x) // 200)].tolist(), y[::max(1, len(y) // 200)].tolist()]}


def matching_damping(model, y_noisy, ctx, k, layers=None, rel=0.1) -> Dict[str, float]:
    """The absolute λ_l = rel · trace(F_l) / min(k, p_l) that a compressed run at k uses by
    default (a JL sketch keeps trace(F_l) in expectation), for the uncompressed reference."""
    s = ctx.split
    ex = KernelExactInfluence(model, ctx.loss_fn, s.x_train, y_noisy, layers=layers)
    return {n: rel * ex.fisher_trace(n) / min(k, ex.layer_numel(n)) for n, _ in ex.layers}
