"""The Redis pacing backend: one key's slots, cooldown and daily block, shared by processes.

Every step is one Lua script run with EVALSHA (redis-py's ``register_script`` falls back to
loading it on NOSCRIPT), so a request costs one round trip to reserve its slot; a second one,
to recheck a slot more than one slot away, only when a 429 or a daily cap elsewhere may have
moved it (see `NoticeWatch`: one subscription per process hears them):

* **GCRA "next slot"**: the script answers "your slot is in 0.12 s"; callers sleep that
  relative delay. Redis ``TIME`` is the only clock, so hosts' clock skew does not matter.
* **Cooldown** ``until = max(until, now + Retry-After)`` and the **daily block** live in Redis:
  every process sees them at its next reservation, and callers already holding a slot through
  a notice the script publishes, within one slot. A process that knew of a hold Redis then
  forgot (an empty restart) sets it again.
* **Safe to repeat**: a reservation carries a random token and its result is stored under it
  for a minute; a repeated call (redis-py retries a timed-out command) returns the stored slot
  instead of taking a second one. Cooldown and block are ``max`` updates: repeats are no-ops.
* **Keys** are ``nanogpt:{<sha256 of the API key, 24 hex>}:...``: the key never reaches Redis.
* **Faults**: short socket timeouts; when Redis fails or is slow the backend paces in memory at
  a safe share of the rate (the rate divided by the processes seen in the last 10 s), warns
  once, and probes Redis at most four times a second until it answers again.

The connection, and knowing whether Redis answers, is `RedisLink`'s (``_redis_link``); this
module holds the scripts, the key names and what the backend makes of the scripts' answers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

from nanogpt_async._pacing._memory import MemoryBackend
from nanogpt_async._pacing._redis_client import redis_display, redis_errors
from nanogpt_async._pacing._redis_link import PROBE_INTERVAL, RedisLink
from nanogpt_async._pacing._state import Grant, GrantKind
from nanogpt_async._pacing._watch import NoticeWatch

__all__ = ["SOCKET_TIMEOUT", "RedisBackend", "redis_namespace"]

#: Socket timeouts: a healthy Redis on a LAN answers in well under a millisecond; half a second
#: means it is down or stalled, and the pacer falls back rather than stall requests. (A quarter
#: second tripped falsely on a loaded 2-core machine while 4 processes started at once.)
SOCKET_TIMEOUT = 0.5
#: The most of a slot's delay counted as past when the answer arrives (half the round trip:
#: Redis reads its clock midway, W8 on loopback: 0.35 ms at the median). A longer round trip
#: is a stall whose place in the trip is unknown: the caller then does not go early by more.
MAX_ELAPSED = 0.002
#: How long a reservation's token (and its stored answer) is kept.
TOKEN_TTL_MS = 60_000
#: A process counts as sharing the key if it reserved within this window.
MEMBER_WINDOW_MS = 10_000
#: Share of the rate used in fallback when Redis never said how many processes share the key.
UNKNOWN_SHARE = 0.25

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local function keep(state_key, ends)
  local ttl = math.ceil(math.max(ends - now, 0) + 60000)
  redis.call('PEXPIRE', state_key, ttl)
end
-- A numbered notice to every process's watch (see _watch.py): "<schedule id> <number>".
-- ARGV[1] of the caller is the channel, ARGV[2] a schedule id for a state not made yet.
local function notify(state_key)
  local epoch = redis.call('HGET', state_key, 'epoch')
  if not epoch then
    epoch = ARGV[2]
    redis.call('HSET', state_key, 'epoch', epoch)
  end
  local n = redis.call('HINCRBY', state_key, 'n', 1)
  redis.call('PUBLISH', ARGV[1], epoch .. ' ' .. n)
end
"""

