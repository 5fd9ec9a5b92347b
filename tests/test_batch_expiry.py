"""Signed URLs expire: the batch saves the soonest-expiring first and says when one expired."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
import respx

from nanogpt_async import AsyncNanoGPT, ImageURLExpiredError
from nanogpt_async._batch._expiry import DeadlineGate, describe_expiry, url_expiry, urls_expiry
from nanogpt_async._batch._runner import Batch
from nanogpt_async.testing import FakeNanoGPT, make_png

from .conftest import BASE, KEY

STORAGE = "https://storage.nanogpt.test/files"


def amz_url(name: str, lifetime: int, signed: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if signed is None else signed))
    return f"{STORAGE}/{name}.png?X-Amz-Date={stamp}&X-Amz-Expires={lifetime}&X-Amz-Signature=s"


# -- reading the expiry -----------------------------------------------------------------------


def test_the_expiry_is_read_from_s3_gcs_and_plain_signed_urls() -> None:
    signed = 1_790_000_000.0
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(signed))
    assert url_expiry(f"https://s/x?X-Amz-Date={stamp}&X-Amz-Expires=3600") == signed + 3600
    assert url_expiry(f"https://s/x?x-goog-date={stamp}&x-goog-expires=60") == signed + 60
    assert url_expiry(f"https://s/x?Expires={signed:.0f}&Signature=a") == signed
    for unsigned in (
        "https://s/x.png",
        "https://s/x?X-Amz-Date=garbage&X-Amz-Expires=60",
        "https://s/x?X-Amz-Date=20261124T140000Z&X-Amz-Expires=-5",
        "https://s/x?Expires=nan",
        "https://s/x?Expires=99999999999999",  # centuries away: not believed
        "not a url at all [",
    ):
        assert url_expiry(unsigned) is None, unsigned
    assert urls_expiry([None, "https://s/x.png"]) == math.inf
    later, sooner = f"https://s/x?Expires={signed + 9:.0f}", f"https://s/y?Expires={signed:.0f}"
    assert urls_expiry([later, sooner]) == signed


def test_an_expiry_is_described_with_its_time_and_age() -> None:
    assert describe_expiry(0.0, now=75.0) == "expired at 1970-01-01 00:00:00 UTC (75 s ago)"
    assert describe_expiry(None) == "expired (the URL does not say when)"


# -- the gate ---------------------------------------------------------------------------------


async def test_the_save_gate_serves_the_soonest_deadline_first_not_the_first_come() -> None:
    gate = DeadlineGate(1)
    served: list[float] = []

    async def save(deadline: float) -> None:
        async with gate.slot(deadline):
            served.append(deadline)

    async with anyio.create_task_group() as group, gate.slot(0.0):
        for deadline in (30.0, math.inf, 10.0, 20.0, 10.0):
            group.start_soon(save, deadline)
            await anyio.wait_all_tasks_blocked()
        assert gate.waiting == 5
    assert served == [10.0, 10.0, 20.0, 30.0, math.inf]


async def test_a_cancelled_waiter_gives_up_its_place_and_loses_no_slot() -> None:
    gate = DeadlineGate(1)
    served: list[str] = []

    async def save(name: str, deadline: float) -> None:
        async with gate.slot(deadline):
            served.append(name)

    async with anyio.create_task_group() as group, gate.slot(0.0):
        async with anyio.create_task_group() as doomed:
            doomed.start_soon(save, "cancelled", 10.0)
            await anyio.wait_all_tasks_blocked()
            doomed.cancel_scope.cancel()
        group.start_soon(save, "after", 20.0)
        await anyio.wait_all_tasks_blocked()
        assert gate.waiting == 1
    assert served == ["after"]
    async with gate.slot(1.0):  # the slot came back
        assert gate.waiting == 0


async def test_a_free_save_slot_is_taken_at_once_but_never_ahead_of_a_waiter() -> None:
    gate = DeadlineGate(2)
    assert gate.acquire_nowait()  # free, nobody waiting: taken without a loop turn
    assert gate.acquire_nowait()
    assert not gate.acquire_nowait()  # full
    served: list[str] = []

    async def save(name: str) -> None:
        async with gate.slot(10.0):
            served.append(name)

    async with anyio.create_task_group() as group:
        group.start_soon(save, "waiter")
        await anyio.wait_all_tasks_blocked()
        gate.release()  # handed straight to the waiter...
        assert not gate.acquire_nowait()  # ...so a newcomer cannot jump the queue
        await anyio.wait_all_tasks_blocked()
    assert served == ["waiter"]
    gate.release()
    assert gate.acquire_nowait()
    assert gate.acquire_nowait()


# -- the batch --------------------------------------------------------------------------------


async def test_the_batch_downloads_the_soonest_expiring_urls_first(
    mock_api: respx.MockRouter, tmp_path: Path
) -> None:
    lifetimes = {"p0": 4000, "p1": 3000, "p2": 1000, "p3": 2000}
    downloads: list[str] = []
    batch: Batch | None = None

    def generate(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["prompt"]
        body = {"data": [{"url": amz_url(prompt, lifetimes[prompt])}], "cost": 0.01}
        return httpx.Response(200, json=body)

    async def download(request: httpx.Request) -> httpx.Response:
        downloads.append(request.url.path.rsplit("/", 1)[-1].removesuffix(".png"))
        if len(downloads) == 1:  # hold the only save slot until the other three queue up
            while batch is None or batch._saver.gate.waiting < 3:
                await anyio.lowlevel.checkpoint()
        return httpx.Response(200, content=make_png("x"), headers={"content-type": "image/png"})

    mock_api.post(f"{BASE}/images/generations").mock(side_effect=generate)
    mock_api.get(url__startswith=STORAGE).mock(side_effect=download)
    async with AsyncNanoGPT(api_key=KEY, base_url=BASE) as client:
        batch = client.images.generate_many(
            list(lifetimes), output_dir=tmp_path, download_concurrency=1, rps=None
        )
        summary = await batch.run()
    assert summary.ok == 4
    assert downloads[1:] == sorted(downloads[1:], key=lifetimes.__getitem__)


async def test_an_expired_paid_url_says_where_when_and_that_it_was_paid(tmp_path: Path) -> None:
    fake = FakeNanoGPT(api_key="ngk_expiry_SECRET_9", url_ttl=0.0, price_per_image=0.01)
    with fake.run_in_thread() as server:
        async with AsyncNanoGPT(api_key=fake.api_key, base_url=server.base_url) as client:
            batch = client.images.generate_many(
                ["a", "b", "c"], output_dir=tmp_path, response_format="url", rps=None
            )
            async with batch:
                results = [result async for result in batch]
    assert fake.stats.expired_downloads == 3
    for result in results:
        assert isinstance(result.error, ImageURLExpiredError)
        message = str(result.error)
        assert "a paid image was lost: its signed URL on 127.0.0.1 expired at " in message
        assert "NanoGPT charged $0.01 for this request (request id req_" in message
        assert "X-Amz-Signature" not in message
    rows: list[dict[str, Any]] = [
        json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()
    ]
    # Money: every charge is in the manifest, with its cost, as a failed item to redo.
    assert sum(row["cost"] for row in rows) == pytest.approx(fake.stats.charged_usd)
    assert [row["status"] for row in rows] == ["failed"] * 3
    assert all("expired at" in row["error"]["message"] for row in rows)


async def test_a_waiter_cancelled_as_it_is_handed_the_slot_passes_it_on() -> None:
    gate = DeadlineGate(1)
    served: list[str] = []
    scopes: list[anyio.CancelScope] = []

    async def doomed() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            async with gate.slot(1.0):
                await anyio.lowlevel.checkpoint()  # a save awaits: cancelled here or before
                served.append("doomed")

    async def other() -> None:
        async with gate.slot(2.0):
            served.append("other")

    async with anyio.create_task_group() as group:
        async with gate.slot(0.0):
            group.start_soon(doomed)
            await anyio.wait_all_tasks_blocked()
            group.start_soon(other)
            await anyio.wait_all_tasks_blocked()
        scopes[0].cancel()  # the slot was just handed to it; it has not run yet
    assert served == ["other"]
    async with gate.slot(3.0):  # and the slot came back afterwards
        assert gate.waiting == 0
