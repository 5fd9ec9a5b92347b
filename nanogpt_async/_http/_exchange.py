"""One HTTP exchange, bounded, and every failure of it turned into a ``NanoGPTError``.

Bounded means an overall deadline and a capped decompression done in small steps; every failure
becomes a `NanoGPTError` with the key redacted.

This is the boundary the client's calls cross: nothing but ``NanoGPTError`` (and cancellation)
leaves it. What it guards against, each measured against a hostile server before the fix:

* Any malformed answer (an oversized header, a bad status line, a bad ``Content-Encoding``...)
  used to escape as a raw aiohttp/httpx exception, crash a whole batch and cancel generations
  already charged; aiohttp's exception's repr carried ``Bearer <key>``.
* Per-read timeouts only: a server dripping one byte every 0.25 s kept ``timeout=2`` busy 42 s.
  Here the attempt as a whole has a deadline (`attempt_deadline`).
* A 0.2 MB gzip bomb cost 1.26 GB, decompressed on the event loop by httpx in one call. Here
  bodies are decompressed at most `DECODE_STEP` bytes per call, and the decompressed size
  counts against the cap.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import httpx

from nanogpt_async._errors import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    NanoGPTError,
    redact,
    redact_error,
    secret_forms,
)
from nanogpt_async._http._transport import PROGRESS_EXTENSION, Answer, Progress

_IMAGE_FIELD = "b64_json"
#: The compression method nibble of a zlib header (RFC 1950): deflate.
_DEFLATE = 8
#: A zlib header's first two bytes, read as a big-endian number, are a multiple of this.
_ZLIB_CHECK = 31

__all__ = [
    "DECODE_STEP",
    "BigBodies",
    "Exchange",
    "UndecodableBodyError",
    "attempt_deadline",
    "connection_error",
    "deadline_error",
    "may_hold_secret",
    "redact_payload",
    "seal",
]

#: Largest piece decompressed in one call: a gzip bomb is stopped at the cap instead of after
#: expanding a whole received chunk (0.2 MB -> 1.26 GB). The first MiB of a body is inflated on
#: the event loop (one step, ~7 ms for base64 on this machine); the rest in a worker thread.
DECODE_STEP = 1024 * 1024


def attempt_deadline(timeout: httpx.Timeout) -> float | None:
    """Seconds one attempt may take in all, from its timeout.

    A number ``t`` (``httpx.Timeout(t)``) means the attempt is over after ``t`` seconds,
    connecting, sending and reading included. For an ``httpx.Timeout`` with different phases the
    deadline is the largest phase set; with ``read=None`` there is none (reads may take forever).
    The per-phase timeouts still apply inside it.
    """
    if timeout.read is None:
        return None
    phases = [timeout.connect, timeout.read, timeout.write, timeout.pool]
    return max(phase for phase in phases if phase is not None)


class UndecodableBodyError(Exception):
    """The body's ``Content-Encoding`` is unknown or its data is corrupt (internal signal)."""


def _inflate(decoder: zlib._Decompress, data: bytes) -> Iterator[bytes]:
    """Decompress ``data`` at most `DECODE_STEP` bytes per call."""
    try:
        while data:
            piece = decoder.decompress(data, DECODE_STEP)
            data = decoder.unconsumed_tail
            if piece:
                yield piece
            elif decoder.eof:
                return
    except zlib.error as exc:
        raise UndecodableBodyError(f"corrupt compressed data ({exc})") from None


class _Stage:
    """One ``Content-Encoding`` step (gzip or deflate), decompressed in bounded pieces."""

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._decoder: zlib._Decompress | None = None
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 16)

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._decoder is None:
            # deflate: zlib-wrapped as the RFC says, or raw as some servers send it (as httpx).
            if not data:
                return
            wrapped = (
                len(data) > 1
                and (data[0] & 0x0F) == _DEFLATE
                and int.from_bytes(data[:2], "big") % _ZLIB_CHECK == 0
            )
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        yield from _inflate(self._decoder, data)

    def flush(self) -> Iterator[bytes]:
        if self._decoder is not None:
            yield from _inflate(self._decoder, self._decoder.unconsumed_tail)
            rest = self._decoder.flush(DECODE_STEP)
            if rest:
                yield rest


