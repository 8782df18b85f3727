"""Every Lua script, read once from the `lua` package and registered once per Redis client.

The same files serve the hot path's async client and the workers' blocking one; calls go by
SHA and reload on NOSCRIPT.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any, Generic, TypeVar

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.commands.core import AsyncScript, Script
from redis.exceptions import NoScriptError, RedisError

from engine.errors import UnavailableError
from engine.metrics.registry import SCRIPT_ERRORS
from engine.store.redis import OUTAGES, as_unavailable

S = TypeVar("S", Script, AsyncScript)

_NAMES = (
    "apply_entry", "hydrate", "repair_account", "claim_due", "vouch_account", "mark_complete",
    "hold", "settle_hold", "expire_due",
)  # fmt: skip
# The scripts that change an account share lua/account.lua, put in front of their own text.
_ACCOUNT_SCRIPTS = frozenset(("apply_entry", "hold", "settle_hold", "expire_due"))
# NOSCRIPT means the call did not run, so it is sent again after loading the script; a script
# cache flushed again and again between the two gives up after this many tries.
_LOADS = 5
_FLUSHED = "Redis keeps losing its scripts (SCRIPT FLUSH); retry shortly"

Call = tuple[Sequence[str], Sequence[Any]]  # keys, args


@cache
def source(name: str) -> str:
    text = files("lua").joinpath(f"{name}.lua").read_text()
    if name in _ACCOUNT_SCRIPTS:
        return source("account") + text
    return text


@dataclass(frozen=True, slots=True)
class Scripts(Generic[S]):
    apply_entry: S
    hydrate: S
    repair_account: S
    claim_due: S
    vouch_account: S
    mark_complete: S
    hold: S
    settle_hold: S
    expire_due: S

    @staticmethod
    def register(redis: Redis) -> "Scripts[Script]":
        return Scripts(*(redis.register_script(source(name)) for name in _NAMES))

    @staticmethod
    def register_async(redis: AsyncRedis) -> "Scripts[AsyncScript]":
        return Scripts(*(redis.register_script(source(name)) for name in _NAMES))


async def run(
    client: AsyncRedis, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]
) -> Any:
    """One script call by SHA, loading the script again as often as Redis lost it."""
    # try/except rather than outages(): this is every deduct's path, and a context manager
    # costs a generator per call.
    try:
        for _ in range(_LOADS):
            try:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                await client.script_load(script.script)
    except OUTAGES as exc:
        SCRIPT_ERRORS.labels(type(exc).__name__).inc()
        raise as_unavailable(exc) from exc
    except RedisError as exc:  # the script itself failed
        SCRIPT_ERRORS.labels(type(exc).__name__).inc()
        raise
    raise UnavailableError(_FLUSHED)


async def run_many(
    client: AsyncRedis, script: AsyncScript, calls: Sequence[Call], *, each: bool = False
) -> list[Any]:
    """Many calls of one script in one round trip, replies in order. Only the calls refused
    with NOSCRIPT are sent again: the others ran, whatever happened to the cache since.

    A call Redis refused as an outage (out of memory) raises UnavailableError, unless `each`:
    then its reply is that error, and the calls that ran keep theirs (a batch must not report
    applied operations as failed)."""
    replies: list[Any] = [None] * len(calls)
    pending = list(range(len(calls)))
    try:
        for _ in range(_LOADS):
            pipe = client.pipeline(transaction=False)
            for index in pending:
                keys, args = calls[index]
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            lost = []
            for index, reply in zip(pending, await pipe.execute(raise_on_error=False), strict=True):
                if isinstance(reply, NoScriptError):
                    lost.append(index)
                else:
                    replies[index] = reply
            if not lost:
                break
            await client.script_load(script.script)
            pending = lost
        else:
            raise UnavailableError(_FLUSHED)
    except OUTAGES as exc:
        SCRIPT_ERRORS.labels(type(exc).__name__).inc()
        raise as_unavailable(exc) from exc
    for index, reply in enumerate(replies):
        if isinstance(reply, OUTAGES):
            SCRIPT_ERRORS.labels(type(reply).__name__).inc()
            if not each:
                raise as_unavailable(reply)
            replies[index] = as_unavailable(reply)
        elif isinstance(reply, Exception):
            SCRIPT_ERRORS.labels(type(reply).__name__).inc()
            raise reply
    return replies
