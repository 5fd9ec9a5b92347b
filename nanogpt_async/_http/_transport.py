"""Which connection pool carries the requests, and what its failures mean.

httpx's own connection pool spends ~22 ms of CPU per request at 256 concurrent requests
(encode/httpx#3215); aiohttp's connector stays under 1 ms. So under asyncio requests go through
an aiohttp session (the fix the openai SDK ships, via ``httpx-aiohttp``), with the connector
limit set from the client's ``httpx.Limits``. Under trio, where aiohttp cannot run, httpx's own
transport is used. The choice is made at the first request, inside the running event loop, so a
client can be constructed anywhere (module level, app factory) and still pick right.

Every aiohttp failure leaves this module as an ``httpx.TransportError`` that says whether the
request may have been sent: for paid POSTs that difference is money (a connect error means
nothing left; a reset, a timeout or a malformed answer after the request went out means it may
have been generated and charged). ``httpx-aiohttp``'s own mapping gets this wrong (every
connection error becomes ``ConnectTimeout``, a malformed status line escapes as a raw
``aiohttp.ClientResponseError`` whose repr carries the ``Authorization`` header), which is why
the aiohttp request is made here. The translated errors carry the aiohttp class name and message
with any bearer token redacted, and no ``__cause__`` (aiohttp's exceptions hold the request
headers); the client redacts the key itself on top (`redact_error`).

Proxies: with ``trust_env`` (the default) ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` and
``NO_PROXY`` are honoured on both paths, read once when the transport is created, as httpx does.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import os
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from nanogpt_async._errors import redact

if TYPE_CHECKING:
    import aiohttp
    from multidict import CIMultiDictProxy

__all__ = [
    "PROGRESS_EXTENSION",
    "AiohttpCarrier",
    "Answer",
    "AutoTransport",
    "DirectAnswer",
    "Progress",
    "environment_proxy",
    "is_loopback",
    "retire",
    "tls_context",
]

#: The request extension under which the client passes a `Progress` to the transport.
PROGRESS_EXTENSION = "nanogpt_async.progress"
#: The response extension under which the aiohttp path passes its stream's ``retire``.
_RETIRE_EXTENSION = "nanogpt_async.retire"
#: aiohttp refuses status lines and header fields longer than 8,190 bytes by default. A proxy's
#: long ``Set-Cookie`` or CSP header should not cost a paid answer, so a little more is allowed.
_MAX_HEADER_BYTES = 32 * 1024


class Answer(Protocol):
    """What the client's exchange reads of a response: an ``httpx.Response``, a `DirectAnswer`."""

    #: The body was read already (``content`` holds it), or its reader has started.
    is_stream_consumed: bool

    @property
    def status_code(self) -> int:
        """The HTTP status."""

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive; a repeated header's values joined with ``", "``."""

    @property
    def extensions(self) -> Mapping[str, Any]:
        """The transport's notes (`retire` finds the aiohttp stream's there)."""

    @property
    def stream(self) -> httpx.SyncByteStream | httpx.AsyncByteStream:
        """The body as received (still ``Content-Encoding``d)."""

    @property
    def content(self) -> bytes:
        """The body, once read (see ``is_stream_consumed``)."""

    async def aclose(self) -> None:
        """Release the connection."""


class Progress:
    """How far one request got; decides whether a failure may have been charged.

    ``sent`` turns true once the request's headers start to leave (httpcore's trace event, or
    aiohttp's ``ClientRequest.send``): before that, the server cannot have seen it.
    ``tracked`` says a transport reports progress at all (ours and httpx's own pool do; a mock
    or a third-party transport may not): when it does not, a failure counts as maybe sent.
    ``unwritten`` is proof the other way: the connection was found closed before any byte of the
    request was written to it (aiohttp), so no byte of it can have left, whatever error follows.
    """

    __slots__ = ("sent", "tracked", "unwritten")

    def __init__(self) -> None:
        self.sent = False
        self.tracked = False
        self.unwritten = False

    @property
    def maybe_sent(self) -> bool:
        """Whether the server may have seen the request (``True`` when nobody can tell)."""
        return (self.sent or not self.tracked) and not self.unwritten

    async def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """Receive httpcore's ``trace`` extension events (connecting comes first)."""
        self.tracked = True
        if "send_request_headers" in event:
            self.sent = True


