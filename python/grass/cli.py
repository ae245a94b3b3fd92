"""The ``grass`` command.

    grass run CONFIG [--device DEVICE] [--quiet]   the Attributor workflow from a TOML/JSON file
    grass demo [...]                                the end-to-end demo (grass.eval.demo)
    grass info                                      what was built, and whether CUDA is usable

A run config (TOML shown; JSON with the same structure works too). Import paths are
"module:attribute"; the config file's directory is put first on the import path, so
modules next to the config can be named directly. Relative paths are relative to the
config file.

    [model]
    factory = "mymodels:make_mlp"        # callable(**kwargs) -> nn.Module
    kwargs = { hidden = 128 }
    checkpoint = "mlp.pt"                # optional: a state dict saved with torch.save
    [data]
    train = "mydata:train_loader"        # callable(**train_kwargs) -> batches in a fixed order
    test = "mydata:test_loader"          # callable(**test_kwargs) -> batches
    [loss]
    fn = "mylosses:cross_entropy"        # fn(model, batch) -> Tensor[B]
    target = "mylosses:margin"           # optional; default -fn
    [compressor]
    method = "FactGraSS"                 # a spec name in grass.compress; other keys are its arguments
    k = 4096
    seed = 0
    [attribution]
    store = "runs/mnist"                 # the run directory (resumable)
    layers = ["fc1", "fc2"]              # optional
    dtype = "float32"
    damping = 0.1                        # optional; relative to the mean eigenvalue unless
    relative = true                      #   relative = false
    [output]
    dir = "runs/mnist/out"               # default: <store>/out
    scores = true                        # scores.npy, [M, N] float32
    top_k = 10                           # top_k.npz: values, indices [M, k] (0 = skip)
    self_influence = true                # self_influence.npy, [N] float64
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["main", "load_config", "import_object"]


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message names the key."""


def import_object(path: str, key: str) -> Any:
    """The object at "module:attribute" (attribute may be dotted)."""
    if not isinstance(path, str) or ":" not in path:
        raise ConfigError(f"{key} must be an import path 'module:attribute', got {path!r}")
    module_name, attr = path.split(":", 1)
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{key}: cannot import module {module_name!r} ({e})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{key}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


