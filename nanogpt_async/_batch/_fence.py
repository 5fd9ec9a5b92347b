"""An at-most-once fence for batch items, in Redis: no two processes pay for one item.

Before an item's paid request, its process **claims** it (one Lua script): the item's id is
written in the job's claims hash with the process's owner token. After the item's files and
manifest line are written the process marks it **done** (or, when the request certainly cost
nothing, releases it so a later run may retry). While a process runs it keeps a lease on its
owner token (a key with an expiry, refreshed every third of it). So a claim answers:

* ``claimed``: ours, send the request;
* ``done``: another process (or an earlier run) recorded it: skip;
* ``busy``: a live process holds it (the same shard started twice): leave it to that one;
* ``uncertain``: its process died between claiming and recording (killed, preempted): the
  request may have been sent and charged. Skipped unless ``retry_ambiguous``, which takes the
  claim over and pays again if it was charged.

Keys are ``nanogpt:{<hash of the API key>}:fence:<job>:...`` (the key itself never reaches
Redis); ``job`` is a hash of the job id (by default the output folder). If Redis lost its data
(no marker key), the first claim rebuilds the done set from every manifest in the output
folder, then goes on. While Redis cannot be reached a claim waits (fails closed) and says so
once; marks that cannot be written are kept and written with the next call.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

import anyio
import anyio.to_thread

from nanogpt_async._batch._manifest import iter_records
from nanogpt_async._errors import ChargeUncertainError, InvalidInputError, ItemBusyError
from nanogpt_async._pacing._redis import SOCKET_TIMEOUT, redis_namespace
from nanogpt_async._pacing._scripts import FailClosedScripts

__all__ = [
    "DEFAULT_LEASE",
    "RedisFence",
    "busy_error",
    "fence_job",
    "uncertain_error",
]

logger = logging.getLogger("nanogpt_async")

#: Seconds a process's claims stay its own without a heartbeat: a killed process's claims turn
#: "uncertain" this long after its last heartbeat (sent every third of it).
DEFAULT_LEASE = 30.0
#: Fence keys live this long after their last write (2592000000 in the scripts: a job resumed
#: within a month keeps them; after that they are rebuilt from the manifests).
_KEEP_MS = 30 * 86_400_000
#: How often a fail-closed claim tries Redis again.
_RETRY_EVERY = 0.5
#: Done ids sent per call while rebuilding.
_REBUILD_CHUNK = 1000

Verdict = Literal["claimed", "done", "busy", "uncertain"]

# KEYS: claims hash (item -> owner), done set, marker, owner-lease prefix
# ARGV: item, owner, take over a dead owner's claim (0/1), lease ms
_CLAIM = """
if redis.call('EXISTS', KEYS[3]) == 0 then
  return 'rebuild'
end
redis.call('SET', KEYS[4] .. ARGV[2], '1', 'PX', tonumber(ARGV[4]))
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  return 'done'
end
local holder = redis.call('HGET', KEYS[1], ARGV[1])
if holder and holder ~= ARGV[2] then
  if redis.call('EXISTS', KEYS[4] .. holder) == 1 then
    return 'busy'
  end
  if ARGV[3] ~= '1' then
    return 'uncertain'
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], 2592000000)
return 'claimed'
"""

# KEYS: as above. ARGV: item, owner, 1 = done / 0 = release
_FINISH = """
if ARGV[3] == '1' then
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], 2592000000)
end
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
"""

# KEYS: as above. ARGV: item ids recorded done in a manifest
_REBUILD = """
for _, id in ipairs(ARGV) do
  redis.call('SADD', KEYS[2], id)
end
redis.call('PEXPIRE', KEYS[2], 2592000000)
return 1
"""


def fence_job(job_id: str) -> str:
    """The fence's name for a job: a hash, so paths and names stay out of Redis keys."""
    return hashlib.sha256(job_id.encode("utf-8")).hexdigest()[:16]


def done_ids_in(folder: Path) -> set[str]:
    """The ids every manifest in ``folder`` records as ok (blocking: a worker thread)."""
    done: set[str] = set()
    for path in sorted(folder.glob("manifest*.jsonl")):
        latest: dict[str, str] = {}
        for record in iter_records(path):
            item_id = record.get("id")
            if isinstance(item_id, str):
                latest[item_id] = str(record.get("status"))
        done.update(item for item, status in latest.items() if status == "ok")
    return done


