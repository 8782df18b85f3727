"""Moving outbox entries from Redis streams into the PostgreSQL ledger, and watching the lag.

Each shard has one stream; the consumer group `persist` hands each entry to one writer. A
writer reads a batch, inserts it in one transaction (entries already present are skipped by
ledger_id), and only after COMMIT acknowledges and deletes the entries from the stream. A crash
anywhere leaves the entries pending: the same writer re-reads its own pending entries first, and
any writer claims entries another one has held longer than the reclaim time.
"""

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
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
    unpersisted_key,
)
from engine.store.redis import OUTAGES, is_cluster
from engine.store.scripts import NO_ACKS, Acks

log = logging.getLogger(__name__)

_Message = tuple[str, dict[str, str] | None]
# A round costs the same whatever it carries (a read of every shard, a COMMIT, a clean-up per
# shard): after one that found little, the next waits this long since the last read, so that
# under a steady load each round carries more (measured: bench/versus.py, everything running).
# A backlog reads full rounds back to back.
_ROUND_GAP = 0.025
# A batch's insert, queued or running, and the batch.
_Insert = tuple[Future[int], "_Batch"]


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
        self._inserter = ThreadPoolExecutor(1, thread_name_prefix="outbox-insert")
        self._gap = 0.0  # before the next round's read: see _ROUND_GAP

    def flush(self, shards: list[int], reclaim_idle_ms: int, budget_seconds: float) -> FlushResult:
        """Persist the shards' entries until their streams are empty or the budget is spent.

        Each round reads every shard in one pipelined round trip, inserts what it read in one
        transaction, then acknowledges and deletes it in one more round trip. The batch is
        shared among the shards that had entries last round; the others are still probed, so
        an entry landing anywhere waits one round, not one job.

        Inserts run in order on a thread of their own: a round's insert is queued as soon as
        the round is read and parsed, while the insert before it may still run, and the
        clean-up after that one's COMMIT happens while this one runs. PostgreSQL is never
        kept waiting for Redis or for the worker's parsing.
        """
        deadline = time.monotonic() + budget_seconds
        result = FlushResult(0, 0, 0, [])
        probe = max(1, min(10, self._batch_size // len(shards)))
        busy = set(shards)
        # Pending entries (this writer's own after a failure, or a dead writer's) are looked
        # for once per flush; the rounds after read new entries only, in one round trip.
        read = self._read
        previous: _Insert | None = None
        inserting: _Insert | None = None
        try:
            last_read = 0.0
            while time.monotonic() < deadline:
                share = max(probe, self._batch_size // len(busy))
                counts = {shard: share if shard in busy else probe for shard in shards}
                time.sleep(max(0.0, last_read + self._gap - time.monotonic()))
                last_read = time.monotonic()
                batches = read(counts, reclaim_idle_ms)
                self._gap = _ROUND_GAP if _entries(batches) < self._batch_size // 4 else 0.0
                read = self._read_new
                previous, inserting = inserting, None
                if batches:
                    inserting = self._insert(batches)
                    busy = set(batches)
                if previous:
                    result = self._settle(previous, result)
                    previous = None
                elif not inserting:
                    break  # nothing in flight, nothing new
            if inserting:
                result = self._settle(inserting, result)
                inserting = None
        finally:
            for left in (previous, inserting):
                if left:
                    # Something failed: let the insert end before the next flush reads its
                    # entries again (they stay pending, PostgreSQL skips what it has).
                    left[0].exception()
        return result

    def _insert(self, batches: dict[int, list[_Message]]) -> "_Insert":
        """The round's messages parsed, and their insert queued."""
        batch = _Batch()
        for shard, messages in batches.items():
            batch.add(shard, messages)
        insert = self._repository.insert_json
        return self._inserter.submit(insert, batch.rows, batch.dead, batch.events), batch

    def _settle(self, insert: "_Insert", so_far: FlushResult) -> FlushResult:
        """Wait for the batch's COMMIT, then clean up after it; the totals with it."""
        future, batch = insert
        inserted = future.result()
        committed_ms = time.time_ns() // 1_000_000
        self._clean(batch)
        so_far.lag_ms.extend(committed_ms - created for created in batch.created_ms)
        return FlushResult(
            so_far.persisted + inserted,
            so_far.duplicates + len(batch.rows) - inserted,
            so_far.dead_letters + len(batch.dead),
            so_far.lag_ms,
        )

    def _clean(self, batch: "_Batch") -> None:
        """After the batch's COMMIT, one script call per shard, in one round trip per node: the
        messages acknowledged and deleted, the entries out of the unpersisted hash and of their
        accounts' recent lists (which name only what is not persisted yet: history reads the
        rest from PostgreSQL, and an empty list lets an idle account go, engine.ledger.eviction),
        and the refund markers kept a day more. A shard this misses (its node moved or is
        down) keeps its entries pending: the next flush reads them again, PostgreSQL skips
        them, and they are cleaned then."""

        def clean(pipe: Any, shard: int) -> None:
            done = batch.shards[shard]
            keys = [outbox_key(shard), unpersisted_key(shard), *done.recent, *done.markers]
            counts = [REFUND_MARKER_KEPT_SECONDS, len(done.messages), len(done.recent)]
            args = [OUTBOX_GROUP, *map(str, counts), *done.messages, *done.ledger_ids]
            pipe.eval(_CLEAN, len(keys), *keys, *args)

        self._each(batch.shards, clean, wait=False)

    def _read_new(self, counts: dict[int, int], reclaim_idle_ms: int) -> dict[int, list[_Message]]:
        group, consumer = OUTBOX_GROUP, self._consumer
        new = self._each(counts, lambda pipe, shard: pipe.xreadgroup(
            group, consumer, {outbox_key(shard): ">"}, count=counts[shard]))  # fmt: skip
        return {shard: _messages(reply[0][1]) for shard, reply in new.items() if reply}

    def _read(self, counts: dict[int, int], reclaim_idle_ms: int) -> dict[int, list[_Message]]:
        """Up to counts[shard] entries per shard: this writer's own unacknowledged entries,
        else entries a writer that died was holding, else new ones."""
        group, consumer = OUTBOX_GROUP, self._consumer
        own = self._each(counts, lambda pipe, shard: pipe.xreadgroup(
            group, consumer, {outbox_key(shard): "0"}, count=counts[shard]))  # fmt: skip
        found = {
            shard: _messages(reply[0][1]) for shard, reply in own.items() if reply and reply[0][1]
        }
        if found:
            return found
        claimed = self._each(counts, lambda pipe, shard: pipe.xautoclaim(
            outbox_key(shard), group, consumer, min_idle_time=reclaim_idle_ms,
            count=counts[shard]))  # fmt: skip
        found = {shard: _messages(reply[1]) for shard, reply in claimed.items() if reply[1]}
        if found:
            return found
        return self._read_new(counts, reclaim_idle_ms)

    def _each(
        self, shards: Iterable[int], command: Callable[[Any, int], Any], *, wait: bool = True
    ) -> dict[int, Any]:
        """One command per shard in one round trip per node (one Redis, or each master of a
        cluster); a shard without its consumer group (a new stream, or Redis lost its data)
        gets the group and answers nothing this time.

        With acks (and `wait`), a WAIT follows each node's reads on the same connection, and
        the shards of a node whose replicas do not confirm answer nothing: an entry reaches
        PostgreSQL only once a replica has it, so a failover can never leave the ledger holding
        an entry that Redis (its idempotency record, its balance) has lost."""
        wait = wait and bool(self._acks.replicas)
        replies = {}
        for client, node_shards in self._by_node(list(shards)):
            pipe = client.pipeline(transaction=False)
            for shard in node_shards:
                command(pipe, shard)
            if wait:
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
            if wait:
                confirmed = raw.pop()
                if isinstance(confirmed, Exception) or int(confirmed) < self._acks.replicas:
                    log.warning("replicas have not confirmed the outbox read; retrying")
                    continue
            for shard, reply in zip(node_shards, raw, strict=True):
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


# The fields of an entry as the Lua scripts write it (LedgerEntry.to_json); the last four only
# on some kinds. An entry with others, or without one of the first, is dead-lettered.
_FIELDS = frozenset((
    "ledger_id", "app_id", "user_id", "kind", "amount", "balance_after", "description",
    "reference_id", "metadata", "idempotency_key", "refund_of", "seq", "created_at",
))  # fmt: skip
_ALL_FIELDS = _FIELDS | {"hold_id", "held", "expires_at", "grants"}

# Acknowledges and deletes a shard's persisted messages, and forgets its persisted entries.
# KEYS: the outbox, the unpersisted hash, each entry's recent list, then the refund markers to
# keep. ARGV: group, seconds to keep a marker, #messages, #entries, the message ids, then the
# entries' ledger ids. Ids go to XACK, XDEL and HDEL a thousand at a time (unpack's limit).
_CLEAN = """
local group, seconds, n, m = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local function each(first, last, command, key, extra)
  for i = first, last, 1000 do
    local j = math.min(i + 999, last)
    if extra then
      redis.call(command, key, extra, unpack(ARGV, i, j))
    else
      redis.call(command, key, unpack(ARGV, i, j))
    end
  end
end
each(5, 4 + n, 'XACK', KEYS[1], group)
each(5, 4 + n, 'XDEL', KEYS[1])
each(5 + n, 4 + n + m, 'HDEL', KEYS[2])
for i = 1, m do
  redis.call('LREM', KEYS[2 + i], -1, ARGV[4 + n + i])
end
for i = 3 + m, #KEYS do
  redis.call('EXPIRE', KEYS[i], seconds)
end
"""


@dataclass(slots=True)
class _Done:
    """What one shard's messages leave to do in Redis once they are committed."""

    messages: list[str] = field(default_factory=list)
    ledger_ids: list[str] = field(default_factory=list)
    recent: list[str] = field(default_factory=list)  # the recent list of each of ledger_ids
    markers: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Batch:
    """One round's messages, parsed no further than the insert and the clean-up need."""

    rows: list[tuple[int, str, str]] = field(default_factory=list)  # shard, ledger_id, JSON
    created_ms: list[int] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    dead: list[tuple[int, str, str, str]] = field(default_factory=list)
    shards: dict[int, _Done] = field(default_factory=dict)

    def add(self, shard: int, messages: list[_Message]) -> None:
        """A shard's messages: entries ("e"), and the thresholds they crossed ("v", events
        only). Every message is acknowledged after the COMMIT, the unparseable ones too: they
        are in `dead`, and go to PostgreSQL with the batch."""
        done = self.shards[shard] = _Done()
        for message_id, fields in messages:
            done.messages.append(message_id)
            if fields is None:
                continue  # deleted from the stream after its COMMIT; only the ack is left
            payload = fields.get("e")
            try:
                if payload is None and "v" in fields:
                    self.events += crossing_events(orjson.loads(fields["v"]))
                else:
                    self._entry(shard, payload or "", done)
            except (ValueError, TypeError, KeyError) as exc:
                payload = payload or fields.get("v", "")
                log.error(
                    "outbox entry %s of shard %s does not parse; dead-lettered", message_id, shard
                )
                self.dead.append((shard, message_id, payload, f"unparseable: {exc}"))

    def _entry(self, shard: int, payload: str, done: _Done) -> None:
        fields = orjson.loads(payload)
        if not isinstance(fields, dict) or not _FIELDS <= fields.keys() <= _ALL_FIELDS:
            raise ValueError("not an entry: fields missing or unknown")
        ledger_id, app_id, user_id = fields["ledger_id"], fields["app_id"], fields["user_id"]
        created_ms = int(fields["created_at"])
        # engine.events.derive makes no event of a deduct, and deducts are most entries: only
        # the others become LedgerEntry (json, not orjson: big metadata integers stay exact).
        events = [] if fields["kind"] == "deduct" else entry_events(LedgerEntry.from_json(payload))
        keys = account_keys(app_id, user_id)
        refund_of = fields["refund_of"]
        self.rows.append((shard, ledger_id, payload))
        self.created_ms.append(created_ms)
        self.events += events
        done.ledger_ids.append(ledger_id)
        done.recent.append(keys.recent)
        if refund_of is not None:
            done.markers.append(keys.refund_marker(refund_of))


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


def _entries(batches: dict[int, list[_Message]]) -> int:
    return sum(len(messages) for messages in batches.values())
