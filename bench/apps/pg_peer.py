"""The PostgreSQL-only peer: Tally's deduct and add as a user would build them without Redis.

Same HTTP stack (Starlette on uvicorn, orjson) and the same request validation; a cached API
key; one transaction per request: idempotency row, `UPDATE ... WHERE balance >= amount
RETURNING`, ledger INSERT. synchronous_commit stays on: that is what durability costs here.
"""

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.schemas import EntryRequest, parse_body
from engine.errors import InvalidRequestError

SCHEMA = """
CREATE TABLE IF NOT EXISTS peer_accounts (
    user_id text PRIMARY KEY, balance bigint NOT NULL, updated_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS peer_ledger (
    ledger_id uuid PRIMARY KEY, user_id text NOT NULL, amount bigint NOT NULL,
    balance_after bigint NOT NULL, description text, created_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS peer_idempotency (
    key text PRIMARY KEY, response jsonb, created_at timestamptz NOT NULL DEFAULT now()
);
"""


def create_app() -> Starlette:
    pool = AsyncConnectionPool(
        os.environ["TALLY_DATABASE_URL"], min_size=16, max_size=16, open=False
    )
    api_key = "Bearer " + os.environ["PEER_KEY"]

    async def apply(request: Request, sign: int) -> Response:
        if request.headers.get("authorization") != api_key:
            return Response(b'{"success":false,"error":"invalid API key"}', 401)
        try:
            body = parse_body(EntryRequest, await request.body())
        except InvalidRequestError as exc:
            return Response(orjson.dumps({"success": False, "error": exc.message}), 400)
        key = request.headers.get("idempotency-key")
        async with pool.connection() as conn, conn.transaction():
            if key is not None:
                stored = await _claim(conn, key)
                if stored is not None:
                    return Response(orjson.dumps(stored))
            row = await (
                await conn.execute(
                    "UPDATE peer_accounts SET balance = balance + %s, updated_at = now()"
                    " WHERE user_id = %s AND balance + %s >= 0 RETURNING balance",
                    (sign * body.amount, body.user_id, sign * body.amount),
                )
            ).fetchone()
            if row is None:
                return Response(b'{"success":false,"error":"Insufficient credits"}', 402)
            ledger_id = uuid.uuid4()
            await conn.execute(
                "INSERT INTO peer_ledger VALUES (%s, %s, %s, %s, %s, now())",
                (ledger_id, body.user_id, sign * body.amount, row[0], body.description),
            )
            answer = {
                "success": True,
                "ledger_id": str(ledger_id),
                "balance_before": row[0] - sign * body.amount,
                "balance_after": row[0],
            }
            if key is not None:
                await conn.execute(
                    "UPDATE peer_idempotency SET response = %s WHERE key = %s",
                    (Jsonb(answer), key),
                )
        return Response(orjson.dumps(answer))

    async def deduct(request: Request) -> Response:
        return await apply(request, -1)

    async def add(request: Request) -> Response:
        return await apply(request, 1)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pool.open()
        yield
        await pool.close()

    routes = [
        Route("/credits/deduct", deduct, methods=["POST"]),
        Route("/credits/add", add, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def _claim(conn: AsyncConnection, key: str) -> object | None:
    """Insert the key, or return the response stored under it (waiting for its writer)."""
    inserted = await (
        await conn.execute(
            "INSERT INTO peer_idempotency (key) VALUES (%s) ON CONFLICT DO NOTHING RETURNING key",
            (key,),
        )
    ).fetchone()
    if inserted is not None:
        return None
    row = await (
        await conn.execute("SELECT response FROM peer_idempotency WHERE key = %s", (key,))
    ).fetchone()
    return row[0] if row else None
