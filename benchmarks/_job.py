"""What one worker process is asked to do (`Job`), and what it records while doing it (`Probe`)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Literal

ResponseFormat = Literal["b64_json", "url"]

#: Attempts per generation for the contenders that retry 429s themselves (bounded, always).
MAX_ATTEMPTS = 60
#: Errors kept verbatim in a result; the rest are only counted.
_KEPT_ERRORS = 5


@dataclasses.dataclass(frozen=True)
class Job:
    """One contender running one workload once.

    Attributes:
        contender: Registry name of the contender (see `benchmarks.contenders`).
        workload: Label of the workload (``"W2"``, ``"W6 c=1024"``).
        base_url: The fake server's API base (loopback).
        api_key: A key the fake accepts.
        generations: Generation requests to make.
        n: Images per request.
        concurrency: Requests in flight at most (semaphore, pool size, batch concurrency).
        response_format: ``"b64_json"`` or ``"url"``.
        rps: Pacing for contenders that pace themselves (the batch runner); ``None``: a rate
            high enough never to bind.
        lag_probe: Run the 1 ms loop-lag ticker (it costs CPU, see `benchmarks._worker`).
        timeout_s: Wall-clock cap on the whole job.
    """

    contender: str
    workload: str
    base_url: str
    api_key: str
    generations: int
    n: int
    concurrency: int
    response_format: ResponseFormat
    rps: float | None
    lag_probe: bool
    timeout_s: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        return cls(**data)

    def prompt(self, index: int) -> str:
        return f"benchmark image {index}"


class Probe:
    """Counters a contender updates; everything a fair comparison needs from inside the run."""

    def __init__(self) -> None:
        self.images = 0
        self.image_bytes = 0
        self.requests_done = 0
        self.rate_limited = 0
        self.expired = 0
        self.failures = 0
        self.errors: list[str] = []
        self.gen_to_download: list[float] = []

    def generated(self) -> float:
        """Mark a generation answered; returns the time to measure the download delay from."""
        self.requests_done += 1
        return time.perf_counter()

    def image(self, data: bytes) -> None:
        """Count one image whose bytes the contender now holds."""
        self.images += 1
        self.image_bytes += len(data)

    def downloaded(self, since: float, data: bytes) -> None:
        """Count one downloaded image and its delay since the generation was answered."""
        self.gen_to_download.append(time.perf_counter() - since)
        self.image(data)

    def got_429(self) -> None:
        self.rate_limited += 1

    def url_expired(self) -> None:
        self.expired += 1

    def failed(self, what: object) -> None:
        self.failures += 1
        if len(self.errors) < _KEPT_ERRORS:
            self.errors.append(f"{type(what).__name__}: {what}"[:300])
