"""`FakeNanoGPT`: the fake's state (`_state`) with the ways to run it (`_server`).

Split so that the HTTP side (`_app`) and the runners (`_server`) depend on the state only,
never back on this module: no import cycle inside the package.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from nanogpt_async.testing._server import run_in_thread, serve
from nanogpt_async.testing._state import FakeState

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from nanogpt_async.testing._server import FakeServer

__all__ = ["FakeNanoGPT"]


class FakeNanoGPT(FakeState):
    """A fake NanoGPT image API with knobs for latency, limits, money and failures.

    Every constructor argument is also a plain attribute that may be changed while the
    server runs (``fake.error_rate = 0.5``), except ``keepalive_timeout`` which applies
    when a server starts. Start it with `serve` (current asyncio loop),
    `run_in_thread` (any code: sync, asyncio, trio) or ``python -m nanogpt_async.testing``.

    Example:
        >>> fake = FakeNanoGPT(latency=0.0, balance=1.0)
        >>> with fake.run_in_thread() as server:
        ...     server.base_url  # doctest: +ELLIPSIS
        'http://127.0.0.1:.../api/v1'

    Args:
        api_key: The accepted key (``Bearer`` for generations, ``Bearer`` or ``x-api-key``
            for edits, ``x-api-key`` for the balance). ``None`` accepts any non-empty key.
        latency: Seconds each generation takes (slept, so it does not block the loop).
        latency_jitter: Latency varies uniformly by plus or minus this many seconds.
        rate_limit: Token bucket refill rate (requests/second) of the generations route;
            ``None`` for no limit. Over it: 429 ``rate_limit_exceeded`` with ``Retry-After``.
        burst: Bucket capacity; default ``max(1, rate_limit)``.
        retry_after_granularity: A rate limit 429's wait is rounded up to a multiple of this
            many seconds (at least one). The real API answers whole seconds (``1.0``); a
            smaller value also sends ``retry-after-ms`` (as OpenAI's API does), so a test's
            cooldowns last a fraction of a second instead of one.
        daily_request_cap: Generation requests admitted per UTC day; over it: 429
            ``daily_rpd_limit_exceeded`` with ``Retry-After`` = seconds to 00:00 UTC.
        daily_usd_cap: Like ``daily_request_cap`` for USD charged (``daily_usd_limit_exceeded``).
        balance: USD on the account; a request costing more answers 402.
        price_per_image: USD charged per image, for every model and size.
        error_rate: Fraction of valid generation requests answered 500/502/503, not charged.
        reset_rate: Fraction of generation requests charged and then aborted mid-response.
        url_fallback_rate: With ``response_format=url``, fraction of items sent as
            ``b64_json`` instead (the real server's presign fallback).
        url_ttl: Seconds a signed URL stays valid (then 403 ``AccessDenied``).
        file_ttl: Seconds until a stored file is deleted (then 404).
        download_latency: Seconds before the download listener answers.
        image_bytes: ``None`` for small 64x64 PNGs; an int for PNGs of about that size.
        seed: Seed of all randomness: same seed and same requests, same answers.
        clock: Callable returning seconds (default `time.monotonic`); drives URL expiry
            and the token bucket. Pass a `ManualClock` to expire URLs without sleeping.
        keepalive_timeout: Seconds before the server closes an idle keep-alive
            connection; ``None`` for aiohttp's default.
    """

    @contextlib.asynccontextmanager
    async def serve(
        self, host: str = "127.0.0.1", port: int = 0, *, download_port: int = 0
    ) -> AsyncIterator[FakeServer]:
        """Serve on the running asyncio loop for the duration of an ``async with``.

        Args:
            host: A loopback address; anything else raises `ValueError`.
            port: API listener port; 0 picks a free one.
            download_port: Signed-URL listener port; 0 picks a free one.

        Yields:
            The running server's handle.

        Example:
            >>> async with FakeNanoGPT().serve() as server:  # doctest: +SKIP
            ...     client = AsyncNanoGPT(api_key="test-key", base_url=server.base_url)
        """
        async with serve(self, host, port, download_port=download_port) as server:
            yield server

    @contextlib.contextmanager
    def run_in_thread(
        self, host: str = "127.0.0.1", port: int = 0, *, download_port: int = 0
    ) -> Iterator[FakeServer]:
        """Serve on a background thread with its own event loop.

        Usable from sync code and from any async library (asyncio, trio). Returns once
        the ports are bound; on exit stops the server and joins the thread.

        Args:
            host: A loopback address; anything else raises `ValueError`.
            port: API listener port; 0 picks a free one.
            download_port: Signed-URL listener port; 0 picks a free one.

        Yields:
            The running server's handle.
        """
        with run_in_thread(self, host, port, download_port=download_port) as server:
            yield server