# KEYS: state hash, members zset, token key
# ARGV: interval ms, burst, max wait ms, recheck (0/1), member id, token ttl ms, member window,
#       a new schedule id (used when the state is new), the rechecked slot's schedule id
# A schedule id names this state's life: after Redis lost its data (restarted empty) or the
# state expired, slots from before are not honoured by a recheck (W9: they were, and the old
# and new schedules added up to 50 requests a second for 10 s).
_RESERVE = (
    _PRELUDE
    + """
local stored = redis.call('GET', KEYS[3])
if stored then
  local kind, slot, new_slot = string.match(stored, '^(%a+) ([^ ]+) (%d)$')
  local st = redis.call('HMGET', KEYS[1], 'tat', 'cd', 'daily', 'dcode', 'epoch', 'n')
  local cd = tonumber(st[2]) or 0
  local daily = tonumber(st[3]) or 0
  return {kind, tostring(math.max(tonumber(slot) - now, 0)), tostring(math.max(cd - now, 0)),
          tostring(math.max(daily - now, 0)), '0', st[4] or '', tonumber(new_slot), 1,
          st[5] or '', tonumber(st[6]) or 0}
end
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local st = redis.call('HMGET', KEYS[1], 'tat', 'cd', 'daily', 'dcode', 'epoch', 'n')
local epoch = st[5]
if not epoch then
  epoch = ARGV[8]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  keep(KEYS[1], now)
end
local tat = tonumber(st[1]) or 0
local cd = tonumber(st[2]) or 0
local daily = tonumber(st[3]) or 0
redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[7]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[7]) * 2)
local members = redis.call('ZCARD', KEYS[2])
local kind = 'go'
local delay = 0
local new_slot = 0
if now < daily then
  kind = 'daily'
  delay = daily - now
elseif ARGV[4] == '1' and ARGV[9] == epoch and now >= cd then
  delay = 0
else
  local t0 = math.max(tat, now, cd)
  local start = math.max(now, cd, t0 - (burst - 1) * interval)
  delay = start - now
  if delay > max_wait then
    kind = 'too_long'
  else
    tat = t0 + interval
    new_slot = 1
    redis.call('HSET', KEYS[1], 'tat', tostring(tat))
    keep(KEYS[1], math.max(tat, cd, daily))
  end
end
redis.call('SET', KEYS[3], kind .. ' ' .. tostring(now + delay) .. ' ' .. new_slot,
           'PX', tonumber(ARGV[6]))
return {kind, tostring(delay), tostring(math.max(cd - now, 0)), tostring(math.max(daily - now, 0)),
        tostring(math.max(tat - now, cd - now, 0)), st[4] or '', new_slot, members, epoch,
        tonumber(st[6]) or 0}
"""
)

# KEYS: state hash. ARGV: channel, new schedule id, seconds ms. Grow-only, so a repeat
# changes nothing but a needless notice (callers then recheck once).
_COOLDOWN = (
    _PRELUDE
    + """
local st = redis.call('HMGET', KEYS[1], 'tat', 'cd', 'daily')
local cd = math.max(tonumber(st[2]) or 0, now + tonumber(ARGV[3]))
local tat = math.max(tonumber(st[1]) or 0, cd)
redis.call('HSET', KEYS[1], 'cd', tostring(cd), 'tat', tostring(tat))
notify(KEYS[1])
keep(KEYS[1], math.max(tat, cd, tonumber(st[3]) or 0))
return tostring(cd - now)
"""
)

# KEYS: state hash. ARGV: channel, new schedule id, seconds ms, code. Grow-only.
_DAILY = (
    _PRELUDE
    + """
local daily = tonumber(redis.call('HGET', KEYS[1], 'daily')) or 0
local until_ms = now + tonumber(ARGV[3])
if until_ms > daily then
  redis.call('HSET', KEYS[1], 'daily', tostring(until_ms), 'dcode', ARGV[4])
  notify(KEYS[1])
  keep(KEYS[1], until_ms)
end
return tostring(math.max(daily, until_ms) - now)
"""
)


def redis_namespace(api_key: str) -> str:
    """The key prefix for one API key: a hash, so the key itself never reaches Redis."""
    digest = hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:24]
    # The braces make a Redis Cluster hash tag: all of one key's state lives on one node.
    return f"nanogpt:{{{digest}}}:"


