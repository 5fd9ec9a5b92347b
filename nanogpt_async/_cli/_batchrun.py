"""The batch command's engine room, shared with ``demo``: prompts in, progress, Ctrl-C, summary.

``batch`` and ``demo`` both end in `run_batch`, so the demo shows exactly what a real
batch does.
"""

from __future__ import annotations

import itertools
import os
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
import anyio.to_thread
import click

from nanogpt_async._batch._chunks import ChunkedInput
from nanogpt_async._batch._fence import DEFAULT_LEASE
from nanogpt_async._batch._results import BatchProgress, BatchSummary, ItemResult
from nanogpt_async._cli._common import (
    EXIT_BUDGET,
    EXIT_FAILED,
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    output,
    silence,
)
from nanogpt_async._errors import InvalidInputError
from nanogpt_async._input._prompts import (
    PromptFormat,
    PromptStamp,
    check_prompts,
    prompt_chunks,
    read_prompts,
)

if TYPE_CHECKING:
    from nanogpt_async._batch._runner import Batch
    from nanogpt_async._batch._shards import Shard
    from nanogpt_async._client import AsyncNanoGPT

__all__ = ["BatchSettings", "PromptSource", "aiter_sync", "prompt_items", "run_batch"]

#: Prompt files up to this size are read once up front: the progress bar gets a total (and an
#: ETA) and a bad line fails before anything is paid. Bigger ones stream with an unknown total.
PRECOUNT_MAX_BYTES = 64 * 1024 * 1024
#: Lines read per worker-thread hop: stdin may block, the event loop must not. A resume takes
#: each such list whole (`ChunkedInput`), so this is also its chunk (see `_TRIAGE_CHUNK`): with
#: 1,024 a million-line resume made 2,000 hops (a read and a triage per list), and spent about
#: 0.3 s more of its 2.8 s of triage before its first new request (A/B, load 2.5-2.9).
_CHUNK = 4096
#: 128 + SIGTERM and 128 + SIGHUP: a batch stopped by ``kill``, ``docker stop`` or a hang-up.
EXIT_INTERRUPTED_TERM = 143
EXIT_INTERRUPTED_HUP = 129
#: Failed items printed one per line as they happen; past this only the count grows.
_MAX_FAILURE_LINES = 20


@dataclass(frozen=True)
class BatchSettings:
    """What ``batch`` and ``demo`` pass to `run_batch`."""

    out: Path
    concurrency: int
    download_concurrency: int
    max_cost: float | None
    retry_failed: bool
    progress: str
    progress_interval: float
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: Write or refresh ``out/index.html`` at the end (``--no-gallery`` turns it off).
    gallery: bool = True
    #: ``--shared-budget``: ``max_cost`` is one cap kept in Redis under this name.
    shared_budget: str | None = None
    #: ``--shard``: this process's shard of the input.
    shard: Shard | None = None
    #: ``--job-id``: the job's name in the at-most-once fence.
    job_id: str | None = None
    #: How long a killed process's claims stay its own.
    fence_lease: float = DEFAULT_LEASE


@dataclass
class PromptSource:
    """Requests to run: an async iterator (read off the event loop) and the count if known."""

    items: AsyncIterator[Any]
    total: int | None


def _count_records(path: str, prompt_format: PromptFormat) -> tuple[int, PromptStamp | None]:
    """The file's records, counted and checked whole, and its stamp if it did not change."""
    return check_prompts(path, format=prompt_format)


def _chunks(path: str, prompt_format: PromptFormat, *, checked: PromptStamp | None) -> ChunkedInput:
    """The records of PROMPTS, read in a worker thread a chunk at a time, handed over as lists.

    A resumed batch takes each list whole (`ChunkedInput`), not a record at a time.
    ``checked``: the file's stamp when it was checked whole (`prompt_items`), its ids too.
    Either way no repeated id gets past the reading (`_record_lists`): the batch need not
    check them again (``unique_ids``).
    """
    return ChunkedInput(_record_lists(path, prompt_format, checked=checked), unique_ids=True)


