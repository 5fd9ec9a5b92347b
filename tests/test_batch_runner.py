"""The batch runner end to end, against the fake NanoGPT on loopback."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio

from nanogpt_async import (
    APIConnectionError,
    AsyncNanoGPT,
    AuthenticationError,
    BatchItem,
    BatchProgress,
    DailyLimitExceededError,
    InvalidInputError,
    ItemResult,
)
from nanogpt_async._output._files import TEMP_SUFFIX
from nanogpt_async._sniff import sniff_image
from nanogpt_async.testing import FakeServer, Fault
from tests._pacing_time import SettledTime
from tests._serving import Serve, fake_client, fake_servers, settled_client

KEY = "ngk_batch_SECRET_1234"


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start fake servers with the given knobs (stopped at the end of the test)."""
    with fake_servers(KEY) as start:
        yield start


def client_for(server: FakeServer, **options: Any) -> AbstractAsyncContextManager[AsyncNanoGPT]:
    return fake_client(server, KEY, **options)


async def collect(batch: Any) -> list[ItemResult]:
    results = []
    async with batch:
        results.extend([result async for result in batch])
    return results


def manifest_lines(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "manifest.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines]


def matching(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern))


def is_image(path: Path) -> bool:
    return sniff_image(path.read_bytes()) is not None


def inside(path: Path, folder: Path) -> bool:
    return path.resolve().parent == folder.resolve()


