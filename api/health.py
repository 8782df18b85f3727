"""GET /healthz: is this process able to serve the hot path?"""

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from api.responses import JSONResponse
from api.services import Services, services
from engine.db import connection
from engine.errors import UnavailableError


async def healthz(request: Request) -> Response:
    svc = services(request)
    try:
        await svc.redis.ping()
        redis = "ok"
    except Exception:
        redis = "unavailable"
    try:
        await asyncio.to_thread(_ping_postgres, svc)
        postgres = "ok"
    except UnavailableError:
        postgres = "unavailable"
    # PostgreSQL down degrades durability lag, not the hot path: only Redis decides the status.
    status = 200 if redis == "ok" else 503
    return JSONResponse(
        {"status": "ok" if status == 200 else "unavailable", "redis": redis, "postgres": postgres},
        status_code=status,
    )


def _ping_postgres(svc: Services) -> None:
    with connection(svc.pool, timeout=0.5) as conn:
        conn.execute("SELECT 1")
