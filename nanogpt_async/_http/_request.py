"""One attempt's request: built, sent on the right layer, and its body read within its cap.

`Channel` (``_channel``) runs these inside the attempt's deadline and its big-body slot; what
the answer means (its status, its JSON) is the channel's business, not this module's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING

import httpx

from nanogpt_async._errors import ERROR_SCAN_BYTES, APIResponseValidationError, redact
from nanogpt_async._http._exchange import Exchange, UndecodableBodyError, attempt_deadline
from nanogpt_async._http._transport import (
    AiohttpCarrier,
    Answer,
    AutoTransport,
    DirectAnswer,
    retire,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["FIRST_ERROR_STATUS", "Call", "Pools", "send"]

#: Statuses from here up are errors; redirects are not followed with a key.
FIRST_ERROR_STATUS = HTTPStatus.MULTIPLE_CHOICES


@dataclass(frozen=True)
class Pools:
    """The two connection pools a channel sends on, shared by a client and its views.

    Attributes:
        api: Carries the key, to the API only.
        download: Carries no credentials: signed URLs point at storage hosts.
        api_is_plain: ``api`` is the client's own pool, with no defaults of its own to merge.
        size: Connections per pool at most (the client's ``max_connections``).
    """

    api: httpx.AsyncClient
    download: httpx.AsyncClient
    api_is_plain: bool
    size: int


@dataclass(frozen=True)
class Call:
    """One API call's fixed parts, the same for every attempt."""

    method: str
    url: httpx.URL
    content: bytes | None
    headers: Mapping[str, str]
    timeout: httpx.Timeout
    describe: str


async def send(
    pools: Pools, exchange: Exchange, call: Call, *, max_bytes: int, secrets: Sequence[str]
) -> tuple[Answer, list[bytes]]:
    """Send and receive: the response and its (decoded) body, or an error body's head.

    A 2xx body is read up to ``max_bytes`` (decompressed); ``secrets`` are redacted from the
    request id of an undecodable answer's error.
    """
    response = await _open(pools, exchange, call)
    status = response.status_code
    try:
        if status >= FIRST_ERROR_STATUS:
            # Only the head of an error body is looked at (parse_error_body): reading a
            # huge one would only cost memory.
            return response, await exchange.read(
                response, ERROR_SCAN_BYTES + 1, call.describe, truncate=True
            )
        return response, await exchange.read(response, max_bytes, call.describe)
    except UndecodableBodyError as exc:
        await retire(response)
        if status >= FIRST_ERROR_STATUS:
            return response, [f"(an undecodable {status} body: {exc})".encode()]
        request_id = response.headers.get("x-request-id")
        raise APIResponseValidationError(
            f"{call.describe} answered {status} with a body that cannot be decoded "
            f"({exc}); if it was a generation it may have been charged",
            request_id=redact(request_id, secrets) if request_id is not None else None,
        ) from None
    except BaseException:
        # Over the cap, a read failing, the deadline: the answer was not read to its end.
        await retire(response)
        raise


async def _open(pools: Pools, exchange: Exchange, call: Call) -> Answer:
    """Send the request; the response, its body unread."""
    direct = _direct(pools, call.url)
    if direct is not None:
        return DirectAnswer(
            await direct.open(
                call.method,
                call.url,
                headers=call.headers,
                content=call.content,
                # Inside the channel's deadline for the attempt (`Channel._receive`).
                timeout=direct.timeout(
                    call.timeout.as_dict(), within=attempt_deadline(call.timeout)
                ),
                progress=exchange.progress,
            )
        )
    http = pools.api
    if pools.api_is_plain:
        # Our own pool has no defaults to merge: build the request directly and skip
        # httpx's per-call header/cookie/parameter merging (~8% of the request path at
        # fan-out, benchmark W1). A pool you pass in keeps its defaults.
        request = httpx.Request(
            call.method,
            call.url,
            content=call.content,
            headers=call.headers,
            extensions=exchange.extensions(call.timeout),
        )
    else:
        request = http.build_request(
            call.method,
            call.url,
            content=call.content,
            headers=call.headers,
            timeout=call.timeout,
            extensions=exchange.extensions(call.timeout),
        )
    return await http.send(request, stream=True)


def _direct(pools: Pools, url: httpx.URL) -> AiohttpCarrier | None:
    """The aiohttp session to send on below httpx, if nothing is lost by it.

    Only on the client's own pool (no defaults to merge), with no event hooks, and when the
    transport httpx would pick is ours: a test's respx mock replaces exactly that, and its
    requests then go through httpx as before.
    """
    http = pools.api
    if not pools.api_is_plain or any(http.event_hooks.values()):
        return None
    transport = http._transport_for_url(url)  # noqa: SLF001 - what respx patches
    return transport.direct() if isinstance(transport, AutoTransport) else None
