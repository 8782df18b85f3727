"""Whether Redis holds every Lua script, and loading those it lacks: GET /readyz."""

from typing import Any

from redis.asyncio import Redis as AsyncRedis

from engine.store.scripts import SCRIPTS, library, library_name


async def missing_scripts(client: AsyncRedis) -> list[str]:
    """What Redis lacks, as the text that loads it: each script by SHA (the sweeps' EVALSHA),
    and the account scripts' library (FCALL)."""
    scripts = SCRIPTS.all()
    present = await client.script_exists(*(script.sha for script in scripts))
    missing = [script.text for script, found in zip(scripts, present, strict=True) if not found]
    if not _everywhere(await client.function_list(library=library_name())):
        missing.append(library())
    return missing


def _everywhere(listed: Any) -> bool:
    # A cluster client asks every master and answers with each one's list.
    if isinstance(listed, dict):
        return all(listed.values())
    return bool(listed)


async def load_scripts(client: AsyncRedis, missing: list[str]) -> None:
    # Calls load what a node lacks themselves, but only after a wasted round trip each:
    # loaded here, before the process says it is ready, they cost no request that.
    for text in missing:
        if text == library():
            await client.function_load(text, replace=True)
        else:
            await client.script_load(text)
