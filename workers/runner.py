"""The `tally worker` process: an RQ worker plus the sweeper that feeds it flush jobs.

The hot path never enqueues anything (that would be a second round trip per deduct). Instead a
sweeper thread looks at every shard's outbox length in one pipelined round trip every
`outbox_sweep_ms`, and queues one flush job for the non-empty shards that have none queued (a
`flush` key per shard, set NX). See docs/write-through.md.
"""

import logging
import threading
import time

from redis import Redis
from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from engine.container import Engine
from engine.errors import UnavailableError
from engine.ledger.defaults import FLUSH_LOCK_MS
from engine.ledger.outbox import outbox_depths
from engine.settings import Settings
from engine.store.keys import SHARDS, flush_key, reconcile_schedule_key
from workers import jobs
from workers.queue import Jobs

log = logging.getLogger(__name__)

# `--burst` gives up after this many rounds in a row that persisted nothing.
_DRAIN_STALLS = 10
_WEBHOOK_SWEEP_SECONDS = 1.0
# Auto top-up thresholds are put back in Redis this often (and at start): Redis may have lost
# them; PostgreSQL has the settings.
_REARM_SECONDS = 600
_TOP_UP_SWEEP_SECONDS = 0.25


def run(settings: Settings, *, burst: bool) -> int:
    engine = Engine.build(settings)
    jobs.bind(engine)
    try:
        return _work(engine, burst=burst)
    finally:
        engine.close()


def _work(engine: Engine, *, burst: bool) -> int:
    settings, redis = engine.settings, engine.sync_redis
    queue = Jobs(engine.raw_redis)
    worker = SimpleWorker([queue.queue], connection=engine.raw_redis, serializer=JSONSerializer)
    # Flush keys left by a worker that died would hold their shards until they expire.
    _release_flushes(redis)
    if burst:
        return _drain(redis, queue, worker)
    if settings.reconcile_interval_seconds:
        # The first reconciliation comes one interval after the first worker ever started, not
        # at every start: while it runs, this worker persists nothing.
        redis.set(reconcile_schedule_key(), "1", nx=True, ex=settings.reconcile_interval_seconds)
    stop = threading.Event()
    sweeper = threading.Thread(
        target=_sweep_forever, args=(engine, queue, stop), name="sweeper", daemon=True
    )
    sweeper.start()
    try:
        # RQ logs every job at INFO: at a flush every few milliseconds that drowns everything.
        level = "DEBUG" if settings.log_level.lower() == "debug" else "WARNING"
        worker.work(logging_level=level)
    finally:
        stop.set()
    return 0


def sweep(redis: Redis, queue: Jobs, reclaim_idle_ms: int) -> list[int]:
    """Queue one flush of every shard with entries and no flush queued; return those shards."""
    busy = [shard for shard, depth in enumerate(outbox_depths(redis)) if depth]
    if not busy:
        return []
    pipe = redis.pipeline(transaction=False)
    for shard in busy:
        pipe.set(flush_key(shard), "queued", nx=True, px=FLUSH_LOCK_MS)
    queued = [shard for shard, acquired in zip(busy, pipe.execute(), strict=True) if acquired]
    if queued:
        queue.flush_shards(queued, reclaim_idle_ms)
    return queued


def _sweep_forever(engine: Engine, queue: Jobs, stop: threading.Event) -> None:
    settings, redis = engine.settings, engine.sync_redis
    next_webhook_sweep = next_top_up_sweep = next_rearm = 0.0
    while not stop.wait(settings.outbox_sweep_ms / 1000):
        try:
            sweep(redis, queue, settings.outbox_reclaim_ms)
            interval = settings.reconcile_interval_seconds
            if interval and redis.set(reconcile_schedule_key(), "1", nx=True, ex=interval):
                queue.reconcile_accounts()
            if time.monotonic() >= next_webhook_sweep:
                # Webhook events whose job was never queued (Redis was down), and retries due.
                next_webhook_sweep = time.monotonic() + _WEBHOOK_SWEEP_SECONDS
                for event_pk in engine.webhooks.claim_due():
                    queue.apply_webhook_event(event_pk)
            if time.monotonic() >= next_top_up_sweep:
                next_top_up_sweep = time.monotonic() + _TOP_UP_SWEEP_SECONDS
                for app_id, user_id in engine.top_ups.claim_due():
                    queue.auto_top_up(app_id, user_id)
            if time.monotonic() >= next_rearm:
                next_rearm = time.monotonic() + _REARM_SECONDS
                engine.top_ups.rearm_all()
        except (RedisError, UnavailableError) as exc:
            log.warning("sweep failed, retrying: %s", exc)
            stop.wait(1)
        except Exception:
            # The sweeper must outlive any surprise: without it nothing gets persisted.
            log.exception("sweep failed, retrying")
            stop.wait(1)


def _drain(redis: Redis, queue: Jobs, worker: SimpleWorker) -> int:
    """Persist everything in the outboxes, then exit; 1 if PostgreSQL will not take it."""
    stalls = 0
    depth = sum(outbox_depths(redis))
    while depth:
        # Claim whatever is pending, however recently another writer read it: a duplicate
        # insert is skipped by ledger_id, and draining must not wait out the reclaim time.
        _release_flushes(redis)
        sweep(redis, queue, reclaim_idle_ms=0)
        worker.work(burst=True, logging_level="WARNING")
        remaining = sum(outbox_depths(redis))
        if remaining >= depth:
            stalls += 1
            if stalls >= _DRAIN_STALLS:
                log.error("outbox not draining (%s entries left): is PostgreSQL up?", remaining)
                return 1
            time.sleep(1)
        depth = remaining
    return 0


def _release_flushes(redis: Redis) -> None:
    redis.delete(*(flush_key(shard) for shard in range(SHARDS)))
