"""GET /healthz: can this process serve the hot path, and how far behind is the ledger?"""

import asyncio
from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import Response

from api.responses import JSONResponse
from api.services import Services, services
from engine.db import connection
from engine.errors import UnavailableError
from engine.outbox import outbox_lag


async def healthz(request: Request) -> Response:
    svc = services(request)
    body: dict[str, object] = {}
    try:
        lags = await asyncio.to_thread(outbox_lag, svc.sync_redis)
        body["redis"] = "ok"
        body["outbox"] = {
            "depth": sum(lag.depth for lag in lags),
            "oldest_age_seconds": max(lag.oldest_age_seconds for lag in lags),
            "shards": [asdict(lag) for lag in lags if lag.depth],
        }
    except Exception:
        body["redis"] = "unavailable"
    try:
        await asyncio.to_thread(_ping_postgres, svc)
        body["postgres"] = "ok"
    except UnavailableError:
        body["postgres"] = "unavailable"
    # PostgreSQL down delays durability, not the hot path: only Redis decides the status.
    healthy = body["redis"] == "ok"
    body = {"status": "ok" if healthy else "unavailable", **body}
    return JSONResponse(body, status_code=200 if healthy else 503)


def _ping_postgres(svc: Services) -> None:
    with connection(svc.pool, timeout=0.5) as conn:
        conn.execute("SELECT 1")
