"""The public surface: what users import is what we mean to export, and nothing private."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from types import ModuleType

import pytest

import nanogpt_async
import nanogpt_async.testing

PUBLIC_PACKAGES = [nanogpt_async, nanogpt_async.testing]


def _type_checking_imports(package: ModuleType) -> dict[str, tuple[str, str]]:
    """``{exported name: (module, name there)}`` of the imports under ``if TYPE_CHECKING:``."""
    source = Path(inspect.getfile(package)).read_text(encoding="utf-8")
    found: dict[str, tuple[str, str]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for statement in ast.walk(node):
                if isinstance(statement, ast.ImportFrom) and statement.module:
                    for alias in statement.names:
                        found[alias.asname or alias.name] = (statement.module, alias.name)
    return found


def _public_names(package: ModuleType) -> set[str]:
    return {name for name in package.__all__ if not name.startswith("__")}


@pytest.mark.parametrize("package", PUBLIC_PACKAGES, ids=lambda p: p.__name__)
def test_all_lists_every_lazily_loaded_name_once(package: ModuleType) -> None:
    assert len(set(package.__all__)) == len(package.__all__), "a name is exported twice"
    assert set(package._HOME) <= _public_names(package), "_HOME loads a name __all__ omits"


@pytest.mark.parametrize("package", PUBLIC_PACKAGES, ids=lambda p: p.__name__)
def test_type_checkers_see_exactly_the_exported_objects(package: ModuleType) -> None:
    seen = _type_checking_imports(package)
    assert set(seen) == _public_names(package)
    for name, (module, original) in seen.items():
        home = getattr(importlib.import_module(module), original)
        assert getattr(package, name) is home, f"{name} is not {module}.{original}"


@pytest.mark.parametrize("package", PUBLIC_PACKAGES, ids=lambda p: p.__name__)
def test_no_export_is_private(package: ModuleType) -> None:
    assert [name for name in _public_names(package) if name.startswith("_")] == []


def test_public_classes_and_functions_present_themselves_as_nanogpt_async() -> None:
    for name in nanogpt_async.__all__:
        value = getattr(nanogpt_async, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__ == "nanogpt_async", name


@pytest.mark.parametrize("package", PUBLIC_PACKAGES, ids=lambda p: p.__name__)
def test_every_public_class_and_function_has_a_docstring(package: ModuleType) -> None:
    undocumented = [
        name
        for name in package.__all__
        if (inspect.isclass(value := getattr(package, name)) or inspect.isfunction(value))
        and not (value.__doc__ or "").strip()
    ]
    assert undocumented == []


def test_every_export_of_the_package_is_in_the_api_reference() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "reference" / "api.md").read_text()
    missing = [n for n in _public_names(nanogpt_async) if f"::: nanogpt_async.{n}\n" not in page]
    assert missing == []


def test_an_unknown_name_raises_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = nanogpt_async.no_such_thing


def test_the_package_ships_its_type_information() -> None:
    assert (Path(inspect.getfile(nanogpt_async)).parent / "py.typed").is_file()
