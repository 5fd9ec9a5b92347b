"""One subscription per process to a key's notices: a cooldown or daily block set anywhere.

Why it exists: a caller holding a slot more than one slot ahead used to ask Redis again when
it woke (a "recheck"), so that a 429 answered to another process meanwhile stopped its send.
That second round trip was paid by nearly every request of a busy key, and it was the largest
part of the pacing overhead in benchmark W8 (8 processes x 64 callers: p50 0.8 ms of 2.5,
up to 4.6 ms in the slowest 1%). Now the cooldown and daily scripts PUBLISH a notice, each
process keeps one subscription, and a caller asks Redis again only when something it could
have missed happened since it reserved: a notice, or the subscription being lost or renewed.

Missing a notice must never pass silently. So:

* a mark is only handed out while the subscription is confirmed (``live``); a slot reserved
  without one is rechecked as before;
* every loss and every (re)subscription bumps ``count``: slots reserved before it recheck
  (redis-py resubscribes by itself after a reconnect; the new confirmation is seen here);
* notices are numbered per schedule, and reservations report the last number: a watcher that
  heard fewer than a reservation reported is deaf (a subscription dropped without an error),
  and every slot rechecks until it hears again.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

__all__ = ["NoticeWatch"]

#: Schedules whose notice numbers are remembered (a schedule changes when Redis loses its
#: data; only the current one matters, the previous few cover replies still in flight).
_SCHEDULES_KEPT = 4
#: Stopping: cancels sent, and seconds to wait after each, before giving up on the task.
_STOP_TRIES, _STOP_WAIT = 20, 0.05


class NoticeWatch:
    """This process's subscription to one key's notice channel (one per event loop).

    Args:
        channel: The channel the cooldown and daily scripts publish to.
        errors: The exceptions that mean Redis failed.
        retry_after: Seconds between attempts to subscribe again after a failure.

    Attributes:
        count: Notices heard, plus subscriptions confirmed and lost: a slot reserved at
            another count must be rechecked.
        live: Whether the subscription is confirmed and no failure was seen since.
        subscriptions: SUBSCRIBE commands sent (for the calls-per-request figure).
    """

    def __init__(
        self, channel: str, *, errors: tuple[type[BaseException], ...], retry_after: float
    ) -> None:
        """Nothing runs before `start`."""
        self.channel = channel
        self._errors = errors
        self._retry_after = retry_after
        self.count = 0
        self.live = False
        self.subscriptions = 0
        self._heard: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None

    def mark(self) -> int | None:
        """What a reservation made now remembers (``None``: not subscribed, always recheck)."""
        return self.count if self.live else None

    def missed(self, mark: int | None, schedule: str | None, reported: int) -> bool:
        """Whether a slot reserved at ``mark`` may have missed a notice.

        ``reported`` is the highest notice number a reservation in ``schedule`` reported.
        """
        return (
            mark is None
            or not self.live
            or mark != self.count
            or self._heard.get(schedule or "", 0) < reported
        )

    async def next_change(self) -> None:
        """Wait until ``count`` moves (a notice, a subscription confirmed or lost)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()

    def _bump(self) -> None:
        self.count += 1
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def start(self, client: Redis) -> None:
        """Subscribe through ``client``, in the running loop (a new loop gets a new watch)."""
        self.live = False
        self._changed = None  # an event of a previous loop cannot be awaited in this one
        self._bump()
        # A task of a previous loop or process is not ours to stop: that loop is gone.
        self._task = asyncio.get_running_loop().create_task(self._listen(client))

    async def stop(self) -> None:
        """Unsubscribe (if the watch runs in this loop)."""
        task, self._task = self._task, None
        self.live = False
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            return
        # A cancel that lands while redis-py connects can be lost (see _raise_if_cancelled):
        # ask again rather than wait for ever.
        for _ in range(_STOP_TRIES):
            task.cancel()
            await asyncio.wait({task}, timeout=_STOP_WAIT)
            if task.done():
                return

    async def _listen(self, client: Redis) -> None:
        while True:
            pubsub = client.pubsub()
            try:
                self.subscriptions += 1
                await pubsub.subscribe(self.channel)
                _raise_if_cancelled()
                # get_message, not listen(): an async generator ended by a failure or a cancel
                # was closed by the loop's finalizer while still marked running (RuntimeError
                # in a callback, seen under anyio's test runner).
                while pubsub.subscribed:
                    message = await pubsub.get_message(timeout=None)
                    _raise_if_cancelled()
                    if message is not None:
                        self._hear(message)
                self._lost()  # only ends when unsubscribed: count it as a loss
            except asyncio.CancelledError:
                self._lost()
                await _close(pubsub, self._errors)
                raise
            except self._errors:
                self._lost()
                await _close(pubsub, self._errors)
            await asyncio.sleep(self._retry_after)

    def _hear(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in {"subscribe", b"subscribe"}:
            # (Re)confirmed: what was published before it may have been missed.
            self.live = True
            self._bump()
        elif kind in {"message", b"message"}:
            self._bump()
            data = message.get("data", b"")
            text = data.decode() if isinstance(data, bytes) else str(data)
            schedule, _, number = text.rpartition(" ")
            with contextlib.suppress(ValueError):
                self._heard[schedule] = max(self._heard.get(schedule, 0), int(number))
                while len(self._heard) > _SCHEDULES_KEPT:
                    del self._heard[next(iter(self._heard))]

    def _lost(self) -> None:
        self.live = False
        self._bump()


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that redis-py swallowed.

    Python < 3.12's ``asyncio.wait_for`` (redis-py's connect timeout) drops a cancel that lands
    as the connection completes: the task then went on to listen for ever, and ``asyncio.run``
    hung at exit waiting for it (seen in tests: cancelled 6 loop steps after it started).
    ``Task.cancelling()`` (3.11+) still counts the cancel; Python 3.10 has no way to tell.
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError


async def _close(pubsub: PubSub, errors: tuple[type[BaseException], ...]) -> None:
    with contextlib.suppress(*errors):
        await pubsub.aclose()  # type: ignore[no-untyped-call] # redis-py leaves it unannotated
