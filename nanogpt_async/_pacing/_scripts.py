"""Lua scripts on one Redis, run fail closed: what the shared budget and the item fence share.

Both guard money, so neither may let a paid request through unchecked: a script that cannot
run (Redis down or slow) raises, after one warning naming what cannot be reached, and the
caller waits and tries again. Writes that must not be lost when Redis blinks (a budget's
settle, a fence's "done") wait in ``unsent`` and go out, in order, before the next script.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio

from nanogpt_async._pacing._redis_client import (
    CONNECT_TIMEOUT,
    redis_client,
    redis_display,
    require_asyncio,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["FailClosedScripts"]

logger = logging.getLogger("nanogpt_async")

#: Connections per process: a budget or a fence makes at most a few calls per request.
_POOL_SIZE = 4


class FailClosedScripts:
    """Named Lua scripts over fixed keys on the Redis at ``url``, connected on first use.

    Args:
        url: The Redis URL (shown without its password in messages).
        sources: ``{name: Lua source}``.
        keys: The ``KEYS`` every script gets.
        socket_timeout: Seconds before a Redis call counts as failed.
        what: What these scripts are, for the warnings ("the shared budget").
        drop: What to drop to do without them, for the error under trio ("shared_budget").
    """

    def __init__(
        self,
        url: str,
        *,
        sources: Mapping[str, str],
        keys: list[str],
        socket_timeout: float,
        what: str,
        drop: str,
    ) -> None:
        """Remember where Redis is; nothing connects before the first call."""
        self._url = url
        self.display = redis_display(url)
        self._sources = dict(sources)
        self.keys = keys
        self.timeout = socket_timeout
        self._what = what
        self._drop = drop
        self.client: Redis | None = None
        self.scripts: dict[str, AsyncScript] = {}
        self.unsent: list[list[Any]] = []
        self.warned = False

    @property
    def call_timeout(self) -> float:
        """The longest one call may take: a connection, then a call and its one retry."""
        return CONNECT_TIMEOUT + self.timeout * 2

    def connection(self) -> Redis:
        """The client (made, and the scripts registered, on first use in the running loop).

        Raises:
            InvalidInputError: not under asyncio (trio), where the client cannot run: a caller
                that fails closed would otherwise wait for it forever.
        """
        self.require_asyncio()
        if self.client is None:
            client = redis_client(
                self._url, socket_timeout=self.timeout, max_connections=_POOL_SIZE
            )
            self.client = client
            self.scripts = {
                name: client.register_script(source) for name, source in self._sources.items()
            }
        return self.client

    def require_asyncio(self) -> None:
        """Raise `InvalidInputError` under trio, where redis-py's async client cannot run."""
        require_asyncio(self._what, drop=self._drop)

    async def run(self, name: str, args: list[Any]) -> Any:
        """Run script ``name``; on failure warn once (naming Redis, not its password), raise."""
        from redis.exceptions import RedisError

        try:
            connection = self.connection()
            with anyio.fail_after(self.call_timeout):
                return await self.scripts[name](keys=self.keys, args=args, client=connection)
        except (RedisError, OSError, TimeoutError) as exc:
            if not self.warned:
                self.warned = True
                logger.warning(
                    "nanogpt-async: %s in Redis at %s cannot be reached (%s): no paid request "
                    "is sent until it answers",
                    self._what,
                    self.display,
                    type(exc).__name__,
                )
            raise

    def answered(self) -> None:
        """A call went through: say so once if Redis had been unreachable."""
        if self.warned:
            self.warned = False
            logger.warning("nanogpt-async: %s in Redis answers again", self._what)

    async def flush(self, name: str) -> None:
        """Send the writes kept in ``unsent`` through script ``name``, oldest first."""
        while self.unsent:
            await self.run(name, self.unsent[0])
            self.unsent.pop(0)

    async def aclose(self) -> None:
        """Close the connection (a later call connects again)."""
        client, self.client = self.client, None
        if client is not None:
            await client.aclose(close_connection_pool=True)
