"""Which files of the ``factory`` package a script imports, from its code (the AST), at any depth.

One place for the import graph: ``loop/dvc.yaml``'s code deps are written from it (:mod:`factory.loops.pipeline`)
and tests/test_architecture.py checks every stage's deps, the layers and cycles with it. Imports anywhere in
a file count (function-level ones too), with the packages on the way (importing ``a.b.c`` runs ``a/__init__``
and ``a/b/__init__``); relative imports are not followed (the package uses none).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "factory"


def module_file(root: Path, name: str) -> Path | None:
    """The file of module ``name`` under ``root`` (``a/b.py`` or ``a/b/__init__.py``), or None."""
    base = root.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def module_name(root: Path, path: Path) -> str:
    """The dotted name of the module in ``path`` (a file under ``root``)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(root: Path, path: Path) -> set[str]:
    """Every ``factory`` module the file ``path`` imports, with the packages on the way."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name != PACKAGE and not name.startswith(PACKAGE + "."):
                continue
            parts = name.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1)
                         if module_file(root, ".".join(parts[:i])) is not None)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports, for every module of the package under ``root``."""
    return {module_name(root, p): imports_of(root, p) - {module_name(root, p)}
            for p in sorted((root / PACKAGE).rglob("*.py"))}


def closure(start: set[str], graph: dict[str, set[str]]) -> set[str]:
    """``start`` and everything it imports, at any depth."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(graph.get(m, ()))
    return seen


def code_deps(root: Path, script: str, graph: dict[str, set[str]] | None = None) -> list[str]:
    """``script`` and every file of the package it imports at any depth, relative to ``root``, sorted
    (``graph``: the package's :func:`import_graph`, when the caller has built it already)."""
    needed = closure(imports_of(root, root / script), graph if graph is not None else import_graph(root))
    files = sorted(str(f.relative_to(root)) for m in needed if (f := module_file(root, m)) is not None)
    return [script, *files]
