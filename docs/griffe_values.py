"""A griffe extension for the API reference: defaults shown as values, not as constant names.

The code names its defaults (``max_connections: int = DEFAULT_MAX_CONNECTIONS``) so that each
lives in one place; a reader of the reference wants ``256``. Two rules, applied to every
function of the package before mkdocstrings renders it:

- a default that names a module-level constant is shown as the constant's value;
- a ``NOT_GIVEN`` default ("not given: fall back to something") is shown as the expression
  the parameter's docstring gives after ``Default:``, e.g. ``Default: `client.timeout`.``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

#: ``Default: `expr``` in a parameter's description.
_DOCUMENTED_DEFAULT = re.compile(r"Default:\s+`([^`]+)`")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _constant_value(func: griffe.Function, name: str) -> str | griffe.Expr | None:
    member = func.module.members.get(name)
    if member is None or member.is_alias or not isinstance(member, griffe.Attribute):
        return None
    return member.value


def _documented_defaults(func: griffe.Function) -> dict[str, str]:
    """``{parameter: default}`` from the Args section that documents ``func``."""
    owner: griffe.Object = func
    if func.name == "__init__" and isinstance(func.parent, griffe.Class):
        owner = func.parent  # the class docstring documents __init__ (merge_init_into_class)
    if owner.docstring is None:
        return {}
    found: dict[str, str] = {}
    sections = owner.docstring.parse("google", warnings=False)
    for section in sections:
        if section.kind is griffe.DocstringSectionKind.parameters:
            for parameter in section.value:
                match = _DOCUMENTED_DEFAULT.search(parameter.description)
                if match:
                    found[parameter.name] = match.group(1)
    return found


def _show_values(func: griffe.Function) -> None:
    documented: dict[str, str] | None = None
    for parameter in func.parameters:
        default = str(parameter.default) if parameter.default is not None else ""
        if default == "NOT_GIVEN":
            if documented is None:
                documented = _documented_defaults(func)
            if parameter.name in documented:
                parameter.default = documented[parameter.name]
        elif _IDENTIFIER.fullmatch(default) and default not in {"None", "True", "False"}:
            value = _constant_value(func, default)
            if value is not None:
                parameter.default = value


def _walk(obj: griffe.Object) -> None:
    for member in obj.members.values():
        if member.is_alias:
            continue
        if isinstance(member, griffe.Function):
            _show_values(member)
        elif isinstance(member, (griffe.Class, griffe.Module)):
            _walk(member)


class ShowDefaultValues(griffe.Extension):
    """Rewrite parameter defaults once the whole package is loaded (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Walk every module, class and function of the package."""
        _walk(pkg)
