"""The package's shape (docs/architecture.md): layers that import downwards only, no import cycles,
modules under 400 lines and functions under 60.

Imports are read from the source (every ``import``/``from`` statement, also those inside functions), so a
lazy import that goes upwards is caught as well as a module-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fluid_airflow"

#: Highest first. A module may import modules of its own layer or of a lower one, never of a higher one.
AIRFLOW_FACING = ("operators", "sensors", "triggers", "decorators", "plugins", "ui", "cli", "macros", "links")
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("Airflow-facing", (*AIRFLOW_FACING, "get_provider_info")),
    ("control plane", ("hooks.fluid", "fluid")),
    ("task runner", ("runner",)),
    ("XCom backend", ("vineyard.xcom", "vineyard.store")),
    ("lifecycle", ("vineyard.lifecycle",)),
    ("data", ("vineyard.data",)),
    ("local daemons", ("vineyard.local",)),
    ("Vineyard client", ("hooks.vineyard", "vineyard.client")),
    ("base", ("config", "exceptions", "units", "_vineyard_import")),
]
#: Package ``__init__`` modules that only hold a docstring (no imports), layer-less.
NAMESPACES = {"hooks", "vineyard"}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int | None:
    """Index in :data:`LAYERS` of ``module`` (longest matching prefix wins), None for a namespace."""
    if module == "":  # fluid_airflow/__init__.py: the version and the vineyard import shim
        return len(LAYERS) - 1
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[0]
            ):
                best = (len(prefix), index)
    return None if best is None else best[1]


def _imports(module: str) -> set[str]:
    """Our modules ``module`` imports (``from x import y`` counts as ``x.y`` when that is a module)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                base = ".".join([*anchor, *([base] if base else [])])
                base = f"fluid_airflow.{base}" if base else "fluid_airflow"
            inner = base.removeprefix("fluid_airflow").lstrip(".")
            # ``from x import y`` imports the module ``x.y`` when there is one, else a name of ``x``
            names = [
                f"{base}.{a.name}" if f"{inner}.{a.name}".lstrip(".") in MODULES else base for a in node.names
            ]
        else:
            continue
        for name in names:
            if name == "fluid_airflow" or name.startswith("fluid_airflow."):
                inner = name.removeprefix("fluid_airflow").lstrip(".")
                if inner in MODULES and inner != module:
                    found.add(inner)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in MODULES if m not in NAMESPACES and _layer(m) is None)
    assert not unplaced, (
        f"place these modules in a layer of tests/test_layers.py and docs/architecture.md: {unplaced}"
    )


def test_namespaces_import_nothing():
    assert {m: sorted(GRAPH[m]) for m in NAMESPACES if GRAPH[m]} == {}


def test_imports_flow_downwards():
    upwards = []
    for module, imported in GRAPH.items():
        here = _layer(module)
        for other in imported:
            there = _layer(other)
            if here is not None and there is not None and there < here:
                upwards.append(f"{module} ({LAYERS[here][0]}) imports {other} ({LAYERS[there][0]})")
    assert not upwards, "\n".join(sorted(upwards))


def test_no_import_cycles():
    cycles = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for other in sorted(GRAPH[module]):
            if state.get(other) == 1:
                cycles.append(" -> ".join([*stack[stack.index(other) :], other]))
            elif other not in state:
                visit(other, [*stack, other])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_modules_stay_small():
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not big, f"split these modules (lines): {big}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_functions_stay_short(module: str):
    source = MODULES[module].read_text()
    lines = source.splitlines()
    long = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            # A reason given in a comment on the ``def`` line lets a longer function stand.
            if length > MAX_FUNCTION_LINES and "#" not in lines[node.lineno - 1]:
                long.append(f"{node.name} ({length} lines)")
    assert not long, f"{module}: {long}"


def test_the_layer_check_sees_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The check can fail: a low module importing the backend is reported."""
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from fluid_airflow.vineyard import xcom\n")
    monkeypatch.setitem(MODULES, "vineyard.client.fake", fake)
    assert _imports("vineyard.client.fake") == {"vineyard.xcom"}
    assert _layer("vineyard.client.fake") > _layer("vineyard.xcom")  # type: ignore[operator]
