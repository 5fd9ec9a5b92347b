"""Connecting to Redis our way: short timeouts, asyncio only, URLs shown without passwords.

Shared by every user of Redis in the package: the pacing backend (`RedisBackend`, which falls
back to memory when Redis fails) and the fail-closed scripts of the shared budget and the item
fence (`FailClosedScripts`). redis-py is imported lazily: it is the ``[redis]`` extra.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from nanogpt_async._errors import InvalidInputError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "CONNECT_TIMEOUT",
    "on_asyncio",
    "redis_client",
    "redis_display",
    "redis_errors",
    "require_asyncio",
]

#: Waiting for one of our own pooled connections, and making one, may take longer on a busy
#: machine (4 processes starting at once on 2 cores: up to a second) without Redis being at
#: fault; a stalled Redis still fails each call within the socket timeout.
CONNECT_TIMEOUT = 2.0


def on_asyncio() -> bool:
    """Whether the running event loop is asyncio's: redis-py's async client runs on no other."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def require_asyncio(what: str, *, drop: str) -> None:
    """Raise `InvalidInputError` unless on asyncio: ``what`` needs Redis and fails closed.

    Under trio, redis-py's async client cannot run; a fail-closed user of Redis (the shared
    budget, the item fence) would wait for it forever, sending nothing and saying nothing.

    Raises:
        InvalidInputError: not running under asyncio.
    """
    if not on_asyncio():
        raise InvalidInputError(
            f"{what} keeps its state in Redis through redis-py's asyncio client, which runs "
            "under asyncio only, not under trio: here it would wait for Redis forever. Nothing "
            'was sent. Run under asyncio (asyncio.run(...), or anyio.run(..., backend="asyncio"))'
            f", or drop {drop}"
        )


def redis_client(url: str, *, socket_timeout: float, max_connections: int) -> Redis:
    """A redis-py asyncio client with our short timeouts; call it inside the running loop.

    One retry of a timed-out call at most: every script of ours is safe to repeat, and more
    retries would only delay the fallback (pacing) or the fail-closed wait (budget, fence).
    """
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=CONNECT_TIMEOUT,
        socket_timeout=socket_timeout,
        socket_connect_timeout=CONNECT_TIMEOUT,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
    )
    return Redis(connection_pool=pool)


def redis_display(url: str) -> str:
    """``redis://host:port/db`` without user or password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a failing or slow Redis raises through redis-py (imported lazily: ``[redis]``)."""
    from redis.exceptions import RedisError

    return (RedisError, OSError, TimeoutError, asyncio.TimeoutError)