#: Built TLS contexts by (verify, trust_env, CA bundle from the environment, its mtime).
_TLS_CONTEXTS: dict[tuple[bool, bool, str, int], ssl.SSLContext] = {}


def tls_context(*, verify: ssl.SSLContext | str | bool, trust_env: bool) -> ssl.SSLContext:
    """The TLS context for ``verify``, as httpx builds it; one per setting for the whole process.

    Building one reads and parses the whole CA bundle: 23 ms of CPU measured, and a client has
    two pools, so a process that makes many clients (one per request in a web app, one per test)
    paid it over and over (the test suite built ~700). A context is safe to share, and nothing
    changes one after it is built (httpcore sets the same ALPN, ``http/1.1``, on each
    connection). The key includes the environment's ``SSL_CERT_FILE``/``SSL_CERT_DIR`` (read
    when ``trust_env``, as httpx does) and its modification time, so a changed bundle is read
    again. A path or a context of the caller's is used as given.
    """
    if not isinstance(verify, bool):
        return httpx.create_ssl_context(verify=verify, trust_env=trust_env)
    bundle = ""
    if verify and trust_env:
        bundle = os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR") or ""
    try:
        changed = Path(bundle).stat().st_mtime_ns if bundle else 0
    except OSError:
        changed = -1  # missing: httpx raises for it below, and will again next time
    key = (verify, trust_env, bundle, changed)
    context = _TLS_CONTEXTS.get(key)
    if context is None:  # two threads may both build one: harmless, the last one is kept
        context = _TLS_CONTEXTS[key] = httpx.create_ssl_context(verify=verify, trust_env=trust_env)
    return context


def _running_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _bypass(host: str, proxies: Mapping[str, str]) -> bool:
    """Whether ``NO_PROXY`` (in ``proxies["no"]``) exempts ``host``."""
    # Public in urllib.request though missing from typeshed's stubs.
    bypass: Any = getattr(urllib.request, "proxy_bypass_environment")  # noqa: B009
    return bool(bypass(host, proxies))


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (a loopback name or address)."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def environment_proxy(url: httpx.URL, proxies: Mapping[str, str]) -> str | None:
    """The proxy URL for ``url`` from ``proxies`` (``urllib``'s environment map), or ``None``.

    Loopback hosts never go through a proxy: no proxy can reach this machine's loopback, and a
    CI runner's ``HTTP_PROXY`` must not break a local fake server.
    """
    if not proxies or is_loopback(url.host):
        return None
    host = url.host
    if host and "no" in proxies and _bypass(host, proxies):
        return None
    return proxies.get(url.scheme) or proxies.get("all") or None


def _message(exc: BaseException) -> str:
    text = str(exc) if not _is_aiohttp_response_error(exc) else getattr(exc, "message", "")
    return redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _is_aiohttp_response_error(exc: BaseException) -> bool:
    # ClientResponseError's str() is safe but its repr holds request_info (the headers): use
    # only its status message. Looked up by name to keep aiohttp out of this module's imports.
    return any(cls.__name__ == "ClientResponseError" for cls in type(exc).__mro__)


