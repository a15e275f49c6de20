"""The pure core loads no web stack: `hub/__init__` and `hub.auth` load their names on first use,
so importing a pure module does not import uvicorn, starlette, PyJWT or prometheus_client."""

from __future__ import annotations

import subprocess
import sys
from types import ModuleType

import pytest

import hub
import hub.auth

HEAVY = ("uvicorn", "starlette", "jwt", "prometheus_client")

# Modules that must stay importable without the web stack (the wire format, patterns, errors,
# validation, stats, the backend contract and the memory backend, token grants).
PURE = (
    "hub",
    "hub.protocol",
    "hub.topics",
    "hub.patterns",
    "hub.errors",
    "hub.config",
    "hub.catalog",
    "hub.json_rules",
    "hub.validation",
    "hub.stats",
    "hub.backends",
    "hub.backends.base",
    "hub.backends.memory",
    "hub.auth.grants",
    "hub.auth.origins",
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


@pytest.mark.parametrize("name", ["hub.protocol", "hub.topics", "hub.validation"])
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