def names_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def append_bytes(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


def prompts(n: int, stem: str = "prompt") -> list[str]:
    return [f"{stem} {i}" for i in range(n)]


async def test_every_url_arrives_although_urls_expire_seconds_after_generation(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve(url_ttl=3.0, latency=0.01)
    async with client_for(server) as client:
        results = await collect(
            client.images.generate_many(
                prompts(40), output_dir=tmp_path, rps=None, response_format="url"
            )
        )
    assert sorted(r.index for r in results) == list(range(40))
    assert all(r.status == "ok" for r in results)
    stats = server.fake.stats
    assert stats.downloads == 40
    assert stats.expired_downloads == 0
    assert stats.download_requests_with_credentials == 0
    files = matching(tmp_path, "*.png")
    assert len(files) == 40
    assert all(is_image(f) for f in files)


async def test_rate_limited_server_is_paced_without_a_429_storm(serve: Serve) -> None:
    # The fake's bucket and the batch's pacer on one virtual time that stands still while the
    # loop is busy or a request is on its way (SettledTime): on real time, a loaded machine's
    # pauses piled requests up and the bucket refused the pile (3-5 429s in 4 runs of 70, 4
    # workers on 2 busy cores). Now the pacer alone decides: no 429 at all.
    time = SettledTime()
    server = serve(rate_limit=50.0, burst=5, clock=time)
    # 20 items, 4 bucketfuls (unpaced, 16 at once met 8 429s), in 0.42 s (virtual) not 0.9.
    async with settled_client(server, KEY, time) as client:
        summary = await client.images.generate_many(prompts(20), rps=45.0, concurrency=16).run()
    assert summary.ok == 20
    assert server.fake.stats.rate_limited == 0


async def test_overshooting_the_server_limit_cools_down_instead_of_storming(
    serve: Serve,
) -> None:
    # We claim 200/s; the server allows 40/s. Cooldown + AIMD must settle, not hammer.
    # Its 429s ask for 0.1 s, not 1 s: the bucket (4 at 40/s) is as full after each cooldown
    # as after a second. On virtual time, as above: four 0.1 s cooldowns take the rate down to
    # ~38/s, 4 429s in 1.04 s every run (on real time 3-8, and 11 in 3 runs of 70 under load).
    time = SettledTime()
    server = serve(rate_limit=40.0, burst=4, retry_after_granularity=0.1, clock=time)
    async with settled_client(server, KEY, time, max_retries=5) as client:
        summary = await client.images.generate_many(prompts(40), rps=200.0, concurrency=8).run()
    assert summary.ok == 40
    assert summary.rate_limited == server.fake.stats.rate_limited
    assert server.fake.stats.rate_limited <= 10
    assert server.fake.stats.generations_by_prompt == dict.fromkeys(prompts(40), 1)


async def test_server_errors_are_retried_and_every_image_is_generated_exactly_once(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve(error_rate=0.3, seed=3)
    async with client_for(server, max_retries=8) as client:
        results = await collect(
            client.images.generate_many(prompts(40), output_dir=tmp_path, rps=None)
        )
    assert all(r.status == "ok" for r in results)
    assert server.fake.stats.errors_sent > 0
    assert any(r.attempts > 1 for r in results)
    assert server.fake.stats.generations_by_prompt == dict.fromkeys(prompts(40), 1)
    assert len(matching(tmp_path, "*.png")) == 40


async def test_reset_after_charge_is_reported_failed_not_silently_paid_twice(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    server.fake.enqueue(Fault.reset_after_charge(), count=3)
    async with client_for(server) as client:
        results = await collect(
            client.images.generate_many(prompts(10), output_dir=tmp_path, rps=None, concurrency=1)
        )
    failed = [r for r in results if r.status == "failed"]
    assert len(failed) == 3
    for result in failed:
        assert isinstance(result.error, APIConnectionError)
        assert result.error.request_sent
        assert result.attempts == 1
    # Charged once each, including the three whose answer was lost: none retried blindly.
    assert server.fake.stats.generations_by_prompt == dict.fromkeys(prompts(10), 1)
    recorded = {line["id"]: line for line in manifest_lines(tmp_path)}
    assert sum(line["status"] == "failed" for line in recorded.values()) == 3
    assert all(
        line["error"]["type"] == "APIConnectionError"
        for line in recorded.values()
        if line["status"] == "failed"
    )


async def test_bad_key_stops_the_batch_after_a_handful_of_requests(serve: Serve) -> None:
    server = serve()
    async with AsyncNanoGPT(api_key="wrong-key", base_url=server.base_url) as client:
        batch = client.images.generate_many(prompts(1000), concurrency=64)
        results = await collect(batch)
    assert server.fake.stats.generation_requests <= 3
    summary = batch.summary
    assert summary.stopped_reason is not None
    assert summary.stopped_reason.startswith("fatal: AuthenticationError")
    assert isinstance(summary.fatal_error, AuthenticationError)
    assert summary.failed == len(results) <= 3
    assert summary.not_started == 1000 - summary.failed
    assert "wrong-key" not in summary.stopped_reason


async def test_daily_cap_stops_the_batch_and_says_when_it_resets(serve: Serve) -> None:
    server = serve()
    server.fake.enqueue(Fault.daily_cap())
    async with client_for(server) as client:
        summary = await client.images.generate_many(prompts(50)).run()
    assert isinstance(summary.fatal_error, DailyLimitExceededError)
    assert summary.fatal_error.resets_at is not None
    assert server.fake.stats.generation_requests <= 3


async def test_budget_stops_the_batch_without_going_over(serve: Serve, tmp_path: Path) -> None:
    server = serve(price_per_image=0.005, latency=0.01)
    async with client_for(server) as client:
        summary = await client.images.generate_many(
            prompts(50), output_dir=tmp_path, max_cost=0.05, concurrency=8, rps=None
        ).run()
    # Prices are uniform here, so the in-flight estimate is exact: at most the budget.
    assert server.fake.stats.charged_usd <= 0.05 + 1e-9
    assert summary.stopped_reason == "budget"
    assert summary.ok == 10
    assert summary.cost == pytest.approx(0.05)
    assert summary.not_started == 40


async def test_stop_lets_in_flight_items_finish_and_a_rerun_resumes(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve(latency=0.01)
    items = prompts(30)
    async with client_for(server) as client:
        batch = client.images.generate_many(items, output_dir=tmp_path, rps=None, concurrency=4)
        async with batch:
            async for result in batch:
                if result.index >= 4:
                    batch.stop()
        first = batch.summary
        assert first.stopped_reason == "stopped"
        assert 5 <= first.ok < 30
        assert first.not_started == 30 - first.ok
        lines = manifest_lines(tmp_path)  # every line parses
        assert len(lines) == first.ok
        assert matching(tmp_path, "*.png") == sorted(
            tmp_path / ln["files"][0]["path"] for ln in lines
        )

        second = await client.images.generate_many(items, output_dir=tmp_path, rps=None).run()
    assert second.skipped == first.ok
    assert second.ok == 30 - first.ok
    assert second.stopped_reason is None
    assert server.fake.stats.generations_by_prompt == dict.fromkeys(items, 1)


async def test_a_cancel_after_stop_reports_cancelled(serve: Serve, tmp_path: Path) -> None:
    server = serve(latency=0.01)
    async with client_for(server) as client:
        batch = client.images.generate_many(
            prompts(40), output_dir=tmp_path, rps=None, concurrency=4
        )
        with anyio.CancelScope() as scope:
            async with batch:
                async for result in batch:
                    batch.stop()  # the CLI's first Ctrl-C...
                    if result.index >= 1:
                        scope.cancel()  # ...and its second
    assert batch.summary.stopped_reason == "cancelled"


async def test_a_generator_stopped_early_says_its_rest_was_not_read(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve(latency=0.01)

    def stream() -> Iterator[str]:
        yield from prompts(100)  # no len(): like standard input

    async with client_for(server) as client:
        stopped = client.images.generate_many(stream(), output_dir=tmp_path, rps=None)
        async with stopped:
            async for _ in stopped:
                stopped.stop()
        whole = await client.images.generate_many(stream(), rps=None).run()
    assert stopped.summary.unread_input
    assert stopped.summary.total < 100
    assert not whole.unread_input
    assert (whole.total, whole.ok, whole.not_started) == (100, 100, 0)


async def test_cancelled_batch_saves_what_was_paid_for_and_resumes(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve(latency=0.01)
    items = prompts(40)
    async with client_for(server) as client:
        batch = client.images.generate_many(items, output_dir=tmp_path, rps=None, concurrency=4)
        seen = 0
        with anyio.CancelScope() as scope:
            async with batch:
                async for _ in batch:
                    seen += 1
                    if seen == 6:
                        scope.cancel()
        first = batch.summary
        assert first.stopped_reason == "cancelled"
        lines = manifest_lines(tmp_path)
        assert len(lines) == first.ok + first.failed
        assert not matching(tmp_path, f"*{TEMP_SUFFIX}")

        second = await client.images.generate_many(items, output_dir=tmp_path, rps=None).run()
    assert second.skipped == first.ok
    assert second.ok + second.skipped == 40
    # Only requests cut off in flight may have been generated twice (documented).
    twice = sum(count - 1 for count in server.fake.stats.generations_by_prompt.values())
    assert twice <= 4


async def test_torn_last_manifest_line_is_tolerated_on_resume(serve: Serve, tmp_path: Path) -> None:
    server = serve()
    items = prompts(5)
    async with client_for(server) as client:
        await client.images.generate_many(items, output_dir=tmp_path, rps=None).run()
        append_bytes(tmp_path / "manifest.jsonl", b'{"id": "crashed-mid-line", "status": "o')
        summary = await client.images.generate_many(
            [*items, "one more"], output_dir=tmp_path, rps=None
        ).run()
    assert summary.skipped == 5
    assert summary.ok == 1
    raw = (tmp_path / "manifest.jsonl").read_text("utf-8").splitlines()
    parsed = []
    for line in raw:
        with contextlib.suppress(ValueError):
            parsed.append(json.loads(line))
    assert len(parsed) == 6
    assert len(raw) == 7  # the torn line stays, on its own line


async def test_leftover_temp_files_are_swept_and_corrupt_files_redone(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    items = prompts(3)
    async with client_for(server) as client:
        first = await collect(client.images.generate_many(items, output_dir=tmp_path, rps=None))
        append_bytes(tmp_path / f".000009-x-0.png.dead{TEMP_SUFFIX}", b"half an image")
        damaged = next(r for r in first if r.index == 1).files[0]
        append_bytes(damaged, b"corrupted")
        second = await collect(client.images.generate_many(items, output_dir=tmp_path, rps=None))
    assert not matching(tmp_path, f"*{TEMP_SUFFIX}")
    by_index = {r.index: r.status for r in second}
    assert by_index == {0: "skipped", 1: "ok", 2: "skipped"}
    assert is_image(damaged)


async def test_resume_can_skip_failed_items_instead_of_retrying(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    server.fake.enqueue(Fault.status(400))
    items = prompts(3)
    async with client_for(server) as client:
        first = await client.images.generate_many(
            items, output_dir=tmp_path, rps=None, concurrency=1
        ).run()
        assert first.failed == 1
        kept = await client.images.generate_many(
            items, output_dir=tmp_path, rps=None, retry_failed=False
        ).run()
        assert (kept.skipped, kept.ok) == (3, 0)
        retried = await client.images.generate_many(items, output_dir=tmp_path, rps=None).run()
    assert (retried.skipped, retried.ok) == (2, 1)


async def test_hostile_prompts_never_write_outside_the_folder(serve: Serve, tmp_path: Path) -> None:
    out = tmp_path / "out"
    hostile = ["../../x", "/etc/passwd", "..\\..\\x", "nul\x00byte", "é" * 2000, "😀 ../" * 100]
    server = serve()
    async with client_for(server) as client:
        results = await collect(client.images.generate_many(hostile, output_dir=out, rps=None))
    assert all(r.status == "ok" for r in results)
    for result in results:
        for file in result.files:
            assert inside(file, out)
    assert names_in(tmp_path) == ["out"]
    assert {line["prompt"] for line in manifest_lines(out)} == set(hostile)


async def test_in_memory_mode_returns_the_image_bytes(serve: Serve) -> None:
    server = serve()
    async with client_for(server) as client:
        batch = client.images.generate_many(["four variants of a cat"], n=4, rps=None)
        results = await collect(batch)
    (result,) = results
    assert result.status == "ok"
    assert len(result.images) == 4
    assert all(sniff_image(image) is not None for image in result.images)
    assert result.files == []
    assert result.cost == pytest.approx(0.02)
    assert batch.summary.manifest is None


async def test_dict_and_batchitem_requests_keep_their_ids_and_fields(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    items: list[Any] = [
        {"id": "first", "prompt": "a fox", "n": 2, "size": "1360x768"},
        BatchItem("a jay", id="second", params={"seed": 7}),
        {"prompt": "no id", "model": None},  # None means "use the default"
    ]
    async with client_for(server) as client:
        results = await collect(
            client.images.generate_many(items, output_dir=tmp_path, rps=None, model="hidream")
        )
    by_index = {r.index: r for r in results}
    assert by_index[0].id == "first"
    assert len(by_index[0].files) == 2
    assert by_index[0].request["size"] == "1360x768"
    assert by_index[1].id == "second"
    assert by_index[1].request["seed"] == 7
    assert by_index[2].request["model"] == "hidream"
    lines = {line["id"]: line for line in manifest_lines(tmp_path)}
    assert lines["first"]["params"] == {"model": "hidream", "n": 2, "size": "1360x768"}
    assert KEY not in (tmp_path / "manifest.jsonl").read_text("utf-8")


async def test_duplicate_prompts_are_distinct_items_and_resume_as_such(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    items = ["same", "same", "same"]
    async with client_for(server) as client:
        results = await collect(client.images.generate_many(items, output_dir=tmp_path, rps=None))
        again = await client.images.generate_many(items, output_dir=tmp_path, rps=None).run()
    assert len({r.id for r in results}) == 3
    assert server.fake.stats.generations_by_prompt["same"] == 3
    assert again.skipped == 3


async def test_invalid_item_fails_alone_without_a_request(serve: Serve) -> None:
    server = serve()
    bad_items: list[Any] = ["fine", {"prompt": ""}, {"prompt": "x", "bogus": 1}, 42]
    async with client_for(server) as client:
        results = await collect(client.images.generate_many(bad_items, rps=None))
    statuses = {r.index: r.status for r in results}
    assert statuses == {0: "ok", 1: "failed", 2: "failed", 3: "failed"}
    assert all(isinstance(r.error, InvalidInputError) for r in results if r.status == "failed")
    assert server.fake.stats.generation_requests == 1


async def test_async_iterable_input_is_read_lazily(serve: Serve) -> None:
    server = serve()
    produced = 0

    async def source() -> AsyncIterator[str]:
        nonlocal produced
        for i in range(500):
            produced += 1
            yield f"lazy {i}"

    async with client_for(server) as client:
        batch = client.images.generate_many(
            source(), rps=None, concurrency=2, download_concurrency=2
        )
        async with batch:
            async for _ in batch:
                break
    # Stopped after the first result: only a bounded window of the input was read.
    assert produced < 20
    assert batch.summary.stopped_reason == "stopped"


async def test_progress_is_reported_with_a_final_call(serve: Serve) -> None:
    server = serve()
    seen: list[BatchProgress] = []
    async with client_for(server) as client:
        await client.images.generate_many(
            prompts(5), rps=None, on_progress=seen.append, progress_interval=60
        ).run()
    final = seen[-1]
    assert (final.total, final.done, final.ok, final.in_flight) == (5, 5, 5, 0)
    assert final.cost == pytest.approx(0.025)
    assert final.eta == 0.0


def test_settings_that_cannot_work_are_refused_before_anything_runs() -> None:
    client = AsyncNanoGPT(api_key=KEY, base_url="http://127.0.0.1:9/api/v1", max_connections=8)
    with pytest.raises(InvalidInputError, match="max_connections"):
        client.images.generate_many(["x"], concurrency=64)
    with pytest.raises(InvalidInputError, match="prompt"):
        client.images.generate_many(["x"], concurrency=8, prompt="p")
    with pytest.raises(InvalidInputError, match="max_cost"):
        client.images.generate_many(["x"], concurrency=8, max_cost=-1)
    with pytest.raises(InvalidInputError, match="response_format"):
        client.images.generate_many(["x"], concurrency=8, response_format="jpeg")
    with pytest.raises(InvalidInputError, match="unknown"):
        client.images.generate_many(["x"], concurrency=8, colour="red")
    with pytest.raises(InvalidInputError, match="manifest_name"):
        client.images.generate_many(["x"], concurrency=8, manifest_name="../m.jsonl")


def test_batch_runs_under_trio(serve: Serve, tmp_path: Path) -> None:
    server = serve(latency=0.01)

    async def main() -> tuple[int, int]:
        async with client_for(server) as client:
            first = await client.images.generate_many(
                prompts(10), output_dir=tmp_path, rps=100.0, response_format="url"
            ).run()
            second = await client.images.generate_many(
                prompts(10), output_dir=tmp_path, rps=100.0
            ).run()
        return first.ok, second.skipped

    assert trio.run(main) == (10, 10)
