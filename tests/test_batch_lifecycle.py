"""The batch's lifecycle: one state that only moves forward, and the first reason it stopped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nanogpt_async import AsyncNanoGPT, AuthenticationError
from nanogpt_async._batch._lifecycle import AbandonedError, BatchState, Lifecycle
from nanogpt_async.testing import FakeNanoGPT, FakeServer

KEY = "ngk_lifecycle_SECRET_1234"


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeNanoGPT(api_key=KEY).run_in_thread() as running:
        yield running


async def test_a_batch_stopped_before_it_starts_sends_nothing_and_says_stopped(
    server: FakeServer,
) -> None:
    async with AsyncNanoGPT(api_key=KEY, base_url=server.base_url) as client:
        batch = client.images.generate_many(["a", "b", "c"], rps=None)
        batch.stop()
        summary = await batch.run()
    assert (summary.ok, summary.not_started, summary.stopped_reason) == (0, 3, "stopped")
    assert server.fake.stats.generations == 0


async def test_a_batch_runs_once(server: FakeServer) -> None:
    async with AsyncNanoGPT(api_key=KEY, base_url=server.base_url) as client:
        batch = client.images.generate_many(["a"], rps=None)
        await batch.dry_run()
        with pytest.raises(RuntimeError, match="runs once"):
            await batch.run()
    assert server.fake.stats.generations == 0


async def test_the_state_only_moves_forward() -> None:
    lifecycle = Lifecycle()
    lifecycle.begin(BatchState.RUNNING)
    lifecycle.advance(BatchState.DRAINING)
    lifecycle.advance(BatchState.RUNNING)
    states = [lifecycle.state]
    lifecycle.abort()
    lifecycle.stop()
    states.append(lifecycle.state)
    halted = lifecycle.halted
    lifecycle.advance(BatchState.DONE)
    lifecycle.stop()
    states.append(lifecycle.state)
    assert states == [BatchState.DRAINING, BatchState.CANCELLING, BatchState.DONE]
    assert halted


async def test_stopping_after_the_whole_input_was_read_is_not_reported_as_a_stop() -> None:
    lifecycle = Lifecycle()
    lifecycle.begin(BatchState.RUNNING)
    lifecycle.advance(BatchState.DRAINING)  # every item read, some still in flight
    lifecycle.stop()  # e.g. the async with block left
    assert lifecycle.halted
    assert lifecycle.stop_reason is None


async def test_the_first_fatal_error_is_the_reason_and_a_cancel_overrides_a_stop() -> None:
    lifecycle = Lifecycle()
    lifecycle.begin(BatchState.RUNNING)
    lifecycle.stop_for("budget")
    first = AuthenticationError("bad key", status_code=401)
    lifecycle.fail_fast(first)  # an error no retry fixes says more than the budget
    lifecycle.fail_fast(AuthenticationError("other", status_code=401))
    lifecycle.stop_for("budget")
    assert lifecycle.fatal_error is first
    assert lifecycle.stop_reason is not None
    assert lifecycle.stop_reason.startswith("fatal: AuthenticationError")
    assert "bad key" in lifecycle.stop_reason

    stopped = Lifecycle()
    stopped.begin(BatchState.RUNNING)
    stopped.stop()
    stopped.abort()
    assert stopped.stop_reason == "cancelled"


async def test_after_a_stop_only_retries_of_items_in_flight_may_be_sent() -> None:
    lifecycle = Lifecycle()
    lifecycle.begin(BatchState.RUNNING)
    lifecycle.check_may_send(0)
    lifecycle.stop()
    lifecycle.check_may_send(1)  # a retry of an item already sent
    with pytest.raises(AbandonedError):
        lifecycle.check_may_send(0)
    lifecycle.fail_fast(AuthenticationError("bad key", status_code=401))
    with pytest.raises(AbandonedError):
        lifecycle.check_may_send(1)  # nothing more after an error no retry fixes
