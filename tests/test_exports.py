"""The public API is explicit: each module's `__all__` names what exists, and `hub` re-exports
public names of its modules."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import pytest

import hub


def hub_module_names() -> list[str]:
    names = ["hub"]
    for info in pkgutil.walk_packages(hub.__path__, prefix="hub."):
        if info.name.rsplit(".", 1)[-1] != "__main__":  # importing it runs the CLI
            names.append(info.name)
    return sorted(names)


MODULES = hub_module_names()


def test_the_core_modules_are_discovered() -> None:
    for name in (
        "hub.protocol",
        "hub.wire.topics",
        "hub.backends.memory_log",
        "hub.backends.memory",
        "hub.fanout.connection",
        "hub.fanout.manager",
        "hub.transports.ws_endpoint",
        "hub.transports.http_api",
        "hub.transports.uvicorn_ws",
        "hub.transports.server",
        "hub.cli",
        "hub.config",
    ):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_module_declares_all(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list), f"{name} has no __all__ list"
    assert all(isinstance(item, str) for item in exported)
    assert len(exported) == len(set(exported)), f"{name}.__all__ has duplicates"


@pytest.mark.parametrize("name", MODULES)
def test_every_name_in_all_exists(name: str) -> None:
    module = importlib.import_module(name)
    missing = [item for item in getattr(module, "__all__", []) if not hasattr(module, item)]
    assert missing == [], f"{name}.__all__ names what it does not define: {missing}"


def test_star_import_of_hub_gives_exactly_its_all() -> None:
    namespace: dict[str, object] = {}
    exec("from hub import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == sorted(hub.__all__)


def test_hub_all_names_are_importable_from_hub() -> None:
    for item in hub.__all__:
        exec(f"from hub import {item}", {})
        assert getattr(hub, item) is not None


def public_objects() -> dict[int, list[str]]:
    """id(object) -> 'module.name' for everything a submodule exports in its __all__."""
    found: dict[int, list[str]] = {}
    for name in MODULES:
        if name == "hub":
            continue
        module: ModuleType = importlib.import_module(name)
        for item in getattr(module, "__all__", []):
            found.setdefault(id(getattr(module, item)), []).append(f"{name}.{item}")
    return found


def test_hub_reexports_only_names_its_modules_export() -> None:
    exported = public_objects()
    private = [item for item in hub.__all__ if id(getattr(hub, item)) not in exported]
    assert private == [], f"hub re-exports names no module lists in __all__: {private}"
