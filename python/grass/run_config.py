"""The `grass run` configuration: one schema table, and everything derived from it.

``SCHEMA`` lists every section and key with its type, range, default, meaning and an
example value. The same table drives

* ``validate``: the whole file is checked before any compute (types, ranges, paths
  writable, import paths importable, keyword arguments accepted, scores asked for without
  a test loader, unknown sections and keys with the nearest known name), and every problem
  is reported at once, one line each, ``[section] key: what is wrong``;
* ``help_text``: the key table of ``grass run --help``;
* ``example_config``: ``grass run --example-config``, a complete TOML file that validates.

Nothing here writes to disk. See docs/scoring.md ("The Attributor and `grass run`").
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import json
import math
import os
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["ConfigError", "ConfigProblems", "SCHEMA", "Key", "Section", "RunConfig", "load_config",
           "validate", "build", "import_object", "help_text", "example_config"]


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message names the key."""


class ConfigProblems(ConfigError):
    """Every problem found in one configuration: ``problems`` is a list of lines
    ``[section] key: message``."""

    def __init__(self, problems: Sequence[str], path: str = ""):
        self.problems = list(problems)
        self.path = path
        super().__init__("\n".join(self.problems))


class _Bad(Exception):
    """A value that fails its key's check (the message says what was expected)."""


_REQUIRED = object()  # a key without a default


# ----------------------------------------------------------------------------- value checks
# Each check takes the raw value and returns the value to use, or raises _Bad. TOML and
# JSON give bool for true/false, and bool is an int in Python: numbers exclude bools.

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _got(v) -> str:
    return f"{type(v).__name__} {v!r}"


class Check:
    """One key's type and range: ``describe`` for --help, calling it checks a value."""

    def __init__(self, describe: str, fn: Callable[[Any], Any]):
        self._describe = describe
        self.fn = fn

    @property
    def describe(self) -> str:
        return self._describe

    def __call__(self, value):
        return self.fn(value)


def int_check(minimum: int) -> Check:
    def fn(v):
        if not _is_int(v):
            raise _Bad(f"must be an integer >= {minimum}, got {_got(v)}")
        if v < minimum:
            raise _Bad(f"must be >= {minimum}, got {v}")
        return v
    return Check(f"integer >= {minimum}", fn)


def k_check() -> Check:
    def one(v, where=""):
        if not _is_int(v) or v < 1:
            raise _Bad(f"{where}must be an integer >= 1 (or a table {{ layer = k }}), got {_got(v)}")
        return v

    def fn(v):
        if isinstance(v, dict) and v:
            return {name: one(x, f"entry {name!r} ") for name, x in v.items()}
        return one(v)
    return Check("integer >= 1, or a table { layer = k }", fn)


def _positive(v):
    if not _is_number(v):
        raise _Bad(f"must be a finite number > 0, got {_got(v)}")
    if v <= 0:
        raise _Bad(f"must be > 0, got {v}")
    return float(v)


def damping_check() -> Check:
    def fn(v):
        if isinstance(v, list):
            if not v:
                raise _Bad("must be a number > 0 or a non-empty list of them (one per layer), got []")
            out = []
            for i, x in enumerate(v):
                try:
                    out.append(_positive(x))
                except _Bad as e:
                    raise _Bad(f"entry {i} {e}") from None
            return out
        if not _is_number(v):
            raise _Bad(f"must be a number > 0 (or a list of them, one per layer), got {_got(v)}")
        return _positive(v)
    return Check("number > 0, or a list of them (one per layer)", fn)


def bool_check() -> Check:
    def fn(v):
        if not isinstance(v, bool):
            raise _Bad(f"must be true or false, got {_got(v)}")
        return v
    return Check("true / false", fn)


def str_check(what: str = "string") -> Check:
    def fn(v):
        if not isinstance(v, str) or not v:
            raise _Bad(f"must be a non-empty {what}, got {_got(v)}")
        return v
    return Check(what, fn)


def choice_check(choices: Sequence[str]) -> Check:
    def fn(v):
        if v not in choices or not isinstance(v, str):
            raise _Bad(f"must be one of {', '.join(map(repr, choices))}, got {_got(v)}")
        return v
    return Check(" | ".join(choices), fn)


