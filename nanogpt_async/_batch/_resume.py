"""Stage 2 of a batch: skip what an earlier run into the same folder already did.

A resumed run reads its input in chunks (`Triage`): each chunk is prepared, looked up and its
files checked in one worker-thread call, and handed out in input order; an item an earlier run
finished comes out as a ``skipped`` result, never sent. Without a manifest (or an empty one)
nothing is checked and nothing waits: the producer reads one item ahead (`ReadAhead`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.to_thread
from typing_extensions import Self

from nanogpt_async._batch._chunks import ChunkedInput, InputChunks
from nanogpt_async._batch._manifest import ManifestIndex, RecordedItem
from nanogpt_async._batch._prepare import FAIR_SHARE, Entries, Job, Preparer
from nanogpt_async._batch._results import ItemResult
from nanogpt_async._errors import RepeatedIdError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nanogpt_async._batch._lifecycle import Lifecycle
    from nanogpt_async._batch._shards import Shard
    from nanogpt_async._batch._tally import Tally

__all__ = ["SKIPPED", "ReadAhead", "Resume", "Triage", "Triaged"]

#: Items a resume reads and triages per worker-thread call (`Resume.triage`): a few ms each.
#: Each call is a hand-off to a thread and back, which on a busy machine waits for a core: with
#: 256 a million-item resume took 2-3x its CPU time in wall time at load 10.
_TRIAGE_CHUNK = 1024


class _Skipped:
    """`Resume.triage`'s outcome for an item an earlier run did, when nobody reads results."""

    __slots__ = ()


SKIPPED = _Skipped()
#: What `Resume.triage` says about one item.
Triaged = Job | ItemResult | RepeatedIdError | _Skipped


