"""GET /healthz: can this process serve the hot path, and how far behind is the ledger?
GET /readyz: should a load balancer send it requests?"""

import logging
from typing import Literal

from redis.exceptions import OutOfMemoryError, RedisError
from starlette.requests import Request
from starlette.responses import Response

from api.responses import JSONResponse
from api.state import engine_of
from api.views import HealthView, OutboxShard, OutboxView, ReadyView
from engine.container import Engine
from engine.errors import UnavailableError
from engine.ledger.outbox import outbox_lag
from engine.store.db import connection
from engine.store.readiness import load_scripts, missing_scripts
from engine.store.redis import node_states, redis_state_of

log = logging.getLogger(__name__)


async def healthz(request: Request) -> Response:
    body = await report(engine_of(request))
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


async def report(engine: Engine) -> HealthView:
    """Redis, PostgreSQL and the outbox as /healthz and the dashboard's Health tab show them."""
    redis_state, outbox, nodes = "unavailable", None, []
    try:
        nodes = await engine.bridge.call(node_states, engine.sync_redis)
        # Out of memory, Redis still answers reads but refuses every write.
        redis_state = redis_state_of(nodes)
        lags = await engine.bridge.call(outbox_lag, engine.sync_redis)
        outbox = OutboxView(
            depth=sum(lag.depth for lag in lags),
            oldest_age_seconds=max(lag.oldest_age_seconds for lag in lags),
            shards=[
                OutboxShard(
                    shard=lag.shard, depth=lag.depth, oldest_age_seconds=lag.oldest_age_seconds
                )
                for lag in lags
                if lag.depth
            ],
        )
    except Exception:
        redis_state = "unavailable"
    try:
        await engine.bridge.call(_ping_postgres, engine)
        postgres: Literal["ok", "unavailable"] = "ok"
    except UnavailableError:
        postgres = "unavailable"
    # PostgreSQL down delays durability, not the hot path: only Redis decides the status.
    healthy = redis_state == "ok"
    body: HealthView = {
        "status": "ok" if healthy else "unavailable",
        "redis": redis_state,
        "postgres": postgres,
    }
    if outbox is not None:
        body["outbox"] = outbox
    if len(nodes) > 1:  # a cluster: which node is what
        body["redis_nodes"] = [
            {"node": node.node, "role": node.role, "state": node.state} for node in nodes
        ]
    return body


def _ping_postgres(engine: Engine) -> None:
    with connection(engine.pool, timeout=0.5) as conn:
        conn.execute("SELECT 1")


async def readyz(request: Request) -> Response:
    body = await readiness(engine_of(request))
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


async def readiness(engine: Engine) -> ReadyView:
    """Ready when Redis answers and holds every script (loaded here if it lost them).
    PostgreSQL is not asked: the hot path serves without it, and a load balancer that took
    every process out for a PostgreSQL outage would stop what still works (see /healthz)."""
    redis: Literal["ok", "unavailable"] = "ok"
    scripts: Literal["ok", "missing", "unknown"] = "ok"
    try:
        missing = await missing_scripts(engine.redis)
    except RedisError:
        redis, scripts = "unavailable", "unknown"
    else:
        try:
            await load_scripts(engine.redis, missing)
        except OutOfMemoryError:
            # At maxmemory Redis refuses FUNCTION LOAD as it refuses every write, with or
            # without the library; the reads it still serves need none: still ready.
            log.warning("Redis is out of memory: it refused %s missing scripts", len(missing))
        except RedisError as exc:
            log.warning("Redis lacks %s scripts and refused them: %s", len(missing), exc)
            scripts = "missing"
        else:
            if missing:
                log.info("loaded %s scripts into Redis", len(missing))
    body: ReadyView = {
        "ready": redis == "ok" and scripts == "ok",
        "redis": redis,
        "scripts": scripts,
        "missing": [],
    }
    if redis != "ok":
        body["missing"].append("redis")
    elif scripts != "ok":
        body["missing"].append("scripts")
    return body