def table_check() -> Check:
    def fn(v):
        if not isinstance(v, dict):
            raise _Bad(f"must be a table of keyword arguments, e.g. {{ hidden = 64 }}, got {_got(v)}")
        return v
    return Check("table", fn)


def str_list_check() -> Check:
    def fn(v):
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
            raise _Bad(f"must be a non-empty list of module names, e.g. [\"fc1\", \"fc2\"], got {_got(v)}")
        return v
    return Check("list of strings", fn)


def import_check() -> Check:
    def fn(v):
        if not isinstance(v, str) or ":" not in v or not all(v.split(":", 1)):
            raise _Bad(f"must be an import path 'module:attribute', got {_got(v)}")
        return v
    return Check('"module:attribute"', fn)


def device_check() -> Check:
    def fn(v):
        from .device import resolve_device
        if not isinstance(v, str):
            raise _Bad(f"must be a device string such as \"cpu\" or \"cuda\", got {_got(v)}")
        try:
            return str(resolve_device(v, "device"))
        except ValueError as e:  # "device is 'cuda', but ..." -> "is 'cuda', but ..."
            raise _Bad(str(e)[len("device "):]) from None
    return Check('"cpu" | "cuda" | "cuda:N"', fn)


class _CompressorCheck(Check):
    """A spec name of grass.compress (read from the package when first needed)."""

    def __init__(self):
        super().__init__("", self._check)

    @property
    def describe(self) -> str:
        return "one of " + ", ".join(_compressor_names())

    @staticmethod
    def _check(v):
        names = _compressor_names()
        if not isinstance(v, str) or v not in names:
            near = _nearest(v, names) if isinstance(v, str) else ""
            hint = f"did you mean {near!r}? " if near else ""
            raise _Bad(f"{v!r} is not a compressor in grass.compress; {hint}available: {names}")
        return v


# ----------------------------------------------------------------------------- the schema

@dataclass(frozen=True)
class Key:
    name: str
    check: Check
    help: str
    default: Any = _REQUIRED   # _REQUIRED: must be given; None: optional, no value
    example: Any = None        # what --example-config writes (default: the default)
    default_text: str = ""     # how --help shows a default that is not a plain value
    in_example: bool = False   # an optional key the example sets (else commented out when
                               # it has no default value)

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


@dataclass(frozen=True)
class Section:
    name: str
    help: str
    keys: Tuple[Key, ...]
    required: bool = True
    extra: str = ""            # keys beyond ``keys`` that the section accepts, described

    def key(self, name: str) -> Key:
        return next(k for k in self.keys if k.name == name)


def _compressor_names() -> List[str]:
    from . import compress
    from .compress.base import CompressorSpec
    return sorted(n for n in compress.__all__
                  if isinstance(getattr(compress, n), type) and issubclass(getattr(compress, n), CompressorSpec)
                  and getattr(compress, n) is not CompressorSpec)