async def _record_lists(
    path: str, prompt_format: PromptFormat, *, checked: PromptStamp | None = None
) -> AsyncIterator[list[Any]]:
    """Lists of the records of PROMPTS, each read in one worker-thread call.

    A bad line ends the iteration with its error only after the good records read before it
    were handed out, so the batch stops exactly at the bad line. Standard input is read a
    record at a time: lines piped in slowly must not wait for a whole chunk.
    """
    failure: list[Exception] = []
    # A file is read in lists, in one tight loop for JSONL (`prompt_chunks`). A file whose ids
    # the check before the run found unique is not checked again while it is unchanged: by
    # neither this reader nor the batch (each check was 1-1.3 s of a million-line resume).
    iterator = (
        prompt_chunks(path, format=prompt_format, size=_CHUNK, checked=checked)
        if path != "-"
        else None
    )
    records = read_prompts(path, format=prompt_format) if iterator is None else None

    def take() -> list[dict[str, Any]]:
        chunk: list[dict[str, Any]] = []
        try:
            if iterator is not None:
                return next(iterator, chunk)
            if records is not None:
                chunk.extend(itertools.islice(records, 1))
        except Exception as exc:
            failure.append(exc)
        return chunk

    try:
        while chunk := await anyio.to_thread.run_sync(take):
            yield chunk
            if failure:
                break
        if failure:
            raise failure[0]
    finally:
        for opened in (iterator, records):
            if opened is not None:
                opened.close()


def prompt_items(path: str, prompt_format: str) -> PromptSource:
    """Open PROMPTS lazily; small files are checked (and counted) whole before any spend.

    Only regular files are read twice: a pipe or a process substitution (``<(...)``) would be
    empty the second time.

    Raises:
        click.BadParameter: the file is missing, unreadable, or has a bad line.
    """
    fmt: PromptFormat = prompt_format  # type: ignore[assignment] # click.Choice checked it
    total: int | None = None
    checked: PromptStamp | None = None
    if path != "-":
        try:
            info = Path(path).stat()
            if stat.S_ISREG(info.st_mode) and info.st_size <= PRECOUNT_MAX_BYTES:
                total, checked = _count_records(path, fmt)
        except InvalidInputError as exc:
            raise click.BadParameter(str(exc), param_hint="PROMPTS") from None
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {path!r}: {exc.strerror or exc}", param_hint="PROMPTS"
            ) from None
        except KeyboardInterrupt:
            # Click would turn it into "Aborted!" and exit 1; Ctrl-C means 130 everywhere.
            output.err("interrupted while checking the prompt file; nothing was sent")
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    return PromptSource(items=_chunks(path, fmt, checked=checked), total=total)


# -- progress --------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def progress_line(p: BatchProgress) -> str:
    """``done 40/100 failed 1 in-flight 8 cost $0.2000 rate 12.3/s eta 5s``."""
    total = "?" if p.total is None else str(p.total)
    parts = [f"done {p.done}/{total}", f"failed {p.failed}"]
    if p.skipped:
        parts.append(f"skipped {p.skipped}")
    parts += [
        f"in-flight {p.in_flight}",
        f"cost ${p.cost:.4f}",
        f"rate {p.rate:.1f}/s",
        f"eta {_duration(p.eta)}",
    ]
    return " ".join(parts)


class Reporter(Protocol):
    """Shows progress and per-item news while a batch runs."""

    def progress(self, snapshot: BatchProgress) -> None:
        """A new progress snapshot."""

    def message(self, text: str) -> None:
        """A line of news (a failed item, "stopping...")."""

    def close(self, last: BatchProgress | None) -> None:
        """The batch ended; ``last`` is the final snapshot when there was one."""


class PlainReporter:
    """A progress line on stderr every ``interval`` seconds, and one at the end."""

    def __init__(self, interval: float) -> None:
        """Print at most one line per ``interval`` seconds."""
        self._interval = interval
        self._last_printed = time.monotonic()
        self._last_line = ""

    def progress(self, snapshot: BatchProgress) -> None:
        """Print the line if the interval passed."""
        now = time.monotonic()
        if now - self._last_printed >= self._interval:
            self._print(snapshot)
            self._last_printed = now

    def _print(self, snapshot: BatchProgress) -> None:
        line = progress_line(snapshot)
        if line != self._last_line:
            output.err(line)
            self._last_line = line

    def message(self, text: str) -> None:
        """Print the news as is."""
        output.err(text)

    def close(self, last: BatchProgress | None) -> None:
        """Always end with the final counts."""
        if last is not None:
            self._print(last)


class SilentReporter:
    """``--progress none``: only failures and the summary."""

    def progress(self, snapshot: BatchProgress) -> None:
        """Ignore."""

    def message(self, text: str) -> None:
        """Print the news."""
        output.err(text)

    def close(self, last: BatchProgress | None) -> None:
        """Nothing to clean up."""