class _Decoder:
    """``Content-Encoding`` undone stage by stage; ``identity`` passes bytes through."""

    def __init__(self, header: str) -> None:
        names = [name.strip().lower() for name in header.split(",") if name.strip()]
        names = [name for name in names if name != "identity"]
        unknown = [name for name in names if name not in ("gzip", "x-gzip", "deflate")]
        if unknown:
            raise UndecodableBodyError(f"unsupported Content-Encoding {header[:80]!r}")
        # Encodings are listed in the order applied: undo them last first.
        self.stages = [_Stage(name) for name in reversed(names)]

    def _through(self, pieces: Iterator[bytes], stages: Sequence[_Stage]) -> Iterator[bytes]:
        if not stages:
            yield from pieces
            return
        first, rest = stages[0], stages[1:]
        for piece in pieces:
            yield from self._through(first.feed(piece), rest)

    def feed(self, data: bytes) -> Iterator[bytes]:
        return self._through(iter((data,)), self.stages)

    def flush(self) -> Iterator[bytes]:
        for index, stage in enumerate(self.stages):
            yield from self._through(stage.flush(), self.stages[index + 1 :])


class BigBodies:
    """The client's few slots for reading and parsing big answers (see `_channel.BIG_BODY_SLOTS`).

    An attempt takes a slot only once its answer turns out big, and gives it back when the
    attempt ends (its answer parsed): ``with bodies.slot() as slot:`` then ``await slot.take()``.
    """

    def __init__(self, slots: int) -> None:
        self._semaphore = anyio.Semaphore(slots)

    @contextlib.contextmanager
    def slot(self) -> Iterator[_Slot]:
        """One attempt's claim: taken on demand (`_Slot.take`), always given back on exit."""
        claim = _Slot(self._semaphore)
        try:
            yield claim
        finally:
            if claim.held:
                claim.held = False
                self._semaphore.release()


class _Slot:
    __slots__ = ("_semaphore", "held")

    def __init__(self, semaphore: anyio.Semaphore) -> None:
        self._semaphore = semaphore
        self.held = False

    async def take(self) -> None:
        """Wait for a slot (once; a second call returns at once)."""
        if not self.held:
            await self._semaphore.acquire()
            self.held = True


class Exchange:
    """Reads one response's body within the caps, the big-body slots and the deadline.

    Args:
        scope: The attempt's cancel scope; its deadline is paused while waiting for a slot.
        on_big: Awaited once when the body turns out to be big (over ``big`` bytes decoded, or
            declared so): waits for one of the client's big-body slots.
        big: The threshold for ``on_big``.
    """

    def __init__(
        self,
        *,
        scope: anyio.CancelScope,
        on_big: Callable[[], Awaitable[None]] | None = None,
        big: int = 0,
    ) -> None:
        self.scope = scope
        self.progress = Progress()
        self._on_big = on_big
        self._big = big
        self._holding = False

    def extensions(self, timeout: httpx.Timeout) -> dict[str, object]:
        """Request extensions: per-phase timeouts and the progress tracker."""
        return {
            "timeout": timeout.as_dict(),
            "trace": self.progress.trace,
            PROGRESS_EXTENSION: self.progress,
        }

    async def _become_big(self) -> None:
        if self._holding or self._on_big is None:
            return
        # Waiting for a slot is our own queue, not the server's slowness: the answer is
        # already paid for, so the wait does not count against the attempt's deadline.
        saved = self.scope.deadline
        self.scope.deadline = math.inf
        started = anyio.current_time()
        await self._on_big()
        self._holding = True
        self.scope.deadline = saved + (anyio.current_time() - started)

    async def read(
        self, response: Answer, limit: int, describe: str, *, truncate: bool = False
    ) -> list[bytes]:
        """The decoded body, refusing (or truncating) past ``limit`` decoded bytes.

        Raises:
            APIResponseValidationError: the body is over ``limit`` (unless ``truncate``).
            UndecodableBodyError: unknown ``Content-Encoding`` or corrupt compressed data.
        """
        self.progress.sent = self.progress.tracked = True
        declared = _declared_length(response)
        if not truncate and declared > limit:
            raise _too_big(describe, limit, response, declared)
        if declared > self._big:
            await self._become_big()
        if response.is_stream_consumed:
            # Read already by whoever built it (a mock transport): httpx has decoded it.
            return _cut(
                [response.content], limit, truncate=truncate, describe=describe, response=response
            )
        decoder = _Decoder(response.headers.get("content-encoding", ""))
        chunks: list[bytes] = []
        total = 0
        stream = response.stream
        if not isinstance(stream, httpx.AsyncByteStream):
            raise TypeError("an async transport is needed: this response's stream is sync")
        response.is_stream_consumed = True
        # The stream itself, not ``aiter_raw``: that gives the connection back to the pool as
        # soon as the body ends, before the caller has seen whether the answer is well formed
        # (see `_transport.retire`). The caller closes the response.
        async for raw in stream:
            # Identity (the usual case) takes the received chunk as it is.
            source = decoder.feed(raw) if decoder.stages else iter((raw,))
            while batch := await _next_batch(
                source, encoded=bool(decoder.stages), total=total, limit=limit
            ):
                for piece in batch:
                    total += len(piece)
                    if total > self._big:
                        await self._become_big()
                    if total > limit:
                        chunks.append(piece)
                        return _cut(
                            chunks, limit, truncate=truncate, describe=describe, response=response
                        )
                    chunks.append(piece)
        chunks.extend(decoder.flush())
        return _cut(chunks, limit, truncate=truncate, describe=describe, response=response)