def translate_aiohttp(
    exc: BaseException, request: httpx.Request | None, *, sent: bool, unwritten: bool = False
) -> httpx.TransportError:
    """The ``httpx`` error for an aiohttp (or any) failure, saying whether it may have been sent.

    ``sent`` is what is known from outside (headers went out, a response started): failures that
    can only happen before sending (connect errors, bad URLs, a proxy refusing) are not-sent
    whatever it says; everything after is ambiguous unless it is known not to have been sent.
    ``unwritten`` is that knowledge (`Progress.unwritten`): the failure is a ``WriteError``.
    """
    import aiohttp

    message = _message(exc)
    new: httpx.TransportError
    if unwritten:
        new = httpx.WriteError(
            f"{message} (the pooled connection was found closed before any byte of the "
            "request was written to it)",
            request=request,
        )
    elif isinstance(exc, (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError)):
        new = httpx.ProxyError(message, request=request)
    elif isinstance(exc, aiohttp.ClientConnectorError):  # refused, DNS, TLS certificate
        new = httpx.ConnectError(message, request=request)
    elif isinstance(exc, aiohttp.ConnectionTimeoutError):
        # aiohttp's connect timeout also covers waiting for a free pooled connection.
        new = httpx.ConnectTimeout(message, request=request)
    elif isinstance(exc, aiohttp.InvalidURL):
        new = httpx.UnsupportedProtocol(message, request=request)
    elif isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        new = (httpx.ReadTimeout if sent else httpx.ConnectTimeout)(message, request=request)
    elif isinstance(exc, aiohttp.ClientPayloadError):
        new = httpx.ReadError(message, request=request)
    elif isinstance(exc, (aiohttp.ClientResponseError, aiohttp.ClientConnectionError)):
        # A malformed answer (bad status line, oversized header), or the connection reset or
        # closed after the request was written: it may have been processed.
        new = httpx.RemoteProtocolError(message, request=request)
    elif sent:
        new = httpx.RemoteProtocolError(message, request=request)
    else:
        # Raised while preparing the request (a header value aiohttp refuses...): never sent.
        new = httpx.LocalProtocolError(message, request=request)
    return new


#: The request being sent by the current task, for `_sending_request_class`.
_SENDING: contextvars.ContextVar[Progress | None] = contextvars.ContextVar(
    "nanogpt_async_sending", default=None
)


def _sending_request_class() -> type[aiohttp.ClientRequest]:
    """The aiohttp request class, marking the request sent when it starts writing it.

    ``ClientRequest.send`` runs once a connection is held, right before the headers are
    written, in the task that called ``session.request``: the progress travels in a context
    variable. A trace config would say the same through aiohttp's signals, which cost ~5% of
    the request path at fan-out (six signal sends per request, benchmark W1).
    """
    import aiohttp

    class SendingRequest(aiohttp.ClientRequest):
        async def send(self, conn: Any) -> aiohttp.ClientResponse:
            progress = _SENDING.get()
            if progress is not None:
                progress.sent = True
            return await super().send(conn)

        async def write_bytes(self, writer: Any, conn: Any, *args: Any, **kwargs: Any) -> None:
            # The request's bytes leave from here, in a task of their own that starts after the
            # pool handed the connection out (aiohttp >= 3.12 holds the headers back to send them
            # with the body). A transport found closing now, with nothing written to it yet,
            # takes no byte of this request: aiohttp's writer refuses every write to a closing
            # transport. That is a pooled connection the server hung up on after the pool handed
            # it out: proof the request never left, so it was not charged and may be retried.
            progress = _SENDING.get()
            transport = getattr(getattr(conn, "protocol", None), "transport", None)
            if (
                progress is not None
                and getattr(writer, "output_size", None) == 0
                and (transport is None or transport.is_closing())
            ):
                progress.unwritten = True
            await super().write_bytes(writer, conn, *args, **kwargs)

    return SendingRequest


def _held_response_class() -> type[aiohttp.ClientResponse]:
    """The aiohttp response class, keeping its connection until `_AiohttpStream.aclose`.

    aiohttp gives a connection back to its pool the moment the body has arrived, before anyone
    has read it; the client has not yet seen whether the answer is well formed. Held until the
    stream is closed, the connection is pooled (`release`) or closed (`close`, for an answer the
    client refused: see `retire`) then.
    """
    import aiohttp

    class HeldResponse(aiohttp.ClientResponse):
        def _response_eof(self) -> None:
            return

    return HeldResponse


