"""The package's version, read from its installed metadata once, on first use.

``pyproject.toml`` is the only place the version is written; ``nanogpt_async.__version__``, the
CLI's ``--version`` and the ``User-Agent`` header all read it here. Read lazily:
``importlib.metadata`` costs 15-60 ms to import (measured under load), more than
``import nanogpt_async`` itself (17-22 ms).
"""

from __future__ import annotations

import functools

__all__ = ["package_version", "user_agent"]

_DISTRIBUTION = "nanogpt-async"


@functools.cache
def package_version() -> str:
    """The installed distribution's version (``"0+unknown"`` from a tree never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(_DISTRIBUTION)
    except PackageNotFoundError:  # pragma: no cover - a source tree run without installing
        return "0+unknown"


@functools.cache
def user_agent() -> str:
    """The ``User-Agent`` of every API call: ``nanogpt-async/<version>``."""
    return f"{_DISTRIBUTION}/{package_version()}"
