"""The import structure of ``san/``: layers that only import downwards, and no import cycles.

Every module belongs to one layer (by its dotted name); a module may import its own layer and the
layers below it, never one above. Function-local imports count too (they are imports all the same).
The package's front door ``san/__init__.py`` (lazy re-exports) and ``san/__main__.py`` stand outside.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "san"

# lowest first; a module may import only from its own layer or a lower one
LAYERS: list[tuple[str, ...]] = [
    ("san.files", "san.devices", "san.assets"),
    ("san.modeling",),
    ("san.config", "san.model_zoo"),
    ("san.checkpoint", "san.hub", "san.model_source"),
    ("san.build",),
    ("san.data",),
    ("san.inference",),
    ("san.engine", "san.serving"),
    ("san.apps",),
    ("san.integrations",),
]
OUTSIDE = {"san", "san.__main__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The san modules ``name`` imports (relative imports resolved; ``from pkg import mod`` -> pkg.mod)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "san"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "san" or (target == "san" and [a.name for a in node.names] == ["__version__"]):
                continue  # not ours, or only the version string of the front door
            submodules = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known}
            if len(submodules) < len(node.names):  # names defined in the package itself
                out.add(target)
            out |= submodules
    return {m for m in out if m in known and m != name}


def _layer(name: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{name} belongs to no layer: add it to LAYERS in tests/test_layers.py")


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {n: _imports(n, p, known) for n, p in mods.items() if n not in OUTSIDE}


def test_every_module_has_a_layer_and_imports_only_downwards():
    graph = _graph()
    upward = [
        f"{src} (layer {_layer(src)}) imports {dst} (layer {_layer(dst)})"
        for src, targets in sorted(graph.items())
        for dst in sorted(targets)
        if dst not in OUTSIDE and _layer(dst) > _layer(src)
    ]
    assert upward == []
    front_door = {d for targets in graph.values() for d in targets} & OUTSIDE
    assert front_door == set(), "modules import the lazy front door `san` instead of the defining module"


def test_the_import_graph_has_no_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_checker_sees_relative_and_function_local_imports(tmp_path):
    """The parser behind both tests: a relative import, ``from pkg import module`` and an import
    inside a function are all found (so an upward import cannot hide in any of these forms)."""
    code = "from . import comm\nfrom .events import x\ndef f():\n    from san.apps import cli\n"
    path = tmp_path / "trainer.py"
    path.write_text(code)
    known = {"san.engine.comm", "san.engine.events", "san.apps", "san.apps.cli", "san.engine.trainer"}
    assert _imports("san.engine.trainer", path, known) == {"san.engine.comm", "san.engine.events", "san.apps.cli"}
