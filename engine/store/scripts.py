"""Every Lua script, read once from the `lua` package and registered once per Redis client.

The same files serve the hot path's async client and the workers' blocking one; calls go by
SHA and reload on NOSCRIPT.
"""

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Generic, TypeVar

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.commands.core import AsyncScript, Script

S = TypeVar("S", Script, AsyncScript)

_NAMES = ("apply_entry", "hydrate", "repair_account", "claim_due")


@cache
def source(name: str) -> str:
    return files("lua").joinpath(f"{name}.lua").read_text()


@dataclass(frozen=True, slots=True)
class Scripts(Generic[S]):
    apply_entry: S
    hydrate: S
    repair_account: S
    claim_due: S

    @staticmethod
    def register(redis: Redis) -> "Scripts[Script]":
        return Scripts(*(redis.register_script(source(name)) for name in _NAMES))

    @staticmethod
    def register_async(redis: AsyncRedis) -> "Scripts[AsyncScript]":
        return Scripts(*(redis.register_script(source(name)) for name in _NAMES))