def load_config(path: str) -> Dict[str, Any]:
    """Read a TOML (``.toml``) or JSON config."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".json"):
        try:
            cfg = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON ({e})") from None
    else:
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            try:
                import tomli as tomllib
            except ImportError:
                raise ConfigError("reading TOML needs Python >= 3.11 (or the tomli package); "
                                  "use a JSON config instead") from None
        try:
            cfg = tomllib.loads(raw.decode())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the top level must be a table")
    return cfg


def _section(cfg: Dict[str, Any], name: str, required: bool = True) -> Dict[str, Any]:
    sec = cfg.get(name)
    if sec is None:
        if required:
            raise ConfigError(f"the config has no [{name}] section")
        return {}
    if not isinstance(sec, dict):
        raise ConfigError(f"[{name}] must be a table, got {type(sec).__name__}")
    return sec


def _require(sec: Dict[str, Any], section: str, key: str) -> Any:
    if key not in sec:
        raise ConfigError(f"[{section}] needs {key!r}")
    return sec[key]


def _check_keys(sec: Dict[str, Any], section: str, allowed: Sequence[str]) -> None:
    unknown = sorted(set(sec) - set(allowed))
    if unknown:
        raise ConfigError(f"[{section}] has unknown keys {unknown}; allowed: {sorted(allowed)}")


def _build_compressor(sec: Dict[str, Any]):
    from . import compress
    options = dict(sec)
    method = _require(options, "compressor", "method")
    options.pop("method")
    spec_cls = getattr(compress, str(method), None)
    if spec_cls is None or not isinstance(spec_cls, type):
        names = sorted(n for n in dir(compress) if not n.startswith("_") and isinstance(getattr(compress, n), type))
        raise ConfigError(f"[compressor] method {method!r} is not a compressor in grass.compress; "
                          f"available: {names}")
    try:
        return spec_cls(**options)
    except TypeError as e:
        raise ConfigError(f"[compressor] {method}: {e}") from None


def run(config_path: str, *, device: Optional[str] = None, progress: bool = True) -> Dict[str, str]:
    """The `grass run` workflow; returns the files written."""
    import numpy as np
    import torch

    from .attributor import Attributor

    cfg = load_config(config_path)
    base = os.path.dirname(os.path.abspath(config_path))
    if base not in sys.path:
        sys.path.insert(0, base)  # user modules next to the config are importable

    def rel(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(base, p)

    _check_keys(cfg, "top level", ["model", "data", "loss", "compressor", "attribution", "output"])
    m = _section(cfg, "model")
    _check_keys(m, "model", ["factory", "kwargs", "checkpoint", "eval"])
    model = import_object(_require(m, "model", "factory"), "[model] factory")(**m.get("kwargs", {}))
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"[model] factory returned {type(model).__name__}, not a torch.nn.Module")
    if "checkpoint" in m:
        state = torch.load(rel(m["checkpoint"]), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    if m.get("eval", True):
        model.eval()

    d = _section(cfg, "data")
    _check_keys(d, "data", ["train", "test", "train_kwargs", "test_kwargs"])
    train = import_object(_require(d, "data", "train"), "[data] train")(**d.get("train_kwargs", {}))
    test = import_object(d["test"], "[data] test")(**d.get("test_kwargs", {})) if "test" in d else None

    lo = _section(cfg, "loss")
    _check_keys(lo, "loss", ["fn", "target"])
    loss_fn = import_object(_require(lo, "loss", "fn"), "[loss] fn")
    target_fn = import_object(lo["target"], "[loss] target") if "target" in lo else None

    spec = _build_compressor(_section(cfg, "compressor"))

    a = _section(cfg, "attribution")
    _check_keys(a, "attribution", ["store", "layers", "include_flat", "dtype", "device", "seed",
                                   "damping", "relative", "chunk_rows", "method"])
    store = rel(_require(a, "attribution", "store"))
    attr = Attributor(model, loss_fn, compressor=spec, layers=a.get("layers"), store=store,
                      target_fn=target_fn, dtype=a.get("dtype", "float32"),
                      device=device or a.get("device"), seed=a.get("seed", 0),
                      include_flat=a.get("include_flat", False), chunk_rows=a.get("chunk_rows"),
                      progress=progress)
    if attr.needs_fit:  # learned masks: fitted on training examples only, never on the scored ones
        attr.fit_masks(train)
    attr.cache(train)
    attr.fit(a.get("damping"), relative=a.get("relative", True), method=a.get("method", "fisher"))

    o = _section(cfg, "output", required=False)
    _check_keys(o, "output", ["dir", "scores", "top_k", "self_influence"])
    out_dir = rel(o.get("dir", os.path.join(store, "out")))
    os.makedirs(out_dir, exist_ok=True)
    written: Dict[str, str] = {}

    want_scores, k = bool(o.get("scores", True)), int(o.get("top_k", 10))
    if (want_scores or k) and test is None:
        raise ConfigError("[output] asks for scores or top_k but [data] has no test loader")
    if test is not None and (want_scores or k):
        grads = attr.test_gradients(test)  # computed once, used for both outputs
        if want_scores:
            path = os.path.join(out_dir, "scores.npy")
            tmp = path + ".tmp.npy"
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                           shape=(grads.shape[0], attr.train_store().num_rows))
            attr.scores(grads, out=torch.from_numpy(mm))
            mm.flush()
            del mm
            os.replace(tmp, path)
            written["scores"] = path
        if k:
            values, indices = attr.top_k(grads, k)
            path = os.path.join(out_dir, "top_k.npz")
            tmp = path + ".tmp.npz"
            np.savez(tmp, values=values.numpy(), indices=indices.numpy())
            os.replace(tmp, path)
            written["top_k"] = path
            for row in range(min(3, indices.shape[0])):
                pairs = ", ".join(f"{int(i)} ({float(v):+.3g})" for v, i in zip(values[row], indices[row]))
                print(f"test {row}: most helpful training examples {pairs}")
    if o.get("self_influence", True):
        path = os.path.join(out_dir, "self_influence.npy")
        tmp = path + ".tmp.npy"
        np.save(tmp, attr.self_influence().numpy())
        os.replace(tmp, path)
        written["self_influence"] = path
    for name, path in written.items():
        print(f"wrote {name}: {path}")
    return written


def _cuda_version(v: int) -> str:
    """1000 * major + 10 * minor (the CUDA API's encoding) as "major.minor"; 0 as "none"."""
    return f"{v // 1000}.{v % 1000 // 10}" if v else "none"


def _info() -> int:
    """Build information, the CPU level the kernels run at, and whether CUDA is usable and
    why not, one line each; then every field of grass.build_info()."""
    import os

    import torch

    import grass
    info = grass.build_info()
    forced = os.environ.get("GRASS_CPU_CAPABILITY")
    print(f"grass {info['version']} ({info['compiler']}), OpenMP threads: {info['openmp_max_threads']}")
    if info["cpu_level"]:
        how = f"forced by GRASS_CPU_CAPABILITY={forced}" if forced else "chosen for this CPU"
        print(f"CPU kernels: {info['cpu_level']} ({how}; compiled: {info['cpu_levels']})")
    else:
        print(f"CPU kernels: cannot run: {info['cpu_level_error']} (compiled: {info['cpu_levels']})")
    print(f"torch: {torch.__version__} (CUDA {torch.version.cuda or 'none: a CPU-only build'})")
    if info["cuda_compiled"]:
        print(f"CUDA kernels: compiled ({info['cuda_build_note']})")
        print(f"CUDA runtime: {_cuda_version(info['cuda_runtime_version'])} (linked statically), "
              f"driver: {_cuda_version(info['cuda_driver_version'])}")
    else:
        print(f"CUDA kernels: not compiled ({info['cuda_build_note']})")
    ok, reason = info["cuda_available"], info["cuda_reason"]
    print("CUDA usable: yes" if ok else f"CUDA usable: no: {reason}")
    print()
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0


def _demo(argv: List[str]) -> int:
    try:
        demo = importlib.import_module("grass.eval.demo")
    except ModuleNotFoundError as e:
        if e.name in ("grass.eval", "grass.eval.demo"):
            print("grass demo is not available in this installation: the module grass.eval.demo "
                  "is missing", file=sys.stderr)
            return 2
        print(f"grass demo needs a package that is not installed: {e.name} "
              "(pip install 'grass[eval]')", file=sys.stderr)
        return 2
    result = demo.main(argv)
    return int(result or 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="grass", description="Scalable data attribution.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_run = sub.add_parser("run", help="cache, fit and score as a config file says")
    p_run.add_argument("config", help="a TOML or JSON run configuration")
    p_run.add_argument("--device", help="override [attribution] device (e.g. cuda)")
    p_run.add_argument("--quiet", action="store_true", help="no progress bars")
    sub.add_parser("demo", help="the end-to-end demo (arguments go to it)", add_help=False)
    sub.add_parser("info", help="build information and CUDA availability")

    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "demo":
        return _demo(args_list[1:])
    args = parser.parse_args(args_list)
    if args.command == "info":
        return _info()
    if args.command == "run":
        try:
            run(args.config, device=args.device, progress=not args.quiet)
        except ConfigError as e:
            print(f"grass run: {e}", file=sys.stderr)
            return 2
        return 0
    parser.print_help()
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