class RedisBackend:
    """Pacing state in Redis, shared by every process using one API key.

    Args:
        url: ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS).
        key: The API key, only hashed (see `redis_namespace`).
        socket_timeout: Seconds before a Redis call counts as failed.
        clock: Local monotonic clock (for the fallback and the probe schedule only).

    Attributes:
        link: Where the scripts run (`RedisLink`), and whether Redis answers.
    """

    @property
    def subscriptions(self) -> int:
        """SUBSCRIBE commands sent for the notices (per process and loop, and per reconnect)."""
        return self._watch.subscriptions

    def __init__(
        self,
        url: str,
        *,
        key: str,
        socket_timeout: float = SOCKET_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Remember where Redis is; connect later, inside the running loop."""
        if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"limits_url must be a redis:// URL such as redis://localhost:6379/0, "
                f"got {redis_display(url)!r}"
            )
        if importlib.util.find_spec("redis") is None:
            raise ValueError(
                "limits_url needs the redis client: pip install 'nanogpt-async[redis]'"
            )
        self._prefix = redis_namespace(key)
        self._member = uuid.uuid4().hex
        self._clock = clock
        self._fallback = MemoryBackend(clock=clock)
        self._members = 0
        self._cooldown_left = 0.0
        self._daily_left = 0.0
        self._daily_code: str | None = None
        self._holds = _KnownHolds(self._clock)
        self._schedule: str | None = None
        # The highest notice number a reservation reported, per schedule (see _watch.py).
        self._reported: tuple[str, int] = ("", 0)
        self._watch = NoticeWatch(
            self._key("notices"), errors=redis_errors(), retry_after=PROBE_INTERVAL
        )
        #: Where the scripts run, and whether Redis answers (else this process paces alone).
        self.link = RedisLink(
            url,
            scripts={"reserve": _RESERVE, "cooldown": _COOLDOWN, "daily": _DAILY},
            watch=self._watch,
            socket_timeout=socket_timeout,
            clock=clock,
            share=lambda: self.share,
            on_down=self._seed_fallback,
        )
        self.display = self.link.display

    @property
    def url(self) -> str:
        """The Redis URL as given (credentials included: never show it; see ``display``)."""
        return self.link.url

    @property
    def name(self) -> str:
        """``redis``, or ``memory (...)`` while pacing alone (Redis unreachable, or trio)."""
        if self.link.off_asyncio:
            return "memory (redis needs asyncio)"
        return "memory (redis unreachable)" if self.link.down else "redis"

    @property
    def share(self) -> float:
        """The share of the rate this process uses while Redis is unreachable."""
        return 1.0 / self._members if self._members else UNKNOWN_SHARE

    @property
    def calls(self) -> int:
        """Script calls sent to Redis (the benchmark's calls per request)."""
        return self.link.calls

    def _key(self, name: str) -> str:
        return self._prefix + name

    def _seed_fallback(self) -> None:
        """Redis stopped answering: the local fallback starts from what this process knew."""
        # Carry over what we knew, so a cooldown running when Redis went away still holds.
        cooldown, daily = self._holds.left()
        self._fallback.seed(
            cooldown=max(0.0, cooldown), daily=max(0.0, daily), daily_code=self._holds.code
        )

    # -- the backend protocol ----------------------------------------------------------------

    async def reserve(
        self,
        *,
        interval: float,
        burst: int,
        max_wait: float,
        recheck: bool = False,
        schedule: str | None = None,
    ) -> Grant:
        """See `PacingBackend.reserve`; one round trip.

        A slot is only valid in the schedule it came from. A recheck of a shared slot that
        cannot reach Redis takes a local one (its shared slot passed while Redis was silent;
        sending at once would burst: W9 saw 43 requests in one second when Redis froze); a
        recheck of a local slot once Redis is back, or of a slot from before Redis lost its
        data, takes a slot in the current shared schedule (else the two would add up).
        """
        mark = self._watch.mark()  # before the call: a notice heard during it counts
        asked = self._clock()
        result = await self.link.run(
            "reserve",
            [self._key("state"), self._key("members"), self._key(f"t:{uuid.uuid4().hex}")],
            [
                _ms(interval),
                burst,
                _ms(max_wait),
                int(recheck),
                self._member,
                TOKEN_TTL_MS,
                MEMBER_WINDOW_MS,
                uuid.uuid4().hex[:16],
                schedule or "",
            ],
        )
        if result is None:
            # Alone, at this process's share of the rate.
            return self._fallback.reserve_now(
                interval=interval / self.share,
                burst=1,
                max_wait=max_wait,
                recheck=recheck and schedule is None,
            )
        kind, delay, cooldown, daily, queued, code, new_slot, members, epoch, notice = result
        round_trip = max(0.0, self._clock() - asked)
        schedule_id = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        if schedule_id != self._reported[0] or int(notice) > self._reported[1]:
            self._reported = (schedule_id, int(notice))
        self._members = int(members)
        self._cooldown_left = float(cooldown) / 1000
        self._daily_left = float(daily) / 1000
        code_text = code.decode() if isinstance(code, bytes) else str(code)
        self._daily_code = code_text or None
        self._holds.remember(self._cooldown_left, self._daily_left, self._daily_code)
        known, self._schedule = self._schedule, schedule_id
        if known is not None and known != schedule_id and await self._restore():
            # Redis lost its data (restarted empty): the holds it forgot are back, and this
            # call's slot, taken before they were, moves after them.
            return await self.reserve(
                interval=interval,
                burst=burst,
                max_wait=max_wait,
                recheck=True,
                schedule=schedule_id,
            )
        kind_text = kind.decode() if isinstance(kind, bytes) else str(kind)
        return Grant(
            kind=_KINDS.get(kind_text, "go"),
            delay=float(delay) / 1000,
            cooldown=self._cooldown_left,
            daily=self._daily_left,
            queued=float(queued) / 1000,
            daily_code=self._daily_code if self._daily_left > 0 else None,
            new_slot=bool(int(new_slot)),
            schedule=schedule_id,
            elapsed=min(round_trip / 2, MAX_ELAPSED),
            mark=mark,
        )

    async def _restore(self) -> bool:
        """Set again in Redis the holds this process knows of and Redis forgot.

        Returns whether there was any. A cooldown or daily block lived only in Redis: an empty
        restart (no persistence) used to lift it for every process at once.
        """
        # Less a margin: what Redis reported came back after its clock read it.
        cooldown, daily = (left - MAX_ELAPSED for left in self._holds.left())
        restore_cooldown = cooldown > self._cooldown_left
        restore_daily = daily > self._daily_left
        if restore_cooldown:
            await self.cooldown(cooldown)
        if restore_daily:
            await self.block_daily(daily, self._holds.code)
        return restore_cooldown or restore_daily

    def should_recheck(self, grant: Grant, interval: float) -> bool:
        """Whether a caller must ask Redis again before sending on ``grant``.

        Yes while Redis is unreachable and for a slot of this process alone (it must move into
        the shared schedule). No for a slot within one slot: a cooldown begun meanwhile could
        not have been seen sooner anyway. Otherwise only when this process's notice watch may
        have missed a cooldown or daily block since the reservation (see `NoticeWatch`); a
        quiet key costs one round trip per request (W8: 1.0 calls per request, was 2.0).
        """
        if self.link.down or not grant.shared:
            return True
        if grant.delay <= interval:
            return False
        schedule, reported = self._reported
        return self._watch.missed(
            grant.mark, grant.schedule, reported if schedule == grant.schedule else 0
        )

    async def cooldown(self, seconds: float) -> float:
        """See `PacingBackend.cooldown`; grow-only in Redis."""
        local = await self._fallback.cooldown(seconds)
        result = await self.link.run(
            "cooldown",
            [self._key("state")],
            [self._watch.channel, uuid.uuid4().hex[:16], _ms(seconds)],
        )
        if result is None:
            self._holds.remember(local, 0.0, None)
            return local
        self._cooldown_left = float(result) / 1000
        self._holds.remember(self._cooldown_left, 0.0, None)
        return self._cooldown_left

    async def block_daily(self, seconds: float, code: str | None) -> None:
        """See `PacingBackend.block_daily`; grow-only in Redis."""
        await self._fallback.block_daily(seconds, code)
        await self.link.run(
            "daily",
            [self._key("state")],
            [self._watch.channel, uuid.uuid4().hex[:16], _ms(seconds), code or ""],
        )
        self._daily_left = max(self._daily_left, seconds)
        self._daily_code = code
        self._holds.remember(0.0, seconds, code)

    async def aclose(self) -> None:
        """Close this process's connection (if it was made in this loop)."""
        await self.link.aclose()


_KINDS: dict[str, GrantKind] = {"go": "go", "too_long": "too_long", "daily": "daily"}


def _ms(seconds: float) -> str:
    return repr(round(min(seconds, 1e12) * 1000, 3)) if math.isfinite(seconds) else "1e15"


class _KnownHolds:
    """The cooldown and daily block this process knows of, on its own clock.

    Redis keeps them for every process; this copy survives Redis losing its data (an empty
    restart, set again by `RedisBackend._restore`) and seeds the local fallback with the time
    actually left when Redis goes away.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._hold_until = -math.inf
        self._block_until = -math.inf
        self.code: str | None = None

    def remember(self, cooldown: float, daily: float, code: str | None) -> None:
        """Keep holds reported in seconds from now; each only ever grows."""
        now = self._clock()
        self._hold_until = max(self._hold_until, now + cooldown)
        if daily > 0 and now + daily > self._block_until:
            self._block_until, self.code = now + daily, code

    def left(self) -> tuple[float, float]:
        """Seconds left of the cooldown and of the daily block (negative: over)."""
        now = self._clock()
        return self._hold_until - now, self._block_until - now
