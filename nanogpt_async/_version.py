"""The package's version, read from its installed metadata once, on first use.

``pyproject.toml`` is the only place the version is written; ``nanogpt_async.__version__``, the
CLI's ``--version`` and the ``User-Agent`` header all read it here. Read lazily, and without
``importlib.metadata`` when the installed ``*.dist-info`` folder can be found on ``sys.path``
directly: that module costs 50 ms of CPU to import and search with (65 ms against a bare
interpreter's 13 ms, this machine), a tenth of the CLI's whole start-up (benchmark W10), and
every client needs the version for its ``User-Agent``.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

__all__ = ["package_version", "user_agent"]

_DISTRIBUTION = "nanogpt-async"
#: The distribution's name as a ``*.dist-info`` folder spells it (normalized, PEP 503 / 427).
_FOLDER_NAME = "nanogpt_async"
_SUFFIX = ".dist-info"


@functools.cache
def package_version() -> str:
    """The installed distribution's version (``"0+unknown"`` from a tree never installed)."""
    found = _version_on_path()
    if found is not None:
        return found
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(_DISTRIBUTION)
    except PackageNotFoundError:  # pragma: no cover - a source tree run without installing
        return "0+unknown"


def _version_on_path() -> str | None:
    """The ``Version`` of the first ``nanogpt_async-*.dist-info`` on ``sys.path``, or ``None``.

    The first on ``sys.path``, as ``importlib.metadata`` finds it; ``None`` if there is none
    (an egg-info install, a source tree) or it is unreadable: the caller asks that module then.
    """
    for entry in sys.path:
        try:
            names = [item.name for item in os.scandir(entry or ".") if item.is_dir()]
        except OSError:  # a zip file, a missing folder
            continue
        for name in names:
            if not name.endswith(_SUFFIX):
                continue
            distribution = name[: -len(_SUFFIX)].partition("-")[0]
            if distribution.lower().replace("-", "_").replace(".", "_") != _FOLDER_NAME:
                continue
            return _metadata_version(Path(entry or ".", name, "METADATA"))
    return None


def _metadata_version(path: Path) -> str | None:
    try:
        with path.open(encoding="utf-8") as metadata:
            for line in metadata:
                if not line.strip():
                    break  # the headers end at the first blank line
                key, _, value = line.partition(":")
                if key.strip().lower() == "version":
                    return value.strip() or None
    except (OSError, UnicodeDecodeError):
        return None
    return None


@functools.cache
def user_agent() -> str:
    """The ``User-Agent`` of every API call: ``nanogpt-async/<version>``."""
    return f"{_DISTRIBUTION}/{package_version()}"
