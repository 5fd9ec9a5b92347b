"""``AsyncNanoGPT``: settings, the connection pools, the pacer and the lifecycle.

Every call the client and its resources make goes through its `Channel` (``_http/_channel``).
"""

from __future__ import annotations

import copy
import enum
import logging
import os
import warnings
from collections.abc import Awaitable, Callable
from http.cookiejar import CookieJar
from types import TracebackType
from typing import Any

import httpx
from typing_extensions import Self

from nanogpt_async._errors import InvalidInputError
from nanogpt_async._http._channel import Channel, as_timeout
from nanogpt_async._http._download import MAX_REDIRECTS
from nanogpt_async._http._redaction import guard_library_logs
from nanogpt_async._http._request import Pools
from nanogpt_async._http._retry import RetryPolicy
from nanogpt_async._http._transport import AutoTransport, is_loopback
from nanogpt_async._images import Images
from nanogpt_async._output._responses import Balance
from nanogpt_async._pacing import Pacer, PacerState, PacingBackend
from nanogpt_async._types import NOT_GIVEN, NotGiven, TimeoutTypes
from nanogpt_async._version import user_agent

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_TIMEOUT", "AsyncNanoGPT", "ClientState"]

logger = logging.getLogger("nanogpt_async")

DEFAULT_BASE_URL = "https://nano-gpt.com/api/v1"
#: Generation takes seconds to tens of seconds; a read timeout shorter than a few minutes would
#: abandon (and, with retries, pay again for) work the server is still doing.
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=10.0, pool=None)
DEFAULT_DOWNLOAD_TIMEOUT = httpx.Timeout(60.0, connect=10.0, pool=None)
DEFAULT_MAX_CONNECTIONS = 256
#: Caps on what a misbehaving server can make us hold in memory.
DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024


class ClientState(enum.Enum):
    """Where a client is in its life (as httpx's ``ClientState``)."""

    #: Made, not entered yet (calls work: ``async with`` is optional).
    UNOPENED = 1
    #: Entered with ``async with``.
    OPENED = 2
    #: ``aclose()`` ran: the pools it made are closed; closing again does nothing.
    CLOSED = 3


class _NoCookies(CookieJar):
    """A jar that never stores anything.

    NanoGPT's API sets no cookies and a storage host's cookies must not follow us around; yet
    httpx parses every response for them through ``http.cookiejar`` (a URL parse and header
    scans): about 0.1 ms of CPU per request, 10-20% of the whole request path (benchmark W1).
    """

    def extract_cookies(self, response: Any, request: Any) -> None:
        """Ignore ``Set-Cookie``."""