class BarReporter:
    """A live rich progress bar on stderr."""

    def __init__(self) -> None:
        """Start the bar (rich is imported only here)."""
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed[/]"),
            TextColumn("{task.fields[in_flight]} in flight"),
            TextColumn("[green]${task.fields[cost]:.4f}[/]"),
            TextColumn("{task.fields[rate]:.1f}/s"),
            TimeElapsedColumn(),
            TextColumn("eta {task.fields[eta]}"),
            console=Console(stderr=True),
        )
        self._task = self._bar.add_task(
            "generating", total=None, failed=0, in_flight=0, cost=0.0, rate=0.0, eta="?"
        )
        self._bar.start()

    def progress(self, snapshot: BatchProgress) -> None:
        """Move the bar."""
        self._bar.update(
            self._task,
            total=snapshot.total,
            completed=snapshot.done,
            failed=snapshot.failed,
            in_flight=snapshot.in_flight,
            cost=snapshot.cost,
            rate=snapshot.rate,
            eta=_duration(snapshot.eta),
        )

    def message(self, text: str) -> None:
        """Print above the bar (nothing once the terminal is gone: see ``Output.err``)."""
        try:
            self._bar.console.print(output.scrub(text), markup=False, highlight=False)
        except OSError:
            silence(stderr=True)

    def close(self, last: BatchProgress | None) -> None:
        """Draw the final state and stop redrawing."""
        if last is not None:
            self.progress(last)
        try:
            self._bar.stop()
        except OSError:  # a hung-up terminal must not hide the summary or the exit code
            silence(stderr=True)


def make_reporter(mode: str, interval: float) -> Reporter:
    """``auto``: a bar when stderr is a terminal (and not TERM=dumb), plain lines otherwise."""
    if mode == "auto":
        terminal = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
        mode = "bar" if terminal else "plain"
    if mode == "bar":
        return BarReporter()
    if mode == "none":
        return SilentReporter()
    return PlainReporter(interval)


# -- summary ---------------------------------------------------------------------------------


def _elapsed(seconds: float) -> str:
    # Tenths of a second matter for short runs only.
    return f"{seconds:.1f}s" if seconds < 60 else _duration(seconds)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _unpriced(count: int) -> str:
    return f" + {count} charged request(s) whose price was not stated" if count else ""


def _stop_words(summary: BatchSummary) -> str:
    """Why the batch stopped, in the words the docs use (``stopped``, ``cancelled``...)."""
    reason = summary.stopped_reason or ""
    if reason == "stopped":
        return "stopped: no new item started, the items in flight finished and were saved"
    if reason == "cancelled":
        return (
            "cancelled: the requests in flight were abandoned, answers already received were saved"
        )
    if reason == "budget":
        return "budget: --max-cost reached"
    error = summary.fatal_error
    if error is not None and str(error) in reason:
        return reason.replace(str(error), output.describe(error))
    return reason


def summary_rows(summary: BatchSummary, out: Path) -> list[tuple[str, str]]:
    """The summary as (label, value) rows, shared by the table and the plain output."""
    # A stream (stdin, a pipe, a big file) stopped early: only the items read can be counted.
    unread = " read (the rest of the input was not read)" if summary.unread_input else ""
    rows = [
        ("items", f"{summary.total}{unread}"),
        ("ok", str(summary.ok)),
        ("failed", str(summary.failed)),
        ("skipped (done before)", str(summary.skipped)),
    ]
    if summary.unread_input:
        rows.append(("not started", f"{summary.not_started} read + the unread rest of the input"))
    elif summary.not_started:
        rows.append(("not started", str(summary.not_started)))
    rows += [
        ("cost", f"${summary.cost:.4f}" + _unpriced(summary.unpriced)),
        ("elapsed", _elapsed(summary.elapsed)),
        ("rate", f"{summary.rate:.1f} items/s"),
        ("latency p50 / p99", f"{_seconds(summary.latency_p50)} / {_seconds(summary.latency_p99)}"),
        (
            "download delay p50 / p99 / max",
            " / ".join(
                _seconds(value)
                for value in (
                    summary.download_delay_p50,
                    summary.download_delay_p99,
                    summary.download_delay_max,
                )
            ),
        ),
        ("requests (with retries)", str(summary.attempts)),
        ("rate limited (429)", str(summary.rate_limited)),
    ]
    if summary.stopped_reason:
        rows.append(("stopped", _stop_words(summary)))
    rows.append(("images", f"{out}{os.sep}"))
    if summary.manifest is not None:
        rows.append(("manifest", str(summary.manifest)))
    return rows


