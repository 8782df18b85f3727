"""Moving outbox entries from Redis streams into the PostgreSQL ledger, and watching the lag.

Each shard has one stream; the consumer group `persist` hands each entry to one writer. A
writer reads a batch, inserts it in one transaction (entries already present are skipped by
ledger_id), and only after COMMIT acknowledges and deletes the entries from the stream. A crash
anywhere leaves the entries pending: the same writer re-reads its own pending entries first, and
any writer claims entries another one has held longer than the reclaim time.
"""

import logging
import time
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import ResponseError

from engine.keys import SHARDS, outbox_key, unpersisted_key
from engine.models import LedgerEntry
from engine.repository import Repository

log = logging.getLogger(__name__)

GROUP = "persist"

_Message = tuple[str, dict[str, str] | None]


@dataclass(frozen=True, slots=True)
class FlushResult:
    shard: int
    persisted: int  # new rows in PostgreSQL
    duplicates: int  # entries PostgreSQL already had (a replay after a crash)
    dead_letters: int
    lag_ms: list[int]  # per entry: from the API's write to this COMMIT


class OutboxWriter:
    def __init__(
        self, redis: "Redis", repository: Repository, consumer: str, batch_size: int
    ) -> None:
        self._redis = redis
        self._repository = repository
        self._consumer = consumer
        self._batch_size = batch_size

    def flush(self, shard: int, reclaim_idle_ms: int, budget_seconds: float) -> FlushResult:
        """Persist the shard's entries until the stream is empty or the time budget is spent."""
        key = outbox_key(shard)
        deadline = time.monotonic() + budget_seconds
        persisted = duplicates = dead_letters = 0
        lag_ms: list[int] = []
        while time.monotonic() < deadline:
            batch = self._read(key, reclaim_idle_ms)
            if not batch:
                break
            entries, dead = _parse(shard, batch)
            inserted = self._repository.insert_entries(entries, dead) if entries or dead else 0
            committed_ms = time.time_ns() // 1_000_000
            ids = [message_id for message_id, _ in batch]
            pipe = self._redis.pipeline(transaction=False)
            pipe.xack(key, GROUP, *ids)
            pipe.xdel(key, *ids)
            if entries:
                pipe.hdel(unpersisted_key(shard), *(entry.ledger_id for entry in entries))
            pipe.execute()
            persisted += inserted
            duplicates += len(entries) - inserted
            dead_letters += len(dead)
            lag_ms.extend(committed_ms - entry.created_at_ms for entry in entries)
        return FlushResult(shard, persisted, duplicates, dead_letters, lag_ms)

    def _read(self, key: str, reclaim_idle_ms: int) -> list[_Message]:
        """This writer's own unacknowledged entries, else abandoned ones, else new ones."""
        try:
            return self._read_once(key, reclaim_idle_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # A new stream, or Redis lost its data: start the group at the beginning.
            ensure_group(self._redis, key)
            return self._read_once(key, reclaim_idle_ms)

    def _read_once(self, key: str, reclaim_idle_ms: int) -> list[_Message]:
        count = self._batch_size
        own: Any = self._redis.xreadgroup(GROUP, self._consumer, {key: "0"}, count=count)
        if own and own[0][1]:
            return _messages(own[0][1])
        claimed: Any = self._redis.xautoclaim(
            key, GROUP, self._consumer, min_idle_time=reclaim_idle_ms, count=count
        )
        if claimed[1]:
            return _messages(claimed[1])
        new: Any = self._redis.xreadgroup(GROUP, self._consumer, {key: ">"}, count=count)
        return _messages(new[0][1]) if new else []


def ensure_group(redis: "Redis", key: str) -> None:
    try:
        redis.xgroup_create(key, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _messages(raw: list[Any]) -> list[_Message]:
    return [(message_id, fields or None) for message_id, fields in raw]


def _parse(
    shard: int, batch: list[_Message]
) -> tuple[list[LedgerEntry], list[tuple[int, str, str, str]]]:
    entries: list[LedgerEntry] = []
    dead: list[tuple[int, str, str, str]] = []
    for message_id, fields in batch:
        if fields is None:
            continue  # deleted from the stream after its COMMIT; only the acknowledgement is left
        payload = fields.get("e", "")
        try:
            entries.append(LedgerEntry.from_json(payload))
        except (ValueError, TypeError, KeyError) as exc:
            log.error(
                "outbox entry %s of shard %s does not parse; dead-lettered", message_id, shard
            )
            dead.append((shard, message_id, payload, f"unparseable: {exc}"))
    return entries, dead


@dataclass(frozen=True, slots=True)
class ShardLag:
    shard: int
    depth: int  # entries not yet persisted (or persisted but not yet deleted)
    oldest_age_seconds: float


def outbox_lag(redis: "Redis") -> list[ShardLag]:
    """Depth and age of the oldest entry of every shard's outbox, in one round trip."""
    pipe = redis.pipeline(transaction=False)
    for shard in range(SHARDS):
        pipe.xlen(outbox_key(shard))
        pipe.xrange(outbox_key(shard), count=1)
    replies = pipe.execute()
    now_ms = time.time_ns() // 1_000_000
    lags = []
    for shard in range(SHARDS):
        depth, first = replies[2 * shard], replies[2 * shard + 1]
        age = 0.0
        if first:
            age = max(0, now_ms - int(first[0][0].split("-")[0])) / 1000
        lags.append(ShardLag(shard, depth, age))
    return lags
