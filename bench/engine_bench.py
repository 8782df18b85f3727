"""The engine without HTTP: deducts per second, sequential, batched and concurrent."""

import asyncio
import random
import time
from dataclasses import replace

import uvloop

from bench.stack import USERS, Stack
from engine.credits import Credits
from engine.db import open_pool
from engine.models import AppContext, Operation
from engine.redis_client import hot_path_redis
from engine.repository import Repository


def run(stack: Stack, seconds: float) -> dict[str, float]:
    return uvloop.run(_run(stack, seconds))


async def _run(stack: Stack, seconds: float) -> dict[str, float]:
    client = hot_path_redis(stack.settings.redis_url, 128)
    pool = open_pool(stack.settings.database_url, 2)
    credits = Credits(client, Repository(pool), stack.settings)
    app = stack.app

    def user() -> str:
        return f"u{random.randint(1, USERS)}"

    async def sequential(context: AppContext = app) -> int:
        done, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            await credits.deduct(context, user(), 1)
            done += 1
        return done

    async def with_auto_top_up() -> int:
        # The app offers auto top-up: every deduct also checks the user's threshold.
        return await sequential(replace(app, auto_top_up=True))

    async def batched() -> int:
        done, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            await credits.batch(app, [Operation("deduct", user(), 1) for _ in range(1000)])
            done += 1000
        return done

    async def concurrent() -> int:
        deadline = time.perf_counter() + seconds

        async def one() -> int:
            done = 0
            while time.perf_counter() < deadline:
                await credits.deduct(app, user(), 1)
                done += 1
            return done

        return sum(await asyncio.gather(*(one() for _ in range(64))))

    results = {}
    for name, scenario in [
        ("sequential", sequential),
        ("sequential, auto top-up offered", with_auto_top_up),
        ("batched (1000 per call)", batched),
        ("asyncio, 64 concurrent", concurrent),
    ]:
        started = time.perf_counter()
        done = await scenario()
        results[name] = done / (time.perf_counter() - started)
    await client.aclose()
    pool.close()
    return results