def print_summary(summary: BatchSummary, out: Path) -> None:
    """A rich table on a terminal, ``label: value`` lines otherwise (stdout)."""
    rows = summary_rows(summary, out)
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title="batch summary", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for label, value in rows:
            table.add_row(label, output.scrub(value))
        try:
            Console().print(table)
        except OSError:  # the terminal is gone (a hang-up): the exit code still tells
            silence(stderr=False)
        return
    width = max(len(label) for label, _ in rows)
    output.out("summary:")
    for label, value in rows:
        output.out(f"  {label.ljust(width)}  {value}")


def exit_code(summary: BatchSummary, *, stopped_by: int | None = None) -> int:
    """The documented exit code for how the batch ended.

    ``stopped_by`` is the signal that stopped the batch (Ctrl-C, SIGTERM, SIGHUP): 128 plus its
    number, the shell's convention (130, 143, 129), unless an error for the account came first.
    """
    if summary.fatal_error is not None or (summary.stopped_reason or "").startswith("fatal"):
        return EXIT_FATAL
    if stopped_by is not None:
        return 128 + stopped_by
    if summary.stopped_reason in ("stopped", "cancelled"):
        return EXIT_INTERRUPTED
    if summary.failed:
        return EXIT_FAILED
    if summary.stopped_reason == "budget" or summary.not_started:
        return EXIT_BUDGET
    return EXIT_OK


# -- the run ---------------------------------------------------------------------------------


def _describe_failure(result: ItemResult) -> str:
    error = output.describe(result.error or "unknown error")
    return f"failed: item {result.index} (id {result.id}): {error}"


class _FailureLog:
    """Reports failed items as they happen, the first few one per line."""

    def __init__(self, reporter: Reporter) -> None:
        self._reporter = reporter
        self.count = 0

    def add(self, result: ItemResult) -> None:
        if result.status != "failed":
            return
        self.count += 1
        if self.count <= _MAX_FAILURE_LINES:
            self._reporter.message(_describe_failure(result))
        elif self.count == _MAX_FAILURE_LINES + 1:
            self._reporter.message("more failures: see the manifest for every one")


#: Signals that stop a batch gracefully: Ctrl-C, and what ``docker stop``, systemd, Kubernetes,
#: ``timeout`` (SIGTERM) and a dropped ssh session (SIGHUP) send. Windows has no SIGHUP.
_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def _signal_name(number: int) -> str:
    return "Ctrl-C" if number == signal.SIGINT else signal.Signals(number).name


