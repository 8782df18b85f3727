"""The engine without HTTP: deducts per second, sequential, batched and concurrent."""

import asyncio
import random
import time
from dataclasses import replace

import uvloop

from bench.stack import USERS, Stack
from engine.container import Engine
from engine.models import AppContext, Operation


def run(stack: Stack, seconds: float) -> dict[str, float]:
    return uvloop.run(_run(stack, seconds))


async def _run(stack: Stack, seconds: float) -> dict[str, float]:
    settings = stack.settings.model_copy(update={"redis_max_connections": 128})
    engine = Engine.build(settings, asyncio.get_running_loop())
    credits, app = engine.credits, stack.app

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
    await engine.aclose()
    return results
