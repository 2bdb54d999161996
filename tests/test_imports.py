"""The package's modules import each other without a cycle.

Every ``import`` of a ``flask_ampalibe`` module counts, at module level and inside functions
(a function-level import hides a cycle from Python, not from the reader); imports under
``if TYPE_CHECKING:`` do not, since they never run.
"""
from __future__ import annotations

import ast
from pathlib import Path

import flask_ampalibe

PACKAGE = "flask_ampalibe"
ROOT = Path(flask_ampalibe.__file__).resolve().parent

# Cycles kept on purpose, each as the sorted tuple of its modules, with the reason (none today).
ALLOWED: dict[tuple[str, ...], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree``, skipping the bodies of ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                walk(child)
            return
        for child in ast.iter_child_nodes(node):
            walk(child)

    walk(tree)
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module (or package ``__init__``) that importing ``name`` runs last, if it is ours."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = package.split(".")
                    base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts)
                    module = f"{base}.{node.module}" if node.module else base
                else:
                    module = node.module or ""
                # ``from pkg import sub`` imports the submodule when there is one.
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                           for alias in node.names]
            for target in targets:
                if not (target == PACKAGE or target.startswith(PACKAGE + ".")):
                    continue
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != name:
                    graph[name].add(resolved)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that reach each other (size > 1 or a self-loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
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
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def _a_cycle(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """One concrete cycle through the group's first module, for the failure message."""
    members = set(group)
    start = group[0]
    path = [start]
    seen = {start}

    def dfs(v: str) -> bool:
        for w in sorted(graph[v] & members):
            if w == start:
                path.append(start)
                return True
            if w not in seen:
                seen.add(w)
                path.append(w)
                if dfs(w):
                    return True
                path.pop()
        return False

    dfs(start)
    return path


def test_the_graph_sees_function_level_and_package_imports():
    graph = import_graph()
    # ``from .executor import make_executor`` lands on the package's __init__.
    assert "flask_ampalibe.executor.base" in graph["flask_ampalibe.executor"]
    assert "flask_ampalibe.executor.base" in graph["flask_ampalibe.celery_executor"]
    assert "flask_ampalibe.extension" in graph["flask_ampalibe"]
    # A function-level import counts (Store.create_all imports schema.prepare when it runs).
    assert "flask_ampalibe.schema" in graph["flask_ampalibe.storage"]
    # An import under ``if TYPE_CHECKING:`` does not (compat names the Messenger only in hints).
    assert "flask_ampalibe.messenger" not in graph["flask_ampalibe.compat"]


def test_no_import_cycle():
    graph = import_graph()
    groups = strongly_connected(graph)
    unexpected = [g for g in groups if tuple(g) not in ALLOWED]
    report = "\n".join(
        "cycle among {}:\n    {}".format(", ".join(g), " -> ".join(_a_cycle(graph, g))) for g in unexpected)
    assert not unexpected, "import cycles:\n" + report
    stale = [cycle for cycle in ALLOWED if list(cycle) not in groups]
    assert not stale, f"allowed cycles that no longer exist (remove them from ALLOWED): {stale}"


def test_every_name_in_a_modules_all_exists():
    # ``from flask_ampalibe.<module> import *`` fails on a name that __all__ lists but the module lost.
    import importlib

    optional = ("flask_ampalibe.celery_executor", "flask_ampalibe.dashboard.metrics")  # extras
    missing = []
    for name in sorted(_modules()):
        skipped = name.startswith(optional) or name.endswith(("__main__", "migrations.env"))
        if skipped or ".templates" in name or ".migrations.versions" in name:  # scripts, not modules
            continue
        module = importlib.import_module(name)
        missing += [f"{name}.{attr}" for attr in getattr(module, "__all__", ()) if not hasattr(module, attr)]
    assert missing == []
