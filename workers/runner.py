"""The `tally worker` process: an RQ worker plus the sweeper that feeds it flush jobs.

The hot path never enqueues anything (that would be a second round trip per deduct). Instead a
sweeper thread looks at every shard's outbox length in one pipelined round trip every
`outbox_sweep_ms`, and queues one flush job per non-empty shard, at most one per shard at a
time (a `flush` key per shard, set NX). See docs/write-through.md.
"""

import logging
import threading
import time

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from engine.errors import UnavailableError
from engine.keys import SHARDS, flush_key, outbox_key
from engine.settings import Settings
from workers.context import context

log = logging.getLogger(__name__)

QUEUE = "tally"
# A queued or running flush holds its shard this long at most; a worker killed mid-job
# therefore delays that shard by at most this (a restarted worker clears it at once).
FLUSH_LOCK_MS = 30_000
_RECONCILE_KEY = "tally:reconcile:scheduled"
_DRAIN_STALLS = 10
_WEBHOOK_SWEEP_SECONDS = 1.0
# Auto top-up thresholds are put back in Redis this often (and at start): Redis may have lost
# them; PostgreSQL has the settings.
_REARM_SECONDS = 600
_TOP_UP_SWEEP_SECONDS = 0.25


def run(settings: Settings, *, burst: bool) -> int:
    raw: Redis = Redis.from_url(settings.redis_url)  # RQ wants bytes
    text: Redis = Redis.from_url(settings.redis_url, decode_responses=True)
    queue = Queue(QUEUE, connection=raw, serializer=JSONSerializer)
    worker = SimpleWorker([queue], connection=raw, serializer=JSONSerializer)
    # Flush keys left by a worker that died would hold their shards until they expire.
    text.delete(*(flush_key(shard) for shard in range(SHARDS)))
    if burst:
        return _drain(text, queue, worker)
    if settings.reconcile_interval_seconds:
        # The first reconciliation comes one interval after the first worker ever started, not
        # at every start: while it runs, this worker persists nothing.
        text.set(_RECONCILE_KEY, "1", nx=True, ex=settings.reconcile_interval_seconds)
    stop = threading.Event()
    sweeper = threading.Thread(
        target=_sweep_forever, args=(text, queue, settings, stop), name="sweeper", daemon=True
    )
    sweeper.start()
    try:
        # RQ logs every job at INFO: at a flush every few milliseconds that drowns everything.
        level = "DEBUG" if settings.log_level.lower() == "debug" else "WARNING"
        worker.work(logging_level=level)
    finally:
        stop.set()
    return 0


def sweep(redis: "Redis", queue: Queue, reclaim_idle_ms: int) -> list[int]:
    """Queue one flush of every shard with entries and no flush queued; return those shards."""
    pipe = redis.pipeline(transaction=False)
    for shard in range(SHARDS):
        pipe.xlen(outbox_key(shard))
    busy = [shard for shard, depth in enumerate(pipe.execute()) if depth]
    if not busy:
        return []
    pipe = redis.pipeline(transaction=False)
    for shard in busy:
        pipe.set(flush_key(shard), "queued", nx=True, px=FLUSH_LOCK_MS)
    queued = [shard for shard, acquired in zip(busy, pipe.execute(), strict=True) if acquired]
    if queued:
        queue.enqueue(
            "workers.jobs.flush_shards", queued, reclaim_idle_ms, result_ttl=60, job_timeout=120
        )
    return queued


def enqueue_webhook(queue: Queue, event_pk: int) -> None:
    queue.enqueue("workers.jobs.apply_webhook_event", event_pk, result_ttl=600, job_timeout=120)


def outbox_depth(redis: "Redis") -> int:
    pipe = redis.pipeline(transaction=False)
    for shard in range(SHARDS):
        pipe.xlen(outbox_key(shard))
    return sum(pipe.execute())


def _sweep_forever(redis: "Redis", queue: Queue, settings: Settings, stop: threading.Event) -> None:
    next_webhook_sweep = next_top_up_sweep = next_rearm = 0.0
    while not stop.wait(settings.outbox_sweep_ms / 1000):
        try:
            sweep(redis, queue, settings.outbox_reclaim_ms)
            interval = settings.reconcile_interval_seconds
            if interval and redis.set(_RECONCILE_KEY, "1", nx=True, ex=interval):
                queue.enqueue("workers.jobs.reconcile_accounts", job_timeout=3_600)
            if time.monotonic() >= next_webhook_sweep:
                # Webhook events whose job was never queued (Redis was down), and retries due.
                next_webhook_sweep = time.monotonic() + _WEBHOOK_SWEEP_SECONDS
                for event_pk in context().webhooks.claim_due():
                    enqueue_webhook(queue, event_pk)
            if time.monotonic() >= next_top_up_sweep:
                next_top_up_sweep = time.monotonic() + _TOP_UP_SWEEP_SECONDS
                for app_id, user_id in context().top_ups.claim_due():
                    queue.enqueue(
                        "workers.jobs.auto_top_up", app_id, user_id, result_ttl=600,
                        job_timeout=300,
                    )  # fmt: skip
            if time.monotonic() >= next_rearm:
                next_rearm = time.monotonic() + _REARM_SECONDS
                context().top_ups.rearm_all()
        except (RedisError, UnavailableError) as exc:
            log.warning("sweep failed, retrying: %s", exc)
            stop.wait(1)
        except Exception:
            # The sweeper must outlive any surprise: without it nothing gets persisted.
            log.exception("sweep failed, retrying")
            stop.wait(1)


def _drain(redis: "Redis", queue: Queue, worker: SimpleWorker) -> int:
    """Persist everything in the outboxes, then exit; 1 if PostgreSQL will not take it."""
    stalls = 0
    depth = outbox_depth(redis)
    while depth:
        # Claim whatever is pending, however recently another writer read it: a duplicate
        # insert is skipped by ledger_id, and draining must not wait out the reclaim time.
        redis.delete(*(flush_key(shard) for shard in range(SHARDS)))
        sweep(redis, queue, reclaim_idle_ms=0)
        worker.work(burst=True, logging_level="WARNING")
        remaining = outbox_depth(redis)
        if remaining >= depth:
            stalls += 1
            if stalls >= _DRAIN_STALLS:
                log.error("outbox not draining (%s entries left): is PostgreSQL up?", remaining)
                return 1
            time.sleep(1)
        depth = remaining
    return 0
