"""The package's shape, checked: what `passes` may import, no import cycles, no long functions (outside the CLI)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "onebyone"
MAX_FUNCTION_LINES = 50


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _imports(tree: ast.Module, modules, top_level_only: bool) -> set[str]:
    """Modules imported by `tree`; `from package import submodule` counts as the submodule alone. With
    top_level_only, imports inside functions (deferred to call time) are left out."""
    found = set()
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
            found |= subs if len(subs) == len(node.names) else subs | {node.module}
    return found


def test_passes_import_neither_onnxruntime_nor_verify_nor_calibrated():
    for name, tree in _modules().items():
        if name.startswith("onebyone.passes"):
            bad = {m for m in _imports(tree, (), top_level_only=False)
                   if m.split(".")[0] == "onnxruntime" or m.startswith(("onebyone.verify", "onebyone.calibrated", "onebyone.runtime"))}
            assert not bad, f"{name} imports {sorted(bad)}"


def test_no_import_cycles_not_even_through_imports_deferred_into_functions():
    modules = _modules()
    graph = {name: {m for m in _imports(tree, modules, top_level_only=False) if m in modules and m != name}
             for name, tree in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1 and not nxt == "onebyone":  # the package root re-exports, it is not a cycle
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state and name != "onebyone":
            visit(name, [name])


def test_no_function_is_longer_than_50_lines_outside_the_cli():
    long = []
    for name, tree in _modules().items():
        if name == "onebyone.cli":
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert not long, long