async def _next_batch(
    source: Iterator[bytes], *, encoded: bool, total: int, limit: int
) -> list[bytes]:
    """The next decoded pieces of a received chunk, inflating off the loop once a body is big."""
    if not encoded:
        return _take(source, limit - total)
    if total < DECODE_STEP:
        return _take(source, DECODE_STEP - total)  # about one step on the event loop
    # A big compressed body: inflate in a worker thread (~7 ms of CPU per MiB of base64 here),
    # never past the room left under the cap.
    return await anyio.to_thread.run_sync(_take, source, limit - total)


def _take(pieces: Iterable[bytes], room: int) -> list[bytes]:
    """The pieces until they pass ``room`` bytes (one piece over, so the caller sees it)."""
    taken: list[bytes] = []
    size = 0
    for piece in pieces:
        taken.append(piece)
        size += len(piece)
        if size > room:
            break
    return taken


def _cut(
    chunks: list[bytes], limit: int, *, truncate: bool, describe: str, response: Answer
) -> list[bytes]:
    """``chunks`` if within ``limit``; else cut to it (``truncate``) or refuse."""
    total = sum(map(len, chunks))
    if total <= limit:
        return chunks
    if not truncate:
        raise _too_big(describe, limit, response)
    while chunks and total - len(chunks[-1]) >= limit:
        total -= len(chunks.pop())
    if chunks:
        chunks[-1] = chunks[-1][: len(chunks[-1]) - (total - limit)]
    return chunks


def _declared_length(response: Answer) -> int:
    declared = response.headers.get("content-length", "")
    return int(declared) if declared.isdigit() and len(declared) < 19 else 0


def _too_big(
    describe: str, limit: int, response: Answer, declared: int | None = None
) -> APIResponseValidationError:
    size = f"with {declared} bytes, over" if declared is not None else "more than"
    return APIResponseValidationError(
        f"{describe} answered {size} the {limit}-byte cap (decompressed); if it was a "
        "generation it may have been charged. Raise max_response_bytes / max_download_bytes if "
        "such answers are expected",
        request_id=response.headers.get("x-request-id"),
    )


_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
    httpx.LocalProtocolError,
)


def connection_error(
    exc: BaseException,
    describe: str,
    where: str,
    *,
    sent: bool | None = None,
    download: bool = False,
) -> APIConnectionError:
    """Translate any HTTP-layer failure, saying whether the request may have reached the server.

    ``sent`` overrides what the exception's class says (for failures the class cannot tell,
    such as a decoding error or one raised by a transport this library does not know).
    """
    if sent is None:
        sent = not isinstance(exc, _NOT_SENT)
    reason = redact(str(exc)) or type(exc).__name__
    name = type(exc).__name__
    consequence = _consequence(sent=sent, download=download)
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(
            f"{describe} timed out ({name}: {reason}); {consequence}. "
            "Raise timeout= if generations legitimately take longer",
            request_sent=sent,
        )
    return APIConnectionError(
        f"{describe} to {where} failed ({name}: {reason}); {consequence}. "
        "Check the network and base URL",
        request_sent=sent,
    )


