"""The layers hold: `hub/__init__` and `hub.auth` load their names on first use, so importing a
pure module does not import uvicorn, starlette, PyJWT or prometheus_client; and no two modules
of `hub/` import each other, directly or round a loop."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import hub
import hub.auth

HEAVY = ("uvicorn", "starlette", "jwt", "prometheus_client")

# Modules that must stay importable without the web stack (the wire format, patterns, errors,
# validation, stats, the backend contract and the memory backend, token grants, the fan-out and
# the subscriber's op rules).
PURE = (
    "hub",
    "hub.protocol",
    "hub.wire",
    "hub.fanout",
    "hub.wire.topics",
    "hub.wire.patterns",
    "hub.wire.keys",
    "hub.wire.event_filter",
    "hub.errors",
    "hub.config",
    "hub.wire.catalog",
    "hub.wire.catalog_plugins",
    "hub.asyncapi",
    "hub.wire.json_rules",
    "hub.wire.validation",
    "hub.stats",
    "hub.backends",
    "hub.backends.base",
    "hub.backends.memory",
    "hub.auth.grants",
    "hub.auth.origins",
    "hub.wire.frames",
    "hub.transports.direct",
    "hub.fanout.manager",
    "hub.fanout.subscriber_session",
)


def run_fresh(code: str) -> str:
    """What a fresh interpreter prints running `code` (it must exit 0)."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def heavy_modules_after(statement: str) -> list[str]:
    """The heavy modules a fresh interpreter has loaded after running `statement`."""
    code = f"{statement}; import sys; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    return [m for m in run_fresh(code).split(",") if m]


def test_the_pure_modules_load_none_of_the_web_stack() -> None:
    assert heavy_modules_after("import " + ", ".join(PURE)) == []


@pytest.mark.parametrize("name", ["hub.protocol", "hub.wire.topics", "hub.wire.validation"])
def test_a_pure_module_alone_loads_none_of_the_web_stack(name: str) -> None:
    assert heavy_modules_after(f"import {name}") == []


def test_the_heavy_modules_load_when_their_names_are_used() -> None:
    # The check above is only worth something if this process could see them load.
    assert heavy_modules_after("from hub import create_app") != []
    assert "jwt" in heavy_modules_after("from hub.auth import mint_token")


@pytest.mark.parametrize("package", [hub, hub.auth], ids=lambda p: p.__name__)
def test_every_name_in_all_is_importable_in_a_fresh_process(package: ModuleType) -> None:
    names = ", ".join(package.__all__)
    assert run_fresh(f"from {package.__name__} import {names}; print('ok')") == "ok"


@pytest.mark.parametrize("package", [hub, hub.auth], ids=lambda p: p.__name__)
def test_every_name_in_all_is_importable(package: ModuleType) -> None:
    for item in package.__all__:
        namespace: dict[str, object] = {}
        exec(f"from {package.__name__} import {item}", namespace)
        assert namespace[item] is getattr(package, item)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        hub.no_such_name  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(ImportError):
        exec("from hub.auth import no_such_name", {})


def module_imports() -> dict[str, set[str]]:
    """hub module -> the hub modules it imports when it is imported (not under TYPE_CHECKING,
    not inside functions); a name from a lazy package counts as an import of its module."""
    root = Path(hub.__file__).parent
    modules: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def targets(name: str, names: list[str]) -> set[str]:
        found = {name} if name in modules else set()
        lazy: dict[str, str] = getattr(importlib.import_module(name), "_MODULE_OF", {})
        for item in names:
            if f"{name}.{item}" in modules:
                found.add(f"{name}.{item}")
            elif item in lazy:
                found.add(importlib.util.resolve_name(lazy[item], name))
        return found

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = importlib.util.resolve_name("." * node.level + base, package)
                if base.split(".")[0] == "hub":
                    edges |= targets(base, [a.name for a in node.names])
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
        graph[name] = edges - {name}
    return graph


def test_no_import_cycle_inside_hub() -> None:
    graph = module_imports()
    assert "hub.auth.grants" in graph["hub.limits"]  # lazy names count as the module's import
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            loop = [*path[path.index(name) :], name]
            raise AssertionError("import cycle: " + " -> ".join(loop))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
