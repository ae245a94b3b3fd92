"""PNG plots written by the commands that compute their numbers (matplotlib, no display).

* ``frontier``: LDS (with CI) against compression time, one colour per compressor.
* ``influence_grid``: test images beside their most helpful and most harmful training images.
* ``detection_curves``: fraction of flipped labels found vs fraction of data inspected.
* ``band``: a metric against k with a min–max band over seeds.
* ``removal``: test accuracy after removing the top q% by each method, with spread.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["frontier", "influence_grid", "detection_curves", "band", "removal"]


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    os.replace(tmp, path)
    _plt().close(fig)
    return path


_COLOURS = {}


def _colour(name: str):
    plt = _plt()
    if name not in _COLOURS:
        _COLOURS[name] = plt.get_cmap("tab10")(len(_COLOURS) % 10)
    return _COLOURS[name]


def frontier(rows: Sequence[dict], path: str, title: str = "LDS vs compression time",
             reference: Optional[Sequence[dict]] = None) -> str:
    """rows: {"method", "k", "time", "lds", "low", "high"[, "panel"]}; points of one method
    are joined in order of k; rows with different "panel" values go to side-by-side
    panels (titled by the value). ``reference``: published {"method", "time", "lds"} drawn
    hollow on every panel."""
    plt = _plt()
    panels: Dict[str, List[dict]] = {}
    for r in rows:
        panels.setdefault(r.get("panel", ""), []).append(r)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False,
                             sharey=True)
    for ax, (panel, prow) in zip(axes[0], panels.items()):
        by: Dict[str, List[dict]] = {}
        for r in prow:
            by.setdefault(r["method"], []).append(r)
        for name, rs in by.items():
            rs = sorted(rs, key=lambda r: r.get("k") or 0)
            t = np.array([r["time"] for r in rs])
            y = np.array([r["lds"] for r in rs])
            err = np.array([[r["lds"] - r.get("low", r["lds"]) for r in rs],
                            [r.get("high", r["lds"]) - r["lds"] for r in rs]])
            c = _colour(name)
            ax.errorbar(t, y, yerr=err, fmt="-o", color=c, label=name, ms=4, capsize=2, lw=1)
            for r in rs:
                if r.get("k"):
                    ax.annotate(f"{r['k']}", (r["time"], r["lds"]), fontsize=6,
                                xytext=(3, 3), textcoords="offset points", color=c)
        for r in reference or []:
            ax.scatter([r["time"]], [r["lds"]], facecolors="none", edgecolors=_colour(r["method"]),
                       marker="s", s=40)
        if reference:
            ax.scatter([], [], facecolors="none", edgecolors="grey", marker="s",
                       label="published (GPU, k = 4096)")
        ax.set_xscale("log")
        ax.set_xlabel("compression time (s, log scale)")
        ax.set_title(panel, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
    axes[0][0].set_ylabel("LDS (95% bootstrap CI)")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def influence_grid(test_images, test_labels, train_images, train_labels, helpful, harmful,
                   path: str, image_shape: Tuple[int, int], class_names=None,
                   helpful_scores=None, harmful_scores=None,
                   title: str = "most helpful (green) and most harmful (red) training examples"
                   ) -> str:
    """One row per test image: the test image, then ``helpful[j]`` and ``harmful[j]``
    training images (index arrays [n_test, n_show])."""
    plt = _plt()
    helpful, harmful = np.asarray(helpful), np.asarray(harmful)
    n, h = helpful.shape
    cols = 1 + 2 * h
    fig, axes = plt.subplots(n, cols, figsize=(1.1 * cols, 1.25 * n), squeeze=False)
    name = (lambda c: class_names[int(c)]) if class_names is not None else (lambda c: str(int(c)))

    def show(ax, img, label, colour, score=None):
        ax.imshow(np.asarray(img, float).reshape(image_shape), cmap="gray_r")
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_edgecolor(colour)
            s.set_linewidth(2)
        text = name(label) if score is None else f"{name(label)} {score:+.2g}"
        ax.set_title(text, fontsize=6, color=colour, pad=2)

    for j in range(n):
        show(axes[j, 0], test_images[j], test_labels[j], "black")
        axes[j, 0].set_ylabel("test", fontsize=7)
        for c in range(h):
            show(axes[j, 1 + c], train_images[helpful[j, c]], train_labels[helpful[j, c]], "tab:green",
                 None if helpful_scores is None else float(helpful_scores[j][c]))
            show(axes[j, 1 + h + c], train_images[harmful[j, c]], train_labels[harmful[j, c]], "tab:red",
                 None if harmful_scores is None else float(harmful_scores[j][c]))
    fig.suptitle(title, fontsize=8)
    return _save(fig, path)


def detection_curves(curves: Dict[str, Tuple[np.ndarray, np.ndarray]], path: str,
                     title: str = "mislabel detection", aucs: Optional[Dict[str, float]] = None,
                     flipped_fraction: Optional[float] = None) -> str:
    """curves: {name: (fraction inspected, fraction found)}; a random ranking is the
    diagonal, a perfect one reaches 1 at ``flipped_fraction``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (x, y) in curves.items():
        label = name if aucs is None or name not in aucs else f"{name} (AUC {aucs[name]:.3f})"
        ax.plot(x, y, label=label, color=_colour(name), lw=1.2)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8, label="random")
    if flipped_fraction:
        ax.plot([0, flipped_fraction, 1], [0, 1, 1], ":", color="black", lw=0.8, label="perfect")
    ax.set_xlabel("fraction of training data inspected")
    ax.set_ylabel("fraction of flipped labels found")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def band(series: Dict[str, Dict[int, Sequence[float]]], path: str, ylabel: str,
         title: str, xlabel: str = "k") -> str:
    """series: {method: {k: [value per seed]}}: the mean line and the min–max band."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, by_k in series.items():
        ks = sorted(by_k)
        v = [np.asarray(by_k[k], float) for k in ks]
        c = _colour(name)
        ax.plot(ks, [x.mean() for x in v], "-o", color=c, label=name, ms=3)
        ax.fill_between(ks, [x.min() for x in v], [x.max() for x in v], color=c, alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def removal(summary: Dict[str, Dict[float, dict]], path: str, ylabel: str = "test accuracy",
            title: str = "accuracy after removing the most helpful examples",
            before: Optional[float] = None) -> str:
    """summary: {method: {fraction: {"mean", "min", "max"}}} (``removal.summarise_removal``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, by_f in summary.items():
        fs = sorted(by_f)
        m = np.array([by_f[f]["mean"] for f in fs])
        lo = np.array([by_f[f]["min"] for f in fs])
        hi = np.array([by_f[f]["max"] for f in fs])
        c = "grey" if name == "random" else _colour(name)
        ax.errorbar(np.array(fs) * 100, m, yerr=[m - lo, hi - m], fmt="o", color=c, label=name,
                    capsize=3, ms=4, lw=1, ls="--" if name == "random" else "-")
    if before is not None:
        ax.axhline(before, color="black", lw=0.7, ls=":", label="no removal (same seeds)")
    ax.set_xlabel("training examples removed (% of the training set)")
    ax.set_ylabel(ylabel + " (mean, min–max over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)
