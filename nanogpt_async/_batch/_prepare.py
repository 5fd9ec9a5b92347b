"""Stage 1 of a batch: input entries -> jobs (checked body, id, price estimate).

The input is read lazily, one entry at a time; an entry that cannot be sent becomes a failed
result here, unsent. Ids are given in input order (an id counts the occurrences of the same
request before it), so they come out the same on every run and a re-run finds its items.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anyio.lowlevel
import anyio.to_thread

from nanogpt_async._batch._budget import PriceList
from nanogpt_async._batch._names import IdentityCounter, fingerprint_body
from nanogpt_async._batch._results import BatchItem, ItemResult
from nanogpt_async._errors import InvalidInputError, NanoGPTError, RepeatedIdError
from nanogpt_async._input._body import (
    GENERATE_FIELDS,
    build_item_body,
    build_item_body_now,
    check_generation_fields,
)
from nanogpt_async._input._ids import RepeatedIds

if TYPE_CHECKING:
    from nanogpt_async._batch._api import BatchApi
    from nanogpt_async._batch._lifecycle import Lifecycle
    from nanogpt_async._batch._tally import Tally
    from nanogpt_async._pacing._shared_budget import BudgetReservation

__all__ = [
    "FAIR_SHARE",
    "BatchEntry",
    "BatchInput",
    "Entries",
    "Job",
    "Preparer",
    "entries_of",
    "next_entry",
    "price_list",
]

#: One input item: a prompt, a `BatchItem`, or a dict with ``prompt`` (and ``id``, fields).
BatchEntry = str | BatchItem | Mapping[str, Any]
#: What ``generate_many`` reads from, lazily.
BatchInput = Iterable[BatchEntry] | AsyncIterable[BatchEntry]
Entries = Iterator[Any] | AsyncIterator[Any]

#: Fields an item may have and still take `Preparer._plain_job`: no input image, no
#: ``extra_body``, no ``operation`` (the rest of `ITEM_FIELDS`).
_PLAIN_FIELDS = frozenset(GENERATE_FIELDS)
#: An entry of these fields alone needs no more checks than its prompt's and its id's.
_ID_AND_PROMPT = frozenset({"id", "prompt"})

#: The end of the input (``next_entry``'s answer).
END = object()
#: Longest the producer runs on without letting other tasks in (seconds). A checkpoint per
#: item was a full event-loop turn per item: about half of a million-item resume's time.
FAIR_SHARE = 0.002


class Job:
    """One item on its way: who it is and the body to send."""

    __slots__ = (
        "body",
        "booking",
        "claimed",
        "edit",
        "holds_slot",
        "id",
        "index",
        "n",
        "per_image",
        "request",
        "started_at",
    )

    def __init__(
        self,
        index: int,
        item_id: str,
        body: dict[str, Any],
        request: dict[str, Any],
        started_at: float,
    ) -> None:
        self.index = index
        self.id = item_id
        self.body = body
        self.request = request
        n = body.get("n", 1)
        self.n = n if isinstance(n, int) and n > 0 else 1
        self.started_at = started_at
        self.holds_slot = True
        self.edit = False  # an "operation": "edit" item goes to POST /images/edits
        self.per_image: Decimal | None = None  # the budget's estimate, with max_cost
        self.booking: BudgetReservation | None = None  # its share of a shared budget
        self.claimed = False  # claimed in the fence (at its first turn, just before sending)


class Preparer:
    """Turns input entries into jobs: the batch's defaults merged in, ids given, checked."""

    __slots__ = ("_defaults", "_ids", "_lifecycle", "_plain_defaults", "_tally", "_user_ids")

    def __init__(self, defaults: Mapping[str, Any], lifecycle: Lifecycle, tally: Tally) -> None:
        self._defaults = defaults
        #: The batch's defaults hold plain fields only: `_plain_job` may prepare items.
        self._plain_defaults = _PLAIN_FIELDS.issuperset(defaults)
        self._lifecycle = lifecycle
        self._tally = tally
        self._ids = IdentityCounter()
        #: ``None``: the input's ids are unique already (`trust_ids`).
        self._user_ids: RepeatedIds | None = RepeatedIds()

    def expect_ids(self, count: int) -> None:
        """Make room for about ``count`` user ids up front, if none was checked yet.

        A resume expects about as many as were recorded (`Triage`).
        """
        if self._user_ids is not None and not len(self._user_ids):
            self._user_ids = RepeatedIds(count)

    def trust_ids(self) -> None:
        """Leave the ids unchecked: the input refuses a repeated id itself (`ChunkedInput`)."""
        self._user_ids = None

    async def next(self, entries: Entries, index: int) -> Job | ItemResult | None:
        """The next input item, prepared; ``None`` at the end of the input or on its error.

        The input's error (a bad line, a repeated id) stops the batch; it is raised once the
        items in flight were saved.
        """
        try:
            entry = await next_entry(entries)
        except Exception as exc:  # noqa: BLE001 - the input's own error, raised at the end
            self._lifecycle.input_failed(exc)
            return None
        if entry is END:
            self._tally.input_read = True
            return None
        try:
            return await self.prepare(entry, index)
        except RepeatedIdError as exc:
            self._lifecycle.input_failed(exc)
            return None

    async def prepare(self, entry: object, index: int) -> Job | ItemResult:
        """Normalise an entry and give it its id (in input order: ids count occurrences)."""
        prepared = self.prepare_now(entry, index)
        if prepared is not None:
            return prepared
        started = time.time()  # input images to read and encode: in worker threads
        user_id: str | None = None
        try:
            user_id, merged = self._fields(entry)
            operation, body = await build_item_body(merged)
        except (InvalidInputError, UnicodeEncodeError) as exc:
            return _invalid(entry, user_id, index, started, exc)
        if user_id is not None:
            self._check_unique(user_id, index)
        # An edit's id and manifest line say so; a generation's stay as before (resume works).
        described = body if operation == "generate" else {**body, "operation": operation}
        # Hashing megabytes of data URLs would stall the event loop: a worker thread.
        digest, request = await anyio.to_thread.run_sync(fingerprint_body, described)
        item_id = user_id if user_id is not None else self._ids.next_id(digest)
        job = Job(index, item_id, body, request, started)
        job.edit = operation == "edit"
        return job

    def prepare_now(self, entry: object, index: int) -> Job | ItemResult | None:
        """`prepare` for an item without input images, at once; ``None`` for the others.

        Nothing to await: a resume runs it in a worker thread for a whole chunk of items, in
        input order (`_resume.Triage`). Raises `RepeatedIdError` as `prepare` does.
        """
        started = time.time()
        if type(entry) is dict:
            job = self._plain_job(entry, index, started)
            if job is not None:
                return job
        user_id: str | None = None
        try:
            user_id, merged = self._fields(entry)
            built = build_item_body_now(merged)
        except (InvalidInputError, UnicodeEncodeError) as exc:
            return _invalid(entry, user_id, index, started, exc)
        if built is None:
            return None
        _, body = built
        if user_id is not None:
            self._check_unique(user_id, index)
            # The id is the user's: no digest needed, and no image to show as a placeholder.
            return Job(index, user_id, body, dict(body), started)
        digest, request = fingerprint_body(body)
        return Job(index, self._ids.next_id(digest), body, request, started)

    def _plain_job(self, entry: dict[Any, Any], index: int, started: float) -> Job | None:
        """`prepare_now` for the common entry, a dict of plain fields with a string id or none.

        What the general path does (`_normalise`, `_fields`, `build_item_body_now`), with one
        copy of the fields instead of three: a resume prepares a million of these (about 3 µs
        of an item's 10). ``None`` for anything else (input images, ``extra_body``, an
        ``operation``, an id that is not a string, a bad value...): the general path decides,
        with its exact errors.
        """
        if not self._defaults and _ID_AND_PROMPT.issuperset(entry):
            user_id = self.plain_id(entry, index)
            if user_id is not None:
                return self.plain_job(entry, index, user_id)
            prompt = entry.get("prompt")
            if "id" not in entry and _plain_prompt(prompt):
                return self._fingerprinted({"prompt": prompt}, index, started)
        given = {k: v for k, v in entry.items() if v is not None}
        user_id = given.pop("id", None)
        if not (
            _PLAIN_FIELDS.issuperset(given)
            and (user_id is None or type(user_id) is str)
            and self._plain_defaults
            and "prompt" in given
        ):
            return None
        merged = {**self._defaults, **given} if self._defaults else given
        try:
            merged["prompt"].encode("utf-8")  # a lone surrogate cannot be sent as JSON
            body = check_generation_fields(merged, operation="generate")
        except (InvalidInputError, UnicodeEncodeError, AttributeError):
            return None
        if user_id is not None:
            self._check_unique(user_id, index)
            return Job(index, user_id, body, dict(body), started)
        return self._fingerprinted(body, index, started)

    def plain_id(self, entry: object, index: int) -> str | None:
        """The id of the commonest entry of all, checked unique; ``None`` for any other entry.

        That entry is a prompt file's ``{"id", "prompt"}`` line: a dict of a string id and a
        prompt, with no batch defaults to merge in. The checks `check_generation_fields` makes
        of a prompt alone are made inline (5.1 -> 3.9 µs an item of a resume's preparing); with
        the id alone a resume can skip the item, and makes its job (`plain_job`) only if it
        runs (about 1 µs an item). Raises `RepeatedIdError` as `prepare` does.
        """
        if type(entry) is not dict or self._defaults or not _ID_AND_PROMPT.issuperset(entry):
            return None
        user_id = entry.get("id")
        if type(user_id) is not str or not _plain_prompt(entry.get("prompt")):
            return None
        self._check_unique(user_id, index)
        return user_id

    @staticmethod
    def plain_job(entry: Any, index: int, user_id: str) -> Job:
        """The job of an entry `plain_id` accepted, with the id it returned."""
        prompt = entry["prompt"]
        return Job(index, user_id, {"prompt": prompt}, {"prompt": prompt}, time.time())

    def _fingerprinted(self, body: dict[str, Any], index: int, started: float) -> Job:
        """A job without a user id: its id from the body's fingerprint."""
        digest, request = fingerprint_body(body)
        return Job(index, self._ids.next_id(digest), body, request, started)

    def _fields(self, entry: object) -> tuple[str | None, dict[str, Any]]:
        """``(user id, fields with the batch's defaults)``; raises for an invalid entry."""
        user_id, fields = _normalise(entry)
        given = {k: v for k, v in fields.items() if v is not None}
        merged = {**self._defaults, **given} if self._defaults else given
        prompt = merged.get("prompt")
        if isinstance(prompt, str):
            prompt.encode("utf-8")  # a lone surrogate cannot be sent as JSON
        return user_id, merged

    def _check_unique(self, item_id: str, index: int) -> None:
        """Refuse a user id given twice: both items would share one manifest record."""
        if self._user_ids is None:
            return
        earlier = self._user_ids.add(item_id, index)
        if earlier is not None:
            where = f"item {earlier}" if earlier >= 0 else "an earlier item"
            raise RepeatedIdError(
                f"item {index} has the id {item_id!r} of {where} (counting from 0); every id "
                "must be unique, as a re-run finds finished items by id. The batch stopped "
                "before sending it"
            )