SCHEMA: Tuple[Section, ...] = (
    Section("model", "the model whose predictions are attributed", (
        Key("factory", import_check(), "callable(**kwargs) -> torch.nn.Module",
            example="mymodels:make_mlp"),
        Key("kwargs", table_check(), "keyword arguments of factory", default={},
            example={"hidden": 64}),
        Key("checkpoint", str_check("path"),
            "a state dict saved with torch.save (read with weights_only=True); relative to the "
            "config file", default=None, example="mlp.pt"),
        Key("eval", bool_check(), "call model.eval() first (dropout and batch-norm updates off)",
            default=True),
    )),
    Section("data", "the training and test examples (loaders in a fixed order)", (
        Key("train", import_check(),
            "callable(**train_kwargs) -> training batches in a fixed order (row i of the store "
            "is the i-th example)", example="mydata:train_loader"),
        Key("train_kwargs", table_check(), "keyword arguments of train", default={}),
        Key("test", import_check(),
            "callable(**test_kwargs) -> the test batches to explain; needed for [output] scores "
            "and top_k", default=None, example="mydata:test_loader", in_example=True),
        Key("test_kwargs", table_check(), "keyword arguments of test", default={}),
    )),
    Section("loss", "what is differentiated", (
        Key("fn", import_check(), "fn(model, batch) -> Tensor[B], the per-sample training loss",
            example="mylosses:cross_entropy"),
        Key("target", import_check(),
            "target(model, batch) -> Tensor[B], the test quantity attributed", default=None,
            default_text="-fn (the log-likelihood of the label)", example="mylosses:margin"),
    )),
    Section("compressor", "how per-sample gradients are compressed", (
        Key("method", _CompressorCheck(), "the compressor (docs/compress.md)", example="FactGraSS"),
        Key("k", k_check(),
            "compressed dimension per layer (an int, or a table { layer = k })", default=None,
            default_text="the method's default (Identity needs none)", example=4096,
            in_example=True),
        Key("seed", int_check(0), "selects the random projection", default=0),
    ), extra="any other keyword argument of the method, e.g. k_mask for GraSS, s for SJLT "
             "(help(grass.compress.<method>))"),
    Section("attribution", "the run directory and the preconditioner", (
        Key("store", str_check("path"),
            "the run directory: gradient store, Fisher, factors (resumable); relative to the "
            "config file", example="runs/mnist"),
        Key("layers", str_list_check(), "module names to attribute", default=None,
            default_text="every linear layer", example=["0", "2"]),
        Key("include_flat", bool_check(), "with layers unset, also attribute non-linear modules",
            default=False),
        Key("dtype", choice_check(("float32", "float16", "bfloat16")), "how gradients are stored",
            default="float32"),
        Key("device", device_check(), "where gradients are computed (--device overrides)",
            default=None, default_text="the model's device", example="cpu"),
        Key("seed", int_check(0), "seed of the Attributor's own sampling (mask fitting)", default=0),
        Key("damping", damping_check(), "lambda, relative to the mean eigenvalue of each "
            "layer's Fisher unless relative = false", default=None, default_text="0.1 (relative)",
            example=0.1),
        Key("relative", bool_check(), "damping is relative to the mean eigenvalue", default=True),
        Key("chunk_rows", int_check(1), "rows per store chunk (commit and scoring unit)",
            default=None, default_text="about 64 MiB of rows", example=4096),
        Key("method", choice_check(("fisher", "datainf", "identity")),
            "preconditioner: block-diagonal Fisher, DataInf, or none (TracIn)", default="fisher"),
    )),
    Section("output", "what is written", (
        Key("dir", str_check("path"), "where the outputs go; relative to the config file",
            default=None, default_text="<store>/out", example="runs/mnist/out"),
        Key("scores", bool_check(), "write scores.npy, [M test, N train] float32", default=True),
        Key("top_k", int_check(0), "write top_k.npz: the k most helpful training examples per "
            "test example (values, indices [M, k]); 0 = skip", default=10),
        Key("self_influence", bool_check(), "write self_influence.npy, [N] float64", default=True),
    ), required=False),
)

_SECTIONS = {s.name: s for s in SCHEMA}


# ----------------------------------------------------------------------------- reading

def load_config(path: str) -> Dict[str, Any]:
    """Read a TOML (any name but ``.json``) or JSON config; ConfigError names the file."""
    if not os.path.isfile(path):
        what = "is a directory, not a file" if os.path.isdir(path) else "does not exist"
        raise ConfigError(f"config file {path!r} {what}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}, "
                          f"line {line}); save the file as UTF-8") from None
    if path.endswith(".json"):
        try:
            cfg = json.loads(text)
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
            cfg = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the top level must be a table")
    return cfg