class _AiohttpStream(httpx.AsyncByteStream):
    """An aiohttp response body as an httpx stream; every failure is a "sent" transport error."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request | None) -> None:
        self._response = response
        self._request = request
        self._complete = False
        self._retired = False

    def retire(self) -> None:
        """Close the connection at `aclose` even if the body was read to its end."""
        self._retired = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        failure: httpx.TransportError | None = None
        try:
            # ``iter_any`` hands over what arrived; httpx-aiohttp's 16 KB slices made a 16 MB
            # answer take 1000 trips through the generators: 15% more CPU (benchmark W4).
            async for chunk in self._response.content.iter_any():
                yield chunk
            self._complete = True
        except Exception as exc:
            failure = translate_aiohttp(exc, self._request, sent=True)
        if failure is not None:
            # Raised outside the handler: no implicit __context__ carrying aiohttp's exception.
            raise failure

    async def aclose(self) -> None:
        # A body not read to the end leaves the connection unusable: close it, don't pool it.
        if self._complete and not self._retired:
            self._response.release()
        else:
            self._response.close()


class AiohttpCarrier:
    """One aiohttp session; sends httpx requests on it.

    The TLS context is built at the first ``https`` request, not before: loading the CA bundle
    costs 30-65 ms of CPU (``load_verify_locations``), two contexts per client (the API and the
    download pools), paid at start-up even by a run against a plain ``http://`` server (the
    CLI's start-up: benchmark W10). Each ``https`` request carries the context (aiohttp's
    per-request ``ssl=``, which also covers the TLS to the target through a proxy).
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits,
        ssl_context: Callable[[], ssl.SSLContext],
        proxies: Mapping[str, str],
    ) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(
            limit=limits.max_connections or 0,
            keepalive_timeout=limits.keepalive_expiry,
        )
        self._proxies = proxies
        self._make_ssl_context = ssl_context
        self._ssl_context: ssl.SSLContext | None = None
        self.session = aiohttp.ClientSession(
            connector=connector,
            request_class=_sending_request_class(),
            response_class=_held_response_class(),
            # httpx decodes nothing either: the client decompresses with a cap (gzip bombs).
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            # Proxies are chosen here from the environment read once; aiohttp's own trust_env
            # would also add ~/.netrc credentials and look both up in a thread per request.
            trust_env=False,
            max_line_size=_MAX_HEADER_BYTES,
            max_field_size=_MAX_HEADER_BYTES,
        )

    async def send(self, request: httpx.Request) -> httpx.Response:
        progress = request.extensions.get(PROGRESS_EXTENSION)
        progress = progress if isinstance(progress, Progress) else Progress()
        try:
            content = request.content
        except httpx.RequestNotRead:  # a redirected request's stream: small, read it
            content = await request.aread()
        response = await self.open(
            request.method,
            request.url,
            headers=request.headers,
            content=content,
            timeout=self.timeout(request.extensions.get("timeout", {})),
            progress=progress,
            sni_hostname=request.extensions.get("sni_hostname"),
            request=request,
        )
        stream = _AiohttpStream(response, request)
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1", _RETIRE_EXTENSION: stream.retire}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=stream,
            request=request,
            extensions=extensions,
        )

    @staticmethod
    def timeout(
        phases: Mapping[str, float | None], *, within: float | None = None
    ) -> aiohttp.ClientTimeout:
        """The ``aiohttp.ClientTimeout`` for httpx's per-phase one (``httpx.Timeout.as_dict()``).

        ``within``: an overall deadline the caller enforces around the whole request (the
        channel's `attempt_deadline`). A phase as long as it is left to it: every phase starts
        after the deadline did, so its timer could never fire first, and aiohttp re-arms its
        read timer at every chunk received (2 of an item's 3.3 timers in W10, one per chunk of a
        big body).
        """
        import aiohttp

        def own(phase: str) -> float | None:
            seconds = phases.get(phase)
            return (
                None if seconds is None or (within is not None and seconds >= within) else seconds
            )

        return aiohttp.ClientTimeout(
            sock_connect=own("connect"), sock_read=own("read"), connect=own("pool")
        )

    async def open(
        self,
        method: str,
        url: httpx.URL,
        *,
        headers: Mapping[str, str],
        content: bytes | None,
        timeout: aiohttp.ClientTimeout,
        progress: Progress,
        sni_hostname: str | None = None,
        request: httpx.Request | None = None,
    ) -> aiohttp.ClientResponse:
        """Send a request and return aiohttp's response, its body unread.

        Raises:
            httpx.TransportError: what failed, and whether it may have been sent (`Progress`).
        """
        import aiohttp

        progress.tracked = True
        proxy = environment_proxy(url, self._proxies)
        failure: httpx.TransportError | None = None
        token = _SENDING.set(progress)
        try:
            proxy_auth = None
            if proxy is not None:
                parsed = httpx.URL(proxy)
                if parsed.username:
                    proxy_auth = aiohttp.BasicAuth(parsed.username, parsed.password)
                    proxy = str(parsed.copy_with(username=None, password=None))
            response = await self.session.request(
                method,
                str(url),
                headers=headers,
                data=content or None,
                allow_redirects=False,
                timeout=timeout,
                proxy=proxy,
                proxy_auth=proxy_auth,
                server_hostname=sni_hostname,
                ssl=self._tls() if url.scheme == "https" else True,
            )
        except Exception as exc:
            failure = translate_aiohttp(
                exc, request, sent=progress.sent, unwritten=progress.unwritten
            )
        finally:
            _SENDING.reset(token)
        if failure is not None:
            # Raised outside the handler: no implicit __context__ holding aiohttp's exception
            # (its request_info carries the Authorization header).
            raise failure
        progress.sent = True
        return response

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = self._make_ssl_context()
        return self._ssl_context

    async def aclose(self) -> None:
        await self.session.close()


