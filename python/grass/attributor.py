"""The Attributor: the one object most users touch.

    attr = grass.Attributor(model, loss_fn, compressor=grass.compress.FactGraSS(k=4096),
                            store="runs/mnist")
    attr.cache(train_loader)            # compressed training gradients -> store (resumable)
    attr.fit()                          # block-diagonal Fisher, damping, Cholesky
    scores = attr.scores(test_loader)   # [M, N]  τ(test, train), positive = helpful
    values, indices = attr.top_k(test_loader, k=10)
    attr.self_influence()               # [N]

A run directory (``store=``) holds everything a later process needs:

    <store>/train/              the training-gradient store (docs/store.md)
    <store>/test-<name>/        cached test gradients (cache_test)
    <store>/compressor.pt       learned compressor state (selective masks)
    <store>/fisher.pt           the accumulated Fisher (refits with a new damping reuse it)
    <store>/preconditioner.pt   the Cholesky factors and their damping
    <store>/fit.json            how they were fitted (refits a damaged preconditioner.pt)

Nothing in a run directory is unpickled: the cache files are read with
``weights_only=True`` and checked against their checksums; one that cannot be used is
recomputed with a warning (``grass.store.files``). Store chunks are checked on their first
read (docs/store.md, "Integrity").
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Sequence
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch.utils._pytree import tree_map

from .capture.batch import batch_size
from .device import resolve_device
from .precondition import BlockFisher, IdentityPreconditioner, Preconditioner, choose_damping
from .distributed import full_scores, self_influence, top_k_scores  # sharded when torchrun'd
from .distributed import group as _group
from .distributed.cache import write_sharded
from .distributed.score import accumulate_fisher
from .distributed.sharded_store import is_sharded, open_store
from .score import ScoreTerm, resolve_target
from .score.targets import NegativeLoss, TokenLogProbs
from .score.influence import influence_queries
from .store import (GradientStore, StoreDamaged, StoreWriter, check_fingerprint, fill_store,
                    hash_batch, hash_callable, hash_module)
from .store.files import CacheFileWarning, load_cache, load_json, save_cache, save_json
from .store.store import ROWS_VERSION, _check_dtype

# Under torch.distributed every rank holds the same fit: rank 0 alone writes the run's files.
save_cache, save_json = _group.rank_zero_only(save_cache), _group.rank_zero_only(save_json)

__all__ = ["Attributor", "to_device"]

_METHODS = ("fisher", "datainf", "identity")


def to_device(batch: Any, device) -> Any:
    """The batch's tensors moved to ``device`` (other leaves unchanged)."""
    return tree_map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, batch)


def _num_examples(loader, given: Optional[int]) -> int:
    if given is not None:
        if int(given) < 1:
            raise ValueError(f"num_examples must be >= 1, got {given}")
        return int(given)
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    if isinstance(loader, Sequence):
        return sum(batch_size(b) for b in loader)
    raise ValueError("cannot tell how many examples the loader yields (it has no sized "
                     "dataset); pass num_examples=")


def _check_fixed_order(loader, what: str) -> None:
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, torch.utils.data.RandomSampler):
        raise ValueError(f"the {what} loader shuffles (shuffle=True): row i of the store must be "
                         "example i, so use a loader with shuffle=False")
    if getattr(loader, "drop_last", False):
        raise ValueError(f"the {what} loader has drop_last=True, which drops examples; use "
                         "drop_last=False")


