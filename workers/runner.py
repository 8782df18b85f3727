"""The `tally worker` process: an RQ worker plus the sweeper that feeds it flush jobs.

The hot path never enqueues anything (that would be a second round trip per deduct). Instead a
sweeper thread looks at every shard's outbox length in one pipelined round trip every
`outbox_sweep_ms`, and queues one flush job for the non-empty shards that have none queued (a
`flush` key per shard, set NX). See docs/write-through.md.
"""

import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.exceptions import StopRequested
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty

from engine.container import Engine
from engine.errors import UnavailableError
from engine.holds.expiry import sweep_expiries
from engine.ledger.completeness import complete_shards
from engine.ledger.defaults import FLUSH_LOCK_MS
from engine.ledger.eviction import Eviction, interval_seconds
from engine.ledger.hydration import rebuild_accounts
from engine.ledger.outbox import outbox_depths
from engine.ledger.partitions import ensure_partitions
from engine.logs import Outage
from engine.settings import Settings
from engine.store.keys import SHARDS, flush_key, reconcile_schedule_key
from engine.store.redis import OUTAGES, sync_client
from engine.store.scripts import SCRIPTS, Scripts
from workers import jobs
from workers.metrics import serve_metrics
from workers.queue import EVENTS_QUEUE, Jobs

log = logging.getLogger(__name__)

# `--burst` gives up after this many rounds in a row that persisted nothing.
_DRAIN_STALLS = 10
_WEBHOOK_SWEEP_SECONDS = 1.0
# Auto top-up thresholds are put back in Redis this often (and at start): Redis may have lost
# them; PostgreSQL has the settings.
_REARM_SECONDS = 600
_TOP_UP_SWEEP_SECONDS = 0.25
# Grants and holds expire within this of their time even for accounts nobody touches.
_EXPIRY_SWEEP_SECONDS = 1.0
_COMPLETENESS_SECONDS = 5.0
# Outgoing webhooks due are claimed this often; plan usage is summed every second.
_DELIVERY_SWEEP_SECONDS = 0.2
_PLAN_SUM_SECONDS = 1.0
# The ledger's coming months are made this often (and at start), months before they are needed.
_PARTITIONS_SECONDS = 3600.0
# An RQ worker that ran this long before quitting was healthy: its quitting is a new failure.
_HEALTHY_SECONDS = 30.0


class _Worker(SimpleWorker):
    """RQ's worker, remembering a stop request (SIGINT, SIGTERM) across restarts."""

    stop_requested = threading.Event()

    def request_stop(self, signum: int, frame: Any) -> None:
        self.stop_requested.set()
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]


