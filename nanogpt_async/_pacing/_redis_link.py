"""The pacing backend's line to Redis: one connection per process and loop, and its faults.

`RedisBackend` (``_redis``) decides what to ask Redis and what to do without it; this module
runs its scripts and knows whether Redis answers. When a script fails or is slow, `run` answers
``None`` and Redis counts as down: the backend paces in memory, warned once, and Redis is tried
again at most every `PROBE_INTERVAL`, one probe at a time. Under trio (redis-py's async client
runs under asyncio only) every call answers ``None``, said once.

The connection is made lazily inside the running event loop, and made again after a fork or in
another loop: never at import, never shared across processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio

from nanogpt_async._pacing._redis_client import (
    CONNECT_TIMEOUT,
    on_asyncio,
    redis_client,
    redis_display,
    redis_errors,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    from nanogpt_async._pacing._watch import NoticeWatch

__all__ = ["POOL_SIZE", "PROBE_INTERVAL", "RedisLink"]

logger = logging.getLogger("nanogpt_async")

#: Connections per process: reservations take well under a millisecond each, so a few carry
#: hundreds of requests per second, and a burst of callers does not open one socket each.
POOL_SIZE = 8
#: While Redis is down, try it again at most this often. Short, because until every process
#: is back, the ones still pacing alone add to the shared schedule (W9 with 1 s: up to 47
#: requests in the second after Redis returned, against 25).
PROBE_INTERVAL = 0.25


class RedisLink:
    """Runs the pacing scripts on this process's connection; knows whether Redis answers.

    Args:
        url: The Redis URL (credentials included: never shown; see ``display``).
        scripts: The Lua scripts' sources by name, registered on each new connection.
        watch: The notice watch, started with each new connection and stopped with it.
        socket_timeout: Seconds before a Redis call counts as failed.
        clock: Local monotonic clock (for the probe schedule only).
        share: This process's share of the rate while it paces alone (for the warnings).
        on_down: Called when Redis stops answering, before the warning.

    Attributes:
        calls: Script calls sent to Redis (the benchmark's calls per request).
        down: Redis failed or was slow at the last call (the backend paces alone).
        off_asyncio: Not under asyncio: the scripts cannot run here (said once).
    """

    def __init__(
        self,
        url: str,
        *,
        scripts: Mapping[str, str],
        watch: NoticeWatch,
        socket_timeout: float,
        clock: Callable[[], float],
        share: Callable[[], float],
        on_down: Callable[[], None],
    ) -> None:
        """Remember where Redis is; connect later, inside the running loop."""
        self.url = url
        self.display = redis_display(url)
        self._sources = scripts
        self._watch = watch
        self._timeout = socket_timeout
        self._clock = clock
        self._share = share
        self._on_down = on_down
        self.client: Redis | None = None
        self.scripts: dict[str, AsyncScript] = {}
        self._owner: tuple[int, int] | None = None
        self.down = False
        self._warned = False
        #: Under trio (no asyncio loop), said once: redis-py's async client cannot run there.
        self.off_asyncio = False
        self._next_probe = 0.0
        self._probing = False
        self.calls = 0

    def connection(self) -> Redis:
        """The client for this process and this event loop (made on first use)."""
        owner = (os.getpid(), id(asyncio.get_running_loop()))
        if self.client is None or self._owner != owner:
            client = redis_client(self.url, socket_timeout=self._timeout, max_connections=POOL_SIZE)
            self.client = client
            self._owner = owner
            self.scripts = {
                name: client.register_script(source) for name, source in self._sources.items()
            }
            self._watch.start(client)
        return self.client

    async def run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run one script; ``None`` when Redis failed (then the fallback takes over)."""
        if not on_asyncio():
            self._alone_off_asyncio()
            return None
        now = self._clock()
        if self.down and (self._probing or now < self._next_probe):
            return None
        if self.down:
            self._probing = True
        try:
            connection = self.connection()
            self.calls += 1
            # Socket timeouts cover a silent Redis; this also covers a slow connect or a
            # stream of retries.
            with anyio.fail_after(CONNECT_TIMEOUT + self._timeout * 2):
                result = await self.scripts[script](keys=keys, args=args, client=connection)
        except redis_errors() as exc:
            self._went_down(exc)
            return None
        finally:
            self._probing = False
        if self.down:
            self.down = False
            logger.warning(
                "nanogpt-async: Redis at %s answers again: pacing is shared", self.display
            )
        return result

    def _alone_off_asyncio(self) -> None:
        """Pace this process alone: redis-py's async client cannot run off asyncio (trio).

        Pacing only shares a schedule, so it need not stop the client (a shared budget or fence
        does: see `require_asyncio`); it is said once, with the reason and the way out.
        """
        if self.off_asyncio:
            return
        self.off_asyncio = True
        logger.warning(
            "nanogpt-async: the shared pacing in Redis at %s (limits_url) runs under asyncio "
            "only (redis-py's async client), not under trio: this process paces alone at %.0f%% "
            "of the rate. Run under asyncio to share the key's pacing, or drop limits_url",
            self.display,
            100 * self._share(),
        )

    def _went_down(self, exc: BaseException) -> None:
        self._next_probe = self._clock() + PROBE_INTERVAL
        if self.down:
            return
        self.down = True
        self._on_down()
        if not self._warned:
            self._warned = True
            logger.warning(
                "nanogpt-async: Redis at %s is unreachable or slow (%s): pacing this process "
                "alone at %.0f%% of the rate until it answers again",
                self.display,
                type(exc).__name__,
                100 * self._share(),
            )
        else:
            logger.info("nanogpt-async: Redis at %s is unreachable again", self.display)

    async def aclose(self) -> None:
        """Close this process's connection (if it was made in this loop)."""
        client, self.client = self.client, None
        if client is not None and self._owner == (os.getpid(), _loop_id()):
            await self._watch.stop()
            await client.aclose(close_connection_pool=True)


def _loop_id() -> int:
    try:
        return id(asyncio.get_running_loop())
    except RuntimeError:
        return 0
