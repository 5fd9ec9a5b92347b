"""The one way every call reaches NanoGPT: pacing, retries, one bounded exchange per attempt.

The client owns one `Channel` (and its views one each, sharing the pools and the pacer); the
``images`` resource, the edits call and the batch runner all send through it, so none of them
reaches into another object's private methods. Signed-URL downloads go through it too
(`_download`), on a separate, credential-free pool.

One API call, top to bottom (one concern per method)::

    call        body -> JSON bytes, URL parsed once; the retry engine, paced per attempt
    _attempt    the boundary: every failure becomes a key-free NanoGPTError; the connection
                goes back to the pool only after an answer the client understood
    _receive    the attempt's overall deadline around
    send        (``_request``) building the request, sending it on the right layer, reading
                the body within its cap
    _check_status / _decode   an error status becomes its error; a 2xx body is parsed, then
                the caller's ``parse`` makes the result of it
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

import anyio
import httpx

from nanogpt_async._codec import dumps_maybe_offloaded, loads_chunks_maybe_offloaded
from nanogpt_async._errors import (
    APIResponseValidationError,
    APIStatusError,
    InvalidInputError,
    NanoGPTError,
    redact,
    status_error,
)
from nanogpt_async._http._download import Downloads
from nanogpt_async._http._exchange import (
    BigBodies,
    Exchange,
    attempt_deadline,
    connection_error,
    deadline_error,
    may_hold_secret,
    redact_payload,
    seal,
)
from nanogpt_async._http._request import FIRST_ERROR_STATUS, Call, Pools, send
from nanogpt_async._http._retry import RetryPolicy, parse_retry_after, run_with_retries
from nanogpt_async._http._transport import Answer, retire
from nanogpt_async._pacing import PacedAttempts, Pacer, TurnHooks
from nanogpt_async._types import NOT_GIVEN, NotGiven, TimeoutTypes

__all__ = ["BIG_BODY_BYTES", "BIG_BODY_SLOTS", "Channel", "as_timeout"]

#: Answers bigger than this are read and parsed at most `BIG_BODY_SLOTS` at a time per client.
#: Benchmark W4 (200 answers of 16 MB, 32 in flight): unbounded, peak RSS 0.9-1.2 GB; 4 slots,
#: 280-330 MB; 2 slots, 200-250 MB with the same makespan and less loop lag. A transfer holds
#: its slot, but two connections already fill a link that can only carry a few such answers
#: per second anyway.
BIG_BODY_BYTES = 1024 * 1024
BIG_BODY_SLOTS = 2
_EXPIRED_STATUSES = (HTTPStatus.FORBIDDEN, HTTPStatus.NOT_FOUND)
_PARSED_URLS_MAX = 64

_T = TypeVar("_T")
#: What a call's caller makes of the answer: ``parse(parsed JSON, request id)``.
Parse = Callable[[Any, str | None], _T]


def as_timeout(value: TimeoutTypes) -> httpx.Timeout:
    """``value`` as an ``httpx.Timeout`` (seconds, ``None`` for none, or one already)."""
    return value if isinstance(value, httpx.Timeout) else httpx.Timeout(value)


@dataclass(frozen=True, slots=True)
class _Refused:
    """An answer the caller's ``parse`` refused: raised by `Channel.call` after the retries."""

    error: Exception


