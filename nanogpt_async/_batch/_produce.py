"""The batch's producer: items read in input order, checked, and started or reported.

The head of the pipeline drawn in `_runner`: an item is prepared (id, checked body), its
resume check answered (a resume triages the input in chunks: `Triage`), then either admitted
and handed to a worker (`Workers`) or reported at once (skipped, or failed before sending).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nanogpt_async._batch._prepare import Job, entries_of
from nanogpt_async._batch._results import ItemResult
from nanogpt_async._batch._resume import ReadAhead, Triage

if TYPE_CHECKING:
    from nanogpt_async._batch._admit import Admission
    from nanogpt_async._batch._item import Results, Workers
    from nanogpt_async._batch._lifecycle import Lifecycle
    from nanogpt_async._batch._prepare import BatchInput, Preparer
    from nanogpt_async._batch._resume import Resume
    from nanogpt_async._batch._save import Saver
    from nanogpt_async._batch._settings import BatchSettings
    from nanogpt_async._batch._tally import Tally

__all__ = ["Producer"]


class Producer:
    """Starts a batch's items in input order (`_produce`), inside the batch's producer scope."""

    def __init__(
        self,
        items: BatchInput,
        *,
        settings: BatchSettings,
        preparer: Preparer,
        resume: Resume,
        admission: Admission,
        saver: Saver,
        results: Results,
        lifecycle: Lifecycle,
        tally: Tally,
    ) -> None:
        self._items = items
        self._settings = settings
        self._preparer = preparer
        self._resume = resume
        self._admission = admission
        self._saver = saver
        self._results = results
        self._lifecycle = lifecycle
        self._tally = tally

    async def produce(self, work: Workers) -> None:
        """Read items (a resume: in checked chunks) and start them in input order."""
        lifecycle = self._lifecycle
        if self._resume.active:
            await self._produce_resumed(work)
            return
        reader = ReadAhead(
            entries_of(self._items),
            preparer=self._preparer,
            shard=self._settings.shard,
            lifecycle=lifecycle,
            tally=self._tally,
        )
        while not lifecycle.halted:
            prepared = await reader.next()
            if prepared is None or not await self._take(prepared, work):
                break

    async def _produce_resumed(self, work: Workers) -> None:
        """Resume: items triaged in chunks, one worker-thread call each (`Triage`)."""
        lifecycle, results = self._lifecycle, self._results
        async with Triage(
            entries_of(self._items),
            preparer=self._preparer,
            resume=self._resume,
            shard=self._settings.shard,
            lifecycle=lifecycle,
            tally=self._tally,
            wanted=lambda: results.wanted and results.skipped,
        ) as triage:
            while (taken := await triage.next()) is not None:
                for prepared in taken:
                    if lifecycle.halted or not await self._take(prepared, work):
                        return

    async def _take(self, prepared: Job | ItemResult, work: Workers) -> bool:
        """Start the next item, or report it (skipped, or failed unsent); ``False``: stop.

        ``prepared``'s resume check is answered: a job runs, a result is reported.
        """
        if isinstance(prepared, Job):
            prepared = self._admission.priced(prepared)
        if isinstance(prepared, ItemResult):
            if prepared.status == "failed":
                await self._saver.record(prepared, None)
            await self._results.emit(prepared)
            return True
        reservation = await self._admission.admit(prepared)
        if reservation is None:
            self._lifecycle.stop_for("budget")
            return False
        self._tally.in_flight += 1
        work.start(prepared, reservation)
        return True
