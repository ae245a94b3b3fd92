"""Fitting the compressors that learn (selective masks) from a sample of gradients, and
saving / loading what they learned."""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Mapping, Optional

import torch

from .. import ops
from ..capture.batch import batch_size, take, to_device
from .base import Compressor

__all__ = ["fit_compressors", "state_dict", "load_state_dict", "FittedSpec"]


def _progress(iterable, desc: str, enabled: bool, total=None):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=False)


def _collect(capture, batches, names, limit: int, fn, desc: str, progress: bool, device):
    """Up to ``limit`` samples of fitting data per layer: factors (a [n, d_in], g [n, d_out])
    for linear layers with one token per sample, flat gradients [n, p] otherwise."""
    kinds = {i.name: i for i in capture.layers}
    linear = [n for n in names if kinds[n].kind == "linear"]
    flat = [n for n in names if kinds[n].kind == "flat"]
    parts: Dict[str, list] = {n: [] for n in names}
    seen = 0
    bar = _progress(None, desc, progress, total=limit) if progress else None
    for batch in batches:
        if seen >= limit:
            break
        batch = to_device(batch, device)
        B = batch_size(batch)
        if B > limit - seen:
            batch, B = take(batch, torch.arange(limit - seen)), limit - seen
        if linear:
            for name, (a, g) in capture.factors(batch, fn, layers=linear).items():
                if a.shape[1] == 1:
                    parts[name].append((a[:, 0].float(), g[:, 0].float()))
                else:
                    parts[name].append(ops.kron(a.contiguous(), g.contiguous(), bias=kinds[name].bias))
        if flat:
            for name, grad in capture.per_sample(batch, fn, layers=flat).items():
                parts[name].append(grad.float())
        seen += B
        if bar is not None:
            bar.update(B)
    if bar is not None:
        bar.close()
    if seen == 0:
        raise ValueError(f"{desc}: the batches gave no samples")
    out = {}
    for name, items in parts.items():
        if all(isinstance(x, tuple) for x in items):
            out[name] = (torch.cat([a for a, _ in items]), torch.cat([g for _, g in items]))
        else:  # a mix of one-token and many-token batches: flat gradients throughout
            info = kinds[name]
            flat_items = [ops.kron(x[0].contiguous(), x[1].contiguous(), bias=info.bias)
                          if isinstance(x, tuple) else x for x in items]
            out[name] = torch.cat(flat_items)
    return out


def fit_compressors(compressors: Mapping[str, Compressor], capture, train_batches: Iterable,
                    test_batches: Optional[Iterable] = None, *, test_fn: Optional[Callable] = None,
                    max_train: int = 512, max_test: int = 128, refit: bool = False,
                    device=None, seed: Optional[int] = None, progress: bool = True) -> Dict[str, dict]:
    """Fit every compressor that learns (``needs_fit``, or every learned one with
    ``refit=True``) on gradients of up to ``max_train`` training samples and ``max_test`` test
    samples (test gradients of ``test_fn``, default the capture's loss; without test batches
    half of the training sample plays the test side). Returns {layer: fitting report}.

    device: where batches are moved before the forward pass (None: as they come). seed:
    a run-level seed folded into each layer's fitting seed (split and initial logits);
    None uses the layer seeds alone.

    Use batches the attribution will not be evaluated on when measuring quality; the
    report's held-out correlation is measured on a split of this sample.
    """
    if not isinstance(compressors, Mapping):
        raise TypeError(f"compressors must be a dict {{layer: Compressor}}, got {type(compressors).__name__}")
    captured = {i.name for i in capture.layers}
    todo = {}
    for name, comp in compressors.items():
        learns = getattr(getattr(comp, "mask", None), "learned", False)
        if comp.needs_fit or (refit and learns):
            if name not in captured:
                raise ValueError(f"compressor {name!r} needs fitting but the capture has no such "
                                 f"layer; captured layers: {sorted(captured)}")
            todo[name] = comp
    if not todo:
        return {}
    for what, n in (("max_train", max_train), ("max_test", max_test)):
        if not isinstance(n, int) or n < 4:
            raise ValueError(f"{what} must be an int >= 4, got {n!r}")
    names = list(todo)
    train = _collect(capture, train_batches, names, max_train, None, "mask fit: train gradients", progress,
                     device)
    test = None
    if test_batches is not None:
        test = _collect(capture, test_batches, names, max_test, test_fn, "mask fit: test gradients",
                        progress, device)
    reports = {}
    for name in _progress(names, "mask fit: layers", progress):
        reports[name] = todo[name].fit(train.pop(name), None if test is None else test.pop(name),
                                       seed=seed)
    return reports


def state_dict(compressors: Mapping[str, Compressor]) -> Dict[str, dict]:
    """{layer: learned state} for the compressors that learned something."""
    return {name: s for name, c in compressors.items() for s in [c.state_dict()] if s}


def load_state_dict(compressors: Mapping[str, Compressor], states: Mapping[str, dict]) -> None:
    """Load what ``state_dict`` saved; unknown layer names are an error."""
    unknown = sorted(set(states) - set(compressors))
    if unknown:
        raise ValueError(f"saved compressor state names layers {unknown} that these compressors "
                         f"do not have ({sorted(compressors)})")
    for name, s in states.items():
        compressors[name].load_state_dict(s)


class FittedSpec:
    """For the specs whose compressors learn (selective masks): ``spec.fit(...)``."""

    def fit(self, compressors: Mapping[str, Compressor], capture, train_batches,
            test_batches=None, **kwargs) -> Dict[str, dict]:
        """Fit the compressors this spec built that learn (selective masks) on gradients of
        ``capture``; same as ``grass.compress.fit_compressors`` (see there for the keyword
        options). Returns ``{layer name: fitting report}``."""
        return fit_compressors(compressors, capture, train_batches, test_batches, **kwargs)
