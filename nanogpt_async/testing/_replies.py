"""How the fake answers: JSON bodies, OpenAI-style errors, dropped connections and faults.

Shared by the API side (`_app`) and the storage host (`_storage`).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from nanogpt_async.testing._faults import Fault
    from nanogpt_async.testing._state import FakeState

__all__ = [
    "JSON",
    "PROXY_HTML",
    "Base64Text",
    "Dropped",
    "daily_cap_answer",
    "drop",
    "dumps",
    "error_type",
    "fault_answer",
    "json_response",
    "openai_error",
    "phrase",
    "spoiled_answer",
]

JSON = "application/json"

PROXY_HTML = """<!DOCTYPE html>
<html><head><title>{status} {phrase}</title></head>
<body><center><h1>{status} {phrase}</h1></center>
<hr><center>cloudflare</center></body></html>
"""


class Base64Text(str):
    """Base64 text we produced: safe to put in JSON without escaping or scanning."""

    __slots__ = ()


def dumps(body: Any) -> bytes:
    """Encode ``body`` as JSON, splicing our own base64 items in without re-encoding.

    ``json.dumps`` scans every character of a multi-megabyte string to escape it; base64
    needs no escaping, and skipping the scan keeps big-image benchmarks about the client.
    """
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not any(
        isinstance(item, dict) and type(item.get("b64_json")) is Base64Text for item in data
    ):
        return json.dumps(body).encode()
    items = [
        b'{"b64_json": "' + item["b64_json"].encode("ascii") + b'"}'
        if isinstance(item, dict) and len(item) == 1 and type(item.get("b64_json")) is Base64Text
        else json.dumps(item).encode()
        for item in data
    ]
    rest = json.dumps({key: value for key, value in body.items() if key != "data"}).encode()
    separator = b", " if rest != b"{}" else b""
    return b'{"data": [' + b", ".join(items) + b"]" + separator + rest[1:]


class Dropped(web.StreamResponse):
    """Marks a response whose connection was closed on purpose."""


def openai_error(
    message: str, error_type: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    """Return an OpenAI-style error body."""
    return {"error": {"message": message, "type": error_type, "code": code, "param": param}}


def error_type(status: int) -> str:
    if status == HTTPStatus.UNAUTHORIZED:
        return "authentication_error"
    if status == HTTPStatus.TOO_MANY_REQUESTS:
        return "rate_limit_error"
    if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
        return "server_error"
    return "invalid_request_error"


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def json_response(
    request_id: str,
    status: int,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
    retry_after: str | int | None = None,
) -> web.Response:
    """Return a JSON response carrying ``X-Request-ID``."""
    all_headers = {"X-Request-ID": request_id, **(headers or {})}
    if retry_after is not None:
        all_headers["Retry-After"] = str(retry_after)
    return web.Response(status=status, body=dumps(body), content_type=JSON, headers=all_headers)


def drop(request: web.Request, *, abort: bool = True) -> Dropped:
    """Close the connection without (more of) an answer.

    ``abort`` sends a TCP reset; otherwise a clean close (FIN) after what was written.
    aiohttp then fails to finish the response, which it treats as a client disconnect.
    """
    transport = request.transport
    if transport is not None:
        if abort:
            transport.abort()
        else:
            transport.close()
    return Dropped()


async def fault_answer(
    fake: FakeState, request: web.Request, rid: str, fault: Fault
) -> web.StreamResponse:
    """Answer with a fault that preempts all processing (never charged)."""
    status = fault.code or 500
    if fault.kind == "reset_before_response":
        return drop(request)
    if fault.kind == "html":
        return web.Response(
            status=status,
            text=PROXY_HTML.format(status=status, phrase=phrase(status)),
            content_type="text/html",
            headers={"X-Request-ID": rid},
        )
    if fault.kind == "rate_limited":
        return json_response(
            rid,
            status,
            openai_error(
                "Rate limit exceeded. Please slow down.",
                "rate_limit_error",
                "rate_limit_exceeded",
            ),
            retry_after=fault.retry_after,
        )
    if fault.kind == "daily_cap":
        return daily_cap_answer(fake, rid, fault.detail)
    headers = {"X-Request-ID": rid, **dict(fault.headers)}
    if fault.retry_after is not None:
        headers["Retry-After"] = fault.retry_after
    body = fault.body
    if body is None:
        body = openai_error(
            f"Fake fault: HTTP {status} {phrase(status)}",
            error_type(status),
            phrase(status).lower().replace(" ", "_"),
        )
    if isinstance(body, bytes):
        return web.Response(status=status, body=body, headers=headers)
    if isinstance(body, str):
        return web.Response(status=status, text=body, headers=headers)
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type=JSON, headers=headers
    )


def daily_cap_answer(fake: FakeState, rid: str, kind: str) -> web.Response:
    """429 ``daily_{kind}_limit_exceeded``, retryable at the next 00:00 UTC."""
    what = "requests" if kind == "rpd" else "USD"
    return json_response(
        rid,
        429,
        openai_error(
            f"Daily {what} limit for this API key reached; it resets at 00:00 UTC.",
            "rate_limit_error",
            f"daily_{kind}_limit_exceeded",
        ),
        retry_after=fake.seconds_until_utc_midnight(),
    )


async def spoiled_answer(
    request: web.Request, rid: str, fault: Fault, result: dict[str, Any]
) -> web.StreamResponse:
    """Spoil a charged success the way ``fault`` says."""
    if fault.kind in {"reset_after_charge", "short_body"}:
        payload = dumps(result)
        response = web.StreamResponse(status=200, headers={"X-Request-ID": rid})
        response.content_type = JSON
        response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload[: len(payload) // 2])
        return drop(request, abort=fault.kind == "reset_after_charge")
    if fault.kind == "invalid_json":
        garbage = b'{"created": 1700000000, "data": [{"b64_json": "iVBORw0KGgo\x00<html>'
        return web.Response(
            status=200, body=garbage, content_type=JSON, headers={"X-Request-ID": rid}
        )
    if fault.kind == "item_without_image":
        result["data"][0] = {"revised_prompt": "fake: this item has no image"}
    elif fault.kind == "invalid_base64":
        result["data"][0] = {"b64_json": "this is *not* base64!"}
    return json_response(rid, 200, result)
