"""The layout's rules, read from the code: which folder may import which, and no cycles."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "api", "workers")


def _imports() -> dict[str, set[str]]:
    """Every project module and the modules it imports (absolute names)."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module)
                    found.update(f"{node.module}.{alias.name}" for alias in node.names)
            graph[module] = found
    return graph


def test_engine_imports_no_transport_and_no_jobs() -> None:
    for module, imported in _imports().items():
        if module.split(".")[0] != "engine":
            continue
        banned = {
            name
            for name in imported
            if name.split(".")[0] in ("api", "workers", "starlette", "rq", "uvicorn")
        }
        assert not banned, f"{module} imports {sorted(banned)}"


def test_the_api_reaches_workers_only_through_the_queue() -> None:
    for module, imported in _imports().items():
        if module.split(".")[0] != "api":
            continue
        workers = {name for name in imported if name.split(".")[0] == "workers"}
        assert workers <= {"workers.queue", "workers.queue.Jobs"}, f"{module} imports {workers}"


def test_no_import_cycles() -> None:
    graph = _imports()
    modules = set(graph)
    edges = {m: {n for n in imported if n in modules and n != m} for m, imported in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in edges[module]:
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
