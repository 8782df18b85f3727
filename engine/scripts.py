"""Lua scripts, read once from the `lua` package and registered once per Redis client."""

from functools import cache
from importlib.resources import files

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


@cache
def source(name: str) -> str:
    return files("lua").joinpath(f"{name}.lua").read_text()


class Scripts:
    """The registered scripts of one client; calls go by SHA and reload on NOSCRIPT."""

    def __init__(self, redis: "Redis") -> None:
        self.apply_entry: AsyncScript = redis.register_script(source("apply_entry"))
        self.hydrate: AsyncScript = redis.register_script(source("hydrate"))
        self.repair_account: AsyncScript = redis.register_script(source("repair_account"))
