"""GET /healthz: can this process serve the hot path, and how far behind is the ledger?"""

from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import Response

from api.responses import JSONResponse
from api.state import engine_of
from engine.container import Engine
from engine.errors import UnavailableError
from engine.ledger.outbox import outbox_lag
from engine.store.db import connection
from engine.store.redis import memory_state


async def healthz(request: Request) -> Response:
    engine = engine_of(request)
    body: dict[str, object] = {}
    try:
        lags = await engine.bridge.call(outbox_lag, engine.sync_redis)
        # Out of memory, Redis still answers reads but refuses every write.
        body["redis"] = await engine.bridge.call(memory_state, engine.sync_redis)
        body["outbox"] = {
            "depth": sum(lag.depth for lag in lags),
            "oldest_age_seconds": max(lag.oldest_age_seconds for lag in lags),
            "shards": [asdict(lag) for lag in lags if lag.depth],
        }
    except Exception:
        body["redis"] = "unavailable"
    try:
        await engine.bridge.call(_ping_postgres, engine)
        body["postgres"] = "ok"
    except UnavailableError:
        body["postgres"] = "unavailable"
    # PostgreSQL down delays durability, not the hot path: only Redis decides the status.
    healthy = body["redis"] == "ok"
    body = {"status": "ok" if healthy else "unavailable", **body}
    return JSONResponse(body, status_code=200 if healthy else 503)


def _ping_postgres(engine: Engine) -> None:
    with connection(engine.pool, timeout=0.5) as conn:
        conn.execute("SELECT 1")
