"""The floor: the least an HTTP deduct on this stack can cost.

Starlette on uvicorn, parse the JSON body, one EVALSHA of a minimal check-and-deduct script,
answer JSON. No auth, no idempotency, no ledger: Tally's deduct is measured against this.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

DEDUCT = """
local balance = tonumber(redis.call('HGET', KEYS[1], 'balance') or '0')
local amount = tonumber(ARGV[1])
if balance < amount then return {0, balance} end
return {1, redis.call('HINCRBY', KEYS[1], 'balance', -amount)}
"""


def create_app() -> Starlette:
    redis = Redis.from_url(os.environ["TALLY_REDIS_URL"])
    script = redis.register_script(DEDUCT)

    async def deduct(request: Request) -> Response:
        body = orjson.loads(await request.body())
        ok, balance = await script(keys=[f"floor:{{{body['user_id']}}}"], args=[body["amount"]])
        if not ok:
            return Response(orjson.dumps({"error": "Insufficient credits"}), 402)
        return Response(orjson.dumps({"success": True, "balance_after": balance}))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await redis.aclose()

    return Starlette(routes=[Route("/deduct", deduct, methods=["POST"])], lifespan=lifespan)
