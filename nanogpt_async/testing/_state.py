"""The fake server's state: knobs, money, rate limits, queued faults and counters.

The HTTP side lives in `_app`, the ways to run it in `_server`, and `FakeNanoGPT` (this state
plus those ways) in `_fake`; this module holds
everything a test reads or changes. The server's event loop may run on another thread
than the test, so every read-modify-write of shared state happens under one lock, and
knobs are plain attributes read once per request.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import math
import random
import threading
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from nanogpt_async.testing._faults import (
    DOWNLOAD_KINDS,
    GENERATION_KINDS,
    OTHER_ROUTE_KINDS,
    Fault,
    Route,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["FakeState", "FakeStats", "ManualClock", "StoredFile"]

_ROUTES: frozenset[str] = frozenset(
    {"generations", "edits", "download", "image-models", "check-balance"}
)


class ManualClock:
    """A clock that moves only when told to, for expiring URLs and refilling the bucket.

    Example:
        >>> clock = ManualClock()
        >>> fake = FakeNanoGPT(clock=clock, url_ttl=60)
        >>> clock.advance(61)  # every signed URL issued at t=0 now answers 403
        >>> clock()
        61.0
    """

    def __init__(self, start: float = 0.0) -> None:
        """Start the clock at ``start`` seconds."""
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """Return the current time in seconds."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (must not be negative)."""
        if seconds < 0:
            raise ValueError("a clock only moves forward; use set() to jump")
        with self._lock:
            self._now += seconds

    def set(self, t: float) -> None:
        """Set the clock to ``t`` seconds."""
        with self._lock:
            self._now = float(t)

    def __repr__(self) -> str:
        """Show the current time."""
        return f"ManualClock({self._now!r})"


@dataclasses.dataclass
class FakeStats:
    """Counters of what the fake server saw and did, for assertions.

    Attributes:
        generation_requests: Every POST to the generations or the edits route (an edit is
            paced, counted and charged like a generation).
        edit_requests: The POSTs to the edits route among them.
        generations: Charged generation (and edit) requests.
        images_generated: Images in charged responses.
        charged_usd: Money charged.
        generations_by_prompt: Charged requests per prompt.
        statuses: Generation responses per HTTP status (aborted connections excluded).
        rate_limited: 429 answers on any route.
        errors_sent: 5xx answers on any route.
        connections_reset: Connections dropped on purpose, on any route.
        download_requests: Every request to the download listener.
        downloads: Images served by the download listener.
        expired_downloads: Signed URLs refused as expired (403).
        missing_downloads: Downloads of deleted or unknown files (404).
        download_requests_with_credentials: Download-listener requests carrying
            ``Authorization`` or ``x-api-key`` (a well-behaved client keeps this at 0).
        captured_headers: Headers received by ``GET /capture``, one dict per request.
        in_flight: Generation handlers running now.
        max_in_flight: Most generation handlers running at once.
        balance_requests: Calls to ``check-balance``.
        model_list_requests: Calls to ``image-models``.
    """

    generation_requests: int = 0
    edit_requests: int = 0
    generations: int = 0
    images_generated: int = 0
    charged_usd: float = 0.0
    generations_by_prompt: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    statuses: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    rate_limited: int = 0
    errors_sent: int = 0
    connections_reset: int = 0
    download_requests: int = 0
    downloads: int = 0
    expired_downloads: int = 0
    missing_downloads: int = 0
    download_requests_with_credentials: int = 0
    captured_headers: list[dict[str, str]] = dataclasses.field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    balance_requests: int = 0
    model_list_requests: int = 0


@dataclasses.dataclass(frozen=True)
class StoredFile:
    """A generated image reachable through a signed URL (the recipe, not the bytes)."""

    text: str
    image_bytes: int | None
    url_expires_at: float
    deleted_at: float


