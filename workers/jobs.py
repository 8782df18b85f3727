"""RQ jobs: thin, they take ids and call the engine."""

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis as AsyncRedis

from engine.errors import UnavailableError
from engine.keys import SHARDS, flush_key
from engine.reconcile import reconcile
from workers.context import context, credits_runner

log = logging.getLogger(__name__)

# A flush runs this long at most, so one busy shard cannot starve the others.
FLUSH_BUDGET_SECONDS = 2.0
# With PostgreSQL down, a shard is tried again this often instead of on every sweep.
UNAVAILABLE_BACKOFF_MS = 1_000


def flush_shards(shards: list[int], reclaim_idle_ms: int) -> dict[str, Any]:
    """Persist every shard's outbox; `shards` are the ones whose flush marker this job holds.

    Reading all shards, not just those, keeps an entry that lands in another shard meanwhile
    from waiting for the next job: RQ runs one job at a time per worker.
    """
    ctx = context()
    try:
        result = ctx.outbox.flush(list(range(SHARDS)), reclaim_idle_ms, FLUSH_BUDGET_SECONDS)
    except UnavailableError as exc:
        log.warning("shards %s not flushed: %s", shards, exc.message)
        pipe = ctx.redis.pipeline(transaction=False)
        for shard in shards:
            pipe.set(flush_key(shard), "backoff", px=UNAVAILABLE_BACKOFF_MS)
        pipe.execute()
        return {"shards": shards, "error": exc.message}
    ctx.redis.delete(*(flush_key(shard) for shard in shards))
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
    ctx = context()
    run = credits_runner(ctx.settings, ctx.repository)
    event = run(lambda credits: ctx.webhooks.apply(credits, event_pk))
    return event.status if event else None


def auto_top_up(app_id: str, user_id: str) -> str:
    outcome = context().top_ups.run(app_id, user_id)
    log.info("auto top-up of %s/%s: %s", app_id, user_id, outcome)
    return outcome


def reconcile_accounts(repair: bool = False) -> dict[str, Any]:
    ctx = context()

    async def run() -> dict[str, Any]:
        redis = AsyncRedis.from_url(ctx.settings.redis_url, decode_responses=True)
        try:
            report = await reconcile(redis, ctx.repository, repair=repair)
        finally:
            await redis.aclose()
        return report.as_dict()

    report = asyncio.run(run())
    if report["drifted"]:
        log.error("reconciliation found %s drifted accounts", report["drifted"])
    return report