class Resume:
    """What an earlier run recorded, and the checks that skip it."""

    __slots__ = ("_folder", "_recorded", "_retry_failed")

    def __init__(
        self, recorded: ManifestIndex | None, folder: Path | None, *, retry_failed: bool
    ) -> None:
        # Nothing to check without a folder or records: every item runs.
        self._recorded = recorded if folder is not None and recorded else None
        self._folder = folder or Path()
        self._retry_failed = retry_failed

    @property
    def active(self) -> bool:
        """An earlier run recorded something: items are checked before they run."""
        return self._recorded is not None

    @property
    def recorded_items(self) -> int:
        """How many distinct items earlier runs recorded (0 when nothing is checked)."""
        return len(self._recorded) if self._recorded is not None else 0

    def close(self) -> None:
        """Stop checking the recorded files, if that still runs (blocking: a worker thread)."""
        if self._recorded is not None:
            self._recorded.close()

    def interrupt(self) -> None:
        """Wait no more for the check of the recorded files (`Verdicts.interrupt`; any thread)."""
        if self._recorded is not None:
            self._recorded.verdicts.interrupt()

    async def resumed(self, job: Job) -> Job | ItemResult:
        """``job``, or its ``skipped`` result when an earlier run did it (checked in a thread)."""
        if self._recorded is None:
            return job
        [recorded] = await anyio.to_thread.run_sync(self._earlier_runs, self._recorded, [job.id])
        return job if recorded is None else self._skipped_result(job, recorded)

    def _skipped_result(self, job: Job, recorded: RecordedItem) -> ItemResult:
        return ItemResult(
            id=job.id,
            index=job.index,
            request=job.request,
            status="skipped",
            files=[self._folder / entry.path for entry in recorded.files],
            started_at=job.started_at,
            finished_at=time.time(),
            request_id=recorded.request_id,
        )

    def _earlier_runs(
        self, recorded: ManifestIndex, item_ids: Sequence[str]
    ) -> list[RecordedItem | None]:
        """What an earlier run did that this one should not redo, per id (blocking: a thread).

        ``None`` when the item must run: never recorded, recorded failed with ``retry_failed``,
        or recorded ok but a file has gone or changed since (size, then stamp or SHA-256).
        """
        return recorded.finished(self._folder, item_ids, retry_failed=self._retry_failed)

    def triage(
        self,
        preparer: Preparer,
        entries: Sequence[object],
        first_index: int,
        *,
        wanted: bool,
        owns: Callable[[int], bool],
    ) -> list[Triaged]:
        """Prepare ``entries`` and check them against earlier runs (blocking: a worker thread).

        One outcome per entry, in order, up to the first that needs the loop: an item with
        input images (read and encoded in threads of their own) is left for
        `Preparer.prepare`; a repeated id ends the list as its error. Skipped items are only
        counted (`SKIPPED`) when nobody reads the results (``wanted`` false: `Batch.run`).
        Items this process does not do (``owns``: another shard's) are prepared (their ids
        count) but not looked up.
        """
        recorded = self._recorded
        # Only an active resume triages (`Batch._produce_resumed`): no branch for "no records".
        assert recorded is not None  # noqa: S101 - for the type checker
        # Not wanted: the commonest entries are looked up by id first, and get a job only if
        # they run (most of a resume's items are skipped: `_skip_plain`).
        plain: list[tuple[int, str, Any]] | None = None if wanted else []
        outcomes, looked_up = _prepared(preparer, entries, first_index, plain, owns)
        if looked_up and not wanted:
            looked_up = self._skip_intact(recorded, looked_up, outcomes)
        if plain:
            looked_up += self._skip_plain(recorded, plain, outcomes, first_index)
        if looked_up:
            found = self._earlier_runs(recorded, [job.id for _, job in looked_up])
            for (position, job), earlier in zip(looked_up, found, strict=True):
                if earlier is not None:
                    outcomes[position] = self._skipped_result(job, earlier) if wanted else SKIPPED
                else:  # runs (a plain entry's outcome was `SKIPPED` until now)
                    outcomes[position] = job
        return outcomes

    def _skip_plain(
        self,
        recorded: ManifestIndex,
        plain: list[tuple[int, str, Any]],
        outcomes: list[Triaged],
        first_index: int,
    ) -> list[tuple[int, Job]]:
        """Skip the plain entries the index found intact; the jobs of the rest, to check.

        ``plain``: ``(position, id, entry)`` of entries `Preparer.plain_id` accepted, each
        `SKIPPED` in ``outcomes`` until found otherwise.
        """
        intact = recorded.intact([item_id for _, item_id, _ in plain])
        return [
            (position, Preparer.plain_job(entry, first_index + position, item_id))
            for (position, item_id, entry), done in zip(plain, intact, strict=True)
            if not done
        ]

    @staticmethod
    def _skip_intact(
        recorded: ManifestIndex, looked_up: list[tuple[int, Job]], outcomes: list[Triaged]
    ) -> list[tuple[int, Job]]:
        """Skip what the index found intact as it was built; the items still to check.

        Nobody reads the skipped results here, so they need no record read back: the index
        answers from memory (`ManifestIndex.intact`), and only the rest is looked up in the
        manifest and checked against its files.
        """
        intact = recorded.intact([job.id for _, job in looked_up])
        for (position, _), done in zip(looked_up, intact, strict=True):
            if done:
                outcomes[position] = SKIPPED
        return [pair for pair, done in zip(looked_up, intact, strict=True) if not done]