class _Signals:
    """First Ctrl-C, SIGTERM or SIGHUP: ``batch.stop()``. A second: cancel ``abort``.

    Without this, SIGTERM and SIGHUP would kill the process at once: everything in flight is
    paid for and lost (measured: 8 generations charged, 0 recorded).
    """

    def __init__(self, batch: Batch, reporter: Reporter, last: list[BatchProgress]) -> None:
        self._batch = batch
        self._reporter = reporter
        self._last = last
        self.abort = anyio.CancelScope()
        self.first: int | None = None
        self.count = 0

    async def watch(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            receiver = anyio.open_signal_receiver(*_STOP_SIGNALS)
        except (NotImplementedError, RuntimeError, ValueError):
            # No signal handlers here (Windows, or not the main thread): Ctrl-C then arrives
            # as KeyboardInterrupt and still ends the run with exit code 130.
            task_status.started()
            return
        with receiver as signals:
            task_status.started()
            async for number in signals:
                self.count += 1
                name = _signal_name(number)
                if self.count == 1:
                    self.first = int(number)
                    in_flight = self._last[0].in_flight if self._last else 0
                    prefix = "stopping" if number == signal.SIGINT else f"{name}: stopping"
                    self._reporter.message(
                        f"{prefix}: finishing {in_flight} in-flight items ({name} again to abort)"
                    )
                    self._batch.stop()
                else:
                    self._reporter.message(f"{name}: aborting: cancelling in-flight items")
                    self.abort.cancel()
                    return


async def run_batch(
    client: AsyncNanoGPT,
    source: PromptSource | Iterator[Any],
    settings: BatchSettings,
    *,
    demo: bool = False,
) -> int:
    """Run the batch with progress and signal handling; print the summary; return the exit code.

    First Ctrl-C, SIGTERM or SIGHUP: stop starting items, let the in-flight ones finish and be
    saved. A second: cancel them (what was already written stays in the manifest; paid answers
    still get ``SAVE_TIMEOUT`` seconds to be saved). A bad input line read mid-run stops the
    batch the same gentle way, then exits 2 naming the line.
    """
    if not isinstance(source, PromptSource):
        source = PromptSource(items=aiter_sync(source), total=None)
    reporter = make_reporter(settings.progress, settings.progress_interval)
    last: list[BatchProgress] = []

    def on_progress(snapshot: BatchProgress) -> None:
        last[:] = [snapshot]
        reporter.progress(snapshot)

    async with client:
        batch = client.images.generate_many(
            source.items,
            output_dir=settings.out,
            concurrency=settings.concurrency,
            download_concurrency=settings.download_concurrency,
            max_cost=settings.max_cost,
            shared_budget=settings.shared_budget,
            shard=settings.shard,
            job_id=settings.job_id,
            fence_lease=settings.fence_lease,
            retry_failed=settings.retry_failed,
            # Only failures are shown: skipped items are counted, not handed out one by one
            # (a million of them went through the results stream for nothing).
            skipped_results=False,
            on_progress=on_progress,
            progress_interval=min(0.5, settings.progress_interval or 0.5),
            total=source.total,
            **settings.defaults,
        )
        signals = _Signals(batch, reporter, last)
        failures = _FailureLog(reporter)
        input_error: Exception | None = None
        try:
            async with anyio.create_task_group() as group:
                await group.start(signals.watch)
                with signals.abort:
                    started = False
                    try:
                        async with batch:
                            started = True
                            async for result in batch:
                                failures.add(result)
                    except (InvalidInputError, OSError) as exc:
                        if not started:
                            raise  # refused before anything was sent: one line, no summary
                        # A bad line read mid-run: the batch stopped scheduling and saved what
                        # was in flight before raising it.
                        input_error = exc
                group.cancel_scope.cancel()
        finally:
            reporter.close(last[0] if last else None)

    summary = batch.summary
    if input_error is not None:
        output.error(_describe_input_error(input_error))
    elif summary.fatal_error is not None:
        output.error(summary.fatal_error)
    print_summary(summary, settings.out)
    if input_error is not None:
        code = EXIT_USAGE if isinstance(input_error, InvalidInputError) else EXIT_FAILED
    else:
        code = exit_code(summary, stopped_by=signals.first)
    if settings.gallery and signals.first is None:  # a signal means "stop now"
        # Imported only when written: the gallery's modules are start-up time for nothing
        # when it is not (--no-gallery, a signal).
        from nanogpt_async._cli._gallery import refresh_gallery

        await refresh_gallery(settings.out, quiet=settings.progress == "none")
    _epilogue(code, settings, summary, demo=demo, input_error=input_error)
    return code


def _describe_input_error(error: Exception) -> str:
    if isinstance(error, OSError):
        return f"cannot read the prompts: {error.strerror or error}"
    return str(error)


def _epilogue(
    code: int,
    settings: BatchSettings,
    summary: BatchSummary,
    *,
    demo: bool,
    input_error: Exception | None = None,
) -> None:
    out = settings.out
    if input_error is not None:
        output.err(
            "stopped at that line: the items before it are saved. Fix it and run the same "
            f"command again to continue into {out}{os.sep} (finished items are skipped)"
        )
    elif code in (EXIT_INTERRUPTED, EXIT_INTERRUPTED_TERM, EXIT_INTERRUPTED_HUP):
        output.err(f"interrupted: run the same command again to resume into {out}{os.sep}")
    elif code == EXIT_FAILED:
        output.err(
            f"{summary.failed} item(s) failed (details in the manifest); run the same command "
            "again to retry them"
        )
    elif code == EXIT_BUDGET:
        left = f"{summary.not_started} item(s)"
        if summary.unread_input:
            left += " and the unread rest of the input"
        output.err(
            f"stopped at the --max-cost budget with {left} not started; raise it and run "
            "again to continue"
        )
    if demo and code == EXIT_OK:
        manifest = summary.manifest or out / "manifest.jsonl"
        if summary.ok == 0 and summary.skipped:
            output.err(
                f"resumed: all {summary.skipped} items were done by an earlier run, nothing was "
                f"generated again. Images in {out}{os.sep}, manifest in {manifest}; delete the "
                "folder to start over."
            )
        else:
            output.err(
                f"done: images in {out}{os.sep}, manifest in {manifest}. Run the demo again to "
                "see it resume (every item skipped)."
            )


async def aiter_sync(items: Iterator[Any]) -> AsyncIterator[Any]:
    """An in-memory iterator as an async one (the shape `PromptSource` holds)."""
    for item in items:
        yield item