class RedisFence:
    """Claims of one job's items in Redis, so no item is paid for by two processes.

    Args:
        url: ``redis://host:port/db`` (the client's ``limits_url``).
        key: The API key (only hashed).
        job_id: Names the job (shards of one job use the same); only its hash reaches Redis.
        folder: The output folder, whose manifests rebuild the fence if Redis lost its data.
        lease: Seconds a process's claims outlive its last heartbeat.
        sleep: How to wait between tries while Redis is unreachable (injectable for tests).
    """

    def __init__(
        self,
        url: str,
        *,
        key: str,
        job_id: str,
        folder: Path,
        lease: float = DEFAULT_LEASE,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        """Remember where Redis is; connect on first use, inside the running loop."""
        if importlib.util.find_spec("redis") is None:
            raise ValueError("the fence needs the redis client: pip install 'nanogpt-async[redis]'")
        if not lease > 0:
            raise ValueError(f"lease must be > 0 seconds, got {lease!r}")
        self.job = fence_job(job_id)
        prefix = f"{redis_namespace(key)}fence:{self.job}:"
        self.keys = [prefix + "claims", prefix + "done", prefix + "marker", prefix + "owner:"]
        self._redis = FailClosedScripts(
            url,
            sources={"claim": _CLAIM, "finish": _FINISH, "rebuild": _REBUILD},
            keys=self.keys,
            socket_timeout=SOCKET_TIMEOUT,
            what="the item fence",
            drop="job_id, or limits_url for a shard (shards are disjoint without the fence)",
        )
        self.owner = uuid.uuid4().hex
        self._folder = folder
        self._lease_ms = max(1, int(lease * 1000))
        self.lease = lease
        self._sleep = sleep

    async def claim(self, item_id: str, *, take_over: bool = False) -> Verdict:
        """Claim ``item_id`` before its paid request; see the module for the answers.

        ``take_over``: claim an item whose process died (``uncertain``) anyway. Waits (fails
        closed) while Redis cannot be reached.
        """
        args = [item_id, self.owner, int(take_over), self._lease_ms]
        while True:
            try:
                await self._redis.flush("finish")
                verdict = await self._redis.run("claim", args)
                if isinstance(verdict, bytes):
                    verdict = verdict.decode()
                if verdict == "rebuild":
                    await self.rebuild()
                    continue
            except InvalidInputError:
                raise  # under trio: no wait would ever end (see `require_asyncio`)
            except Exception:
                await self._sleep(_RETRY_EVERY)
                continue
            self._redis.answered()
            return verdict  # type: ignore[no-any-return]

    def require_asyncio(self) -> None:
        """Raise `InvalidInputError` under trio, where the fence's Redis client cannot run."""
        self._redis.require_asyncio()

    async def finish(self, item_id: str, *, done: bool) -> None:
        """After the manifest line: ``done`` marks it done, else releases our claim.

        Never raises for Redis: a mark that cannot be written now goes with the next call.
        """
        self._redis.unsent.append([item_id, self.owner, int(done)])
        try:
            await self._redis.flush("finish")
        except Exception:
            return

    async def rebuild(self) -> int:
        """Redis has no fence for this job (new, or its data was lost): load the manifests."""
        done = await anyio.to_thread.run_sync(done_ids_in, self._folder)
        ids = sorted(done)
        for start in range(0, len(ids), _REBUILD_CHUNK):
            await self._redis.run("rebuild", ids[start : start + _REBUILD_CHUNK])
        # The marker last: until it is there, every claim rebuilds first.
        await self._redis.connection().set(self.keys[2], "1", px=_KEEP_MS)
        if ids:
            logger.warning(
                "nanogpt-async: the item fence was rebuilt from the manifests in %s (%d done)",
                self._folder,
                len(ids),
            )
        return len(ids)

    async def heartbeat(self) -> None:
        """Keep this process's lease (run as a task until cancelled)."""
        while True:
            with anyio.move_on_after(self._redis.call_timeout):
                try:
                    await self._redis.connection().set(
                        self.keys[3] + self.owner, "1", px=self._lease_ms
                    )
                except Exception:
                    logger.debug("fence heartbeat failed", exc_info=True)
            await anyio.sleep(self.lease / 3)

    async def aclose(self) -> None:
        """End the lease (claims left unfinished turn uncertain now) and close the connection."""
        if self._redis.client is None:
            return
        with anyio.move_on_after(self._redis.call_timeout):
            try:
                await self._redis.flush("finish")
                await self._redis.connection().delete(self.keys[3] + self.owner)
            except Exception:
                logger.debug("fence close failed", exc_info=True)
        await self._redis.aclose()

    async def claims(self) -> dict[str, str]:
        """``{item id: "live" | "uncertain"}`` of the claims Redis holds now (for status)."""
        connection = self._redis.connection()
        held = await connection.hgetall(self.keys[0])
        states: dict[str, str] = {}
        for raw_item, raw_owner in held.items():
            item, owner = _text(raw_item), _text(raw_owner)
            alive = await connection.exists(self.keys[3] + owner)
            states[item] = "live" if alive else "uncertain"
        return states


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def uncertain_error(item_id: str) -> ChargeUncertainError:
    """The error recorded for an item left claimed by a process that died."""
    return ChargeUncertainError(
        f"uncertain: may have been charged. Item {item_id!r} was claimed by a process that "
        "stopped (killed or preempted) before recording it, so its request may have been sent "
        "and paid for. It is skipped so it is not paid twice. Check the account's usage; to "
        "generate it anyway run again with --retry-ambiguous (retry_ambiguous=True)"
    )


def busy_error(item_id: str) -> ItemBusyError:
    """The error of an item another live process holds."""
    return ItemBusyError(
        f"item {item_id!r} is being done by another process of this job right now (the same "
        "shard running twice?); left to it. Run again after it ends to pick up what it left"
    )
