"""The layer rules of DESIGN.md, checked over every import (function-local ones included)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

UI_FILES = [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py")), *sorted((ROOT / "ui").glob("*.py"))]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((ROOT / "xai_core").rglob("*.py"))}


def imports(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(module, imported names, line) for every import statement in a file, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target, [alias.name for alias in node.names], node.lineno


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph() -> dict[str, set[str]]:
    """Module -> the xai_core modules its imports run. Importing `a.b.c` runs the package inits `a` and `a.b`
    too, except those of the importer's own packages (a package's __init__ may import its modules); a module that
    names its own package (`from xai_core.models import X` inside `xai_core.models`) imports back up into it."""
    modules = core_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        own = {*ancestors(name), name}
        for target, names, _ in imports(path):
            candidates = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules] or [target]
            for module in candidates:
                if module not in modules:
                    continue
                graph[name].update(step for step in ancestors(module) if step in modules and step not in own)
                if module != name:
                    graph[name].add(module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module that imports itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in sorted(graph[node]):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle_and_allows_a_package_filling_its_registry():
    graph = {"p": {"p.a"}, "p.a": {"p.b"}, "p.b": set(), "q": {"r"}, "r": {"q"}}
    assert cycles(graph) == [["q", "r"]]


def test_no_import_cycles_in_xai_core_lazy_imports_included():
    assert cycles(import_graph()) == []


def test_no_imports_of_another_packages_private_names():
    offenders = []
    for path in [*core_modules().values(), *UI_FILES]:
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for target, names, line in imports(path):
            private = [n for n in [*names, *target.split(".")] if n.startswith("_") and not n.startswith("__")]
            if private and package not in (target, target.rpartition(".")[0]):
                offenders.append(f"{path.relative_to(ROOT)}:{line} {target} {private}")
    assert offenders == []


def test_pages_never_import_torch_and_the_core_never_imports_streamlit():
    ui = [f"{p.relative_to(ROOT)}:{line}" for p in UI_FILES for target, _, line in imports(p)
          if target.partition(".")[0] in ("torch", "torchvision")]
    core = [f"{p.relative_to(ROOT)}:{line}" for p in core_modules().values() for target, _, line in imports(p)
            if target.partition(".")[0] == "streamlit"]
    assert ui == [] and core == []


def test_function_local_imports_only_defer_an_optional_dependency_and_say_why():
    offenders = []
    for path in [*core_modules().values(), *UI_FILES]:
        source = path.read_text().splitlines()
        for function in ast.walk(ast.parse("\n".join(source))):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    target = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                    if (target or "").startswith("xai_core") or "#" not in source[node.lineno - 1]:
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {target}")
    assert offenders == []