class Channel:
    """Sends API calls and downloads for one client (or view): see the module docstring.

    Args:
        pools: The connection pools.
        api_key: The key, sent only to ``base_url`` and redacted from everything shown.
        headers: The API calls' headers (the key included), built once.
        base_url: The API base, for messages and for `url`.
        timeout: Each API call's default timeout.
        retry_policy: Each call's retries.
        pacer: Where each attempt takes its turn.
        download_timeout: Each download attempt's timeout.
        max_response_bytes: Largest API answer accepted, decompressed.
        max_download_bytes: Largest downloaded image accepted, decompressed.
    """

    def __init__(
        self,
        *,
        pools: Pools,
        api_key: str,
        headers: Mapping[str, str],
        base_url: str,
        timeout: httpx.Timeout,
        retry_policy: RetryPolicy,
        pacer: Pacer,
        download_timeout: httpx.Timeout,
        max_response_bytes: int,
        max_download_bytes: int,
    ) -> None:
        self.pools = pools
        self._api_key = api_key
        #: What is redacted from every error and answer text (the key as sent).
        self._secrets = (api_key,)
        self.headers = headers
        self.base_url = base_url
        self.timeout = timeout
        self.retry_policy = retry_policy
        self.pacer = pacer
        self.download_timeout = download_timeout
        self.max_response_bytes = max_response_bytes
        self.max_download_bytes = max_download_bytes
        self.big_bodies = BigBodies(BIG_BODY_SLOTS)
        self._parsed_urls: dict[str, httpx.URL] = {}
        self.downloads = _downloads_of(self)

    def __repr__(self) -> str:
        return f"Channel(base_url={self.base_url!r}, api_key=<hidden>)"

    @property
    def api_key(self) -> str:
        """The API key: sent to the API only, hashed into Redis key names; never shown."""
        return self._api_key

    def url(self, path: str) -> str:
        """The API URL of ``path`` (``"/images/generations"``)."""
        return self.base_url + path

    def with_settings(
        self,
        *,
        timeout: httpx.Timeout | None = None,
        retry_policy: RetryPolicy | None = None,
        pacer: Pacer | None = None,
    ) -> Channel:
        """A channel over the same pools, big-body slots and (unless given) pacer."""
        view = copy.copy(self)
        view.timeout = timeout or self.timeout
        view.retry_policy = retry_policy or self.retry_policy
        view.pacer = pacer or self.pacer
        view.downloads = _downloads_of(view)
        return view

    def with_own_pacer(self, *, rps: float | None, burst: int) -> Channel:
        """A view with a pacer of its own, in memory (a batch given its own ``rps``).

        It keeps real time even under ``recorded_backoff()``, as the per-batch pacer it stands
        in for always did (`Pacer.of_its_own`); a test's virtual clock on the client's pacer
        carries over to it.
        """
        return self.with_settings(pacer=self.pacer.of_its_own(rps=rps, burst=burst))

    # -- API calls ----------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        url: str,
        *,
        parse: Parse[_T],
        json_body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
        hooks: TurnHooks | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        paced: bool = True,
    ) -> _T:
        """Send one API call through the pacer and the retry engine; return ``parse``'s result.

        Every attempt (retries included) takes its turn from the pacer; ``hooks`` (the batch
        runner's) decide when to take it. ``parse(parsed JSON, request id)`` runs before the
        answer's connection goes back to the pool: an answer it refuses (by raising) retires the
        connection (a server that sends a malformed answer may be about to hang up on it). Its
        error is raised as it is, after the retry engine: an answer received is not a failed
        attempt (not retried, not paced as one).

        Raises:
            InvalidInputError: a body value JSON cannot carry (nothing sent).
            NanoGPTError: what the answer or its absence stands for, key-free.
        """
        parsed = self._parsed_url(url)
        call = Call(
            method=method,
            url=parsed,
            content=await _encoded(json_body) if json_body is not None else None,
            headers=headers if headers is not None else self.headers,
            timeout=self.timeout if isinstance(timeout, NotGiven) else as_timeout(timeout),
            describe=f"{method} {parsed.path}",
        )
        result = await run_with_retries(
            self.retry_policy,
            lambda: self._attempt(call, parse),
            idempotent=idempotent,
            describe=call.describe,
            hooks=PacedAttempts(self.pacer, hooks) if paced else None,
        )
        if isinstance(result, _Refused):
            raise result.error
        return result

    def _parsed_url(self, url: str) -> httpx.URL:
        parsed = self._parsed_urls.get(url)
        if parsed is None:
            # Parsing a URL costs httpx ~0.1 ms, twice per request (here and in the client);
            # the API has a handful of URLs: parse each once.
            parsed = httpx.URL(url)
            if len(self._parsed_urls) < _PARSED_URLS_MAX:
                self._parsed_urls[url] = parsed
        return parsed

    async def _attempt(self, call: Call, parse: Parse[_T]) -> _T | _Refused:
        """One attempt; nothing but a (key-free) ``NanoGPTError`` or cancellation leaves it."""
        failure: NanoGPTError | None = None
        with self.big_bodies.slot() as slot:
            exchange = Exchange(scope=anyio.CancelScope(), on_big=slot.take, big=BIG_BODY_BYTES)
            try:
                response, chunks = await self._receive(exchange, call)
                # Outside the deadline: an answer received in full is never thrown away because
                # parsing it (in steps, for big ones) ends after the deadline.
                result = await self._understood(response, chunks, call.describe, parse)
            except NanoGPTError as exc:
                failure = exc
            except Exception as exc:
                failure = seal(
                    connection_error(exc, call.describe, self.base_url, sent=_sent(exc, exchange)),
                    self._secrets,
                    cause=exc,
                )
        if failure is not None:
            # Raised here, outside any except block: nothing foreign is chained as __context__.
            raise seal(failure, self._secrets)
        return result

    async def _understood(
        self, response: Answer, chunks: list[bytes], describe: str, parse: Parse[_T]
    ) -> _T | _Refused:
        """What ``parse`` makes of a received answer; its connection is given back or retired.

        The connection goes back to the pool only after an answer the client understood (a
        result, or an error status): one that carried a malformed answer is closed, because the
        server may be about to hang up and a request sent on it next would be lost (it fails as
        "may have been charged" though it never reached NanoGPT).
        """
        understood = False
        try:
            request_id = self._redact(response.headers.get("x-request-id"))
            try:
                self._check_status(response, chunks, request_id)
            except APIStatusError:
                understood = True
                raise
            payload = await self._decode(response, chunks, describe, request_id)
            try:
                result: _T | _Refused = parse(payload, request_id)
            except Exception as exc:  # raised by `call`, after the retry engine
                result = _Refused(exc)
            else:
                understood = True
        finally:
            await (response.aclose() if understood else retire(response))
        return result

    async def _receive(self, exchange: Exchange, call: Call) -> tuple[Answer, list[bytes]]:
        """`send` within the attempt's overall deadline (`attempt_deadline`)."""
        deadline = attempt_deadline(call.timeout)
        with exchange.scope:
            if deadline is not None:
                exchange.scope.deadline = anyio.current_time() + deadline
            return await send(
                self.pools,
                exchange,
                call,
                max_bytes=self.max_response_bytes,
                secrets=self._secrets,
            )
        raise deadline_error(call.describe, deadline or 0, sent=exchange.progress.maybe_sent)

    @staticmethod
    def _check_status(response: Answer, chunks: list[bytes], request_id: str | None) -> None:
        """Raise the error an error status stands for (the body's head says which)."""
        status = response.status_code
        if status >= FIRST_ERROR_STATUS:
            raise status_error(
                status,
                b"".join(chunks),
                content_type=response.headers.get("content-type", ""),
                request_id=request_id,
                retry_after=parse_retry_after(response.headers),
            )

    async def _decode(
        self, response: Answer, chunks: list[bytes], describe: str, request_id: str | None
    ) -> Any:
        """A 2xx answer's parsed JSON, with any secret the server echoed redacted."""
        try:
            # A big body is joined in a worker thread (a copy made without the GIL) and parsed
            # on the event loop in steps of one base64 string (see the function).
            payload = await loads_chunks_maybe_offloaded(chunks)
        except ValueError:
            body = b"".join(chunks)
            snippet = body[:200].decode("utf-8", "replace")
            raise APIResponseValidationError(
                f"{describe} answered {response.status_code} with a body that is not JSON "
                f"({len(body)} bytes, starting {snippet!r}); if it was a generation it may "
                "have been charged",
                request_id=request_id,
                body=snippet,
            ) from None
        if len(chunks) == 1 and not may_hold_secret(chunks[0], self._secrets):
            return payload
        return redact_payload(payload, self._secrets)

    def _redact(self, text: str | None) -> str | None:
        return redact(text, self._secrets) if text is not None else None

    async def download_image(self, url: str) -> bytes:
        """Download a signed image URL, without credentials (see `Downloads.get`)."""
        return await self.downloads.get(url)


def _downloads_of(channel: Channel) -> Downloads:
    return Downloads(
        http=channel.pools.download,
        secrets=(channel.api_key,),
        retry_policy=channel.retry_policy,
        timeout=channel.download_timeout,
        max_bytes=channel.max_download_bytes,
    )


async def _encoded(body: Mapping[str, Any]) -> bytes:
    """The JSON bytes of a request body (image-to-image bodies off the event loop)."""
    try:
        return await dumps_maybe_offloaded(body)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInputError(
            f"the request body cannot be written as JSON ({exc}); extra_body values must be "
            "strings, numbers, booleans, None, lists or dicts. Nothing was sent"
        ) from None


def _sent(exc: BaseException, exchange: Exchange) -> bool | None:
    """Whether a failure may have been charged when its class alone cannot say."""
    if isinstance(exc, httpx.TransportError):
        return None  # the class says (translated by our transport from what it saw)
    return exchange.progress.maybe_sent
