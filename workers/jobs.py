"""RQ jobs: thin, they take ids and call the engine the worker process built."""

import logging
from contextlib import suppress
from typing import Any

from redis.exceptions import RedisError

from engine.container import Engine
from engine.errors import UnavailableError
from engine.ledger.defaults import FLUSH_BUDGET_SECONDS, UNAVAILABLE_BACKOFF_MS
from engine.logs import Outage
from engine.metrics.registry import (
    AUTO_TOP_UPS,
    ENTRIES_PERSISTED,
    EVENT_DELIVERIES,
    FLUSH_SECONDS,
    RECONCILE_DRIFTED,
    WEBHOOK_EVENTS,
)
from engine.store.keys import SHARDS, flush_key
from engine.store.redis import outages

log = logging.getLogger(__name__)

_engine: Engine | None = None
_flushing = Outage(log, "persisting the outbox")


def bind(engine: Engine) -> None:
    """The engine jobs use: `tally worker` builds it once and runs every job in its process."""
    global _engine
    _engine = engine


def engine() -> Engine:
    if _engine is None:
        raise RuntimeError("Tally jobs run under `tally worker`, which builds their engine")
    return _engine


def flush_shards(shards: list[int], reclaim_idle_ms: int) -> dict[str, Any]:
    """Persist every shard's outbox; `shards` are the ones whose flush marker this job holds.

    Reading all shards, not just those, keeps an entry that lands in another shard meanwhile
    from waiting for the next job: RQ runs one job at a time per worker.
    """
    tally = engine()
    redis = tally.sync_redis
    try:
        with outages(), FLUSH_SECONDS.time():
            result = tally.outbox.flush(list(range(SHARDS)), reclaim_idle_ms, FLUSH_BUDGET_SECONDS)
    except UnavailableError as exc:
        # PostgreSQL or Redis is down: the entries stay pending, and the shards are tried
        # again after a back-off (or, if Redis is the one down, once their markers expire).
        _flushing.failed(exc)
        with suppress(RedisError):
            pipe = redis.pipeline(transaction=False)
            for shard in shards:
                pipe.set(flush_key(shard), "backoff", px=UNAVAILABLE_BACKOFF_MS)
            pipe.execute()
        return {"shards": shards, "error": exc.message}
    _flushing.ok()
    ENTRIES_PERSISTED.inc(result.persisted)
    redis.delete(*(flush_key(shard) for shard in shards))
    if result.dead_letters:
        log.error("shards %s: %s entries dead-lettered", shards, result.dead_letters)
    return {
        "shards": shards,
        "persisted": result.persisted,
        "duplicates": result.duplicates,
        "dead_letters": result.dead_letters,
        "lag_ms_max": max(result.lag_ms, default=0),
    }


def apply_webhook_event(event_pk: int) -> str | None:
    event = engine().webhooks.apply(event_pk)
    if event is None:
        return None
    WEBHOOK_EVENTS.labels(event.provider, event.status).inc()
    return event.status


def deliver_event(delivery_id: int, claim: str) -> str:
    result = engine().deliveries.deliver(delivery_id, claim)
    if result != "skipped":
        EVENT_DELIVERIES.labels(result=result).inc()
    return result


def auto_top_up(app_id: str, user_id: str) -> str:
    outcome = engine().top_ups.run(app_id, user_id)
    AUTO_TOP_UPS.labels(outcome).inc()
    log.info("auto top-up of %s/%s: %s", app_id, user_id, outcome)
    return outcome


def reconcile_accounts(repair: bool = False) -> dict[str, Any]:
    report = engine().reconcile(repair=repair).as_dict()
    RECONCILE_DRIFTED.set(report["drifted"])
    if report["drifted"]:
        log.error("reconciliation found %s drifted accounts", report["drifted"])
    return report