def import_object(path: str, key: str) -> Any:
    """The object at "module:attribute" (attribute may be dotted); ConfigError names key."""
    if not isinstance(path, str) or ":" not in path:
        raise ConfigError(f"{key}: must be an import path 'module:attribute', got {path!r}")
    module_name, attr = path.split(":", 1)
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{key}: cannot import module {module_name!r} ({e})") from None
    except Exception as e:  # the module itself raised while being imported
        raise ConfigError(f"{key}: importing module {module_name!r} raised "
                          f"{type(e).__name__}: {e}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{key}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


# ----------------------------------------------------------------------------- validation

@dataclass
class RunConfig:
    """A validated configuration: every value checked, defaults filled in, import paths
    resolved, paths absolute. ``options[section][key]`` holds the checked values."""
    path: str
    base: str
    options: Dict[str, Dict[str, Any]]
    objects: Dict[str, Any] = field(default_factory=dict)   # "model.factory" -> the callable
    spec: Any = None                                        # the compressor spec
    store: str = ""
    out_dir: str = ""
    device: Optional[str] = None


def _nearest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return close[0] if close else ""


def _writable_dir(path: str) -> Optional[str]:
    """Why ``path`` cannot be (created as) a writable directory, or None. Writes nothing."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            return f"{path!r} exists and is not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"directory {path!r} is not writable"
        return None
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"cannot create {path!r}: {parent!r} is a file, not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {path!r}: directory {parent!r} is not writable"
    return None


def _signature_problem(fn: Callable, args: Sequence[Any], kwargs: Dict[str, Any]) -> Optional[str]:
    """Why ``fn(*args, **kwargs)`` would fail to bind, or None (also when unknowable)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        return str(e)
    return None


def validate(cfg: Dict[str, Any], config_path: str, *, device: Optional[str] = None) -> RunConfig:
    """Check the whole configuration without computing or writing anything.

    Every key's type and range, unknown sections and keys (with the nearest known name),
    the store and output directories (writable, or creatable), the checkpoint (a
    readable file), import paths (importable, callable, and accepting the configured
    keyword arguments), the compressor's arguments, and outputs that need a test loader.
    Every problem found is reported in one ``ConfigProblems``.

    Args:
        cfg: the parsed file (``load_config``).
        config_path: the file; relative paths in it are relative to its directory, which
            is also put first on ``sys.path`` so that modules next to it import.
        device: the ``--device`` override, checked like ``[attribution] device``.
    """
    base = os.path.dirname(os.path.abspath(config_path))
    if base not in sys.path:
        sys.path.insert(0, base)  # user modules next to the config are importable
    problems: List[str] = []

    def bad(section: str, key: str, message: str) -> None:
        problems.append(f"[{section}] {key}: {message}" if key else f"[{section}]: {message}")

    def rel(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(base, p)

    # Sections: unknown names, missing ones, wrong types; then every key of each.
    for name in cfg:
        if name not in _SECTIONS:
            near = _nearest(name, list(_SECTIONS))
            hint = f"; did you mean [{near}]?" if near else ""
            problems.append(f"top level: unknown keys [{name!r}] ([{name}] is not a section{hint}); "
                            f"sections: {', '.join(f'[{s}]' for s in _SECTIONS)}")
    raw_of: Dict[str, Dict[str, Any]] = {}
    options: Dict[str, Dict[str, Any]] = {}
    for section in SCHEMA:
        raw = cfg.get(section.name)
        present = isinstance(raw, dict)
        if raw is None and section.required:
            need = ", ".join(k.name for k in section.keys if k.required)
            bad(section.name, "", f"the config has no [{section.name}] section (it needs {need})")
        elif raw is not None and not present:
            bad(section.name, "", f"must be a table ([{section.name}] with keys below it), got {_got(raw)}")
        raw = raw if present else {}
        raw_of[section.name] = raw
        known = [k.name for k in section.keys]
        values: Dict[str, Any] = {"extra": {}}
        for name in raw:
            if name in known:
                continue
            if section.extra:  # passed on (the compressor's own arguments, checked below)
                values["extra"][name] = raw[name]
                continue
            near = _nearest(name, known)
            hint = f"did you mean {near!r}? " if near else ""
            bad(section.name, name, f"unknown key (unknown keys [{name!r}]); {hint}"
                                    f"[{section.name}] takes {', '.join(known)}")
        for key in section.keys:
            if key.name not in raw:
                if key.required and present:
                    bad(section.name, key.name, f"missing: {key.help} (e.g. {key.name} = "
                                                f"{_toml_value(key.example)})")
                values[key.name] = None if key.required else _copy(key.default)
                continue
            try:
                values[key.name] = key.check(raw[key.name])
            except _Bad as e:
                bad(section.name, key.name, str(e))
                values[key.name] = None
        options[section.name] = values

    run = RunConfig(path=config_path, base=base, options=options)
    m, d, c = options["model"], options["data"], options["compressor"]
    a, o = options["attribution"], options["output"]

    # Import paths, and whether the arguments they will get bind to their signatures.
    calls = (("model", "factory", (), "kwargs"), ("data", "train", (), "train_kwargs"),
             ("data", "test", (), "test_kwargs"), ("loss", "fn", (None, None), None),
             ("loss", "target", (None, None), None))
    for section, key, args, kwargs_key in calls:
        path = options[section].get(key)
        if path is None:
            continue
        try:
            obj = import_object(path, f"[{section}] {key}")
        except ConfigError as e:
            problems.append(str(e))
            continue
        if not callable(obj):
            bad(section, key, f"{path} is a {type(obj).__name__}, not callable")
            continue
        run.objects[f"{section}.{key}"] = obj
        kwargs = (options[section].get(kwargs_key) or {}) if kwargs_key else {}
        why = _signature_problem(obj, args, kwargs)
        if why:
            where = kwargs_key if kwargs_key and kwargs else key
            call = f"{path}(**{kwargs_key})" if kwargs_key else f"{path}(model, batch)"
            bad(section, where, f"{call} cannot be called: {why}")
    if "test" not in raw_of["data"] and raw_of["data"].get("test_kwargs"):
        bad("data", "test_kwargs", "given, but there is no test = \"module:function\" to pass them to")

    # The compressor: the method's signature must take the other keys, and it must accept
    # their values (the spec checks them; nothing is built yet).
    method = c.get("method")
    if method is not None:
        from . import compress
        spec_cls = getattr(compress, method)
        kwargs = {name: c[name] for name in ("k", "seed") if name in raw_of["compressor"]}
        kwargs.update(c["extra"])
        params = inspect.signature(spec_cls).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        allowed = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        unknown_args = [name for name in kwargs if name not in params and not takes_any]
        for name in unknown_args:
            near = _nearest(name, allowed)
            hint = f"did you mean {near!r}? " if near else ""
            bad("compressor", name, f"unknown key (unknown keys [{name!r}]); {hint}{method} takes "
                                    f"{', '.join(allowed)}")
        if not any(p.startswith("[compressor]") for p in problems):
            try:
                run.spec = spec_cls(**kwargs)
            except (TypeError, ValueError) as e:
                bad("compressor", _key_named(str(e), kwargs) or "method", f"{method}: {e}")

    # Paths: the store and the output directory must be writable (or creatable), the
    # checkpoint a readable file.
    if a.get("store") is not None:
        run.store = rel(a["store"])
        why = _writable_dir(run.store)
        if why:
            bad("attribution", "store", why)
        run.out_dir = os.path.join(run.store, "out")
    if o.get("dir") is not None:
        run.out_dir = rel(o["dir"])
        why = _writable_dir(run.out_dir)
        if why:
            bad("output", "dir", why)
    elif run.out_dir and os.path.exists(run.out_dir) and not os.path.isdir(run.out_dir):
        bad("output", "dir", f"the default <store>/out, {run.out_dir!r}, exists and is not a directory")
    if m.get("checkpoint") is not None:
        ckpt = rel(m["checkpoint"])
        m["checkpoint"] = ckpt
        if not os.path.isfile(ckpt):
            bad("model", "checkpoint", f"{ckpt!r} does not exist" if not os.path.exists(ckpt)
                else f"{ckpt!r} is not a file")
        elif not os.access(ckpt, os.R_OK):
            bad("model", "checkpoint", f"{ckpt!r} is not readable")

    # The device: --device replaces [attribution] device.
    run.device = a.get("device")
    if device is not None:
        try:
            run.device = device_check()(device)
        except _Bad as e:
            problems.append(f"--device: {e}")

    # Outputs that need test examples.
    if "test" not in raw_of["data"]:
        for key, setting in (("scores", "scores = false"), ("top_k", "top_k = 0")):
            if o.get(key):
                default = "" if key in raw_of["output"] else f" (the default {key} = {_toml_value(o[key])})"
                bad("output", key, f"asks for {key}{default} but [data] has no test loader; add "
                                   f"test = \"module:function\" to [data], or set {setting}")

    if problems:
        raise ConfigProblems(problems, config_path)
    return run


def build(run: RunConfig):
    """The model (checkpoint loaded, eval mode) and the loaders, checked as the config
    says: still before anything is written. Returns ``(model, train, test, loss_fn,
    target_fn)``; problems are reported together in one ``ConfigProblems``."""
    import torch

    from .capture.select import discover_layers

    problems: List[str] = []
    m, d, a = run.options["model"], run.options["data"], run.options["attribution"]
    model = None
    try:
        model = run.objects["model.factory"](**m["kwargs"])
    except Exception as e:
        problems.append(f"[model] factory: {m['factory']}(**kwargs) raised {type(e).__name__}: {e}")
    if model is not None and not isinstance(model, torch.nn.Module):
        problems.append(f"[model] factory: {m['factory']} returned {type(model).__name__}, not a "
                        "torch.nn.Module")
        model = None
    if model is not None and m.get("checkpoint") is not None:
        try:
            state = torch.load(m["checkpoint"], map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as e:
            problems.append(f"[model] checkpoint: cannot load {m['checkpoint']!r} into the model "
                            f"({type(e).__name__}: {e})")
    if model is not None:
        if m["eval"]:
            model.eval()
        try:
            discover_layers(model, a["layers"], include_flat=a["include_flat"])
        except (ValueError, TypeError, KeyError) as e:
            problems.append(f"[attribution] layers: {e}")

    loaders = {}
    for key in ("train", "test"):
        fn = run.objects.get(f"data.{key}")
        if fn is None:
            loaders[key] = None
            continue
        try:
            loader = fn(**d[f"{key}_kwargs"])
        except Exception as e:
            problems.append(f"[data] {key}: {d[key]}(**{key}_kwargs) raised {type(e).__name__}: {e}")
            continue
        if not hasattr(loader, "__iter__"):
            problems.append(f"[data] {key}: {d[key]} returned {type(loader).__name__}, which cannot "
                            "be iterated over batches")
            continue
        loaders[key] = loader
    if problems:
        raise ConfigProblems(problems, run.path)
    return (model, loaders["train"], loaders["test"], run.objects["loss.fn"],
            run.objects.get("loss.target"))


def _key_named(message: str, kwargs: Dict[str, Any]) -> str:
    """The keyword argument an error message is about, if it names exactly one."""
    named = [k for k in kwargs if message.startswith(k) or f" {k} " in f" {message} " or f"{k}=" in message]
    return named[0] if len(named) == 1 else ""


def _copy(value):
    return dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else value


# ----------------------------------------------------------------------------- help and example

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }" if v else "{}"
    raise TypeError(f"no TOML form for {v!r}")


def _default_text(key: Key) -> str:
    if key.required:
        return "required"
    if key.default_text:
        return f"default: {key.default_text}"
    if key.default is None:
        return "optional"
    return f"default: {_toml_value(key.default)}"


def _wrap(text: str, indent: str, width: int = 92) -> List[str]:
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent) or [indent]


def help_text() -> str:
    """The key table of ``grass run --help``."""
    lines = ["configuration keys (TOML shown; JSON with the same structure works too;",
             "`grass run --example-config` prints a complete file):"]
    for section in SCHEMA:
        lines.append("")
        lines.append(f"[{section.name}]{'' if section.required else ' (optional)'}  {section.help}")
        for key in section.keys:
            lines.append(f"  {key.name:<15} {key.check.describe}; {_default_text(key)}")
            lines += _wrap(key.help, " " * 18)
        if section.extra:
            lines += _wrap(f"...  {section.extra}", "  ")
    return "\n".join(lines)


def example_config() -> str:
    """A complete TOML configuration: every key, with its meaning and default above it.
    Optional keys without a default value are commented out; the import paths name
    modules next to the config file (mymodels.py, mydata.py, mylosses.py)."""
    lines = ["# grass run configuration; `grass run --help` explains every key.",
             "# Import paths are \"module:attribute\"; modules next to this file are found first.",
             "# Relative paths are relative to this file.", ""]
    for section in SCHEMA:
        lines.append(f"# {section.help}" + ("" if section.required else " (optional section)"))
        lines.append(f"[{section.name}]")
        for key in section.keys:
            value = key.example if key.example is not None else key.default
            lines += _wrap(f"{key.help} ({_default_text(key)})", "# ")
            entry = f"{key.name} = {_toml_value(value)}"
            if not key.required and key.default is None and not key.in_example:
                entry = "# " + entry
            lines.append(entry)
        if section.extra:
            lines += _wrap(f"... and {section.extra}", "# ")
        lines.append("")
    return "\n".join(lines)