class AutoTransport(httpx.AsyncBaseTransport):
    """aiohttp's connector under asyncio, httpx's own pool elsewhere (trio).

    Args:
        limits: Connection limits; ``max_connections`` becomes aiohttp's connector ``limit``.
        verify: TLS verification, as for httpx (on by default).
        trust_env: Read proxy settings (``HTTP(S)_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) and CA
            bundles (``SSL_CERT_FILE``) from the environment, as httpx does.
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
        self.proxies: Mapping[str, str] = (
            urllib.request.getproxies_environment() if trust_env else {}
        )
        self._aiohttp: AiohttpCarrier | None = None
        self._httpx: dict[str | None, httpx.AsyncHTTPTransport] = {}
        self._picked = False

    @property
    def kind(self) -> str:
        """``"aiohttp"``, ``"httpx"`` or ``"unset"`` (before the first request)."""
        if not self._picked:
            return "unset"
        return "aiohttp" if self._aiohttp is not None else "httpx"

    def proxy_for(self, url: httpx.URL | str) -> str | None:
        """The proxy a request to ``url`` goes through (``None``: direct)."""
        return environment_proxy(httpx.URL(url), self.proxies)

    def _ssl_context(self) -> ssl.SSLContext:
        return tls_context(verify=self._verify, trust_env=self._trust_env)

    def _native(self, proxy: str | None) -> httpx.AsyncHTTPTransport:
        transport = self._httpx.get(proxy)
        if transport is None:
            transport = httpx.AsyncHTTPTransport(
                verify=self._ssl_context(),
                trust_env=self._trust_env,
                limits=self._limits,
                proxy=httpx.Proxy(proxy) if proxy else None,
            )
            self._httpx[proxy] = transport
        return transport

    def _pick(self) -> None:
        self._picked = True
        if _running_asyncio():
            self._aiohttp = AiohttpCarrier(
                limits=self._limits, ssl_context=self._ssl_context, proxies=self.proxies
            )

    def direct(self) -> AiohttpCarrier | None:
        """The aiohttp session to send on without httpx's client layers; ``None`` under trio.

        For the client's own API pool (`_http._channel`), where httpx's request and response
        objects, its client's send layers and its stream wrappers were a fifth of a
        generation's CPU at fan-out (benchmark W2 profile), for nothing that pool uses.
        """
        if not self._picked:
            self._pick()
        return self._aiohttp

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on the pool chosen for the running event loop."""
        if not self._picked:
            self._pick()
        progress = request.extensions.get(PROGRESS_EXTENSION)
        if isinstance(progress, Progress) and "trace" in request.extensions:
            # Both pools report the headers leaving (aiohttp's send, httpcore's trace).
            progress.tracked = True
        if self._aiohttp is not None:
            return await self._aiohttp.send(request)
        return await self._native(
            environment_proxy(request.url, self.proxies)
        ).handle_async_request(request)

    async def aclose(self) -> None:
        """Close the underlying pools (aiohttp session or httpx pools)."""
        if self._aiohttp is not None:
            await self._aiohttp.aclose()
        for transport in self._httpx.values():
            with contextlib.suppress(Exception):
                await transport.aclose()


