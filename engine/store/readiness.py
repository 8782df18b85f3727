"""Whether Redis holds every Lua script, and loading those it lacks: GET /readyz."""

from dataclasses import fields

from redis.asyncio import Redis as AsyncRedis
from redis.commands.core import AsyncScript

from engine.store.scripts import Scripts


async def missing_scripts(client: AsyncRedis) -> list[AsyncScript]:
    """The scripts Redis does not hold, in one SCRIPT EXISTS."""
    registered = Scripts.register_async(client)
    scripts: list[AsyncScript] = [getattr(registered, field.name) for field in fields(registered)]
    present = await client.script_exists(*(script.sha for script in scripts))
    return [script for script, found in zip(scripts, present, strict=True) if not found]


async def load_scripts(client: AsyncRedis, scripts: list[AsyncScript]) -> None:
    # Calls reload a lost script themselves (NOSCRIPT), but only after a wasted round trip
    # each: loaded here, before the process says it is ready, they cost no request that.
    for script in scripts:
        await client.script_load(script.script)
