"""Dependencies point down the pipeline: the package's imports, read with ast (function-local
imports included), form no cycle and never reach a later layer."""
import ast
import pathlib

import pytest

import grass

PACKAGE = pathlib.Path(grass.__file__).parent

# The pipeline, bottom to top. A module may import its own layer and the ones before it.
LAYERS = [
    ["grass._C", "grass.ops", "grass.layers", "grass.reference", "grass.testing",
     "grass.device"],  # kernels
    ["grass.capture"],
    ["grass.compress"],
    ["grass.store"],
    ["grass.precondition"],
    ["grass.score"],
    ["grass.attributor", "grass.ensemble", "grass.distributed", "grass.loop"],
    ["grass.eval", "grass.cli", "grass.run_config"],
]


def layer_of(module: str) -> int:
    if module == "grass":
        return len(LAYERS)  # the package root: the facade that names the layers
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def module_name(path: pathlib.Path, package: pathlib.Path = PACKAGE) -> str:
    parts = ["grass", *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str, package: pathlib.Path) -> bool:
    if name == "grass._C":  # the compiled binding
        return True
    rel = pathlib.Path(*name.split(".")[1:])
    return (package / rel).with_suffix(".py").exists() or (package / rel / "__init__.py").exists()


def imports(path: pathlib.Path, package_dir: pathlib.Path):
    """(line, imported grass module) for every import in the file, at any depth."""
    name = module_name(path, package_dir)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "grass" or alias.name.startswith("grass."):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == "grass" or target.startswith("grass.")):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield node.lineno, sub if is_module(sub, package_dir) else target


def graph(package_dir: pathlib.Path = PACKAGE):
    """{module: [(line, imported module)]} over every file of the package."""
    edges = {}
    for path in sorted(package_dir.rglob("*.py")):
        source = module_name(path, package_dir)
        edges[source] = [(line, t) for line, t in imports(path, package_dir) if t != source]
    return edges


def upward_imports(edges):
    return [f"{source}:{line} imports {target}" for source, targets in edges.items()
            for line, target in targets
            if target != "grass" and layer_of(target) > layer_of(source)]


def cycles(edges):
    nodes = set(edges)
    succ = {s: sorted({t for _, t in ts if t in nodes}) for s, ts in edges.items()}
    state, stack, found = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in succ[node]:
            if state.get(nxt) == "open":
                found.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in succ:
        if node not in state:
            visit(node)
    return found


def test_every_module_has_a_layer():
    for module in graph():
        layer_of(module)


def test_no_upward_import():
    upward = upward_imports(graph())
    assert not upward, "imports that point up the pipeline:\n" + "\n".join(upward)


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(found)


def test_the_checker_finds_a_cycle_and_an_upward_import(tmp_path):
    """The two cycles issue 12 removed, planted in a scratch package: both are found, the
    function-local one included."""
    files = {
        "__init__.py": "",
        "attributor.py": "from .score import trak\n",
        "score/__init__.py": "from . import trak\n",
        "score/trak.py": "def make():\n    from ..attributor import Attributor\n",
        "compress/__init__.py": "",
        "compress/base.py": "def fit():\n    from .fit import fit_compressors\n",
        "compress/fit.py": "from .base import Compressor\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    edges = graph(tmp_path)
    assert upward_imports(edges) == ["grass.score.trak:2 imports grass.attributor"]
    found = cycles(edges)
    assert any("grass.compress.base" in c and "grass.compress.fit" in c for c in found)
    assert any("grass.score.trak" in c and "grass.attributor" in c for c in found)