class FakeState:
    """The fake's state and knobs: `FakeNanoGPT` without the ways to run it (see there)."""

    def __init__(
        self,
        *,
        api_key: str | None = "test-key",
        latency: float = 0.0,
        latency_jitter: float = 0.0,
        rate_limit: float | None = None,
        burst: int | None = None,
        retry_after_granularity: float = 1.0,
        daily_request_cap: int | None = None,
        daily_usd_cap: float | None = None,
        balance: float = 100.0,
        price_per_image: float = 0.005,
        error_rate: float = 0.0,
        reset_rate: float = 0.0,
        url_fallback_rate: float = 0.0,
        url_ttl: float = 3600.0,
        file_ttl: float = 86400.0,
        download_latency: float = 0.0,
        image_bytes: int | None = None,
        seed: int = 0,
        clock: Callable[[], float] | None = None,
        keepalive_timeout: float | None = None,
    ) -> None:
        """Create the fake; see the class docstring for the arguments."""
        if not retry_after_granularity > 0:
            raise ValueError(
                f"retry_after_granularity must be > 0 seconds, got {retry_after_granularity!r}"
            )
        self.api_key = api_key
        self.latency = latency
        self.latency_jitter = latency_jitter
        self.rate_limit = rate_limit
        self.burst = burst
        self.retry_after_granularity = retry_after_granularity
        self.daily_request_cap = daily_request_cap
        self.daily_usd_cap = daily_usd_cap
        self.balance = balance
        self.price_per_image = price_per_image
        self.error_rate = error_rate
        self.reset_rate = reset_rate
        self.url_fallback_rate = url_fallback_rate
        self.url_ttl = url_ttl
        self.file_ttl = file_ttl
        self.download_latency = download_latency
        self.image_bytes = image_bytes
        self.seed = seed
        self.clock: Callable[[], float] = clock if clock is not None else time.monotonic
        self.keepalive_timeout = keepalive_timeout
        self.stats = FakeStats()
        # Wall-clock UTC time for the daily caps; a seam for tests of the reset time.
        self.utc_now: Callable[[], dt.datetime] = _utc_now

        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._faults: collections.deque[tuple[Route, Fault]] = collections.deque()
        self._request_counter = 0
        self._file_counter = 0
        self._files: dict[str, StoredFile] = {}
        self._bucket_tokens: float | None = None
        self._bucket_updated = 0.0
        self._day: dt.date | None = None
        self._day_requests = 0
        self._day_usd = 0.0
        self.signing_key = f"fake-nanogpt-signing-key-{seed}".encode()

    def __repr__(self) -> str:
        """Show the knobs that most often matter when a test fails."""
        return (
            f"FakeNanoGPT(latency={self.latency!r}, rate_limit={self.rate_limit!r}, "
            f"balance={self.balance!r}, error_rate={self.error_rate!r}, "
            f"reset_rate={self.reset_rate!r}, pending_faults={len(self._faults)})"
        )

    # -- faults ----------------------------------------------------------------------

    def enqueue(self, fault: Fault, count: int = 1, route: Route | None = None) -> None:
        """Queue ``fault`` for the next ``count`` requests on ``route`` (FIFO).

        Args:
            fault: What to do, built with a `Fault` class method.
            count: How many matching requests it applies to, one each.
            route: ``"generations"``, ``"edits"``, ``"download"``, ``"image-models"`` or
                ``"check-balance"``; default: the fault's natural route (generation faults
                go to ``"generations"``: pass ``route="edits"`` to spoil an edit).

        Raises:
            ValueError: The fault makes no sense on that route, or ``count < 1``.
        """
        route = fault.default_route if route is None else route
        if route not in _ROUTES:
            raise ValueError(f"unknown route {route!r}; expected one of {sorted(_ROUTES)}")
        allowed = {
            "generations": GENERATION_KINDS,
            "edits": GENERATION_KINDS,
            "download": DOWNLOAD_KINDS,
        }.get(route, OTHER_ROUTE_KINDS)
        if fault.kind not in allowed:
            raise ValueError(f"fault {fault.kind!r} does not apply to route {route!r}")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._faults.extend((route, fault) for _ in range(count))

    def pending_faults(self, route: Route | None = None) -> int:
        """Return how many queued faults are left (on ``route``, or on all routes)."""
        with self._lock:
            return sum(1 for r, _ in self._faults if route is None or r == route)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    def reset_stats(self) -> None:
        """Zero the counters (requests in flight stay counted)."""
        with self._lock:
            in_flight = self.stats.in_flight
            self.stats = FakeStats(in_flight=in_flight, max_in_flight=in_flight)

    # -- used by the HTTP handlers ---------------------------------------------------

    def pop_fault(self, route: Route) -> Fault | None:
        """Take the first queued fault for ``route``, if any."""
        with self._lock:
            for i, (r, fault) in enumerate(self._faults):
                if r == route:
                    del self._faults[i]
                    return fault
        return None

    def next_request_id(self) -> str:
        """Return a new ``X-Request-ID`` value."""
        with self._lock:
            self._request_counter += 1
            return f"req_{self._request_counter:06d}"

    def random(self) -> float:
        """Draw from the fake's seeded generator."""
        with self._lock:
            return self._rng.random()

    def choice(self, options: list[int]) -> int:
        """Pick one option with the fake's seeded generator."""
        with self._lock:
            return self._rng.choice(options)

    def enter_generation(self) -> None:
        """Count a generation request arriving."""
        with self._lock:
            stats = self.stats
            stats.generation_requests += 1
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)

    def exit_generation(self) -> None:
        """Count a generation handler finishing."""
        with self._lock:
            self.stats.in_flight -= 1

    def take_token(self) -> float | None:
        """Take one token from the bucket; return seconds to wait when there is none."""
        rate, burst = self.rate_limit, self.burst
        if rate is None or rate <= 0:
            return None
        capacity = float(burst) if burst is not None else max(1.0, float(rate))
        now = self.clock()
        with self._lock:
            if self._bucket_tokens is None:
                self._bucket_tokens = capacity
            else:
                elapsed = max(0.0, now - self._bucket_updated)
                self._bucket_tokens = min(capacity, self._bucket_tokens + elapsed * rate)
            self._bucket_updated = now
            if self._bucket_tokens >= 1.0:
                self._bucket_tokens -= 1.0
                return None
            return (1.0 - self._bucket_tokens) / rate

    def seconds_until_utc_midnight(self) -> int:
        """Return whole seconds until the next 00:00 UTC (at least 1)."""
        now = self.utc_now()
        midnight = dt.datetime.combine(
            now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc
        )
        return max(1, math.ceil((midnight - now).total_seconds()))

    def admit_daily(self) -> str | None:
        """Count a request against the daily caps; return the cap hit (``rpd``/``usd``)."""
        rpd, usd = self.daily_request_cap, self.daily_usd_cap
        today = self.utc_now().date()
        with self._lock:
            if self._day != today:
                self._day, self._day_requests, self._day_usd = today, 0, 0.0
            if rpd is not None and self._day_requests >= rpd:
                return "rpd"
            if usd is not None and self._day_usd >= usd:
                return "usd"
            self._day_requests += 1
        return None

    def charge(self, prompt: str, images: int) -> tuple[float, float] | None:
        """Charge for ``images`` images; return (cost, balance after) or None if too poor."""
        cost = round(images * self.price_per_image, 10)
        with self._lock:
            if self.balance < cost:
                return None
            self.balance = round(self.balance - cost, 10)
            self._day_usd += cost
            stats = self.stats
            stats.generations += 1
            stats.images_generated += images
            stats.charged_usd = round(stats.charged_usd + cost, 10)
            stats.generations_by_prompt[prompt] += 1
            return cost, self.balance

    def store_file(self, text: str) -> tuple[str, StoredFile]:
        """Remember a generated image for download; return its id and record."""
        now = self.clock()
        with self._lock:
            self._file_counter += 1
            file_id = f"{self._file_counter:08d}-{self._rng.getrandbits(48):012x}"
            record = StoredFile(
                text=text,
                image_bytes=self.image_bytes,
                url_expires_at=now + self.url_ttl,
                deleted_at=now + self.file_ttl,
            )
            self._files[file_id] = record
            return file_id, record

    def find_file(self, file_id: str) -> StoredFile | None:
        """Return the stored file, forgetting it once past its deletion time."""
        now = self.clock()
        with self._lock:
            record = self._files.get(file_id)
            if record is not None and now >= record.deleted_at:
                del self._files[file_id]
                return None
            return record

    def count(self, **increments: int) -> None:
        """Add to integer counters of `stats` by name."""
        with self._lock:
            stats = self.stats
            for name, value in increments.items():
                setattr(stats, name, getattr(stats, name) + value)

    def record_status(self, status: int) -> None:
        """Count a generation response status (and 429/5xx totals)."""
        with self._lock:
            stats = self.stats
            stats.statuses[status] += 1
            _count_status(stats, status)

    def record_other_status(self, status: int) -> None:
        """Count a 429/5xx answer from a route other than generations."""
        with self._lock:
            _count_status(self.stats, status)

    def capture_headers(self, headers: dict[str, str]) -> None:
        """Remember headers received by ``/capture``."""
        with self._lock:
            self.stats.captured_headers.append(headers)

    def snapshot_balance(self) -> float:
        """Return the balance (for the balance route)."""
        with self._lock:
            return self.balance

    def describe(self) -> dict[str, Any]:
        """Return the knobs as a dict (handy in failure messages)."""
        return {
            name: getattr(self, name)
            for name in (
                "api_key",
                "latency",
                "latency_jitter",
                "rate_limit",
                "burst",
                "retry_after_granularity",
                "daily_request_cap",
                "daily_usd_cap",
                "balance",
                "price_per_image",
                "error_rate",
                "reset_rate",
                "url_fallback_rate",
                "url_ttl",
                "file_ttl",
                "download_latency",
                "image_bytes",
                "seed",
                "keepalive_timeout",
            )
        }


def _count_status(stats: FakeStats, status: int) -> None:
    if status == HTTPStatus.TOO_MANY_REQUESTS:
        stats.rate_limited += 1
    elif status >= HTTPStatus.INTERNAL_SERVER_ERROR:
        stats.errors_sent += 1


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
