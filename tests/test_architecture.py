"""The package's shape: no import circles between modules, and packages import each other in one direction only.

Imports are read from the source (top level and inside functions alike: a local import still ties two modules
together), so the test sees what a reader sees.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "reid"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:` (names for type hints, never imported at run time)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return [n for n in ast.walk(tree) if id(n) not in skip]


def import_graph() -> dict[str, set[str]]:
    """module -> the `reid` modules it imports (`from a import b` counts as a.b when b is a module, else a)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module in modules and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
                found |= subs or {node.module}
                if len(subs) < len(node.names):  # some names are objects of the module itself
                    found.add(node.module)
        graph[name] = found - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])  # reid.<subpackage or top-level module>


def test_the_cycle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_between_modules() -> None:
    # a package's __init__ importing its own submodules (registration) is not a circle with them
    graph = {m: {d for d in deps if not (m == _package_of(m) and d.startswith(m + "."))}
             for m, deps in import_graph().items()}
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    assert cycles(graph) == []


def test_packages_import_each_other_in_one_direction() -> None:
    """E.g. the engine may use teachers, but a teacher never imports the engine (its DVC stage would then depend
    on the trainer's code); the package-level graph has no circle."""
    graph: dict[str, set[str]] = {}
    for module, deps in import_graph().items():
        graph.setdefault(_package_of(module), set()).update(
            _package_of(d) for d in deps if _package_of(d) != _package_of(module) and d != "reid")
    assert cycles(graph) == [], graph


def test_contracts_page_names_every_public_member_of_the_base_classes() -> None:
    """docs/contracts.md documents the Teacher and Method contracts; a member added to a base class and not to the
    page fails here."""
    import re

    from reid.methods.base import Method
    from reid.teachers.base import Teacher

    doc = (REPO / "docs" / "contracts.md").read_text()
    for cls, section in ((Teacher, "## Teachers"), (Method, "## Methods")):
        text = doc[doc.index(section):]
        text = text[: text.index("\n## ", 3)] if "\n## " in text[3:] else text
        members = {n for n in vars(cls) if not n.startswith("_")} | {
            n for n in getattr(cls, "__annotations__", {}) if not n.startswith("_")}
        missing = sorted(n for n in members if not re.search(rf"\b{n}\b", text))
        assert not missing, f"docs/contracts.md {section!r} does not mention {missing}"