async def price_list(
    api: BatchApi, max_cost: Decimal | None, defaults: Mapping[str, Any]
) -> PriceList | None:
    """The image-models pricing, fetched once for a budgeted run (``None`` without one).

    Raises:
        InvalidInputError: a budget is set and there is no price estimate for the batch's
            model: the run refuses to start rather than spend blind.
    """
    if not max_cost:
        return None  # no budget, or one of 0: nothing will be sent, no estimate needed
    model = defaults.get("model")
    model = model if isinstance(model, str) else None
    try:
        prices = PriceList(await api.models())
    except NanoGPTError as exc:
        raise InvalidInputError(
            "max_cost needs a price estimate, but the image-models list (its pricing) could "
            f"not be read: {exc}. Try again, or run without max_cost"
        ) from exc
    # Items may name their own model; the batch-wide one (or, with none, any price at
    # all) must be there, else nothing could be estimated.
    if not len(prices) or (model is not None and not prices.has_model(model)):
        what = f"model {model!r}" if len(prices) else "any model"
        raise InvalidInputError(
            f"max_cost needs a price estimate, but the image-models list has no price for "
            f"{what}. Check the model name (`nanogpt-async models` lists them), or run "
            "without max_cost"
        )
    return prices


def entries_of(items: BatchInput) -> Entries:
    """An iterator over the input, sync or async as it is."""
    if isinstance(items, AsyncIterable):
        return items.__aiter__()
    return iter(items)


