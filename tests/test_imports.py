"""The house drawn from the code's own imports: no module reaches into another's private names,
and no two modules import each other, directly or round a loop."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"vedit": ROOT / "vedit", "vedit_plugins": ROOT / "plugins", "vedit_engines": ROOT / "engines"}


def modules() -> dict[str, Path]:
    """Every module of the installed packages by dotted name (``vedit.io.reader``)."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def is_package(name: str, known: dict[str, Path]) -> bool:
    return known[name].name == "__init__.py"


def absolute(node: ast.ImportFrom, importer: str, known: dict[str, Path]) -> str:
    """The module an ``from X import ...`` names, with relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package(importer, known):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(tree: ast.Module, importer: str, known: dict[str, Path], top_level_only: bool):
    """(line, module, name or None) for each import; ``top_level_only`` skips those inside functions."""
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # also what `if TYPE_CHECKING:` and try/except at module level import
        nodes = [n for top in tree.body for n in ast.walk(top) if not isinstance(top, (ast.FunctionDef, ast.ClassDef))]
        nodes = [n for n in nodes if not _under_type_checking(tree, n)]
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            module = absolute(node, importer, known)
            for alias in node.names:
                yield node.lineno, module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None


def _under_type_checking(tree: ast.Module, target: ast.AST) -> bool:
    for top in tree.body:
        if isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test):
            if any(node is target for node in ast.walk(top)):
                return True
    return False


def test_no_module_imports_another_modules_private_names():
    known = modules()
    reaching = []
    for importer, path in known.items():
        for line, module, name in imports(ast.parse(path.read_text()), importer, known, top_level_only=False):
            if name is None or not name.startswith("_") or name.startswith("__"):
                continue
            if f"{module}.{name}" in known:  # a private submodule, imported by its own package's code
                if importer.startswith(module + ".") or importer == module:
                    continue
            elif module == importer:
                continue
            reaching.append(f"{path.relative_to(ROOT)}:{line} imports {name} from {module}")
    assert reaching == []


def import_graph(known: dict[str, Path], top_level_only: bool = False) -> dict[str, set[str]]:
    """Module -> the modules it imports (a package's own submodules importing it do not count)."""
    graph: dict[str, set[str]] = {name: set() for name in known}
    for importer, path in known.items():
        for _, module, name in imports(ast.parse(path.read_text()), importer, known, top_level_only):
            target = f"{module}.{name}" if name and f"{module}.{name}" in known else module
            if target in known and target != importer and not importer.startswith(target + "."):
                graph[importer].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, nexts = work[-1]
            step = next(nexts, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    work.append((step, iter(sorted(graph[step]))))
                elif step in stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def test_the_modules_form_no_import_cycle_counting_imports_inside_functions():
    assert cycles(import_graph(modules())) == []


def test_the_checks_above_see_what_they_look_for(tmp_path):
    """The walkers find a private name and a cycle where there is one (so an empty list means something)."""
    known = {"vedit.a": tmp_path / "a.py", "vedit.b": tmp_path / "b.py", "vedit": tmp_path / "__init__.py"}
    tree = ast.parse("from .b import _hidden, public\nimport vedit.a\n")
    found = list(imports(tree, "vedit.a", known, top_level_only=True))
    assert found == [(1, "vedit.b", "_hidden"), (1, "vedit.b", "public"), (2, "vedit.a", None)]
    known["vedit.x.c"] = tmp_path / "x" / "c.py"
    lazy = ast.parse("def f():\n    from ..io import reader\n")
    assert list(imports(lazy, "vedit.x.c", known, top_level_only=True)) == []  # inside a function: not at load
    assert list(imports(lazy, "vedit.x.c", known, top_level_only=False)) == [(2, "vedit.io", "reader")]
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]
