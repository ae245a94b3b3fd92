"""The ``grass`` command.

    grass run CONFIG [--device DEVICE] [--quiet]   the Attributor workflow from a TOML/JSON file
    grass run --example-config                      a complete configuration, every key explained
    grass demo [...]                                the end-to-end demo (grass.eval.demo)
    grass info                                      what was built, and whether CUDA is usable

The configuration's keys, their meaning, types and defaults are one table,
``grass.run_config.SCHEMA``; ``grass run --help`` prints it and ``grass run
--example-config`` writes a file from it. The whole file is checked before anything is
computed or written, and every problem is reported at once.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Dict, List, Optional, Sequence

from .run_config import ConfigError, ConfigProblems, example_config, help_text, import_object, load_config
from .run_config import build as _build
from .run_config import validate

__all__ = ["main", "run", "load_config", "import_object", "ConfigError"]


def run(config_path: str, *, device: Optional[str] = None, progress: bool = True) -> Dict[str, str]:
    """The `grass run` workflow; returns the files written.

    The configuration is validated whole first (``grass.run_config.validate``), then the
    model and loaders are built and checked (``grass.run_config.build``): a mistake
    raises ``ConfigError`` before any store or output file is written.
    """
    import numpy as np
    import torch

    from .attributor import Attributor

    cfg = load_config(config_path)
    plan = validate(cfg, config_path, device=device)
    model, train, test, loss_fn, target_fn = _build(plan)
    a, o = plan.options["attribution"], plan.options["output"]
    try:
        attr = Attributor(model, loss_fn, compressor=plan.spec, layers=a["layers"], store=plan.store,
                          target_fn=target_fn, dtype=a["dtype"], device=plan.device, seed=a["seed"],
                          include_flat=a["include_flat"], chunk_rows=a["chunk_rows"],
                          progress=progress)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"setting up the Attributor: {e}") from None
    if attr.needs_fit:  # learned masks: fitted on training examples only, never on the scored ones
        attr.fit_masks(train)
    attr.cache(train)
    attr.fit(a["damping"], relative=a["relative"], method=a["method"])

    out_dir = plan.out_dir
    os.makedirs(out_dir, exist_ok=True)
    written: Dict[str, str] = {}
    want_scores, k = o["scores"], o["top_k"]
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
    if o["self_influence"]:
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
    p_run = sub.add_parser("run", help="cache, fit and score as a config file says",
                           description="Cache compressed training gradients, fit the "
                                       "preconditioner and write scores, as a TOML or JSON file "
                                       "says. The whole file is checked first; every problem is "
                                       "reported at once, before anything is computed or written.",
                           epilog=help_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p_run.add_argument("config", nargs="?", help="a TOML or JSON run configuration")
    p_run.add_argument("--device", help="override [attribution] device (e.g. cuda)")
    p_run.add_argument("--quiet", action="store_true", help="no progress bars")
    p_run.add_argument("--example-config", action="store_true",
                       help="print a complete configuration (every key, its meaning and default) "
                            "and exit")
    sub.add_parser("demo", help="the end-to-end demo (arguments go to it)", add_help=False)
    sub.add_parser("info", help="build information and CUDA availability")

    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "demo":
        return _demo(args_list[1:])
    args = parser.parse_args(args_list)
    if args.command == "info":
        return _info()
    if args.command == "run":
        if args.example_config:
            print(example_config())
            return 0
        if args.config is None:
            p_run.error("the following arguments are required: config (or --example-config)")
        try:
            run(args.config, device=args.device, progress=not args.quiet)
        except ConfigProblems as e:
            for line in e.problems:
                print(f"grass run: {line}", file=sys.stderr)
            n = len(e.problems)
            print(f"grass run: {n} problem{'s' if n != 1 else ''} in {e.path}; nothing was computed "
                  "or written (grass run --help lists every key)", file=sys.stderr)
            return 2
        except ConfigError as e:
            print(f"grass run: {e}", file=sys.stderr)
            return 2
        return 0
    parser.print_help()
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