async def next_entry(entries: Entries) -> object:
    """The next input entry, or ``END``."""
    if isinstance(entries, Iterator):
        await anyio.lowlevel.checkpoint()  # a long sync input must not starve the loop
        return next(entries, END)
    try:
        return await entries.__anext__()
    except StopAsyncIteration:
        return END


def _plain_prompt(prompt: object) -> bool:
    """A prompt sent as it is: a non-blank ASCII string (anything else: the general checks)."""
    # ASCII: no lone surrogate, which cannot be sent as JSON (the encode check decides).
    return type(prompt) is str and bool(prompt.strip()) and prompt.isascii()


def _normalise(entry: object) -> tuple[str | None, dict[str, Any]]:
    """``(user id, fields)`` of one input entry; raises InvalidInputError for anything else."""
    if isinstance(entry, str):
        return None, {"prompt": entry}
    if type(entry) is not dict and isinstance(entry, BatchItem):  # a dict: no ABC checks
        if "prompt" in entry.params or "id" in entry.params:
            raise InvalidInputError("BatchItem.params must not repeat 'prompt' or 'id'")
        return entry.id, {**entry.params, "prompt": entry.prompt}
    if type(entry) is dict or isinstance(entry, Mapping):
        fields = {str(k): v for k, v in entry.items()}
        item_id = fields.pop("id", None)
        if item_id is not None and not isinstance(item_id, (str, int)):
            raise InvalidInputError(f"an item id must be a string, got {item_id!r}")
        if "prompt" not in fields:
            raise InvalidInputError(f"a batch item needs a 'prompt', got keys {sorted(fields)}")
        return (str(item_id) if item_id is not None else None), fields
    raise InvalidInputError(
        f"a batch item must be a prompt string, a BatchItem or a dict, got {type(entry).__name__}"
    )


def _invalid(
    entry: object, user_id: str | None, index: int, started: float, exc: Exception
) -> ItemResult:
    """The failed result of an entry that cannot be sent (checked before anything is sent)."""
    error = (
        exc
        if isinstance(exc, InvalidInputError)
        else InvalidInputError(f"the prompt is not valid Unicode text: {exc}")
    )
    return ItemResult(
        id=user_id if user_id is not None else f"invalid-{index:06d}",
        index=index,
        request={"prompt": _raw_prompt(entry)},
        status="failed",
        started_at=started,
        finished_at=time.time(),
        error=error,
    )


def _raw_prompt(entry: object) -> str:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, BatchItem):
        return entry.prompt
    if isinstance(entry, Mapping):
        return str(entry.get("prompt"))
    return repr(entry)[:200]