class DirectAnswer:
    """An aiohttp response as the client's exchange reads it (`AutoTransport.direct`).

    What it reads of an ``httpx.Response``: the status, the headers (a repeated header's values
    joined with ``", "``, as httpx does), the raw body, closing. Body failures become "sent"
    ``httpx.TransportError``s, as on the httpx path.
    """

    __slots__ = ("extensions", "headers", "is_stream_consumed", "status_code", "stream")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.status_code = response.status
        self.headers = _JoinedHeaders(response.headers)
        self.stream = _AiohttpStream(response, None)
        #: Set by the reader as it starts (never read by someone else first).
        self.is_stream_consumed = False
        self.extensions: dict[str, Any] = {_RETIRE_EXTENSION: self.stream.retire}

    @property
    def content(self) -> bytes:
        """Never read ahead: the reader reads `stream`."""
        raise httpx.ResponseNotRead

    async def aclose(self) -> None:
        """Give the connection back (closed instead if not read to its end, or retired)."""
        await self.stream.aclose()


class _JoinedHeaders(Mapping[str, str]):
    """aiohttp's case-insensitive headers, each name's values joined as httpx joins them."""

    __slots__ = ("_headers",)

    def __init__(self, headers: CIMultiDictProxy[str]) -> None:
        self._headers = headers

    def __getitem__(self, name: str) -> str:
        values = self._headers.getall(name)
        return values[0] if len(values) == 1 else ", ".join(values)

    def __iter__(self) -> Iterator[str]:
        return iter({name.lower(): None for name in self._headers})

    def __len__(self) -> int:
        return len({name.lower() for name in self._headers})


async def retire(response: Answer) -> None:
    """Close ``response`` and its connection: it goes back to no pool, even if read to its end.

    For an answer the client refused (not JSON, no image in it...): a server that sends one
    may be about to hang up (tests/hostile_http.py's close right after), and the next request
    sent on that connection would be lost, failing as "may have been charged" though it never
    reached the server (up to 2 of 24 items in the malformed-answers batch test, before this).
    """
    retire_stream = response.extensions.get(_RETIRE_EXTENSION)
    if callable(retire_stream):
        retire_stream()  # the aiohttp path: its stream closes the connection instead of pooling
    else:
        _shut_down(response.extensions.get("network_stream"))
    await response.aclose()


def _shut_down(network_stream: object) -> None:
    """Shut down the socket under an httpcore connection, so that its pool drops it.

    httpcore's pool closes an idle connection whose socket reads as readable (the server hung
    up) instead of handing it out; a socket shut down reads so at once. A transport without
    ``network_stream`` (a mock) has no connection to retire.
    """
    get_extra_info = getattr(network_stream, "get_extra_info", None)
    raw = get_extra_info("socket") if callable(get_extra_info) else None
    shutdown = getattr(raw, "shutdown", None)
    if callable(shutdown):
        with contextlib.suppress(OSError):
            shutdown(socket.SHUT_RDWR)