class _ThreadWorker(SimpleWorker):
    """An RQ worker on a thread of its own: signals are the main thread's, and a job's time
    limit is kept by a timer instead of SIGALRM."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass


def run(settings: Settings, *, burst: bool) -> int:
    engine = Engine.build(settings)
    jobs.bind(engine)
    try:
        if burst:
            return _drain(engine)
        _serve(engine)
        return 0
    finally:
        engine.close()


def _serve(engine: Engine) -> None:
    """Run jobs until a stop is requested, riding out Redis and PostgreSQL outages of any
    length: RQ quits on a Redis error, so it is started again once Redis answers."""
    settings = engine.settings
    queue = Jobs(engine.raw_redis)
    stop = threading.Event()
    stop_metrics = serve_metrics(engine)
    threads = (
        (_sweep_forever, "sweeper"), (_complete_forever, "completeness"),
        (_claim_deliveries_forever, "deliveries"), (_sum_plans_forever, "plans"),
        (_make_partitions_forever, "partitions"), (_evict_forever, "eviction"),
    )  # fmt: skip
    for target, name in threads:
        threading.Thread(target=target, args=(engine, queue, stop), name=name, daemon=True).start()
    for number in range(settings.event_delivery_threads):
        threading.Thread(
            target=_deliver_forever, args=(engine, queue, stop), name=f"events-{number}",
            daemon=True,
        ).start()  # fmt: skip
    # RQ logs every job at INFO: at a flush every few milliseconds that drowns everything.
    level = "DEBUG" if settings.log_level.lower() == "debug" else "WARNING"
    redis_down = Outage(log, "Redis (worker)")
    rq_quits = Outage(log, "the RQ worker")
    try:
        while not _Worker.stop_requested.is_set():
            try:
                started = time.monotonic()
                # Flush keys left by a worker that died would hold their shards until they
                # expire; this worker's own pending entries are read again by its next flush.
                _release_flushes(engine.sync_redis)
                if settings.reconcile_interval_seconds:
                    # The first reconciliation comes one interval after the first worker ever
                    # started, not at every start: while it runs, this worker persists nothing.
                    engine.sync_redis.set(
                        reconcile_schedule_key(), "1", nx=True,
                        ex=settings.reconcile_interval_seconds,
                    )  # fmt: skip
                redis_down.ok()
                # A new worker each time: the one that quit may still be registered.
                worker = _Worker(
                    [queue.queue], connection=engine.raw_redis, serializer=JSONSerializer
                )
                worker.work(logging_level=level)
                if _Worker.stop_requested.is_set():
                    break
                if time.monotonic() - started > _HEALTHY_SECONDS:
                    rq_quits.ok()  # it ran a while: this quit is a new failure
                # RQ catches everything itself and quits; Redis is the usual cause.
                wait = rq_quits.failed(RuntimeError("it quit; its log above says why"))
            except OUTAGES as exc:
                wait = redis_down.failed(exc)
            except StopRequested:
                break  # a signal between two RQ workers: the last one's handler raised this
            with suppress(StopRequested):
                _Worker.stop_requested.wait(wait)
    finally:
        stop.set()
        stop_metrics()


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
    scripts = SCRIPTS
    next_webhook_sweep = next_top_up_sweep = next_rearm = next_expiry_sweep = 0.0
    outage = Outage(log, "sweep")
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
            if time.monotonic() >= next_expiry_sweep:
                next_expiry_sweep = time.monotonic() + _EXPIRY_SWEEP_SECONDS
                _sweep_expiries(engine, scripts)
            if time.monotonic() >= next_rearm:
                next_rearm = time.monotonic() + _REARM_SECONDS
                engine.top_ups.rearm_all()
            outage.ok()
        except (RedisError, UnavailableError) as exc:
            stop.wait(outage.failed(exc))
        except Exception:
            # The sweeper must outlive any surprise: without it nothing gets persisted.
            log.exception("sweep failed, retrying")
            stop.wait(1)


def _sweep_expiries(engine: Engine, scripts: Scripts) -> None:
    redis = engine.sync_redis
    sweep_expiries(
        redis, scripts, engine.watch_of,
        lambda accounts: rebuild_accounts(redis, scripts, engine.ledger, accounts),
    )  # fmt: skip


def _evict_forever(engine: Engine, queue: Jobs, stop: threading.Event) -> None:
    """Take idle accounts out of Redis (engine/ledger/eviction.py), unless they never idle."""
    idle = engine.settings.account_idle_seconds
    if idle:
        eviction = Eviction(engine.sync_redis, SCRIPTS, idle)
        _repeat(stop, interval_seconds(idle), "evicting idle accounts", eviction.run)


def _claim_deliveries_forever(engine: Engine, queue: Jobs, stop: threading.Event) -> None:
    """Queue the event deliveries that are due (engine/events/deliveries.py)."""

    def claim() -> None:
        due = engine.deliveries.claim_due()
        if due:
            queue.deliver_events(due)

    _repeat(stop, _DELIVERY_SWEEP_SECONDS, "queueing event deliveries", claim)


def _sum_plans_forever(engine: Engine, queue: Jobs, stop: threading.Event) -> None:
    """Sum the plans' operation counters (engine/plans/usage.py)."""
    _repeat(stop, _PLAN_SUM_SECONDS, "summing plan usage",
            lambda: engine.plans.sum_all(time.time_ns() // 1_000_000))  # fmt: skip


def _make_partitions_forever(engine: Engine, queue: Jobs, stop: threading.Event) -> None:
    """Make the ledger's coming months (engine/ledger/partitions.py), on the pool the hot path
    does not use."""
    _repeat(stop, _PARTITIONS_SECONDS, "making ledger partitions",
            lambda: ensure_partitions(engine.billing_pool), at_start=True)  # fmt: skip


def _repeat(
    stop: threading.Event,
    seconds: float,
    what: str,
    action: Callable[[], Any],
    *,
    at_start: bool = False,
) -> None:
    """`action` every `seconds` (first at once if `at_start`) on a thread of its own, so that
    neither PostgreSQL's outages nor a long run delays the ledger's flushes; outages back off
    and are logged once."""
    outage = Outage(log, what)
    wait = 0.0 if at_start else seconds
    while not stop.wait(wait):
        wait = seconds
        try:
            action()
            outage.ok()
        except (RedisError, UnavailableError) as exc:
            stop.wait(outage.failed(exc))
        except Exception:
            log.exception("%s failed, retrying", what)


def _deliver_forever(engine: Engine, queue: Jobs, stop: threading.Event) -> None:
    """Send events (workers.jobs.deliver_event) until the process stops; RQ quits on a Redis
    error, so it is started again."""
    outage = Outage(log, "sending events")
    # A client of its own, left open: the thread dies with the process, blocked in a read that
    # closing the engine's client under it would turn into errors.
    connection = sync_client(engine.settings.queue_url, decode=False)
    while not stop.is_set():
        try:
            worker = _ThreadWorker([EVENTS_QUEUE], connection=connection, serializer=JSONSerializer)
            worker.work(logging_level="WARNING")
            outage.ok()
            wait = 1.0
        except OUTAGES as exc:
            wait = outage.failed(exc)
        except Exception:
            log.exception("sending events failed, retrying")
            wait = 1.0
        stop.wait(wait)


def _complete_forever(engine: Engine, queue: Jobs, stop: threading.Event) -> None:
    """Keep every shard vouched for (engine.ledger.completeness): at start, and within
    seconds of Redis losing data."""
    scripts = SCRIPTS
    outage = Outage(log, "checking that Redis holds every account")
    while True:
        wait = _COMPLETENESS_SECONDS
        try:
            marked = complete_shards(engine.sync_redis, scripts, engine.ledger)
            if marked:
                log.info(
                    "Redis now vouches for %s shards: their new users need no PostgreSQL",
                    len(marked),
                )
            outage.ok()
        except (RedisError, UnavailableError) as exc:
            wait = outage.failed(exc)
        except Exception:
            log.exception("checking that Redis holds every account failed, retrying")
        if stop.wait(wait):
            return


def _drain(engine: Engine) -> int:
    """Persist everything in the outboxes, then exit; 1 if PostgreSQL will not take it."""
    redis, queue = engine.sync_redis, Jobs(engine.raw_redis)
    _sweep_expiries(engine, SCRIPTS)
    worker = SimpleWorker([queue.queue], connection=engine.raw_redis, serializer=JSONSerializer)
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
