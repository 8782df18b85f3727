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

import orjson
from redis import Redis
from redis.exceptions import AskError, MovedError, ResponseError, TryAgainError

from engine.events.derive import crossing_events, entry_events
from engine.events.types import Event
from engine.ledger.defaults import OUTBOX_GROUP, REFUND_MARKER_KEPT_SECONDS
from engine.ledger.repository import LedgerRepository
from engine.models import LedgerEntry
from engine.store.keys import (
    SHARDS,
    account_keys,
    outbox_key,
    outbox_keys,
    shard_of,
    unpersisted_key,
)
from engine.store.redis import OUTAGES, is_cluster
from engine.store.scripts import NO_ACKS, Acks

log = logging.getLogger(__name__)

_Message = tuple[str, dict[str, str] | None]


@dataclass(frozen=True, slots=True)
class FlushResult:
    persisted: int  # new rows in PostgreSQL
    duplicates: int  # entries PostgreSQL already had (a replay after a crash)
    dead_letters: int
    lag_ms: list[int]  # per entry: from the API's write to this COMMIT


class OutboxWriter:
    def __init__(
        self,
        redis: "Redis",
        repository: LedgerRepository,
        consumer: str,
        batch_size: int,
        acks: Acks = NO_ACKS,
    ) -> None:
        self._redis = redis
        self._acks = acks
        self._repository = repository
        self._consumer = consumer
        self._batch_size = batch_size

    def flush(self, shards: list[int], reclaim_idle_ms: int, budget_seconds: float) -> FlushResult:
        """Persist the shards' entries until their streams are empty or the budget is spent.

        Each round reads every shard in one pipelined round trip, inserts what it read in one
        transaction, then acknowledges and deletes it in one more round trip. The batch is
        shared among the shards that had entries last round; the others are still probed, so
        an entry landing anywhere waits one round, not one job.
        """
        deadline = time.monotonic() + budget_seconds
        persisted = duplicates = dead_letters = 0
        lag_ms: list[int] = []
        probe = max(1, min(10, self._batch_size // len(shards)))
        busy = set(shards)
        while time.monotonic() < deadline:
            share = max(probe, self._batch_size // len(busy))
            counts = {shard: share if shard in busy else probe for shard in shards}
            batches = self._read(counts, reclaim_idle_ms)
            if not batches:
                break
            entries: list[LedgerEntry] = []
            events: list[Event] = []
            dead: list[tuple[int, str, str, str]] = []
            for shard, batch in batches.items():
                shard_entries, shard_events, shard_dead = _parse(shard, batch)
                entries += shard_entries
                events += shard_events
                dead += shard_dead
            inserted = self._repository.insert_entries(entries, dead, events)
            committed_ms = time.time_ns() // 1_000_000
            pipe = self._redis.pipeline(transaction=False)
            for shard, batch in batches.items():
                ids = [message_id for message_id, _ in batch]
                pipe.xack(outbox_key(shard), OUTBOX_GROUP, *ids)
                pipe.xdel(outbox_key(shard), *ids)
            persisted_ids: dict[int, list[str]] = {}
            for entry in entries:
                shard = shard_of(entry.app_id, entry.user_id)
                persisted_ids.setdefault(shard, []).append(entry.ledger_id)
            for shard, ledger_ids in persisted_ids.items():
                pipe.hdel(unpersisted_key(shard), *ledger_ids)
            # The recent lists name only what is not persisted yet: history reads the rest
            # from PostgreSQL, and an empty list lets an idle account go (engine.ledger.eviction).
            for entry in entries:
                keys = account_keys(entry.app_id, entry.user_id)
                pipe.lrem(keys.recent, -1, entry.ledger_id)
                if entry.refund_of is not None:
                    pipe.expire(keys.refund_marker(entry.refund_of), REFUND_MARKER_KEPT_SECONDS)
            pipe.execute()
            persisted += inserted
            duplicates += len(entries) - inserted
            dead_letters += len(dead)
            lag_ms.extend(committed_ms - entry.created_at_ms for entry in entries)
            busy = set(batches)
        return FlushResult(persisted, duplicates, dead_letters, lag_ms)

    def _read(self, counts: dict[int, int], reclaim_idle_ms: int) -> dict[int, list[_Message]]:
        """Up to counts[shard] entries per shard: this writer's own unacknowledged entries,
        else entries a writer that died was holding, else new ones."""
        group, consumer = OUTBOX_GROUP, self._consumer
        own = self._each(counts, lambda pipe, key, count: pipe.xreadgroup(
            group, consumer, {key: "0"}, count=count))  # fmt: skip
        found = {
            shard: _messages(reply[0][1]) for shard, reply in own.items() if reply and reply[0][1]
        }
        if found:
            return found
        claimed = self._each(counts, lambda pipe, key, count: pipe.xautoclaim(
            key, group, consumer, min_idle_time=reclaim_idle_ms, count=count))  # fmt: skip
        found = {shard: _messages(reply[1]) for shard, reply in claimed.items() if reply[1]}
        if found:
            return found
        new = self._each(counts, lambda pipe, key, count: pipe.xreadgroup(
            group, consumer, {key: ">"}, count=count))  # fmt: skip
        return {shard: _messages(reply[0][1]) for shard, reply in new.items() if reply}

    def _each(self, counts: dict[int, int], command: Any) -> dict[int, Any]:
        """One command per shard, given its count, in one round trip per node (one Redis, or
        each master of a cluster); a shard without its consumer group (a new stream, or Redis
        lost its data) gets the group and answers nothing this time.

        With acks, a WAIT follows each node's reads on the same connection, and the shards of
        a node whose replicas do not confirm answer nothing: an entry reaches PostgreSQL only
        once a replica has it, so a failover can never leave the ledger holding an entry that
        Redis (its idempotency record, its balance) has lost."""
        replies = {}
        for client, shards in self._by_node(list(counts)):
            pipe = client.pipeline(transaction=False)
            for shard in shards:
                command(pipe, outbox_key(shard), counts[shard])
            if self._acks.replicas:
                pipe.wait(self._acks.replicas, self._acks.timeout_ms)
            try:
                raw = pipe.execute(raise_on_error=False)
            except OUTAGES:
                if not is_cluster(self._redis):
                    raise
                # The other masters' shards carry on; this one's wait for its failover.
                log.warning("a Redis Cluster node does not answer; its shards wait")
                self._redis.nodes_manager.initialize()  # type: ignore[attr-defined]
                continue
            if self._acks.replicas:
                confirmed = raw.pop()
                if isinstance(confirmed, Exception) or int(confirmed) < self._acks.replicas:
                    log.warning("replicas have not confirmed the outbox read; retrying")
                    continue
            for shard, reply in zip(shards, raw, strict=True):
                if isinstance(reply, ResponseError) and "NOGROUP" in str(reply):
                    ensure_group(self._redis, outbox_key(shard))
                elif isinstance(reply, (MovedError, AskError, TryAgainError)):
                    # A resharding moved the shard: read it from its new node next round.
                    self._redis.nodes_manager.initialize()  # type: ignore[attr-defined]
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    replies[shard] = reply
        return replies

    def _by_node(self, shards: list[int]) -> list[tuple["Redis", list[int]]]:
        """The shards grouped by the node that holds them, each with a plain client of the
        node: its commands are neither redirected nor resent, and none asks the cluster where
        XREADGROUP's keys are (COMMAND GETKEYS, a round trip each)."""
        if not is_cluster(self._redis):
            return [(self._redis, shards)]
        cluster: Any = self._redis
        nodes: dict[str, tuple[Redis, list[int]]] = {}
        for shard in shards:
            node = cluster.get_node_from_key(outbox_key(shard))
            nodes.setdefault(node.name, (node.redis_connection, []))[1].append(shard)
        return list(nodes.values())


def ensure_group(redis: "Redis", key: str) -> None:
    try:
        redis.xgroup_create(key, OUTBOX_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _messages(raw: list[Any]) -> list[_Message]:
    return [(message_id, fields or None) for message_id, fields in raw]


def _parse(
    shard: int, batch: list[_Message]
) -> tuple[list[LedgerEntry], list[Event], list[tuple[int, str, str, str]]]:
    """A shard's messages: entries ("e"), and the thresholds they crossed ("v", events only)."""
    entries: list[LedgerEntry] = []
    events: list[Event] = []
    dead: list[tuple[int, str, str, str]] = []
    for message_id, fields in batch:
        if fields is None:
            continue  # deleted from the stream after its COMMIT; only the acknowledgement is left
        payload = fields.get("e")
        try:
            if payload is None and "v" in fields:
                events += crossing_events(orjson.loads(fields["v"]))
                continue
            entry = LedgerEntry.from_json(payload or "")
            entries.append(entry)
            events += entry_events(entry)
        except (ValueError, TypeError, KeyError) as exc:
            payload = payload or fields.get("v", "")
            log.error(
                "outbox entry %s of shard %s does not parse; dead-lettered", message_id, shard
            )
            dead.append((shard, message_id, payload, f"unparseable: {exc}"))
    return entries, events, dead


@dataclass(frozen=True, slots=True)
class ShardLag:
    shard: int
    depth: int  # entries not yet persisted (or persisted but not yet deleted)
    oldest_age_seconds: float


def outbox_depths(redis: "Redis") -> list[int]:
    """Every shard's outbox length, in shard order, in one round trip."""
    pipe = redis.pipeline(transaction=False)
    for key in outbox_keys():
        pipe.xlen(key)
    return [int(depth) for depth in pipe.execute()]


def outbox_lag(redis: "Redis") -> list[ShardLag]:
    """Depth and age of the oldest entry of every shard's outbox, in one round trip."""
    pipe = redis.pipeline(transaction=False)
    for key in outbox_keys():
        pipe.xlen(key)
        pipe.xrange(key, count=1)
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
