"""A ``max_cost`` shared through Redis by every process spending one key's money.

Reserve, then settle (check-then-record overshoots under load):

* `RedisBudget.book` books an estimate just before a paid request is sent, in one script:
  ``"spent"`` when settled spending plus this estimate would pass the cap (stop), ``"full"``
  when live reservations are in the way (wait for one to settle: `RedisBudget.room`, then
  try again);
* `RedisBudget.settle` turns it into the real cost after the answer; an ambiguous
  failure (the request may have been charged, no cost known) counts the estimate as spent; a
  failure before sending releases it;
* a reservation not settled within ``reservation_ttl`` (its process died) is swept as spent at
  its estimate; a late settlement then adds only what the real cost exceeded it by;
* both scripts are safe to repeat (the reservation id is the token; settlements leave a
  marker), because redis-py may retry a timed-out call;
* while Redis cannot be reached the budget **fails closed**: `reserve` waits (and says
  so once) rather than let a paid request go unchecked; settlements that could not be written
  are kept and written on the next successful call, meanwhile the reservation counts as spent.

Amounts are kept in Redis as integer micro-dollars; keys share the pacer's namespace (a hash
of the API key) plus the budget's name, so separate jobs on one key can have separate caps.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Awaitable, Callable
from decimal import ROUND_CEILING, Decimal
from typing import Literal

import anyio

from nanogpt_async._errors import InvalidInputError
from nanogpt_async._pacing._redis import SOCKET_TIMEOUT, redis_namespace
from nanogpt_async._pacing._scripts import FailClosedScripts

__all__ = ["BudgetReservation", "RedisBudget", "Refusal"]

_MICRO = Decimal("0.000001")
#: An unsettled reservation is presumed dead (and spent) after this long: longer than any
#: request can take with the default 300 s read timeout and its retries.
RESERVATION_TTL = 1800.0
#: How often a fail-closed reservation tries Redis again.
RETRY_EVERY = 0.5
#: How long a booking refused as "full" waits for another process's settlement before trying
#: again (a settlement in this process wakes it at once).
ROOM_POLL = 0.25
#: The reserve script's answer when live reservations are in the way.
FULL = 2

Refusal = Literal["full", "spent"]

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Sweep reservations whose process died: they count as spent at their estimate.
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, id in ipairs(dead) do
  local amount = tonumber(redis.call('HGET', KEYS[3], id)) or 0
  redis.call('HINCRBY', KEYS[1], 'spent', amount)
  redis.call('HINCRBY', KEYS[1], 'held', -amount)
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('SET', KEYS[4] .. id, 'swept', 'PX', 86400000)
end
"""

# KEYS: totals hash, reservations zset (id -> expiry), amounts hash, marker prefix
# ARGV: id, estimate (micro-USD), max (micro-USD), ttl ms
_RESERVE = (
    _PRELUDE
    + """
local known = redis.call('HEXISTS', KEYS[3], ARGV[1]) + redis.call('EXISTS', KEYS[4] .. ARGV[1])
if known > 0 then
  return 1  -- repeated: that reservation was already made
end
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent')) or 0
local held = tonumber(redis.call('HGET', KEYS[1], 'held')) or 0
local estimate = tonumber(ARGV[2])
if spent + estimate > tonumber(ARGV[3]) then
  return 0  -- spent: it would not fit even once every live reservation settled
end
if spent + held + estimate > tonumber(ARGV[3]) then
  return 2  -- full for now: live reservations may settle for less (or be released)
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], estimate)
redis.call('HINCRBY', KEYS[1], 'held', estimate)
return 1
"""
)

# KEYS: as above. ARGV: id; cost in micro-USD or -1 when unknown; 1 when an unknown cost
# counts as spent; the estimate in micro-USD.
_SETTLE = (
    _PRELUDE
    + """
local marker = redis.call('GET', KEYS[4] .. ARGV[1])
local cost = tonumber(ARGV[2])
local charged = ARGV[3] == '1'
local estimate = tonumber(ARGV[4])
if marker == 'settled' then
  return 0  -- a repeat
end
if marker == 'swept' then
  -- Its estimate was counted when it expired; add only what the real cost exceeded it by.
  if cost >= 0 and cost > estimate then
    redis.call('HINCRBY', KEYS[1], 'spent', cost - estimate)
  end
  redis.call('SET', KEYS[4] .. ARGV[1], 'settled', 'PX', 86400000)
  return 1
end
local amount = tonumber(redis.call('HGET', KEYS[3], ARGV[1]))
if amount then
  redis.call('HINCRBY', KEYS[1], 'held', -amount)
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
if cost >= 0 then
  redis.call('HINCRBY', KEYS[1], 'spent', cost)
elseif charged then
  redis.call('HINCRBY', KEYS[1], 'spent', amount or estimate)
end
redis.call('SET', KEYS[4] .. ARGV[1], 'settled', 'PX', 86400000)
return 1
"""
)

# KEYS: as above. Returns {spent, held}.
_TOTALS = (
    _PRELUDE
    + """
return {tostring(tonumber(redis.call('HGET', KEYS[1], 'spent')) or 0),
        tostring(tonumber(redis.call('HGET', KEYS[1], 'held')) or 0)}
"""
)


def _micro(amount: Decimal) -> int:
    return int((amount / _MICRO).to_integral_value(rounding=ROUND_CEILING))


