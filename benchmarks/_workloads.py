"""The workloads of issue 5 and the fake-server settings each one runs against."""

from __future__ import annotations

import dataclasses
import math

from benchmarks._job import ResponseFormat
from benchmarks.contenders import CONTENDERS

#: Contenders that are nanogpt-async (the bars are about them).
OURS = ("nanogpt-async batch", "nanogpt-async generate")
ALL = tuple(CONTENDERS)
#: The issue asks for the openai SDK in W2 and W4; elsewhere, to keep a full run near 20
#: minutes on two cores, only nanogpt-async and the floor run (plain httpx only where its
#: pool's collapse is the story, W2).
CORE = (*OURS, "aiohttp")

# A balance no run can exhaust (the default, 100 USD, is 20000 images).
_SERVER_BASE: dict[str, object] = {"seed": 1, "api_key": "test-key", "balance": 1e9}


@dataclasses.dataclass(frozen=True)
class Workload:
    """One workload: what to generate, against which fake, by whom.

    Attributes:
        name: ``"W1"`` ... ``"W6"``.
        title: What it is about, for the table.
        generations: Generation requests.
        n: Images per request.
        concurrencies: Concurrency (several for the W6 sweep: one table row per value).
        response_format: What to ask for.
        server: Fake-server knobs (``start_process`` keyword arguments).
        rps: Pacing given to the batch runner (``None``: high enough never to bind).
        lag_probe: Run the 1 ms loop-lag ticker (costs CPU, so off where CPU is the bar).
        contenders: Who runs it.
        bars: The issue's bars, in words (the verdicts are computed in `benchmarks._report`).
    """

    name: str
    title: str
    generations: int
    n: int
    concurrencies: tuple[int, ...]
    response_format: ResponseFormat
    server: dict[str, object]
    rps: float | None
    lag_probe: bool
    contenders: tuple[str, ...]
    bars: str

    @property
    def latency(self) -> float:
        value = self.server.get("latency", 0.0)
        return float(value) if isinstance(value, (int, float)) else 0.0

    def label(self, concurrency: int) -> str:
        return self.name if len(self.concurrencies) == 1 else f"{self.name} c={concurrency}"

    def ideal_s(self, concurrency: int) -> float:
        """Makespan with zero client overhead (for timeouts and the W3 bar)."""
        if self.rps is not None:
            return self.generations / self.rps + self.latency
        return math.ceil(self.generations / concurrency) * max(self.latency, 0.01)

    def timeout_s(self, concurrency: int) -> float:
        return 90.0 + 10.0 * self.ideal_s(concurrency)

    def quick(self) -> Workload:
        """About a tenth of the work, for smoke runs."""
        gens = max(8, self.generations // 10)
        return dataclasses.replace(self, generations=gens)


def _server(**knobs: object) -> dict[str, object]:
    return {**_SERVER_BASE, **knobs}


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            name="W1",
            title="overhead: 3000 generations, no latency, concurrency 64",
            generations=3000,
            n=1,
            concurrencies=(64,),
            response_format="b64_json",
            server=_server(latency=0),
            rps=None,
            lag_probe=False,
            contenders=CORE,
            bars="CPU/request <= 2x floor",
        ),
        Workload(
            name="W2",
            title="fan-out: 1024 generations, 1 s +- 0.2 s latency, concurrency 256",
            generations=1024,
            n=1,
            concurrencies=(256,),
            response_format="b64_json",
            server=_server(latency=1, latency_jitter=0.2),
            rps=None,
            lag_probe=False,
            contenders=ALL,
            bars="makespan <= 1.05x floor, CPU/request <= 2x floor",
        ),
        Workload(
            name="W3",
            title="rate limit: 500 generations, fake at 25 req/s burst 5, 0.5 s latency, "
            "concurrency 64",
            generations=500,
            n=1,
            concurrencies=(64,),
            response_format="b64_json",
            server=_server(latency=0.5, rate_limit=25, burst=5),
            rps=25.0,
            lag_probe=True,
            contenders=CORE,
            bars="makespan <= 1.10x (500/25 s + latency), 429s <= 2% of requests",
        ),
        Workload(
            name="W4",
            title="big images: 200 requests of n=4 x 3 MB b64, 0.5 s latency, concurrency 32",
            generations=200,
            n=4,
            concurrencies=(32,),
            response_format="b64_json",
            server=_server(latency=0.5, latency_jitter=0.1, image_bytes=3_000_000),
            rps=None,
            lag_probe=True,
            contenders=(*CORE, "openai", "openai aiohttp"),
            bars="peak RSS <= 300 MB, loop lag p99 <= 10 ms",
        ),
        Workload(
            name="W5",
            title="URLs: 1000 generations, 1 s +- 0.2 s latency, URLs expire 5 s after "
            "generation, 50 ms download latency, concurrency 256",
            generations=1000,
            n=1,
            concurrencies=(256,),
            response_format="url",
            server=_server(latency=1, latency_jitter=0.2, url_ttl=5, download_latency=0.05),
            rps=None,
            lag_probe=True,
            contenders=CORE,
            bars="0 expired, generation-to-download p99 <= 1 s",
        ),
        Workload(
            name="W6",
            title="scaling: W2 at concurrency 16, 64, 256, 1024",
            generations=1024,
            n=1,
            concurrencies=(16, 64, 256, 1024),
            response_format="b64_json",
            server=_server(latency=1, latency_jitter=0.2),
            rps=None,
            lag_probe=False,
            contenders=("nanogpt-async generate",),
            bars="CPU/request at 1024 <= 1.5x that at 16",
        ),
        Workload(
            name="W7",
            title="burst: 200 concurrent generate() with default pacing, fake at 25 req/s "
            "(burst 25), 1 s latency",
            generations=200,
            n=1,
            concurrencies=(200,),
            response_format="b64_json",
            server=_server(latency=1, rate_limit=25),
            rps=25.0,
            lag_probe=False,
            contenders=("nanogpt-async generate",),
            bars="200/200 ok, 429s <= 2% of requests, makespan <= 1.10x (200/25 s + latency)",
        ),
    )
}
