"""The API reference reads cleanly: markdown cross-references, values for defaults, no privates.

The strict docs build (`.ci/run`) catches a cross-reference that does not resolve; these catch
what it lets through: Sphinx roles printed as text, and constant names where a reader wants
the value.
"""

from __future__ import annotations

import re
from pathlib import Path

import griffe
import pytest

ROOT = Path(__file__).resolve().parents[1]
API_PAGE = ROOT / "docs" / "reference" / "api.md"
SPHINX_ROLE = re.compile(r":(class|meth|func|attr|exc|data|mod|obj|ref):`")
CONSTANT_NAME = re.compile(r"\b(NOT_GIVEN|DEFAULT_[A-Z_]+|[A-Z][A-Z0-9]*_[A-Z0-9_]+)\b")


@pytest.fixture(scope="module")
def package() -> griffe.Module:
    # As mkdocs.yml configures them, in this order.
    extensions = griffe.load_extensions(
        "dataclasses", f"{ROOT / 'docs' / 'griffe_values.py'}:ShowDefaultValues"
    )
    loaded = griffe.load("nanogpt_async", extensions=extensions, search_paths=[str(ROOT)])
    assert isinstance(loaded, griffe.Module)
    return loaded


def _documented_names() -> list[str]:
    return re.findall(r"^::: nanogpt_async\.([A-Za-z_]\w*)$", API_PAGE.read_text(), re.MULTILINE)


def test_no_docstring_uses_a_sphinx_role_mkdocstrings_would_print_as_text():
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "nanogpt_async").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if SPHINX_ROLE.search(line)
    ]
    assert offenders == []


def test_every_public_signature_shows_default_values_not_constant_names(package):
    shown = []
    for name in _documented_names():
        if name.startswith("_"):
            continue
        obj = package[name].final_target
        functions = [obj] if isinstance(obj, griffe.Function) else []
        if isinstance(obj, griffe.Class):
            functions = [
                m
                for m in obj.members.values()
                if isinstance(m, griffe.Function) and not m.name.startswith("_")
            ]
            init = obj.members.get("__init__")
            if isinstance(init, griffe.Function):
                functions.append(init)
        for function in functions:
            for parameter in function.parameters:
                default = str(parameter.default)
                if CONSTANT_NAME.search(default):
                    shown.append(f"{name}.{function.name}({parameter.name}={default})")
    assert shown == []


def test_the_client_shows_its_real_defaults(package):
    init = package["AsyncNanoGPT"].final_target["__init__"]
    defaults = {p.name: str(p.default) for p in init.parameters}

    assert defaults["max_connections"] == "256"
    assert defaults["timeout"] == "httpx.Timeout(300.0, connect=10.0)"
    assert defaults["max_retries"] == "retry_policy.max_retries"
    assert defaults["max_response_bytes"] == "256 * 1024 * 1024"


def test_private_modules_on_the_api_page_add_no_heading_or_contents_entry():
    text = API_PAGE.read_text(encoding="utf-8")
    for block in re.findall(r"^::: nanogpt_async\._\w+\n((?:    .*\n)+)", text, re.MULTILINE):
        assert "show_root_heading: false" in block
        assert "show_root_toc_entry: false" in block
