"""What every command shares: exit codes, one-line errors, the client, running async code."""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import anyio
import click

from nanogpt_async._client import AsyncNanoGPT
from nanogpt_async._errors import (
    FATAL_ERRORS,
    APIStatusError,
    FolderInUseError,
    InvalidInputError,
    NanoGPTError,
)
from nanogpt_async._http._retry import RetryPolicy, should_retry

__all__ = [
    "EXIT_BUDGET",
    "EXIT_BUSY",
    "EXIT_FAILED",
    "EXIT_FATAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Output",
    "cli_message",
    "exit_code_for",
    "make_client",
    "run_async",
    "silence",
]

_T = TypeVar("_T")

#: Everything asked for succeeded (a resumed batch whose items were all done before counts).
EXIT_OK = 0
#: Some requests failed (a batch finished, but items failed); the rest were saved.
EXIT_FAILED = 1
#: Bad usage: unknown option, bad value, unreadable prompt file, no API key (click's own code).
EXIT_USAGE = 2
#: Fatal for the account: bad key, no balance, not permitted, daily cap. Nothing more would work.
EXIT_FATAL = 3
#: ``--max-cost`` was reached: the batch stopped before starting every item.
EXIT_BUDGET = 4
#: Interrupted with Ctrl-C (128 + SIGINT, the shell convention). SIGTERM and SIGHUP stop a
#: batch the same way and exit 128 + their number: 143 and 129.
EXIT_INTERRUPTED = 130
#: The output folder is in use by another run (sysexits' EX_TEMPFAIL: try again later).
EXIT_BUSY = 75


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an error that ended a command."""
    if isinstance(exc, FATAL_ERRORS):
        return EXIT_FATAL
    if isinstance(exc, FolderInUseError):
        return EXIT_BUSY
    if isinstance(exc, InvalidInputError):
        return EXIT_USAGE
    return EXIT_FAILED


#: What the library's hints call the Python API, and what the command line calls the same thing.
_CLI_WORDS = (
    ("(or api_key=)", "(or --api-key)"),
    ("client.images.models()", "`nanogpt-async models`"),
    ("the base URL", "the base URL (--base-url, NANOGPT_BASE_URL)"),
    ("RetryPolicy(retry_ambiguous=True)", "--retry-ambiguous"),
)


#: Batch options named in the library's own messages (``run without max_cost``).
_PYTHON_OPTION = re.compile(r"(?<![\w\-.'\"])max_cost(?![\w'\"])")


def _hint_owner(exc: APIStatusError) -> str:
    """The name of the class whose ``hint`` ``exc`` shows (a subclass may have its own)."""
    return next((c.__name__ for c in type(exc).__mro__ if "hint" in vars(c)), "")


def _server_error_hint(exc: APIStatusError, policy: RetryPolicy) -> str:
    """The 5xx hint, true to what the retry policy did with this answer."""
    if policy.max_retries == 0:
        return (
            "A failure on NanoGPT's side, not retried because retries are off "
            "(--max-retries 0); try again later, or allow retries with --max-retries"
        )
    if exc.retry_after is not None and exc.retry_after > policy.retry_after_max:
        return (
            f"A failure on NanoGPT's side; it asked to wait {exc.retry_after:.0f} s, longer "
            f"than the client waits ({policy.retry_after_max:.0f} s), so it stopped retrying: "
            "try again after that"
        )
    if not should_retry(policy, exc, idempotent=False):
        return f"A failure on NanoGPT's side; a {exc.status_code} is not retried, try again later"
    retries = policy.max_retries
    return (
        f"A failure on NanoGPT's side that persisted through {retries} "
        f"{'retry' if retries == 1 else 'retries'} (--max-retries {retries}); try again later"
    )


def cli_message(exc: BaseException, policy: RetryPolicy | None = None) -> str:
    """``str(exc)`` with the hint a command-line user can act on.

    The library's hints name the Python API (``api_key=``, ``client.images.models()``); here
    they name the flag or the command. The 5xx hint says what the retries really did under
    ``policy`` (the CLI's ``--max-retries``).
    """
    text = str(exc)
    if isinstance(exc, InvalidInputError):
        # The batch's own words for its options: the CLI spells them as flags.
        return _PYTHON_OPTION.sub(lambda m: "--" + m.group().replace("_", "-"), text)
    if not isinstance(exc, APIStatusError) or not exc.hint or not text.endswith(exc.hint):
        return text
    if _hint_owner(exc) == "InternalServerError":
        hint = _server_error_hint(exc, policy or RetryPolicy())
    else:
        hint = exc.hint
        for python, command_line in _CLI_WORDS:
            hint = hint.replace(python, command_line)
    return text[: -len(exc.hint)] + hint


class Output:
    """stdout/stderr writers that never let the API key through.

    The library already keeps the key out of its messages; this is the belt to those braces,
    because a command line's output ends up in CI logs and bug reports.
    """

    def __init__(self) -> None:
        """Start with nothing to hide."""
        self._secrets: list[str] = []
        #: The client's retry policy (`make_client` sets it), for true 5xx hints.
        self.retry_policy = RetryPolicy()

    def hide(self, secret: str | None) -> None:
        """Never print ``secret`` (replaced with ``<hidden>``)."""
        if secret and len(secret.strip()) >= 4:
            self._secrets.append(secret.strip())

    def scrub(self, text: str) -> str:
        """``text`` with every hidden secret replaced."""
        for secret in self._secrets:
            text = text.replace(secret, "<hidden>")
        return text

    def out(self, text: str = "") -> None:
        """A line on stdout (nothing once stdout is gone: see `err`)."""
        try:
            click.echo(self.scrub(text))
        except OSError:
            silence(stderr=False)

    def err(self, text: str = "") -> None:
        """A line on stderr; nothing once stderr is gone.

        A dropped ssh session (SIGHUP) leaves a terminal that answers every write with EIO, a
        closed pipe answers EPIPE. A batch must still finish saving what it paid for, so a
        failed write silences the stream for the rest of the run instead of raising: the
        manifest and the exit code still tell what happened.
        """
        try:
            click.echo(self.scrub(text), err=True)
        except OSError:
            silence(stderr=True)

    def error(self, exc: BaseException | str) -> None:
        """``error: <one line>`` on stderr (the request id is already part of the message)."""
        self.err("error: " + self.describe(exc))

    def describe(self, exc: BaseException | str) -> str:
        """An error as one line in the command line's words (see `cli_message`)."""
        message = exc if isinstance(exc, str) else cli_message(exc, self.retry_policy)
        return " ".join((message or type(exc).__name__).split())

    def show_warning(self, message: Warning | str, *_where: object, **_how: object) -> None:
        """Print warnings as ``warning: ...`` lines, not with a source location.

        Installed as ``warnings.showwarning``; the category, file and line it is also given
        are left out on purpose.
        """
        self.err(f"warning: {message}")


def silence(*, stderr: bool) -> None:
    """Send what this process writes later to stderr (or stdout) to the null device.

    For a stream that is gone (EIO, EPIPE). Python flushes both at exit, and a failing flush
    there would turn the exit code into 120: the stuck buffer is dropped with the stream.
    """
    null = Path(os.devnull).open("w", encoding="utf-8")  # noqa: SIM115 - lives until exit
    if stderr:
        sys.stderr = null
    else:
        sys.stdout = null


#: The one output of this process (commands are short-lived, tests use CliRunner per call).
output = Output()


def make_client(
    *,
    api_key: str | None,
    base_url: str | None,
    timeout: float | None = None,
    max_retries: int | None = None,
    max_connections: int | None = None,
    retry_ambiguous: bool = False,
    **pacing: Any,
) -> AsyncNanoGPT:
    """Build the client from options (which already fell back to the environment).

    ``retry_ambiguous`` is ``--retry-ambiguous``: retry paid requests that may already have
    been charged (`nanogpt_async.RetryPolicy`'s ``retry_ambiguous``). ``pacing``: ``rps``,
    ``max_wait``, ``limits_url`` when the command has those options.
    """
    if not api_key or not api_key.strip():
        raise click.UsageError(
            "no NanoGPT API key: pass --api-key or set NANOGPT_API_KEY "
            "(create one at https://nano-gpt.com/api). To try things without one: "
            "nanogpt-async demo"
        )
    output.hide(api_key)
    kwargs: dict[str, Any] = {}
    if timeout is not None:
        kwargs["timeout"] = timeout
    if max_retries is not None:
        kwargs["max_retries"] = max_retries
    if retry_ambiguous:
        kwargs["retry_policy"] = RetryPolicy(retry_ambiguous=True)
    if max_connections is not None:
        kwargs["max_connections"] = max_connections
    kwargs.update({name: value for name, value in pacing.items() if value is not None})
    try:
        client = AsyncNanoGPT(api_key=api_key, base_url=base_url, **kwargs)
    except InvalidInputError as exc:
        raise click.UsageError(str(exc)) from None
    output.retry_policy = client.retry_policy
    return client


def _leaf(exc: BaseException) -> BaseException:
    """The error inside task-group wrappers: the first library error, else the first one."""
    while True:
        inner = getattr(exc, "exceptions", None)
        if not isinstance(inner, tuple) or not inner:
            return exc
        exc = next((e for e in inner if isinstance(e, NanoGPTError)), inner[0])


def run_async(func: Callable[[], Awaitable[_T]], *, verbose: bool = False) -> _T:
    """Run ``func`` on asyncio; turn any error into one line and the documented exit code."""
    try:
        return anyio.run(func, backend="asyncio")
    except click.ClickException:
        raise
    except (KeyboardInterrupt, Exception) as raised:
        exc = _leaf(raised)
        if isinstance(exc, KeyboardInterrupt):
            output.err("interrupted")
            _exit(EXIT_INTERRUPTED)
        if isinstance(exc, click.ClickException):
            raise exc from None
        if isinstance(exc, NanoGPTError):
            output.error(exc)
            _exit(exit_code_for(exc))
        if isinstance(exc, OSError):
            output.error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
            _exit(EXIT_FAILED)
        # A bug, not a user's mistake: still one line, with the traceback on request.
        if verbose:
            output.err("".join(traceback.format_exception(raised)))
        output.error(
            f"unexpected {type(exc).__name__}: {exc} (run with --verbose for the traceback "
            "and report it)"
        )
        _exit(EXIT_FAILED)


def _exit(code: int) -> NoReturn:
    sys.stdout.flush()
    raise click.exceptions.Exit(code)


class _ScrubbingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return output.scrub(super().format(record))


def configure(*, verbose: bool) -> None:
    """Process-wide set-up: one-line warnings, and the library's log on stderr if asked."""
    warnings.showwarning = output.show_warning
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_ScrubbingFormatter("%(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("nanogpt_async")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
