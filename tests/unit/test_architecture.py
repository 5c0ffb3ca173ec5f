"""The layout's promises, read from the source with ``ast``: no import circles, small shared modules,
SQL only in the data layer's package, and a web service that cannot reach TensorFlow or LiteRT."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from shared.config import PROJECT_ROOT

PACKAGES = ("shared", "worker", "web", "producer", "stack", "bench")
MAX_SHARED_MODULE_LINES = 350
# What the web image must never import: each is hundreds of MB and would be in its image.
MODEL_RUNTIMES = ("tensorflow", "keras", "ai_edge_litert")


def module_name(path: Path, root: Path = PROJECT_ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path = PROJECT_ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    return {module_name(path, root): path for package in packages for path in sorted((root / package).rglob("*.py"))}


def imported_names(tree: ast.AST, importer: str) -> Iterator[str]:
    """Every module an import statement anywhere in the file names (lazy imports inside functions too)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importer's package
                package = importer.rsplit(".", node.level)[0]
                base = f"{package}.{base}" if base else package
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (a name that is an attribute, not a module, is dropped)."""
    graph = {}
    for name, path in modules.items():
        names = set(imported_names(ast.parse(path.read_text()), name))
        graph[name] = {imported for imported in names if imported in modules and imported != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path per import circle (depth-first search for back edges)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                found.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def test_the_cycle_finder_finds_a_circle_held_apart_by_a_lazy_import(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def later():\n    from pkg.a import something\n")
    (package / "c.py").write_text("import pkg.a\n")
    graph = import_graph(project_modules(tmp_path, ("pkg",)))
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_no_module_of_the_project_is_in_an_import_circle():
    assert cycles(import_graph(project_modules())) == []


def test_no_module_in_shared_is_over_350_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in project_modules(packages=("shared",)).items()}
    assert sizes, "found no modules in shared/"
    assert {name: lines for name, lines in sizes.items() if lines > MAX_SHARED_MODULE_LINES} == {}


def test_digits_is_a_leaf_that_everyone_can_import():
    graph = import_graph(project_modules())
    assert graph["shared.digits"] == set()
    assert {"shared.db.results", "shared.inference", "shared.images", "web.api"} <= {
        m for m, deps in graph.items() if "shared.digits" in deps
    }


def test_the_web_app_cannot_reach_a_model_runtime():
    modules = project_modules()
    graph = import_graph(modules)
    web_modules = reachable(graph, "web.app")
    assert "web.views" in web_modules and "shared.db.queries" in web_modules  # the walk really follows imports
    runtimes = {}
    for name in web_modules:
        imports = imported_names(ast.parse(modules[name].read_text()), name)
        found = sorted(imported for imported in imports if imported.startswith(MODEL_RUNTIMES))
        if found:
            runtimes[name] = found
    assert runtimes == {}
    assert not web_modules & {"shared.inference", "shared.model", "worker.app"}


def test_senders_never_import_the_worker():
    graph = import_graph(project_modules())
    for sender in ("producer.cli", "web.app", "shared.jobs"):
        assert not {module for module in reachable(graph, sender) if module.startswith("worker")}, sender


def test_the_services_never_import_the_tools_built_on_them():
    graph = import_graph(project_modules())
    services = [module for module in graph if module.split(".")[0] in ("shared", "worker", "web", "producer")]
    tools = {module for module in graph if module.split(".")[0] in ("stack", "bench")}
    assert services and tools
    assert {module: sorted(graph[module] & tools) for module in services if graph[module] & tools} == {}