class BudgetReservation:
    """One booked estimate, to be settled exactly once."""

    __slots__ = ("estimate", "id")

    def __init__(self, reservation_id: str, estimate: Decimal) -> None:
        self.id = reservation_id
        self.estimate = estimate

    def __repr__(self) -> str:
        return f"BudgetReservation(id={self.id!r}, estimate={self.estimate})"


class RedisBudget:
    """A USD cap shared by every process using one API key, through Redis.

    Args:
        url: ``redis://host:port/db``.
        key: The API key (only hashed).
        max_cost: The cap in USD.
        name: Which budget (processes sharing a cap use the same name).
        reservation_ttl: Seconds after which an unsettled reservation counts as spent.
        socket_timeout: Seconds before a Redis call counts as failed.
        sleep: How to wait between tries while Redis is unreachable (injectable for tests).

    Example:
        >>> budget = RedisBudget(url, key=key, max_cost=Decimal("1.00"))  # doctest: +SKIP
        >>> booked = await budget.reserve(Decimal("0.01"))  # doctest: +SKIP
        >>> await budget.settle(booked, cost=Decimal("0.008"))  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str,
        *,
        key: str,
        max_cost: Decimal,
        name: str = "default",
        reservation_ttl: float = RESERVATION_TTL,
        socket_timeout: float = SOCKET_TIMEOUT,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        """Remember where Redis is; connect on first use, inside the running loop."""
        if importlib.util.find_spec("redis") is None:
            raise ValueError(
                "a shared budget needs the redis client: pip install 'nanogpt-async[redis]'"
            )
        if max_cost < 0:
            raise ValueError(f"max_cost must be >= 0, got {max_cost}")
        self.max_cost = max_cost
        prefix = f"{redis_namespace(key)}budget:{name}:"
        self._redis = FailClosedScripts(
            url,
            sources={"reserve": _RESERVE, "settle": _SETTLE, "totals": _TOTALS},
            keys=[prefix + "totals", prefix + "reservations", prefix + "amounts", prefix + "m:"],
            socket_timeout=socket_timeout,
            what="the shared budget",
            drop="shared_budget (max_cost alone caps one batch)",
        )
        self._ttl_ms = int(reservation_ttl * 1000)
        self._sleep = sleep
        self._settled: anyio.Event | None = None  # made in the running loop, by room()

    async def reserve(self, estimate: Decimal) -> BudgetReservation | None:
        """Book ``estimate`` USD before sending; ``None`` when the cap would be passed now."""
        booked = await self.book(estimate)
        return booked if isinstance(booked, BudgetReservation) else None

    async def book(self, estimate: Decimal) -> BudgetReservation | Refusal:
        """Book ``estimate`` USD before sending, or say why not.

        ``"spent"``: settled spending plus ``estimate`` passes the cap, whatever the requests in
        flight cost (stop). ``"full"``: it fits once live reservations settle (wait for
        `room`, then try again): a refusal then would stop every process long before the
        money is spent (8 processes x 64 in flight stopped at $0.33 of a $2 cap).

        Waits (fails closed) while Redis cannot be reached: nothing paid goes unchecked.
        """
        booking = BudgetReservation(uuid.uuid4().hex, estimate)
        args = [booking.id, _micro(estimate), _micro(self.max_cost), self._ttl_ms]
        while True:
            try:
                await self._redis.flush("settle")
                admitted = int(await self._redis.run("reserve", args))
            except InvalidInputError:
                raise  # under trio: no wait would ever end (see `require_asyncio`)
            except Exception:
                await self._sleep(RETRY_EVERY)
                continue
            self._redis.answered()
            if admitted == 1:
                return booking
            return "full" if admitted == FULL else "spent"

    def require_asyncio(self) -> None:
        """Raise `InvalidInputError` under trio, where the budget's Redis client cannot run."""
        self._redis.require_asyncio()

    async def room(self) -> None:
        """Wait until this process settles a reservation, or ``ROOM_POLL`` s (others' settle)."""
        if self._settled is None:
            self._settled = anyio.Event()
        with anyio.move_on_after(ROOM_POLL):
            await self._settled.wait()

    async def settle(
        self, booking: BudgetReservation, cost: Decimal | None, *, maybe_charged: bool
    ) -> None:
        """Record what the request really cost (``None``: unknown).

        With no cost, ``maybe_charged`` counts the estimate as spent (an ambiguous failure);
        otherwise the reservation is released. Never raises for Redis: a settlement that
        cannot be written now is written with the next call (till then it counts as spent).
        """
        args = [
            booking.id,
            _micro(cost) if cost is not None else -1,
            int(maybe_charged),
            _micro(booking.estimate),
        ]
        self._redis.unsent.append(args)
        try:
            await self._redis.flush("settle")
        except Exception:
            return
        finally:
            if self._settled is not None:
                self._settled.set()
                self._settled = None

    async def totals(self) -> tuple[Decimal, Decimal]:
        """``(spent, reserved)`` in USD, as Redis holds them now."""
        await self._redis.flush("settle")
        spent, held = await self._redis.run("totals", [])
        return Decimal(int(float(spent))) * _MICRO, Decimal(int(float(held))) * _MICRO

    async def aclose(self) -> None:
        """Close the connection."""
        await self._redis.aclose()
