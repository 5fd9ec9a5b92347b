"""Signed-URL downloads: no credentials, retried (a GET costs nothing), capped, checked.

Signed URLs point at storage hosts, not at the API: they are fetched on the channel's second
pool, which carries no key, and a URL that contains the key is refused before any request.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus

import anyio
import httpx

from nanogpt_async._errors import (
    ERROR_SCAN_BYTES,
    REDACTED,
    APIStatusError,
    ImageDownloadError,
    ImageError,
    ImageURLExpiredError,
    NanoGPTError,
    redact,
    redact_url,
    status_error,
)
from nanogpt_async._http._exchange import (
    Exchange,
    UndecodableBodyError,
    attempt_deadline,
    connection_error,
    deadline_error,
    seal,
)
from nanogpt_async._http._retry import RetryPolicy, parse_retry_after, run_with_retries
from nanogpt_async._sniff import checked_image

__all__ = ["MAX_REDIRECTS", "Downloads"]

#: Redirects a signed-URL download follows (the API's own answers are never followed).
MAX_REDIRECTS = 5
_FIRST_ERROR_STATUS = HTTPStatus.MULTIPLE_CHOICES
_EXPIRED_STATUSES = (HTTPStatus.FORBIDDEN, HTTPStatus.NOT_FOUND)


class Downloads:
    """Downloads of signed image URLs for one channel.

    Args:
        http: The credential-free pool (follows up to `MAX_REDIRECTS` redirects).
        secrets: What never goes to a storage host and is redacted from every error.
        retry_policy: The channel's retries.
        timeout: Each attempt's timeout (and overall deadline, see `attempt_deadline`).
        max_bytes: Largest image accepted, decompressed.
    """

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        secrets: Sequence[str],
        retry_policy: RetryPolicy,
        timeout: httpx.Timeout,
        max_bytes: int,
    ) -> None:
        self._http = http
        self._secrets = tuple(secrets)
        self._retry_policy = retry_policy
        self._timeout = timeout
        self._max_bytes = max_bytes

    async def get(self, url: str) -> bytes:
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
        shown = _redact(self._secrets, redact_url(url)) or ""
        failure: NanoGPTError | None = None
        try:
            parsed = self._checked_url(url, shown)
            data = await run_with_retries(
                self._retry_policy,
                lambda: self._attempt(parsed, shown),
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

    def _checked_url(self, url: str, shown: str) -> httpx.URL:
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

    async def _attempt(self, url: httpx.URL, shown: str) -> bytes:
        describe = f"GET {shown}"
        timeout = self._timeout
        deadline = attempt_deadline(timeout)
        exchange = Exchange(scope=anyio.CancelScope())
        failure: NanoGPTError | None = None
        body: bytes | None = None
        try:
            with exchange.scope:
                if deadline is not None:
                    exchange.scope.deadline = anyio.current_time() + deadline
                body = await self._exchange(exchange, url, shown, timeout)
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
        except Exception as exc:
            failure = seal(
                connection_error(exc, describe, shown, sent=True, download=True),
                self._secrets,
                cause=exc,
            )
        if failure is not None:
            raise seal(failure, self._secrets)
        if body is None:  # pragma: no cover - the scope either returned a body or failed
            raise AssertionError(describe)
        return body

    async def _exchange(
        self, exchange: Exchange, url: httpx.URL, shown: str, timeout: httpx.Timeout
    ) -> bytes:
        describe = f"GET {shown}"
        http = self._http
        request = http.build_request(
            "GET", url, timeout=timeout, extensions=exchange.extensions(timeout)
        )
        response = await http.send(request, stream=True)
        try:
            status = response.status_code
            try:
                if status >= _FIRST_ERROR_STATUS:
                    head = b"".join(
                        await exchange.read(response, ERROR_SCAN_BYTES, describe, truncate=True)
                    )
                else:
                    body = b"".join(await exchange.read(response, self._max_bytes, describe))
            except UndecodableBodyError as exc:
                raise ImageDownloadError(
                    f"downloading {shown} gave a body that cannot be decoded ({exc})", url=shown
                ) from None
        finally:
            await response.aclose()
        if status in _EXPIRED_STATUSES:
            raise _expired_error(shown, status, head)
        if status >= _FIRST_ERROR_STATUS:
            raise status_error(
                status,
                head,
                content_type=response.headers.get("content-type", ""),
                request_id=_redact(self._secrets, response.headers.get("x-request-id")),
                retry_after=parse_retry_after(response.headers),
            )
        return body


def _redact(secrets: Sequence[str], text: str | None) -> str | None:
    return redact(text, secrets) if text is not None else None


def _expired_error(shown: str, status: int, head: bytes) -> ImageURLExpiredError:
    text = head.decode("utf-8", "replace")
    reason = "expired" if status == HTTPStatus.FORBIDDEN else "not found (deleted)"
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