class Attributor:
    """Influence scores with compressed per-sample gradients (see the module docstring).

    Args:
        model: any ``torch.nn.Module``; its weights define the run (they are fingerprinted).
        loss_fn: ``loss_fn(model, batch) -> Tensor[B]``, per-sample training losses.
        compressor: a compressor spec from ``grass.compress`` (e.g. ``FactGraSS(k=4096)``,
            ``Identity()`` for exact gradients on small models).
        layers: which layers to attribute: None (every linear layer), module names, or
            module types (see ``grass.capture.discover_layers``).
        store: the run directory; None uses a temporary one, removed with the Attributor.
        target_fn: ``target_fn(model, batch) -> Tensor[B]``, what test attributions explain;
            default −loss_fn (the log-likelihood of the label).
        dtype: how training gradients are stored: "float32", "float16" or "bfloat16".
        device: where gradients are computed; default: the model's device.
        seed: seed of the Attributor's own sampling (mask fitting); compressors carry
            their own seeds.
        include_flat: with ``layers=None``, also attribute non-linear modules.
        chunk_rows: rows per store chunk (commit unit and scoring unit); default ~64 MiB.
        progress: show progress bars.
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, compressor=None, layers=None,
                 store: Optional[str] = None, target_fn: Optional[Callable] = None,
                 dtype: str = "float32", device=None, seed: int = 0, *, include_flat: bool = False,
                 chunk_rows: Optional[int] = None, progress: bool = True, _reopen=None):
        from .capture import GradientCapture
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable (model, batch) -> Tensor[B], got "
                            f"{type(loss_fn).__name__}")
        if compressor is None or not hasattr(compressor, "build"):
            raise TypeError("compressor= must be a compressor spec from grass.compress, e.g. "
                            "grass.compress.FactGraSS(k=4096), or grass.compress.Identity() for "
                            f"uncompressed gradients; got {compressor!r}")
        model = _group.unwrap_model(model)  # DDP: capture the inner module's layers
        self.model = model
        self._hash_cache = None
        self.loss_fn = loss_fn
        self.target_fn = resolve_target(loss_fn, target_fn)
        self.spec = compressor
        self.dtype = _check_dtype(dtype)
        self.seed = int(seed)
        self.chunk_rows = chunk_rows
        self.progress = progress
        if device is None:
            first = next(model.parameters(), None)
            device = first.device if first is not None else "cpu"
        self.device = resolve_device(device, "Attributor: device")

        if store is None:
            self.run_dir = tempfile.mkdtemp(prefix="grass-run-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.run_dir, True)
        else:
            self.run_dir = os.fspath(store)
            os.makedirs(self.run_dir, exist_ok=True)

        self.capture = GradientCapture(model, loss_fn, layers=layers, include_flat=include_flat)
        self.layers = list(self.capture.layers)
        self.compressors = compressor.build(self.layers)
        names = [info.name for info in self.layers]
        if list(self.compressors) != names:
            raise ValueError(f"compressor.build returned layers {list(self.compressors)}, expected "
                             f"{names}")
        self.block_sizes = [int(self.compressors[n].k) for n in names]
        self._load_compressor_state()

        self.fisher: Optional[BlockFisher] = None
        self.preconditioner = None
        self._fit_info: Optional[Dict[str, Any]] = None
        self._layers_arg = layers
        self._include_flat = bool(include_flat)
        self._fit_args = (_reopen or {}).get("fit")
        if not os.path.exists(self._path(self._RUN_FILE)):
            self._write_run_description()  # rewritten whenever this run writes a store or fits

    # ------------------------------------------------------------------ reopening a run
    _RUN_FILE = "run.json"

    def _run_description(self) -> Dict[str, Any]:
        layers_arg = self._layers_arg
        if layers_arg is not None:
            layers_arg = [x if isinstance(x, str) else None for x in layers_arg]
            if any(x is None for x in layers_arg):  # module types: record what they selected
                layers_arg = [info.name for info in self.layers]
        target = self.target_fn
        if isinstance(target, NegativeLoss) and target.loss_fn is self.loss_fn:
            target_desc = {"target": "negative_loss"}
        elif hasattr(target, "config") and callable(target.config):
            target_desc = dict(target.config())
        else:
            target_desc = {"target": "custom", "repr": repr(target)[:200]}
        return {
            "grass_run": 1,
            "compressor": self.spec.config(),
            "layers_arg": layers_arg,
            "include_flat": self._include_flat,
            "layers": [info.to_dict() for info in self.layers],
            "dtype": self.dtype,
            "seed": self.seed,
            "chunk_rows": self.chunk_rows,
            "loss": hash_callable(self.loss_fn),
            "target": dict(target_desc, fingerprint=hash_callable(target)),
            "fit": getattr(self, "_fit_args", None),
        }

    def _write_run_description(self) -> None:
        path = self._path(self._RUN_FILE)
        desc = self._run_description()
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(desc, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, run_dir: str, model: torch.nn.Module, loss_fn: Callable, *,
             target_fn: Optional[Callable] = None, device=None, progress: bool = True) -> "Attributor":
        """Reopen a run directory written by an earlier process: the compressor spec, the
        layers, the store dtype, the target and the fit are restored from ``run.json``
        (plain JSON; with the saved Fisher / preconditioner files), so only the model (with
        the run's weights) and the loss function are needed. ``loss_fn`` must compute what
        the run's loss computed (its code fingerprint is compared; wrap it with
        ``grass.store.fingerprint.fingerprint_as`` to vouch for a changed one). The target is
        restored when it was the default (−loss) or a built-in one (``TokenLogProbs``);
        a custom target must be passed as ``target_fn``. Scores are bitwise those of the
        original process."""
        path = os.path.join(os.fspath(run_dir), cls._RUN_FILE)
        try:
            with open(path) as f:
                desc = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{run_dir!r} holds no grass run (no {cls._RUN_FILE}); "
                                    "create it with grass.Attributor(..., store=run_dir)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path!r} is not a valid run description: {e}") from None
        if not isinstance(desc, dict) or desc.get("grass_run") != 1:
            raise ValueError(f"{path!r} is not a grass run description (format {desc.get('grass_run')!r})")
        from .compress import from_config
        from .store.fingerprint import FingerprintMismatch
        given = hash_callable(loss_fn)
        if given != desc["loss"]:
            raise FingerprintMismatch(
                f"loss_fn does not compute what the run's loss computed (code fingerprint "
                f"{given} vs recorded {desc['loss']}); pass the run's loss function, or "
                "grass.store.fingerprint.fingerprint_as(loss_fn, identity) to record an override "
                "(a new run directory is safer)", ("loss",))
        tdesc = desc["target"]
        if target_fn is None:
            kind = tdesc.get("target")
            if kind == "negative_loss":
                target_fn = None
            elif kind == "token_log_probs":
                if tdesc.get("logits") is not None:
                    raise ValueError("the run's TokenLogProbs target had a custom logits function; "
                                     "pass target_fn=")
                target_fn = TokenLogProbs(int(tdesc["start"]))
            else:
                raise ValueError(f"the run's target is a custom function ({tdesc.get('repr')}); pass "
                                 "target_fn=")
        attr = cls(model, loss_fn, from_config(desc["compressor"]), layers=desc["layers_arg"],
                   store=run_dir, target_fn=target_fn, dtype=desc["dtype"], device=device,
                   seed=desc["seed"], include_flat=desc["include_flat"], chunk_rows=desc["chunk_rows"],
                   progress=progress, _reopen=desc)
        if [info.to_dict() for info in attr.layers] != desc["layers"]:
            raise ValueError(f"the model's layers differ from the run's: rediscovered "
                             f"{[i.name for i in attr.layers]}, recorded "
                             f"{[d['name'] for d in desc['layers']]}; is this the run's model?")
        if hash_callable(attr.target_fn) != tdesc.get("fingerprint"):
            raise FingerprintMismatch("target_fn does not compute what the run's target computed",
                                      ("target",))
        fit = desc.get("fit")
        if fit is not None:
            attr._fit_args = fit
            if fit["method"] != "fisher" or not os.path.exists(attr._path("preconditioner.pt")):
                attr.fit(fit["damping"], relative=fit["relative"], method=fit["method"],
                         block_diagonal=fit["block_diagonal"])
        return attr

    # ------------------------------------------------------------------ description
    @property
    def dim(self) -> int:
        """K, the total compressed dimension (sum of the per-layer k)."""
        return sum(self.block_sizes)

    @property
    def coverage(self) -> Dict[str, Any]:
        """What this run attributes: trainable parameters in total and attributed, per
        capture path (layers, parameters), and the modules left out (``discover_layers``)."""
        return self.capture.coverage

    def coverage_summary(self) -> str:
        """One line: attributed / total trainable parameters, per path, and what is left out."""
        cov = self.coverage
        total = max(cov["total"], 1)
        paths = ", ".join(f"{p} {v['layers']} layer{'s' if v['layers'] != 1 else ''} / {v['params']:,}"
                          for p, v in cov["paths"].items())
        line = (f"coverage {cov['attributed']:,}/{cov['total']:,} trainable parameters "
                f"({100 * cov['attributed'] / total:.1f}%): {paths}")
        if cov["left_out"]:
            line += "; left out " + ", ".join(f"{n} ({c:,})" for n, c in cov["left_out"][:5])
            if len(cov["left_out"]) > 5:
                line += f" and {len(cov['left_out']) - 5} more"
        return line

    def __repr__(self) -> str:
        layers = ", ".join(f"{i.name}:{k}" for i, k in zip(self.layers, self.block_sizes))
        return (f"Attributor({type(self.model).__name__}, {type(self.spec).__name__}, "
                f"layers=[{layers}], store={self.run_dir!r}, dtype={self.dtype}, "
                f"{self.coverage_summary()})")

    def to_device(self, batch):
        return to_device(batch, self.device)

    def _path(self, *parts) -> str:
        return os.path.join(self.run_dir, *parts)

    # ------------------------------------------------------------------ compressor state
    def _needs_fit(self) -> List[str]:
        return [n for n, c in self.compressors.items() if getattr(c, "needs_fit", False)]

    @property
    def needs_fit(self) -> bool:
        """True while some compressor must be learned (`fit_masks`) before caching."""
        return bool(self._needs_fit())

    def _compressor_state(self) -> Dict[str, Any]:
        return {n: c.state_dict() for n, c in self.compressors.items()}

    def _load_compressor_state(self) -> None:
        path = self._path("compressor.pt")
        if not self._needs_fit():
            return
        refit = "the compressors must be fitted again: call fit_masks(train_loader)"
        saved = load_cache(path, "learned compressor state", then=refit)
        if saved is None:
            return
        if (not isinstance(saved, dict) or not isinstance(saved.get("state"), dict)
                or set(saved["state"]) != set(self.compressors)):
            warnings.warn(f"{path} (learned compressor state) cannot be used: it does not hold "
                          f"one state per layer {sorted(self.compressors)}; {refit}",
                          CacheFileWarning, stacklevel=3)
            return
        check_fingerprint(saved.get("fingerprint", {}), self._static_fingerprint(with_state=False),
                          where=repr(path))
        for name, state in saved["state"].items():
            try:
                self.compressors[name].load_state_dict(state)
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                self.compressors = self.spec.build(self.layers)  # all or nothing
                warnings.warn(f"{path} (learned compressor state) cannot be used: layer {name}: "
                              f"{e}; {refit}", CacheFileWarning, stacklevel=3)
                return

    def fit_masks(self, train_loader, test_loader=None, **options) -> "Attributor":
        """Learn the compressors that need it (``SelectiveMask``) on a sample of per-sample
        gradients (training losses, and test targets when ``test_loader`` is given; use
        examples you will not evaluate on), then save what they learned in the run
        directory, where a later Attributor over the same run finds it. ``options`` go to
        ``grass.compress.fit_compressors`` (``max_train``, ``max_test``, ``refit``)."""
        pending = self._needs_fit()
        if not pending:
            warnings.warn("no compressor of this run needs fitting; fit_masks does nothing",
                          stacklevel=2)
            return self
        from .compress import fit_compressors
        fit_compressors(self.compressors, self.capture, train_loader, test_loader,
                        test_fn=self.target_fn, device=self.device, seed=self.seed,
                        progress=self.progress, **options)
        still = self._needs_fit()
        if still:
            raise RuntimeError(f"fitting left compressors of layers {still} unfitted")
        save_cache({"fingerprint": self._static_fingerprint(with_state=False),
                    "state": self._compressor_state()}, self._path("compressor.pt"))
        return self

    # ------------------------------------------------------------------ fingerprints
    def _model_hash(self) -> str:
        # Hashing every weight is O(#params); reuse the hash while no tensor was replaced
        # or modified in place (in-place ops, optimizer steps and load_state_dict all bump
        # a tensor's version counter).
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        key = tuple((id(t), t.data_ptr(), t._version) for t in tensors)
        if self._hash_cache is None or self._hash_cache[0] != key:
            self._hash_cache = (key, _group.hash_model(self.model))  # FSDP2: full weights
        return self._hash_cache[1]

    def _static_fingerprint(self, *, with_state: bool = True) -> Dict[str, Any]:
        fp = {
            "format_version": ROWS_VERSION,
            "model": self._model_hash(),
            "model_training": bool(self.model.training),
            "compressor": self.spec.config(),
            "layers": [info.to_dict() for info in self.layers],
            "block_sizes": list(self.block_sizes),
            "dtype": self.dtype,
        }
        if with_state:
            fp["compressor_state"] = hash_batch(self._compressor_state())
        return fp

    def _fingerprint(self, role: str, fn: Callable, num_rows: Optional[int] = None,
                     first_batch: Any = None) -> Dict[str, Any]:
        fp = dict(self._static_fingerprint(), role=role, function=hash_callable(fn))
        if num_rows is not None:
            fp["num_rows"] = int(num_rows)
            fp["data"] = hash_batch(first_batch)
        return fp

    def _open_store(self, sub: str, role: str, fn: Callable) -> GradientStore:
        path = self._path(sub)
        store = open_store(path)  # one process's store, or the parts several ranks wrote
        given = self._fingerprint(role, fn)
        stored = store.fingerprint
        check_fingerprint({k: stored.get(k, "<missing>") for k in given}, given, where=repr(path))
        self._check_layout(store)
        return store

    def _check_layout(self, store: GradientStore) -> None:
        """The store's layout must be the one its fingerprint and these compressors give
        (an edited manifest of a version 1 store, which has no manifest checksum)."""
        fp_rows = store.fingerprint.get("num_rows", store.num_rows)
        for key, mine in (("block_sizes", self.block_sizes), ("dtype", self.dtype),
                          ("num_rows", fp_rows)):
            if getattr(store, key) != mine:
                raise StoreDamaged(
                    f"store {store.path!r} is damaged: its manifest says {key}="
                    f"{getattr(store, key)!r} but its fingerprint and this run's compressors give "
                    f"{mine!r}; delete the directory and run the caching again")

    # ------------------------------------------------------------------ gradients
    def _compute(self, batch, fn: Callable) -> torch.Tensor:
        if getattr(fn, "per_token", False):  # [B, n] targets: B * n rows, one forward
            grads = self.capture.compressed_rows(self.to_device(batch), self.compressors, fn)
        else:
            grads = self.capture.compressed(self.to_device(batch), self.compressors, fn=fn)
        return torch.cat([grads[info.name].float() for info in self.layers], dim=1)

    def _write_store(self, loader, sub: str, role: str, fn: Callable,
                     num_examples: Optional[int], desc: str, check_batch: bool) -> GradientStore:
        pending = self._needs_fit()
        if pending:
            raise RuntimeError(f"the compressors of layers {pending} must be learned first: call "
                               "fit_masks(train_loader) before caching")
        _check_fixed_order(loader, "train" if role == "train" else "test")
        n = _num_examples(loader, num_examples)
        batches = iter(loader)
        try:
            first = next(batches)
        except StopIteration:
            raise ValueError("the loader yielded no batches") from None
        fp = self._fingerprint(role, fn, n, first)
        if _group.active() or is_sharded(self._path(sub)):  # one part of the store per rank
            return write_sharded(self, loader, sub, fp, n, fn, desc, check_batch)
        with StoreWriter(self._path(sub), fingerprint=fp, num_rows=n, block_sizes=self.block_sizes,
                         dtype=self.dtype, chunk_rows=self.chunk_rows,
                         layers=[i.name for i in self.layers],
                         meta={"grass_version": _version(), "torch_version": torch.__version__,
                               "device": str(self.device), "coverage": _jsonable_coverage(self.coverage)}
                         ) as writer:
            self._write_run_description()  # the store accepted this run's fingerprint
            if self.progress and writer.written_rows < n:
                from tqdm.auto import tqdm
                tqdm.write(f"grass: {desc}: {self.coverage_summary()}")
            if check_batch and writer.written_rows < n and batch_size(first) >= 2:
                # A sample's gradient must not depend on its batch (BatchNorm in train
                # mode, a loss averaged over the batch): checked once, before caching.
                self.capture.check_batch_invariance(self.to_device(first), fn)
            fill_store(writer, itertools.chain([first], batches), lambda b: self._compute(b, fn),
                       progress=self.progress, desc=desc)
        return GradientStore(self._path(sub))

    def cache(self, train_loader, *, num_examples: Optional[int] = None,
              check_batch: bool = True) -> GradientStore:
        """Compress and store the per-sample training-loss gradients, in loader order.

        Resumes an interrupted run (committed rows are kept, the rest computed); a store
        written by a different run (other weights, compressor, layers, dtype, loss, data
        size or first batch) raises `FingerprintMismatch`. The loader must not shuffle.
        Before the first row is computed, ``check_batch`` verifies on the first batch that
        per-sample gradients do not depend on the batch (raises ``BatchDependenceError``).
        """
        return self._write_store(train_loader, "train", "train", self.loss_fn, num_examples,
                                 "caching train gradients", check_batch)

    def cache_test(self, test_loader, name: str = "test", *,
                   num_examples: Optional[int] = None, check_batch: bool = True) -> GradientStore:
        """Compress and store target gradients ∇f of test examples under ``test-<name>``;
        pass the returned store to `scores` / `top_k` to reuse them."""
        if not name or os.sep in name or name.startswith("."):
            raise ValueError(f"name must be a plain directory name, got {name!r}")
        return self._write_store(test_loader, f"test-{name}", f"test:{name}", self.target_fn,
                                 num_examples, f"caching test gradients ({name})", check_batch)

    def train_store(self) -> GradientStore:
        """The complete training store of this run (fingerprint-checked)."""
        try:
            store = self._open_store("train", "train", self.loss_fn)
        except FileNotFoundError:
            raise RuntimeError(f"no training gradients in {self.run_dir!r} yet: call "
                               "cache(train_loader) first") from None
        store.require_complete()
        return store

    def test_gradients(self, test, target: Optional[Callable] = None) -> torch.Tensor:
        """Compressed target gradients ∇f [M, K] (float32) of a loader of test batches (on
        the Attributor's device, where scoring uses them), of a cached test store (see
        `cache_test`), or given as a tensor. target: what to explain instead of the run's
        target_fn (e.g. ``TokenLogProbs``: one row per token)."""
        if isinstance(test, torch.Tensor):
            if test.dim() != 2 or test.shape[1] != self.dim:
                raise ValueError(f"test gradients must be [M, K={self.dim}], got {tuple(test.shape)}")
            return test
        if isinstance(test, GradientStore):
            role = test.fingerprint.get("role", "")
            if not str(role).startswith("test:"):
                raise ValueError(f"the store at {test.path!r} holds {role!r} gradients, not test "
                                 "gradients (use cache_test)")
            name = role.split(":", 1)[1]
            given = self._fingerprint(role, self.target_fn)
            check_fingerprint({k: test.fingerprint.get(k, "<missing>") for k in given}, given,
                              where=repr(test.path))
            self._check_layout(test)
            test.require_complete()
            return test.gradients().float()
        rows = []
        from tqdm.auto import tqdm
        with tqdm(desc="test gradients", unit="ex", dynamic_ncols=True,
                  disable=not self.progress) as bar:
            for batch in test:
                g = self._compute(batch, target or self.target_fn)
                rows.append(g)
                bar.update(g.shape[0])
        if not rows:
            raise ValueError("the test loader yielded no batches")
        return torch.cat(rows)

    # ------------------------------------------------------------------ fitting
    def fit(self, damping=None, *, relative: bool = True, method: str = "fisher",
            block_diagonal: bool = True) -> "Attributor":
        """Precondition with the training gradients.

        method="fisher" (default): per-layer empirical Fisher F_l = G_lᵀG_l/N, damped,
        Cholesky (``block_diagonal=False``: one K×K Fisher over all layers).
        method="datainf": DataInf's rank-one approximation of each damped inverse.
        method="identity": no curvature (gradient dot products, one-checkpoint TracIn).

        damping: None (λ_l = 0.1·trace(F_l)/k_l), a number or one per layer; relative to
        the mean eigenvalue unless ``relative=False``. The Fisher is accumulated once and
        saved with the run; refitting with another damping reuses it.
        """
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        if damping is not None and not isinstance(damping, (int, float)):
            damping = [float(d) for d in damping]
        self._fit_args = {"damping": damping, "relative": bool(relative), "method": method,
                          "block_diagonal": bool(block_diagonal)}
        store = self.train_store()
        blocks = list(store.block_sizes) if block_diagonal else [store.dim]
        if method != "fisher":
            # The saved factors describe a Fisher fit; a later process must not take them
            # for this one (the Fisher itself stays in fisher.pt, so refitting is cheap).
            for name in ("preconditioner.pt", "fit.json"):
                try:
                    os.remove(self._path(name))
                except FileNotFoundError:
                    pass
        if method == "identity":
            self.preconditioner = IdentityPreconditioner(store.block_sizes)
        elif method == "datainf":
            from .score.baselines import DataInf
            self.preconditioner = DataInf(store, blocks, damping, relative=relative,
                                          device=self.device, progress=self.progress)
        else:
            self.fisher = self._load_or_accumulate_fisher(store, blocks)
            self.preconditioner = Preconditioner.fit(self.fisher, damping, relative=relative)
            self._save_preconditioner(store, blocks)
        self._fit_info = {"method": method, "store": store.digest, "block_sizes": blocks}
        self._write_run_description()
        return self

    def _load_or_accumulate_fisher(self, store: GradientStore, blocks: List[int]) -> BlockFisher:
        if (self.fisher is not None and self.fisher.block_sizes == blocks
                and getattr(self.fisher, "_store", None) == store.digest):
            return self.fisher
        path = self._path("fisher.pt")
        again = "accumulating it again from the training store"
        saved = load_cache(path, "the accumulated Fisher", then=again)
        if isinstance(saved, dict) and saved.get("store") == store.digest and saved.get("block_sizes") == blocks:
            try:
                fisher = BlockFisher.from_state_dict(saved["state"], device=self.device)
                if fisher.num_rows != store.num_rows or not bool(torch.isfinite(fisher.sums).all()):
                    raise ValueError(f"it sums {fisher.num_rows} rows (the store has "
                                     f"{store.num_rows}) or holds NaN/inf")
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                warnings.warn(f"{path} (the accumulated Fisher) cannot be used: {e}; {again}",
                              CacheFileWarning, stacklevel=3)
            else:
                fisher._store = store.digest
                return fisher
        fisher = accumulate_fisher(store, blocks, device=self.device, progress=self.progress)
        save_cache({"store": store.digest, "block_sizes": blocks, "state": fisher.state_dict()}, path)
        fisher._store = store.digest
        return fisher

    def _require_fit(self) -> GradientStore:
        store = self.train_store()
        if self.preconditioner is not None and self._fit_info["store"] == store.digest:
            return store
        # Fitted by an earlier process on the same store: its factors, or (when they cannot
        # be used) a refit with the damping fit.json records, which gives the same factors.
        path = self._path("preconditioner.pt")
        record = load_json(self._path("fit.json"), "how the preconditioner was fitted",
                           then="call fit() again")
        if not (isinstance(record, dict) and record.get("store") == store.digest
                and record.get("method") == "fisher"):
            record = None
        refit = ("refitting it with the damping fit.json records" if record is not None else
                 "call fit() again")
        saved = load_cache(path, "the preconditioner (Cholesky factors)", then=refit)
        if isinstance(saved, dict) and saved.get("store") == store.digest:
            try:
                pre = Preconditioner.from_state_dict(saved["state"], device=self.device)
                if pre.block_sizes != list(saved["block_sizes"]) or sum(pre.block_sizes) != store.dim:
                    raise ValueError(f"its blocks {pre.block_sizes} do not split the store's "
                                     f"K={store.dim}")
                if record is not None and pre.damping.tolist() != record["damping"]:
                    raise ValueError(f"its damping {pre.damping.tolist()} is not the damping of the "
                                     f"last fit, {record['damping']} (that fit did not finish)")
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                warnings.warn(f"{path} (the preconditioner) cannot be used: {e}; {refit}",
                              CacheFileWarning, stacklevel=3)
            else:
                self.preconditioner = pre
                self._fit_info = {"method": "fisher", "store": store.digest,
                                  "block_sizes": list(saved["block_sizes"])}
                return store
        if record is not None:
            if not os.path.exists(path):
                warnings.warn(f"{path} is missing; {refit}", CacheFileWarning, stacklevel=3)
            blocks = [int(k) for k in record["block_sizes"]]
            self.fisher = self._load_or_accumulate_fisher(store, blocks)
            self.preconditioner = Preconditioner.fit(self.fisher, record["damping"], relative=False)
            self._save_preconditioner(store, blocks)
            self._fit_info = {"method": "fisher", "store": store.digest, "block_sizes": blocks}
            return store
        raise RuntimeError("call fit() before scoring (it reuses the saved Fisher if there is one)")

    def _save_preconditioner(self, store: GradientStore, blocks: List[int]) -> None:
        # fit.json first: with it, a preconditioner.pt that is lost or damaged later is
        # refitted to the same factors (the absolute damping, from the same Fisher).
        save_json({"method": "fisher", "store": store.digest, "block_sizes": blocks,
                   "damping": self.preconditioner.damping.tolist()}, self._path("fit.json"))
        save_cache({"store": store.digest, "block_sizes": blocks,
                    "state": self.preconditioner.state_dict()}, self._path("preconditioner.pt"))

    def choose_damping(self, criterion: Callable[["Attributor"], float],
                       candidates: Iterable[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0), *,
                       relative: bool = True, method: str = "fisher"):
        """Fit with every candidate damping, keep the one maximising ``criterion(self)``
        (e.g. the LDS on a held-out split; never the split you report). Returns a
        `DampingSearch`; the Attributor is left fitted with the best damping."""
        def evaluate(d):
            self.fit(d, relative=relative, method=method)
            return criterion(self)
        result = choose_damping(evaluate, list(candidates), relative=relative)
        self.fit(result.best, relative=relative, method=method)
        return result

    # ------------------------------------------------------------------ scores
    def _terms(self, test, target: Optional[Callable] = None) -> List[ScoreTerm]:
        store = self._require_fit()
        grads = self.test_gradients(test, target)
        return [ScoreTerm(influence_queries(grads, self.preconditioner), store)]

    def train_norms(self) -> torch.Tensor:
        """‖g_i‖ of every stored (compressed) training gradient, float64 [N]."""
        store = self._require_fit()
        norms = torch.empty(store.num_rows, dtype=torch.float64)
        for start, G in store.chunks(dtype=torch.float32):
            norms[start:start + G.shape[0]] = G.double().norm(dim=1)
        return norms

    def scores(self, test, *, out: Optional[torch.Tensor] = None, chunk_rows: Optional[int] = None,
               target: Optional[Callable] = None, normalize: Optional[str] = None) -> torch.Tensor:
        """τ(test, train) [M, N] = −∇fᵀ(F + λI)⁻¹∇ℓ_i (positive = helpful), float32,
        streamed over chunks of the store; ``out`` may be a preallocated (e.g. file-backed)
        [M, N] float32 tensor.

        target: what to explain instead of the run's target_fn, e.g.
        ``grass.score.TokenLogProbs(start)`` (one row per continuation token, M = B * n).
        normalize="train_norm": divide column i by ‖g_i‖, the norm of training example i's
        (compressed) gradient, so that an example with a huge gradient (one sequence that
        tops every list) no longer dominates; a score then measures alignment more than
        magnitude. None (default): raw scores."""
        if normalize not in (None, "train_norm"):
            raise ValueError(f"normalize must be None or 'train_norm', got {normalize!r}")
        scores = full_scores(self._terms(test, target), out=out, chunk_rows=chunk_rows,
                             device=self.device, progress=self.progress)
        if normalize == "train_norm":
            norms = self.train_norms().clamp_min(torch.finfo(torch.float32).tiny).float()
            scores.div_(norms.to(scores.device)[None, :])
        return scores

    def top_k(self, test, k: int = 10, *, largest: bool = True, chunk_rows: Optional[int] = None,
              target: Optional[Callable] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(values [M, k], indices [M, k]) of the most helpful training examples per test
        example, best first (``largest=False``: the most harmful); never holds more than one
        chunk of scores. Ties go to the smaller training index."""
        return top_k_scores(self._terms(test, target), k, largest=largest, chunk_rows=chunk_rows,
                            device=self.device, progress=self.progress)

    def self_influence(self, *, chunk_rows: Optional[int] = None) -> torch.Tensor:
        """∇ℓ_iᵀ(F + λI)⁻¹∇ℓ_i for every training example, float64 [N]."""
        store = self._require_fit()
        return self_influence(self.preconditioner, store, chunk_rows=chunk_rows,
                              device=self.device, progress=self.progress)


def _jsonable_coverage(cov: Dict[str, Any]) -> Dict[str, Any]:
    return {"total": cov["total"], "attributed": cov["attributed"], "paths": cov["paths"],
            "left_out": [list(x) for x in cov["left_out"]]}


def _version() -> str:
    try:
        from . import __version__
        return str(__version__)
    except Exception:  # pragma: no cover
        return "unknown"
