"""``AsyncNanoGPT``: settings, the connection pools, and the one request path every call takes."""

from __future__ import annotations

import copy
import ipaddress
import logging
import os
import time
import warnings
from collections.abc import Mapping
from http.cookiejar import CookieJar
from types import TracebackType
from typing import Any

import anyio
import httpx
from typing_extensions import Self

from nanogpt_async._codec import dumps_maybe_offloaded, loads_chunks_maybe_offloaded
from nanogpt_async._errors import (
    ERROR_SCAN_BYTES,
    REDACTED,
    APIResponseValidationError,
    APIStatusError,
    ImageDownloadError,
    ImageError,
    ImageURLExpiredError,
    InvalidInputError,
    NanoGPTError,
    redact,
    status_error,
)
from nanogpt_async._http._exchange import (
    Exchange,
    UndecodableBody,
    attempt_deadline,
    connection_error,
    deadline_error,
    may_hold_secret,
    redact_payload,
    seal,
)
from nanogpt_async._http._redaction import guard_library_logs
from nanogpt_async._http._retry import RetryPolicy, parse_retry_after, run_with_retries
from nanogpt_async._http._transport import AutoTransport
from nanogpt_async._images import Images
from nanogpt_async._output._responses import Balance, checked_image, redact_url
from nanogpt_async._pacing import (
    PacedAttempts,
    Pacer,
    PacerState,
    PacingBackend,
    TurnHooks,
)
from nanogpt_async._types import NOT_GIVEN, NotGiven, TimeoutTypes

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_TIMEOUT", "AsyncNanoGPT"]

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

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
_PARSED_URLS_MAX = 64
#: Answers bigger than this are read and parsed at most `BIG_BODY_SLOTS` at a time per client.
#: Benchmark W4 (200 answers of 16 MB, 32 in flight): unbounded, peak RSS 0.9-1.2 GB; 4 slots,
#: 280-330 MB; 2 slots, 200-250 MB with the same makespan and less loop lag. A transfer holds
#: its slot, but two connections already fill a link that can only carry a few such answers
#: per second anyway.
BIG_BODY_BYTES = 1024 * 1024
BIG_BODY_SLOTS = 2
#: Redirects a signed-URL download follows (the API's own answers are never followed).
MAX_REDIRECTS = 5


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
    client._cookies = _NoCookieParsing(_NoCookies())  # noqa: SLF001
    return client


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _as_timeout(value: TimeoutTypes) -> httpx.Timeout:
    return value if isinstance(value, httpx.Timeout) else httpx.Timeout(value)


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
        #: What is redacted from every error and answer text (the key as sent).
        self._secrets = (key,)
        guard_library_logs(key)
        self.base_url = self._check_base_url(
            base_url or os.environ.get("NANOGPT_BASE_URL") or DEFAULT_BASE_URL
        )
        if max_connections < 1:
            raise InvalidInputError(f"max_connections must be at least 1, got {max_connections}")
        self.max_connections = max_connections
        self.timeout = DEFAULT_TIMEOUT if isinstance(timeout, NotGiven) else _as_timeout(timeout)
        policy = retry_policy or RetryPolicy()
        if not isinstance(max_retries, NotGiven):
            policy = RetryPolicy(**{**policy.__dict__, "max_retries": max_retries})
        self.retry_policy = policy
        self.max_response_bytes = max_response_bytes
        self.max_download_bytes = max_download_bytes
        self.download_timeout = _as_timeout(download_timeout)

        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=5.0,
        )
        self._owns_http = http_client is None
        self._http = http_client or _without_cookies(
            httpx.AsyncClient(
                transport=AutoTransport(limits=limits, verify=verify),
                timeout=self.timeout,
            )
        )
        self._owns_download_http = download_client is None
        # A separate pool for signed URLs: it has no credentials to leak, and downloads never
        # queue behind generations waiting for a connection.
        self._download_http = download_client or _without_cookies(
            httpx.AsyncClient(
                transport=AutoTransport(limits=limits, verify=verify),
                timeout=self.download_timeout,
                # What _exchange decodes (httpx would add br/zstd when those are installed).
                headers={"Accept-Encoding": "gzip, deflate"},
                follow_redirects=True,
                max_redirects=MAX_REDIRECTS,
            )
        )
        # Built once: the hot path only looks these up.
        self._auth_headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
            "User-Agent": "nanogpt-async/0.1.0",
        }
        self._generations_url = f"{self.base_url}/images/generations"
        self._parsed_urls: dict[str, httpx.URL] = {}
        self._big_bodies = anyio.Semaphore(BIG_BODY_SLOTS)
        self._owns_pacer = True
        self._pacer = self._make_pacer(key, rps, burst, max_wait, limits_url)
        self._models_url = f"{self.base_url}/image-models"
        self._balance_url = self._api_root(self.base_url) + "/check-balance"
        self.images = Images(self)

    @staticmethod
    def _make_pacer(
        key: str, rps: float | None, burst: int, max_wait: float, limits_url: str | None
    ) -> Pacer:
        url = limits_url if limits_url is not None else os.environ.get("NANOGPT_LIMITS_URL")
        backend: PacingBackend | None = None
        if url:
            # Imported only when asked for: redis is an optional extra. The connection itself
            # is made on first use, inside the running loop (never here, never before a fork).
            from nanogpt_async._pacing._redis import RedisBackend  # noqa: PLC0415

            try:
                backend = RedisBackend(url, key=key)
            except ValueError as exc:
                raise InvalidInputError(str(exc)) from None
        try:
            return Pacer(rps=rps, burst=burst, max_wait=max_wait, backend=backend)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None

    @property
    def pacing(self) -> PacerState:
        """This client's pacing now: rate, current wait, cooldown end, daily-cap block.

        Example:
            >>> client.pacing.wait  # doctest: +SKIP
            0.0
        """
        return self._pacer.state

    @staticmethod
    def _check_base_url(url: str) -> str:
        url = url.strip().rstrip("/")
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise InvalidInputError(
                f"base_url must be an http(s) URL such as {DEFAULT_BASE_URL!r}, got {url!r}"
            )
        if parsed.scheme == "http" and not _is_loopback(parsed.host):
            warnings.warn(
                f"base_url {url!r} is plain http to a non-loopback host: the API key would "
                "cross the network unencrypted. Use https.",
                UserWarning,
                stacklevel=3,
            )
        return url

    @staticmethod
    def _api_root(base_url: str) -> str:
        """``.../api/v1`` -> ``.../api``: check-balance lives outside the OpenAI-style ``/v1``."""
        root = base_url.removesuffix("/v1")
        return root if root.endswith("/api") else root + "/api"

    def __repr__(self) -> str:
        return f"AsyncNanoGPT(base_url={self.base_url!r}, api_key=<hidden>)"

    async def __aenter__(self) -> Self:
        """Use the client as an async context manager; the pools close on exit."""
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
        """Close the connection pools this client created (not ones you passed in)."""
        if self._owns_pacer:
            await self._pacer.aclose()
        if self._owns_http:
            await self._http.aclose()
        if self._owns_download_http:
            await self._download_http.aclose()

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
        view = copy.copy(self)
        view._owns_http = False  # noqa: SLF001 - same class
        view._owns_download_http = False  # noqa: SLF001
        view._owns_pacer = False  # noqa: SLF001 - the view shares the pacer: one key, one pace
        if not isinstance(timeout, NotGiven):
            view.timeout = _as_timeout(timeout)
        policy = retry_policy or self.retry_policy
        if not isinstance(max_retries, NotGiven):
            policy = RetryPolicy(**{**policy.__dict__, "max_retries": max_retries})
        view.retry_policy = policy
        view.images = Images(view)
        return view

    def _with_own_pacer(self, *, rps: float | None, burst: int) -> AsyncNanoGPT:
        """A view with a pacer of its own (a batch given its own ``rps``), in memory.

        It keeps real time even under ``recorded_backoff()``, as the per-batch pacer it stands
        in for always did: tests pacing a batch against a rate-limited fake rely on it.
        """
        view = self.with_options()
        view._pacer = Pacer(  # noqa: SLF001 - same class
            rps=rps,
            burst=burst,
            max_wait=self._pacer.max_wait,
            clock=time.monotonic,
            sleep=anyio.sleep,
        )
        return view

    # -- the request path -------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        url: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
        hooks: TurnHooks | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        paced: bool = True,
    ) -> tuple[Any, str | None]:
        """Send one API call through the pacer and the retry engine.

        Every attempt (retries included) takes its turn from the client's pacer; ``hooks``
        (the batch runner's) decide when to take it. Returns ``(parsed JSON, request id)``.
        """
        # Image-to-image bodies carry megabytes of data URLs: encoded off the event loop.
        content = await dumps_maybe_offloaded(json_body) if json_body is not None else None
        request_headers = headers if headers is not None else self._auth_headers
        effective_timeout = self.timeout if isinstance(timeout, NotGiven) else _as_timeout(timeout)
        parsed = self._parsed_urls.get(url)
        if parsed is None:
            # Parsing a URL costs httpx ~0.1 ms, twice per request (here and in the client);
            # the API has a handful of URLs: parse each once.
            parsed = httpx.URL(url)
            if len(self._parsed_urls) < _PARSED_URLS_MAX:
                self._parsed_urls[url] = parsed
        describe = f"{method} {parsed.path}"

        async def attempt() -> tuple[Any, str | None]:
            return await self._attempt(
                method,
                parsed,
                content=content,
                headers=request_headers,
                timeout=effective_timeout,
                describe=describe,
            )

        return await run_with_retries(
            self.retry_policy,
            attempt,
            idempotent=idempotent,
            describe=describe,
            hooks=PacedAttempts(self._pacer, hooks) if paced else None,
        )

    async def _attempt(
        self,
        method: str,
        url: httpx.URL,
        *,
        content: bytes | None,
        headers: Mapping[str, str],
        timeout: httpx.Timeout,
        describe: str,
    ) -> tuple[Any, str | None]:
        """One attempt; nothing but a (key-free) ``NanoGPTError`` or cancellation leaves it."""
        deadline = attempt_deadline(timeout)
        exchange = Exchange(
            scope=anyio.CancelScope(), on_big=self._big_bodies.acquire, big=BIG_BODY_BYTES
        )
        failure: NanoGPTError | None = None
        result: tuple[Any, str | None] | None = None
        received: tuple[httpx.Response, list[bytes]] | None = None
        try:
            with exchange.scope:
                if deadline is not None:
                    exchange.scope.deadline = anyio.current_time() + deadline
                received = await self._exchange(
                    exchange,
                    method,
                    url,
                    content=content,
                    headers=headers,
                    timeout=timeout,
                    describe=describe,
                )
            if received is None:
                failure = deadline_error(describe, deadline or 0, sent=exchange.progress.maybe_sent)
            else:
                # Outside the deadline: an answer received in full is never thrown away because
                # parsing it (in a worker thread, for big ones) ends after the deadline.
                result = await self._interpret(*received, describe=describe)
        except NanoGPTError as exc:
            failure = exc
        except Exception as exc:  # noqa: BLE001 - the boundary: every failure becomes ours
            failure = seal(
                connection_error(exc, describe, self.base_url, sent=_sent(exc, exchange)),
                self._secrets,
                cause=exc,
            )
        finally:
            if exchange.holding:
                self._big_bodies.release()
        if failure is not None:
            # Raised here, outside any except block: nothing foreign is chained as __context__.
            raise seal(failure, self._secrets)
        assert result is not None  # noqa: S101 - set whenever there is no failure
        return result

    async def _exchange(
        self,
        exchange: Exchange,
        method: str,
        url: httpx.URL,
        *,
        content: bytes | None,
        headers: Mapping[str, str],
        timeout: httpx.Timeout,
        describe: str,
    ) -> tuple[httpx.Response, list[bytes]]:
        """Send and receive: the response and its (decoded) body, or an error body's head."""
        if self._owns_http:
            # Our own pool has no defaults to merge: build the request directly and skip
            # httpx's per-call header/cookie/parameter merging (~8% of the request path at
            # fan-out, benchmark W1). A pool you pass in keeps its defaults.
            request = httpx.Request(
                method,
                url,
                content=content,
                headers=headers,
                extensions=exchange.extensions(timeout),
            )
        else:
            request = self._http.build_request(
                method,
                url,
                content=content,
                headers=headers,
                timeout=timeout,
                extensions=exchange.extensions(timeout),
            )
        response = await self._http.send(request, stream=True)
        status = response.status_code
        try:
            if status >= 300:  # noqa: PLR2004 - redirects are not followed with a key
                # Only the head of an error body is looked at (parse_error_body): reading a
                # huge one would only cost memory.
                return response, await exchange.read(
                    response, ERROR_SCAN_BYTES + 1, describe, truncate=True
                )
            return response, await exchange.read(response, self.max_response_bytes, describe)
        except UndecodableBody as exc:
            if status >= 300:  # noqa: PLR2004
                return response, [f"(an undecodable {status} body: {exc})".encode()]
            raise APIResponseValidationError(
                f"{describe} answered {status} with a body that cannot be decoded "
                f"({exc}); if it was a generation it may have been charged",
                request_id=self._redact(response.headers.get("x-request-id")),
            ) from None
        finally:
            await response.aclose()

    async def _interpret(
        self, response: httpx.Response, chunks: list[bytes], *, describe: str
    ) -> tuple[Any, str | None]:
        """The parsed answer and request id, or the error the answer stands for."""
        request_id = self._redact(response.headers.get("x-request-id"))
        status = response.status_code
        if status >= 300:  # noqa: PLR2004
            raise status_error(
                status,
                b"".join(chunks),
                content_type=response.headers.get("content-type", ""),
                request_id=request_id,
                retry_after=parse_retry_after(response.headers),
            )
        try:
            # The chunks are joined in the worker thread too: a 16 MB join is a copy the
            # event loop need not make.
            payload = await loads_chunks_maybe_offloaded(chunks)
        except ValueError:
            body = b"".join(chunks)
            snippet = body[:200].decode("utf-8", "replace")
            raise APIResponseValidationError(
                f"{describe} answered {status} with a body that is not JSON "
                f"({len(body)} bytes, starting {snippet!r}); if it was a generation it may "
                "have been charged",
                request_id=request_id,
                body=snippet,
            ) from None
        if len(chunks) == 1 and not may_hold_secret(chunks[0], self._secrets):
            return payload, request_id
        return redact_payload(payload, self._secrets), request_id

    def _redact(self, text: str | None) -> str | None:
        return redact(text, self._secrets) if text is not None else None

    # -- downloads --------------------------------------------------------------------------

    async def download_image(self, url: str) -> bytes:
        """Download a signed image URL without any credentials; check the bytes are an image.

        Transient failures (5xx, 429, connection errors, timeouts) are retried: a GET costs
        nothing. 403 and 404 mean the signed URL expired or the file is gone. Each attempt has
        the overall deadline of ``download_timeout`` (see `attempt_deadline`).

        Raises:
            ImageURLExpiredError: 403/404 from the storage host.
            ImageDownloadError: any other failure, after retries (a redirect loop, a malformed
                URL or answer, the size cap...).
            InvalidImageError: the URL answered with something that is not an image.
        """
        shown = self._redact(redact_url(url)) or ""
        failure: NanoGPTError | None = None
        try:
            parsed = self._download_url(url, shown)
            data = await run_with_retries(
                self.retry_policy,
                lambda: self._download_attempt(parsed, shown),
                idempotent=True,
                describe=f"GET {shown}",
            )
            checked_image(data, f"the download from {shown}")
        except ImageError as exc:
            failure = exc
        except APIStatusError as exc:
            failure = ImageDownloadError(
                f"downloading {shown} failed with HTTP {exc.status_code}: {exc.message}",
                url=shown,
                status_code=exc.status_code,
            )
            failure.__cause__ = exc
        except NanoGPTError as exc:  # connection failures, size cap, deadline
            failure = ImageDownloadError(f"downloading {shown} failed: {exc}", url=shown)
            failure.__cause__ = exc
        if failure is not None:
            raise seal(failure, self._secrets)
        return data

    def _download_url(self, url: str, shown: str) -> httpx.URL:
        if REDACTED in url or any(secret in url for secret in self._secrets):
            raise ImageDownloadError(
                f"the image URL {shown} that NanoGPT sent contains your API key; it was not "
                "fetched, so the key does not go to another host. Report it to NanoGPT",
                url=shown,
            )
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            reason = redact(str(exc), self._secrets)
            raise ImageDownloadError(
                f"NanoGPT sent a malformed image URL {shown!r} ({reason}); it cannot be "
                "downloaded. The generation may have been charged: quote the request id to "
                "NanoGPT support",
                url=shown,
            ) from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ImageDownloadError(
                f"refusing to download image URL {shown!r}: only http(s) URLs are fetched",
                url=shown,
            )
        return parsed

    async def _download_attempt(self, url: httpx.URL, shown: str) -> bytes:
        describe = f"GET {shown}"
        timeout = self.download_timeout
        deadline = attempt_deadline(timeout)
        exchange = Exchange(scope=anyio.CancelScope())
        failure: NanoGPTError | None = None
        body: bytes | None = None
        try:
            with exchange.scope:
                if deadline is not None:
                    exchange.scope.deadline = anyio.current_time() + deadline
                body = await self._download_exchange(exchange, url, shown, timeout)
            if exchange.scope.cancelled_caught and body is None:
                failure = deadline_error(describe, deadline or 0, sent=True, download=True)
        except NanoGPTError as exc:
            failure = exc
        except httpx.TooManyRedirects:
            failure = ImageDownloadError(
                f"downloading {shown} went round in redirects (more than {MAX_REDIRECTS}); not "
                "retried. The image may be lost: generate again",
                url=shown,
            )
        except Exception as exc:  # noqa: BLE001 - the boundary: every failure becomes ours
            failure = seal(
                connection_error(exc, describe, shown, sent=True, download=True),
                self._secrets,
                cause=exc,
            )
        if failure is not None:
            raise seal(failure, self._secrets)
        assert body is not None  # noqa: S101 - set whenever there is no failure
        return body

    async def _download_exchange(
        self, exchange: Exchange, url: httpx.URL, shown: str, timeout: httpx.Timeout
    ) -> bytes:
        describe = f"GET {shown}"
        request = self._download_http.build_request(
            "GET", url, timeout=timeout, extensions=exchange.extensions(timeout)
        )
        response = await self._download_http.send(request, stream=True)
        try:
            status = response.status_code
            try:
                if status in (403, 404) or status >= 300:  # noqa: PLR2004
                    head = b"".join(
                        await exchange.read(response, ERROR_SCAN_BYTES, describe, truncate=True)
                    )
                else:
                    body = b"".join(
                        await exchange.read(response, self.max_download_bytes, describe)
                    )
            except UndecodableBody as exc:
                raise ImageDownloadError(
                    f"downloading {shown} gave a body that cannot be decoded ({exc})", url=shown
                ) from None
        finally:
            await response.aclose()
        if status in (403, 404):
            raise _expired_error(shown, status, head)
        if status >= 300:  # noqa: PLR2004
            raise status_error(
                status,
                head,
                content_type=response.headers.get("content-type", ""),
                request_id=self._redact(response.headers.get("x-request-id")),
                retry_after=parse_retry_after(response.headers),
            )
        return body

    # -- account ----------------------------------------------------------------------------

    async def balance(self) -> Balance:
        """The account balance (``POST /api/check-balance``), amounts as ``Decimal``."""
        headers = {
            "x-api-key": self._api_key,
            "Accept": "application/json",
            "User-Agent": self._auth_headers["User-Agent"],
        }
        # Not paced: a rare, free call, which must still work while a daily cap blocks.
        payload, request_id = await self._request(
            "POST", self._balance_url, headers=headers, idempotent=True, paced=False
        )
        return Balance.from_api(payload, request_id=request_id)


def _expired_error(shown: str, status: int, head: bytes) -> ImageURLExpiredError:
    text = head.decode("utf-8", "replace")
    reason = "expired" if status == 403 else "not found (deleted)"  # noqa: PLR2004
    lowered = text.lower()
    if "expired" in lowered:
        reason = "expired"
    detail = ""
    start, end = text.find("<Message>"), text.find("</Message>")
    if 0 <= start < end:
        detail = f": {text[start + len('<Message>') : end].strip()}"
    return ImageURLExpiredError(
        f"the signed image URL {shown} is {reason} (HTTP {status}{detail}). Signed URLs last "
        "about an hour and files are deleted later: download right after generating, or "
        "generate again",
        url=shown,
        status_code=status,
    )


def _sent(exc: BaseException, exchange: Exchange) -> bool | None:
    """Whether a failure may have been charged when its class alone cannot say."""
    if isinstance(exc, httpx.TransportError):
        return None  # the class says (translated by our transport from what it saw)
    return exchange.progress.maybe_sent
