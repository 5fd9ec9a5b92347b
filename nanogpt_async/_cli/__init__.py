"""The ``nanogpt-async`` command line (also ``python -m nanogpt_async``).

A thin layer over the library: the commands live in ``_commands``, the batch glue (progress,
Ctrl-C, summary) in ``_batchrun``. Nothing here is imported by ``import nanogpt_async``.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["main"]

#: Where to install from until a release is on PyPI (the README says the same).
INSTALL_HINT = (
    "pip install 'nanogpt-async[cli] @ git+https://github.com/nanogpt-async/nanogpt-async' "
    "(or, in a clone of it, pip install '.[cli]')"
)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line; exits the process with the documented exit code."""
    _skip_httpx_command_line()
    try:
        from nanogpt_async._cli._commands import cli
    except ImportError as exc:  # pragma: no cover - depends on what is installed
        missing = exc.name or "click"
        sys.stderr.write(f"error: the command line needs {missing!r}: {INSTALL_HINT}\n")
        sys.exit(2)
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="nanogpt-async")
    finally:
        _leave_the_heap_to_the_os()


def _leave_the_heap_to_the_os() -> None:
    """Spare the interpreter's last garbage collections: the process ends right after this.

    At exit Python's collector walks every object the run left (the modules of the HTTP
    stacks, a batch's index): about 0.12 s of CPU after a one-prompt ``batch`` at load 10,
    about 0.02 s once they are frozen out of its reach (`gc.freeze`). Nothing is lost by it:
    files are closed and flushed explicitly, the interpreter flushes the standard streams,
    atexit handlers still run, and objects still freed by reference counting; only garbage
    in reference cycles is left to the OS instead of being finalized.
    """
    gc.freeze()


def _skip_httpx_command_line() -> None:
    """Keep httpx from importing its own command line (rich, pygments) into ours.

    ``import httpx`` imports ``httpx._main`` whenever click and rich are installed (they are:
    our ``cli`` extra), 90 ms of CPU of httpx's 180 ms (this machine), at every start of ours,
    for a command line never run here. A ``None`` in ``sys.modules`` makes that import fail,
    which httpx expects (it then defines a stub ``httpx.main``). Only in a process that has not
    imported httpx yet: never under someone else's feet.
    """
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", cast("ModuleType", None))