def deadline_error(
    describe: str, seconds: float, *, sent: bool, download: bool = False
) -> APITimeoutError:
    """The error for an attempt that ran past its overall deadline."""
    consequence = _consequence(sent=sent, download=download)
    return APITimeoutError(
        f"{describe} timed out: not finished within its {seconds:g}-second deadline (the "
        f"server was slow or kept the answer trickling); {consequence}. Raise the timeout if "
        "answers legitimately take longer",
        request_sent=sent,
    )


def _clean_copy(exc: BaseException, secrets: Sequence[str]) -> BaseException | None:
    """A key-free copy of an httpx exception for ``__cause__`` (no request, no chain)."""
    if not isinstance(exc, (httpx.HTTPError, httpx.InvalidURL)):
        return None
    try:
        return type(exc)(redact(str(exc), secrets))
    except TypeError:  # a class whose constructor takes other arguments
        return None


def seal(
    error: NanoGPTError, secrets: Sequence[str], cause: BaseException | None = None
) -> NanoGPTError:
    """Make ``error`` safe to leave the client: secrets redacted, no foreign exception chained.

    aiohttp's and httpx's exceptions can hold the request (with its ``Authorization`` header)
    and server text echoing the key; only a redacted copy of an httpx exception is kept as the
    cause, for debugging. Raise the result outside any ``except`` block, so that Python does not
    chain the original as ``__context__``.
    """
    redact_error(error, secrets)
    original = cause if cause is not None else error.__cause__
    if isinstance(original, NanoGPTError):
        seal(original, secrets)
        error.__cause__ = original
    else:
        error.__cause__ = _clean_copy(original, secrets) if original is not None else None
    error.__context__ = None
    error.__suppress_context__ = True
    return error


#: Raw bodies up to this size are searched for secrets before the parsed answer is walked. A
#: URL answer or an error is a few hundred bytes; past a few KB (base64 images) four passes
#: over the bytes cost more than walking the few nodes around the skipped image data.
_RAW_SEARCH_BYTES = 4 * 1024


def may_hold_secret(raw: bytes, secrets: Sequence[str]) -> bool:
    """Whether a raw JSON body may hold a secret: ``False`` only when it certainly does not.

    Without a backslash no JSON escape can spell a secret differently, so a plain search of a
    small body is exact; it saves walking the parsed answer on every call (the common case).
    Bigger bodies (base64 images) are not searched: walking their few nodes is cheaper.
    """
    if len(raw) > _RAW_SEARCH_BYTES or b"\\" in raw:
        return True
    lowered = raw.lower()
    if b"bearer" in lowered:
        return True
    return any(form.encode().lower() in lowered for form in secret_forms(tuple(secrets)))


def redact_payload(payload: object, secrets: Sequence[str], depth: int = 0) -> Any:
    """``payload`` (parsed JSON) with the secrets redacted from every string, in place.

    A server echoing the key (in a URL, a message, any field) must not get it into a manifest,
    a log line or an exception. Image data (``b64_json``) is left alone: it is never shown, and
    changing it would corrupt a paid image. Walks nodes, not bytes: microseconds per answer.
    """
    if isinstance(payload, str):
        return redact(payload, secrets)
    if depth > 64:
        return payload
    if isinstance(payload, dict):
        for key, value in list(payload.items()):
            if key == _IMAGE_FIELD and isinstance(value, str):
                continue
            new_key = redact(key, secrets) if isinstance(key, str) else key
            new_value = redact_payload(value, secrets, depth + 1)
            if new_key != key:
                del payload[key]
            payload[new_key] = new_value
    elif isinstance(payload, list):
        for index, value in enumerate(payload):
            payload[index] = redact_payload(value, secrets, depth + 1)
    return payload


def _consequence(*, sent: bool, download: bool) -> str:
    """What a failed attempt means for the user's money, for error messages."""
    if download:
        return "downloads cost nothing and are retried"
    if sent:
        return "the request may have reached NanoGPT, so a generation may have been charged"
    return "the request was not sent, nothing was charged"