def _prepared(
    preparer: Preparer,
    entries: Sequence[object],
    first_index: int,
    plain: list[tuple[int, str, Any]] | None,
    owns: Callable[[int], bool],
) -> tuple[list[Triaged], list[tuple[int, Job]]]:
    """`Resume.triage`'s outcomes before any look-up, and the jobs to look up.

    ``plain`` (a list): the entries `Preparer.plain_id` accepts go there, as ``(position, id,
    entry)``, each `SKIPPED` in the outcomes until found otherwise (`Resume._skip_plain`).
    """
    outcomes: list[Triaged] = []
    looked_up: list[tuple[int, Job]] = []
    for offset, entry in enumerate(entries):
        index = first_index + offset
        try:
            item_id = preparer.plain_id(entry, index) if plain is not None else None
            prepared = preparer.prepare_now(entry, index) if item_id is None else None
        except RepeatedIdError as exc:
            outcomes.append(exc)
            break
        if item_id is not None and plain is not None and owns(index):
            plain.append((len(outcomes), item_id, entry))
            outcomes.append(SKIPPED)
            continue
        if item_id is not None:  # another shard's: prepared (its id counts), not looked up
            prepared = preparer.plain_job(entry, index, item_id)
        if prepared is None:
            break
        if isinstance(prepared, Job) and owns(prepared.index):
            looked_up.append((len(outcomes), prepared))
        outcomes.append(prepared)
    return outcomes, looked_up


class _Call:
    """A triage call for a worker thread, run unless a cancellation came before it began."""

    __slots__ = ("began", "ended", "triage")

    def __init__(self, triage: Callable[[], list[Triaged]]) -> None:
        self.triage = triage
        #: Taken by the call as it begins, or by a cancellation before: whichever comes first.
        self.began = threading.Lock()
        self.ended = threading.Event()

    def __call__(self) -> list[Triaged]:
        if not self.began.acquire(blocking=False):
            return []  # cancelled before it began: nothing to do, nobody waits for it
        try:
            return self.triage()
        finally:
            self.ended.set()


async def _off_loop(triage: Callable[[], list[Triaged]], resume: Resume) -> list[Triaged]:
    """``triage()`` in a worker thread; stopping or cancelling the batch ends its waits.

    A chunk of recorded items may wait there for the file check's verdicts on their lines
    (`ManifestIndex.intact`), for as long as the check takes to get there. Waited out, a stop
    or a cancel of the batch took as long: forever for a check that never got there (a test's,
    held at a gate, hung a CI run). The call cannot simply be left running either: it uses the
    index the batch closes as it ends. So a cancellation (a stop cancels the producer too)
    first tells the index to wait no more (`Resume.interrupt`: the call then decides the rest
    of its chunk the exact way, and its outcome is dropped), then waits for the call to end.
    """
    call = _Call(triage)
    try:
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        resume.interrupt()
        if not call.began.acquire(blocking=False):  # it began: it ends soon, wait for it
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(call.ended.wait)
        raise


def _trust_ids(entries: Entries, preparer: Preparer) -> None:
    """The preparer leaves the ids unchecked if the input refuses repeats itself."""
    if isinstance(entries, ChunkedInput) and entries.unique_ids:
        preparer.trust_ids()


class ReadAhead:
    """A run's input with nothing to resume: one item at a time, prepared, in input order.

    Items of other shards are read (their ids count) but not handed out.
    """

    __slots__ = ("_entries", "_index", "_lifecycle", "_preparer", "_shard", "_tally")

    def __init__(
        self,
        entries: Entries,
        *,
        preparer: Preparer,
        shard: Shard | None,
        lifecycle: Lifecycle,
        tally: Tally,
    ) -> None:
        self._entries = entries
        _trust_ids(entries, preparer)
        self._preparer = preparer
        self._shard = shard
        self._lifecycle = lifecycle
        self._tally = tally
        self._index = 0

    async def next(self) -> Job | ItemResult | None:
        """The next item to take; ``None`` at the end of the input (or once it halted)."""
        while not self._lifecycle.halted:
            prepared = await self._preparer.next(self._entries, self._index)
            if prepared is None:  # the end, or an input error (which halts)
                return None
            self._index += 1
            if self._shard is not None and not self._shard.owns(prepared.index):
                continue  # another shard's: read (its id counts), not done here
            self._tally.consumed += 1
            return prepared
        return None


