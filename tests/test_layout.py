"""Imports run one way: losses <- models <- kd.data <- kd.eval <- kd.train <- the kd tools <- the recipes.

Every ``.py`` file of the library is parsed (imports inside functions count too)
and each import is checked against the rule of its package; the module graph
must have no cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"train_teacher", "train_student", "quantize"}
LIBRARY = ("losses", "models", "kd")

ALLOWED = {
    "losses": {"losses"},
    "models": {"losses", "models"},
    "kd.data": {"losses", "models", "kd.data"},
    "kd.errors": {"models", "kd.data"},
    "kd.eval": {"losses", "models", "kd.data", "kd.errors", "kd.eval"},
    "kd.train": {"losses", "models", "kd.data", "kd.errors", "kd.eval", "kd.train"},
    "kd.tools": {"losses", "models", "kd.data", "kd.errors", "kd.eval", "kd.train", "kd.tools"},
}
"""Which layers each layer may import. ``kd.errors`` (the error convention) is the
one top-level kd module the engine uses; the other top-level kd modules are the
command-line tools and their shared helpers."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str | None:
    if module in RECIPES:
        return "recipes"
    top = module.split(".")[0]
    if top in ("losses", "models"):
        return top
    if top != "kd":
        return None
    parts = module.split(".")
    if len(parts) == 1:
        return "kd.data"  # the package's own __init__ (a docstring)
    if parts[1] in ("data", "eval", "train"):
        return f"kd.{parts[1]}"
    return "kd.errors" if parts[1] == "errors" else "kd.tools"


def library_modules() -> dict[str, Path]:
    files = [p for top in LIBRARY for p in (ROOT / top).rglob("*.py")]
    return {module_name(p): p for p in files}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``path`` imports anywhere in it (``from kd import demo`` -> ``kd.demo``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in RECIPES:
                found.add(name.split(".")[0])
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    modules = library_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def test_imports_run_one_way():
    wrong = [f"{module} ({layer(module)}) imports {target} ({layer(target)})"
             for module, targets in graph().items() for target in sorted(targets)
             if layer(target) not in ALLOWED[layer(module)]]
    assert not wrong, "imports against the layer rule:\n" + "\n".join(wrong)


def test_no_library_module_imports_a_recipe():
    offenders = [f"{module} imports {target}" for module, targets in graph().items() for target in targets if target in RECIPES]
    assert not offenders, offenders


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
