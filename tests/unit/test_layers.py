"""The package's imports point one way: from the edge (CLI, client, HTTP) inward, through the application
services and the job worker, to persistence, storage, inference and the domain; no cycles, and nothing in the
package imports the benchmarks. Read from the source (every import, also those inside functions), not by importing."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# service's packages by layer: a module may import from its own layer or a lower one (a larger number is outer)
LAYERS = {
    "service.settings": 0, "service.retry": 0, "service.domain": 1, "service.schemas": 1,  # schemas: the domain's words
    "service.persistence": 2, "service.storage": 2, "service.inference": 2,
    "service.application": 3, "service.jobs": 3, "service.http": 4, "service.cli": 5, "service.client": 5,
}  # fmt: skip


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports at run time (TYPE_CHECKING blocks left out), resolved to dotted names."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for b in node.body for n in ast.walk(b)}
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # ``from pkg import module``
    return out


def _sources(*packages: str) -> dict[str, set[str]]:
    files = [p for pkg in packages for p in (ROOT / pkg).rglob("*.py") if "migrations/versions" not in str(p)]
    modules = {_module(p): p for p in files}
    return {m: {i for i in _imports(p) if i in modules or i.split(".")[0] == "benchmarks"} for m, p in modules.items()}


def _layer(module: str) -> tuple[str, int] | None:
    for prefix, rank in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, rank
    return None


def test_the_package_never_imports_the_benchmarks_and_the_engine_never_imports_the_service() -> None:
    graph = _sources("service", "model_core")
    wrong = [(m, i) for m, deps in graph.items() for i in deps
             if i.startswith("benchmarks") or (m.startswith("model_core") and i.startswith("service"))]  # fmt: skip
    assert not wrong, wrong


def test_every_service_module_has_a_layer_and_imports_point_inward() -> None:
    graph = _sources("service", "model_core")
    unplaced = [m for m in graph if m.startswith("service.") and _layer(m) is None]
    assert not unplaced, f"modules outside every layer: {unplaced}"
    outward = []
    for m, deps in graph.items():
        mine = _layer(m)
        if mine is None:
            continue
        for i in deps:
            theirs = _layer(i)
            if theirs is not None and theirs[1] > mine[1]:
                outward.append(f"{m} ({mine[0]}) imports {i} ({theirs[0]})")
    assert not outward, "\n".join(outward)


def test_the_client_needs_only_the_wire_schemas() -> None:
    graph = _sources("service", "model_core")
    deps = {i for m, d in graph.items() if m == "service.client" for i in d if i.startswith("service")}
    assert deps <= {"service.schemas", "service.client"}, deps


def test_no_import_cycles() -> None:
    graph = _sources("service", "model_core")
    # a module importing its own package's __init__ (or the reverse) is not a cycle of design
    edges = {m: {i for i in deps if i != m and not m.startswith(i + ".") and not i.startswith(m + ".")}
             for m, deps in graph.items()}  # fmt: skip
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                cycles.append([*stack[stack.index(n):], n] if n in stack else [m, n])
            elif n not in state:
                visit(n, [*stack, n])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_http_framework_stays_at_the_edge_and_torch_in_the_worker() -> None:
    files = [p for p in (ROOT / "service").rglob("*.py") if "migrations/versions" not in str(p)]
    wrong = []
    for path in files:
        module, imports = _module(path), {i.split(".")[0] for i in _imports(path)}
        layer = _layer(module)
        if layer is not None and layer[1] < LAYERS["service.http"] and "litestar" in imports:
            wrong.append(f"{module} imports litestar below the HTTP edge")
        if "torch" in imports and not module.startswith(("service.jobs.training", "service.jobs.int8", "service.cli.benchmark")):
            wrong.append(f"{module} imports torch outside the worker's training")
    assert not wrong, "\n".join(wrong)
