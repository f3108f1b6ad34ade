"""The package's layers: every import inside synpro_jax, at module level or inside a function, goes to the same layer
or a lower one, and no two packages import each other, directly or round a longer circle.

Bottom to top (docs/design.md and the README's module table show the same):

    base utilities and sharding
    models, data
    train, generation
    influence, serve
    rl, eval
    loop
    demo
    the gin registration (configs, gin_files), compile, sweep, cloud_tpu
    cli

``python tests/test_layers.py`` prints every package's imports by layer, the upward ones and the circles.
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path
import sys

ROOT = Path(__file__).resolve().parents[1] / "synpro_jax"

LAYERS: list[set[str]] = [
    {"__init__", "atomic", "checks", "device_queue", "distributed", "errors", "exit_codes", "heartbeat"}
    | {"native_stderr", "registry", "resume_guard", "sharding", "tpu_chips"},
    {"models", "data"},
    {"train", "generation"},
    {"influence", "serve"},
    {"rl", "eval"},
    {"loop"},
    {"demo"},
    {"configs", "gin_files", "compile", "sweep", "cloud_tpu"},
    {"cli"},
]


def unit(module: str) -> str:
    """The package or top-level module a dotted name belongs to (``synpro_jax.loop.runner`` -> ``loop``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(name: str) -> int:
    for i, names in enumerate(LAYERS):
        if name in names:
            return i
    raise KeyError(f"synpro_jax.{name} is in no layer: add it to tests/test_layers.py's LAYERS and docs/design.md")


def _submodule(name: str) -> str:
    is_module = (ROOT / f"{name}.py").exists() or (ROOT / name).is_dir()
    return f"synpro_jax.{name}" if is_module else "synpro_jax"


def imports() -> list[tuple[str, int, str, str, bool]]:
    """(file, line, importing unit, imported unit, inside a function) for every import of synpro_jax code."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent)
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        source = unit(module)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        inner = {
            id(node)
            for fn in ast.walk(tree)
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(fn)
            if node is not fn
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # "from synpro_jax import atomic" imports synpro_jax.atomic; "import __version__" the package's own
                if node.module == "synpro_jax":
                    names = [_submodule(a.name) for a in node.names]
                else:
                    names = [node.module]
            else:
                continue
            for name in names:
                if name.startswith("synpro_jax.") and unit(name) != source:
                    out.append((str(rel), node.lineno, source, unit(name), id(node) in inner))
    return out


def upward(found) -> list[str]:
    return [
        f"{file}:{line} {src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})"
        for file, line, src, dst, _ in found
        if layer_of(dst) > layer_of(src)
    ]


def circles(found) -> list[list[str]]:
    """Every strongly connected set of two or more units (Tarjan's algorithm over the import graph)."""
    graph = collections.defaultdict(set)
    for _, _, src, dst, _ in found:
        graph[src].add(dst)
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_unit_has_a_layer():
    units = {unit(".".join(p.relative_to(ROOT.parent).with_suffix("").parts)) for p in ROOT.rglob("*.py")}
    for name in units:
        layer_of(name)


def test_no_import_goes_up_a_layer():
    assert upward(imports()) == []


def test_no_two_packages_import_each_other():
    assert circles(imports()) == []


def test_the_checks_see_an_upward_import_and_a_circle():
    found = [("a.py", 1, "loop", "configs", True), ("b.py", 2, "configs", "loop", False)]
    assert upward(found) == ["a.py:1 loop (layer 5) imports configs (layer 7)"]
    assert circles(found) == [["configs", "loop"]]


if __name__ == "__main__":
    found = imports()
    by_unit = collections.defaultdict(set)
    for _, _, src, dst, _ in found:
        by_unit[src].add(dst)
    for i, names in enumerate(LAYERS):
        for name in sorted(names):
            if by_unit.get(name):
                print(f"layer {i} {name}: imports {', '.join(sorted(by_unit[name], key=layer_of))}")
    inside = sum(1 for *_, fn in found if fn)
    print(f"{len(found)} imports between units, {inside} of them inside functions")
    ups, loops = upward(found), circles(found)
    print(f"{len(ups)} upward import(s)", *ups, sep="\n  ")
    print(f"{len(loops)} circle(s)", *(" -> ".join(c) for c in loops), sep="\n  ")
    sys.exit(1 if ups or loops else 0)
