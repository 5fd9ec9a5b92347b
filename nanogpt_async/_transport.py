"""Which httpx transport carries the requests.

httpx's own connection pool spends ~22 ms of CPU per request at 256 concurrent requests
(encode/httpx#3215); aiohttp's connector stays under 1 ms. So under asyncio requests go through
``httpx-aiohttp``'s transport (the same fix the openai SDK ships), with the connector limit set
from the client's ``httpx.Limits``. Under trio, where aiohttp cannot run, httpx's own transport is
used. The choice is made at the first request, inside the running event loop, so a client can be
constructed anywhere (module level, app factory) and still pick right.

``httpx-aiohttp`` maps *every* aiohttp connection error, including "server disconnected" halfway
through a response, to ``httpx.ConnectTimeout``. For paid POSTs that difference is money: a
connect timeout means the request never left, a reset mid-response means it may have been
generated and charged. `_reclassify` restores the distinction from the aiohttp cause.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import httpx

__all__ = ["AutoTransport"]


def _running_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _reclassify(exc: httpx.TransportError, *, response_started: bool) -> httpx.TransportError:
    """Map an aiohttp failure to the httpx error that says whether the request was sent."""
    import aiohttp  # noqa: PLC0415 - already loaded whenever this runs; lazy for import time

    cause = exc.__cause__
    request = exc._request  # noqa: SLF001 - keep the request attached, as httpx does
    message = str(exc) or type(cause).__name__
    new: httpx.TransportError
    if response_started:
        if isinstance(cause, asyncio.TimeoutError) or isinstance(exc, httpx.TimeoutException):
            new = httpx.ReadTimeout(message, request=request)
        else:
            new = httpx.ReadError(message, request=request)
    elif isinstance(cause, aiohttp.ClientProxyConnectionError):
        return exc
    elif isinstance(cause, aiohttp.ClientConnectorError):
        new = httpx.ConnectError(message, request=request)
    elif isinstance(cause, aiohttp.ConnectionTimeoutError):
        # aiohttp's connect timeout also covers waiting for a free pooled connection.
        new = httpx.ConnectTimeout(message, request=request)
    elif isinstance(cause, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        new = httpx.ReadTimeout(message, request=request)
    elif isinstance(cause, aiohttp.ClientConnectionError):
        # Disconnected / reset after the request was written: it may have been processed.
        new = httpx.RemoteProtocolError(message, request=request)
    else:
        return exc
    new.__cause__ = cause
    return new


class _ReclassifyingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self._inner = inner
        # httpx-aiohttp reads in 16 KB slices (aiohttp re-copies the rest of each 256 KB
        # socket read per slice; a 16 MB answer makes 1000 trips through the generators);
        # ``iter_any`` hands over what arrived: 15% less CPU per 16 MB answer (benchmark W4).
        content = getattr(getattr(inner, "_aiohttp_response", None), "content", None)
        self._iter_any = getattr(content, "iter_any", None)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            if self._iter_any is None:
                async for chunk in self._inner:
                    yield chunk
                return
            import aiohttp  # noqa: PLC0415 - loaded already: this wraps aiohttp responses

            try:
                async for chunk in self._iter_any():
                    yield chunk
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                # What httpx-aiohttp's own stream raises; _reclassify refines it below.
                raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
        except httpx.TransportError as exc:
            raise _reclassify(exc, response_started=True) from exc.__cause__

    async def aclose(self) -> None:
        await self._inner.aclose()


class AutoTransport(httpx.AsyncBaseTransport):
    """aiohttp's connector under asyncio, httpx's own pool elsewhere (trio).

    Args:
        limits: Connection limits; ``max_connections`` becomes aiohttp's connector ``limit``.
        verify: TLS verification, as for httpx (on by default).
        trust_env: Read proxy settings and CA bundles from the environment, as httpx does.
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits,
        verify: ssl.SSLContext | str | bool = True,
        trust_env: bool = True,
    ) -> None:
        self._limits = limits
        self._verify = verify
        self._trust_env = trust_env
        self._inner: httpx.AsyncBaseTransport | None = None
        self._is_aiohttp = False

    @property
    def kind(self) -> str:
        """``"aiohttp"``, ``"httpx"`` or ``"unset"`` (before the first request)."""
        if self._inner is None:
            return "unset"
        return "aiohttp" if self._is_aiohttp else "httpx"

    def _pick(self) -> httpx.AsyncBaseTransport:
        if _running_asyncio():
            # Imported here, not at module level: aiohttp costs ~0.2 s of import time that
            # trio users and `import nanogpt_async` alone should not pay.
            from httpx_aiohttp import AiohttpTransport  # noqa: PLC0415

            self._is_aiohttp = True
            self._inner = AiohttpTransport(
                verify=self._verify, trust_env=self._trust_env, limits=self._limits
            )
        else:
            self._inner = httpx.AsyncHTTPTransport(
                verify=self._verify, trust_env=self._trust_env, limits=self._limits
            )
        return self._inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on the transport chosen for the running event loop."""
        inner = self._inner or self._pick()
        if not self._is_aiohttp:
            return await inner.handle_async_request(request)
        try:
            response = await inner.handle_async_request(request)
        except httpx.TransportError as exc:
            raise _reclassify(exc, response_started=False) from exc.__cause__
        assert isinstance(response.stream, httpx.AsyncByteStream)  # noqa: S101 - httpx invariant
        # Wrapped in place: a second httpx.Response would copy the headers again (~5% of the
        # request path at fan-out).
        response.stream = _ReclassifyingStream(response.stream)
        return response

    async def aclose(self) -> None:
        """Close the underlying pool (aiohttp session or httpx pool)."""
        if self._inner is not None:
            await self._inner.aclose()