class Triage:
    """A resumed run's input: chunks of items prepared and checked in one thread call each.

    A resumed run meets mostly items an earlier run finished; checking them one by one cost a
    task switch, an event and a thread hop each (a million items: 56 s, about 50 µs an item).
    Here a chunk of up to 1,024 entries (`InputChunks`) is prepared, looked up and checked
    against its files in one worker-thread call (`Resume.triage`), and handed out in input
    order: jobs to start, results to report. Items of other shards are read (their ids count)
    but not handed out; skipped items nobody reads are only counted.
    """

    def __init__(
        self,
        entries: Entries,
        *,
        preparer: Preparer,
        resume: Resume,
        shard: Shard | None,
        lifecycle: Lifecycle,
        tally: Tally,
        wanted: Callable[[], bool],
    ) -> None:
        """Triage ``entries``; ``wanted``: whether someone reads the results (`Results`)."""
        self._chunks = InputChunks(entries, size=_TRIAGE_CHUNK, fair_share=FAIR_SHARE)
        _trust_ids(entries, preparer)
        # A re-run meets about the items it recorded: their ids' table sized once, not grown.
        preparer.expect_ids(resume.recorded_items)
        self._preparer = preparer
        self._resume = resume
        self._shard = shard
        self._lifecycle = lifecycle
        self._tally = tally
        self._wanted = wanted
        self._index = 0
        self._ended = False

    async def __aenter__(self) -> Self:
        """Start reading the input (an async one is read ahead by a task)."""
        await self._chunks.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Stop reading ahead, and checking the recorded files."""
        try:
            return await self._chunks.__aexit__(exc_type, exc, tb)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._resume.close)

    async def next(self) -> list[Job | ItemResult] | None:
        """The next items to take, in input order; ``None`` at the end (or once halted).

        An input error (a bad line, a repeated id) halts the batch after the items before it
        are handed out; it is raised once the items in flight were saved.
        """
        if self._lifecycle.halted or self._ended:
            return None
        chunk, failure = await self._chunks.next()
        self._ended = self._chunks.ended
        if self._ended and failure is None:
            self._tally.input_read = True
        taken: list[Job | ItemResult] = []
        done = 0
        while done < len(chunk) and not self._lifecycle.halted:
            outcomes = await _off_loop(
                partial(
                    self._resume.triage,
                    self._preparer,
                    chunk[done:],
                    self._index,
                    wanted=self._wanted(),
                    owns=self._owns,
                ),
                self._resume,
            )
            skipped = outcomes.count(SKIPPED)  # in C: most of a resume's items are these
            self._tally.consumed += skipped
            self._tally.skipped += skipped
            for outcome in outcomes if skipped < len(outcomes) else ():
                if isinstance(outcome, RepeatedIdError):
                    self._lifecycle.input_failed(outcome)
                    return taken
                self._hand_out(outcome, taken)
            done += len(outcomes)
            self._index += len(outcomes)
            if done < len(chunk) and not self._lifecycle.halted:  # input images: on the loop
                prepared = await self._prepare_on_loop(chunk[done])
                done += 1
                self._index += 1
                if prepared is None:
                    return taken
                self._hand_out(prepared, taken)
        if failure is not None:
            self._lifecycle.input_failed(failure)
        return taken

    async def _prepare_on_loop(self, entry: object) -> Job | ItemResult | _Skipped | None:
        try:
            prepared = await self._preparer.prepare(entry, self._index)
        except RepeatedIdError as exc:
            self._lifecycle.input_failed(exc)
            return None
        if isinstance(prepared, Job) and self._owns(prepared.index):
            return await self._resume.resumed(prepared)
        return prepared

    def _owns(self, index: int) -> bool:
        return self._shard is None or self._shard.owns(index)

    def _hand_out(
        self, outcome: Job | ItemResult | _Skipped, taken: list[Job | ItemResult]
    ) -> None:
        if isinstance(outcome, _Skipped):
            pass  # counted with its chunk's others (`next`)
        elif self._owns(outcome.index):
            self._tally.consumed += 1
            taken.append(outcome)
