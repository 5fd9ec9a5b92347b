"""TLS on the client's transport: verified against the trust it was given, built only when used."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from aiohttp import web

from nanogpt_async._http._transport import AutoTransport

if TYPE_CHECKING:
    import trustme

LIMITS = httpx.Limits(max_connections=4)


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    import trustme  # here, not on every xdist worker's import of this module (30 ms of CPU)

    return trustme.CA()


@contextlib.asynccontextmanager
async def _serving(tls: ssl.SSLContext | None) -> AsyncIterator[str]:
    """A one-route aiohttp server on loopback (``https`` with ``tls``); yields its base URL."""

    async def hello(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"{'https' if tls else 'http'}://localhost:{port}"
    finally:
        await runner.cleanup()


def _server_tls(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(context)
    return context


@pytest.mark.asyncio_only(reason="the TLS test server is aiohttp's, which needs asyncio")
async def test_https_is_verified_against_the_trust_the_transport_was_given(authority):
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)

    async with _serving(_server_tls(authority)) as base:
        async with httpx.AsyncClient(transport=AutoTransport(limits=LIMITS, verify=trusting)) as ok:
            response = await ok.get(f"{base}/hello")
        async with httpx.AsyncClient(transport=AutoTransport(limits=LIMITS)) as default:
            with pytest.raises(httpx.ConnectError, match=r"(?i)certificate"):
                await default.get(f"{base}/hello")

    assert response.json() == {"ok": True}


@pytest.mark.asyncio_only(reason="aiohttp's path; httpx's own pool (trio) builds TLS up front")
async def test_the_tls_context_is_built_at_the_first_https_request_only(authority, monkeypatch):
    built: list[object] = []
    real = httpx.create_ssl_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)
    transport = AutoTransport(limits=LIMITS, verify=trusting)

    async with httpx.AsyncClient(transport=transport) as client:
        async with _serving(None) as plain:
            for _ in range(3):
                assert (await client.get(f"{plain}/hello")).json() == {"ok": True}
        after_plain = len(built)
        async with _serving(_server_tls(authority)) as secure:
            for _ in range(3):
                assert (await client.get(f"{secure}/hello")).json() == {"ok": True}

    assert transport.kind == "aiohttp"
    assert after_plain == 0  # a plain-http run never loads a CA bundle
    assert len(built) == 1  # built once, then reused