class _NoCookieParsing(httpx.Cookies):
    """httpx's cookies over `_NoCookies`, skipping even the adapter httpx builds per response.

    With the jar alone, httpx still wraps each response's request in a ``urllib`` request
    (a URL parse, header copies) before the jar ignores it: measured 0.23 ms of 1.8 ms per item
    under cProfile in a CLI batch (W10).
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        """Ignore ``Set-Cookie``."""


def _without_cookies(client: httpx.AsyncClient) -> httpx.AsyncClient:
    # The ``cookies`` setter would wrap the subclass in a plain Cookies again.
    client._cookies = _NoCookieParsing(_NoCookies())  # noqa: SLF001 - httpx has no public hook
    return client


def _pools(
    *,
    max_connections: int,
    verify: bool | str,
    timeout: httpx.Timeout,
    download_timeout: httpx.Timeout,
    http_client: httpx.AsyncClient | None,
    download_client: httpx.AsyncClient | None,
) -> Pools:
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=5.0,
    )
    api = http_client or _without_cookies(
        httpx.AsyncClient(
            transport=AutoTransport(limits=limits, verify=verify),
            timeout=timeout,
        )
    )
    # A separate pool for signed URLs: it has no credentials to leak, and downloads never
    # queue behind generations waiting for a connection.
    download = download_client or _without_cookies(
        httpx.AsyncClient(
            transport=AutoTransport(limits=limits, verify=verify),
            timeout=download_timeout,
            # What _exchange decodes (httpx would add br/zstd when those are installed).
            headers={"Accept-Encoding": "gzip, deflate"},
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
        )
    )
    return Pools(api=api, download=download, api_is_plain=http_client is None, size=max_connections)


def _pacer(
    key: str, rps: float | None, burst: int, max_wait: float, limits_url: str | None
) -> Pacer:
    url = limits_url if limits_url is not None else os.environ.get("NANOGPT_LIMITS_URL")
    backend: PacingBackend | None = None
    if url:
        # Imported only when asked for: redis is an optional extra. The connection itself
        # is made on first use, inside the running loop (never here, never before a fork).
        from nanogpt_async._pacing._redis import RedisBackend

        try:
            backend = RedisBackend(url, key=key)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
    try:
        return Pacer(rps=rps, burst=burst, max_wait=max_wait, backend=backend)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None


def _check_base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidInputError(
            f"base_url must be an http(s) URL such as {DEFAULT_BASE_URL!r}, got {url!r}"
        )
    if parsed.scheme == "http" and not is_loopback(parsed.host):
        warnings.warn(
            f"base_url {url!r} is plain http to a non-loopback host: the API key would "
            "cross the network unencrypted. Use https.",
            UserWarning,
            stacklevel=3,
        )
    return url


def _api_root(base_url: str) -> str:
    """``.../api/v1`` -> ``.../api``: check-balance lives outside the OpenAI-style ``/v1``."""
    root = base_url.removesuffix("/v1")
    return root if root.endswith("/api") else root + "/api"


def _balance(payload: object, request_id: str | None) -> Balance:
    return Balance.from_api(payload, request_id=request_id)


class AsyncNanoGPT:
    """An asyncio (and trio) client for NanoGPT's image API.

    One instance holds one connection pool for its whole life: create it once (for a web app,
    in the app's lifespan) and share it. Use ``async with`` or call
    [aclose][nanogpt_async.AsyncNanoGPT.aclose].

    Args:
        api_key: Your NanoGPT key; defaults to the ``NANOGPT_API_KEY`` environment variable.
        base_url: API base; defaults to ``NANOGPT_BASE_URL`` or ``https://nano-gpt.com/api/v1``.
        timeout: Seconds or an ``httpx.Timeout``; ``None`` means no timeout. Default:
            `httpx.Timeout(300.0, connect=10.0)`, 5 minutes (generation is slow). Seconds are
            also each attempt's overall deadline; for an ``httpx.Timeout`` the deadline is its
            largest phase, or none when ``read`` is ``None``.
        max_retries: Retries after the first attempt (overrides ``retry_policy.max_retries``).
            Default: `retry_policy.max_retries`, which is 2 for the default policy.
        retry_policy: The full retry policy; see [RetryPolicy][nanogpt_async.RetryPolicy].
        max_connections: Connection pool size; the batch runner keeps its concurrency within it.
        http_client: Your own ``httpx.AsyncClient`` for API calls (proxies, custom TLS, mocks).
            It is not closed by `aclose()`; you own it.
        download_client: Your own ``httpx.AsyncClient`` for signed-URL downloads. It must not
            carry credentials: the library never adds any to it. Not closed by `aclose()`.
        download_timeout: Timeout for each signed-URL download (the same deadline rule).
        max_response_bytes: Largest API response body accepted, decompressed.
        max_download_bytes: Largest downloaded image accepted, decompressed.
        verify: TLS verification for the pools this client creates (on by default).
        rps: Requests per second at most, for every request this client sends (generations,
            batches, retries included): NanoGPT allows 25 per key. ``None`` turns the rate
            limit off; a 429's cooldown and a daily cap still hold every call.
        burst: Requests that may go at once after a quiet spell (1: evenly spaced).
        max_wait: Longest wait for a turn; a call whose turn is further away raises
            `LocalRateLimitError` before sending (a web backend sets a few seconds).
        limits_url: ``redis://host:port/db`` to share the key's pacing with every process
            that uses it (needs the ``[redis]`` extra); defaults to ``NANOGPT_LIMITS_URL``.
            See "Sharing one key" in the docs.

    Example:
        >>> async with AsyncNanoGPT() as client:  # doctest: +SKIP
        ...     response = await client.images.generate(prompt="a lighthouse at dusk")
        ...     await response.data[0].save("lighthouse")
    """

    images: Images
    # Where the client is in its life (internal, like httpx's).
    state: ClientState

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        retry_policy: RetryPolicy | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        http_client: httpx.AsyncClient | None = None,
        download_client: httpx.AsyncClient | None = None,
        download_timeout: TimeoutTypes = DEFAULT_DOWNLOAD_TIMEOUT,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        verify: bool | str = True,
        rps: float | None = 25.0,  # DEFAULT_RPS, spelled out for the API reference
        burst: int = 1,
        max_wait: float = 60.0,  # DEFAULT_MAX_WAIT
        limits_url: str | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("NANOGPT_API_KEY", "")
        key = key.strip()
        if not key:
            raise InvalidInputError(
                "No NanoGPT API key: pass AsyncNanoGPT(api_key=...) or set the NANOGPT_API_KEY "
                "environment variable (create a key at https://nano-gpt.com/api)"
            )
        if any(ch.isspace() or not ch.isprintable() for ch in key):
            raise InvalidInputError(
                "The NanoGPT API key contains whitespace or control characters; check how it "
                "was copied (the key itself is not shown here)"
            )
        self._api_key = key
        guard_library_logs(key)
        self.base_url = _check_base_url(
            base_url or os.environ.get("NANOGPT_BASE_URL") or DEFAULT_BASE_URL
        )
        if max_connections < 1:
            raise InvalidInputError(f"max_connections must be at least 1, got {max_connections}")
        self.max_connections = max_connections
        policy = retry_policy or RetryPolicy()
        if not isinstance(max_retries, NotGiven):
            policy = RetryPolicy(**{**policy.__dict__, "max_retries": max_retries})
        api_timeout = DEFAULT_TIMEOUT if isinstance(timeout, NotGiven) else as_timeout(timeout)
        pools = _pools(
            max_connections=max_connections,
            verify=verify,
            timeout=api_timeout,
            download_timeout=as_timeout(download_timeout),
            http_client=http_client,
            download_client=download_client,
        )
        pacer = _pacer(key, rps, burst, max_wait, limits_url)
        self.state = ClientState.UNOPENED
        # What aclose() closes: what this client made (a view made nothing).
        self._closers: tuple[Callable[[], Awaitable[None]], ...] = (
            pacer.aclose,
            *([pools.api.aclose] if http_client is None else []),
            *([pools.download.aclose] if download_client is None else []),
        )
        # How the resources reach the API (internal; not part of the public API).
        self.channel = Channel(
            pools=pools,
            api_key=key,
            # Built once: the hot path only looks these up.
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Accept-Encoding": "gzip, deflate",
                "User-Agent": user_agent(),
            },
            base_url=self.base_url,
            timeout=api_timeout,
            retry_policy=policy,
            pacer=pacer,
            download_timeout=as_timeout(download_timeout),
            max_response_bytes=max_response_bytes,
            max_download_bytes=max_download_bytes,
        )
        self._balance_url = _api_root(self.base_url) + "/check-balance"
        self.images = Images(self.channel)

    @property
    def pacing(self) -> PacerState:
        """This client's pacing now: rate, current wait, cooldown end, daily-cap block.

        Example:
            >>> client.pacing.wait  # doctest: +SKIP
            0.0
        """
        return self.channel.pacer.state

    @property
    def timeout(self) -> httpx.Timeout:
        """Each API call's timeout unless the call gives its own."""
        return self.channel.timeout

    @property
    def retry_policy(self) -> RetryPolicy:
        """How calls are retried."""
        return self.channel.retry_policy

    @property
    def download_timeout(self) -> httpx.Timeout:
        """Each signed-URL download attempt's timeout."""
        return self.channel.download_timeout

    @property
    def max_response_bytes(self) -> int:
        """Largest API response body accepted, decompressed."""
        return self.channel.max_response_bytes

    @property
    def max_download_bytes(self) -> int:
        """Largest downloaded image accepted, decompressed."""
        return self.channel.max_download_bytes

    def __repr__(self) -> str:
        return f"AsyncNanoGPT(base_url={self.base_url!r}, api_key=<hidden>)"

    async def __aenter__(self) -> Self:
        """Use the client as an async context manager; the pools close on exit."""
        if self.state is ClientState.UNOPENED:
            self.state = ClientState.OPENED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the pools."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pools this client created (not ones you passed in).

        Closing twice does nothing; a view (`with_options`) closes nothing.
        """
        if self.state is ClientState.CLOSED:
            return
        self.state = ClientState.CLOSED
        for close in self._closers:
            await close()

    def with_options(
        self,
        *,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        retry_policy: RetryPolicy | None = None,
    ) -> AsyncNanoGPT:
        """A view of this client with other timeout/retry settings, sharing its connection pool.

        Closing the view does not close the pool; close the original.

        Args:
            timeout: The view's timeout (seconds, ``httpx.Timeout``, or ``None`` for none).
                Default: `client.timeout`, this client's.
            max_retries: The view's retries after the first attempt. Default:
                `client.retry_policy.max_retries`, this client's.
            retry_policy: The view's whole retry policy instead of this client's.

        Example:
            >>> patient = client.with_options(timeout=600, max_retries=5)  # doctest: +SKIP
        """
        policy = retry_policy or self.retry_policy
        if not isinstance(max_retries, NotGiven):
            policy = RetryPolicy(**{**policy.__dict__, "max_retries": max_retries})
        view = copy.copy(self)
        # The view shares the pools and the pacer (one key, one pace) and closes none of them.
        view._closers = ()  # noqa: SLF001 - a copy of this very object
        view.channel = self.channel.with_settings(
            timeout=None if isinstance(timeout, NotGiven) else as_timeout(timeout),
            retry_policy=policy,
        )
        view.images = Images(view.channel)
        return view

    # -- downloads and the account ----------------------------------------------------------

    async def download_image(self, url: str) -> bytes:
        """Download a signed image URL without any credentials; check the bytes are an image.

        Transient failures (5xx, 429, connection errors, timeouts) are retried: a GET costs
        nothing. 403 and 404 mean the signed URL expired or the file is gone. Each attempt has
        the overall deadline of ``download_timeout``.

        Raises:
            ImageURLExpiredError: 403/404 from the storage host.
            ImageDownloadError: any other failure, after retries (a redirect loop, a malformed
                URL or answer, the size cap...).
            InvalidImageError: the URL answered with something that is not an image.
        """
        return await self.channel.download_image(url)

    async def balance(self) -> Balance:
        """The account balance (``POST /api/check-balance``), amounts as ``Decimal``."""
        headers = {
            "x-api-key": self.channel.api_key,
            "Accept": "application/json",
            "User-Agent": user_agent(),
        }
        # Not paced: a rare, free call, which must still work while a daily cap blocks.
        return await self.channel.call(
            "POST",
            self._balance_url,
            parse=_balance,
            headers=headers,
            idempotent=True,
            paced=False,
        )
