"""The Redis clients Tally's processes use."""

from typing import Any

import hiredis
import redis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.backoff import NoBackoff
from redis.retry import Retry


def _pack(fallback: Any, args: tuple[Any, ...]) -> list[bytes]:
    """Pack a command with hiredis (C) instead of redis-py's Python loop.

    A script call carries a dozen arguments and a flush acknowledges thousands of ids;
    packing them in Python cost more CPU than everything else Tally does (see bench/).
    """
    name = args[0]
    if (isinstance(name, str) and " " in name) or (isinstance(name, bytes) and b" " in name):
        return list(fallback(*args))  # "SCRIPT LOAD" and friends: redis-py splits the name
    return [hiredis.pack_command(args)]


class _HiredisPackingConnection(Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        return _pack(super().pack_command, args)


class _HiredisPackingSyncConnection(redis.Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        return _pack(super().pack_command, args)


def worker_redis(url: str) -> "redis.Redis":
    """The workers' client (text replies)."""
    options: dict[str, Any] = {}
    if url.startswith("redis://"):
        options["connection_class"] = _HiredisPackingSyncConnection
    return redis.Redis.from_url(url, decode_responses=True, **options)


def hot_path_redis(url: str, max_connections: int) -> "Redis":
    """The API's client. It never resends a command on its own: a script whose reply was lost
    may have run, and running it again would apply a write twice. The caller gets 503 and
    retries with its Idempotency-Key, which is exactly-once."""
    options: dict[str, Any] = {}
    if url.startswith("redis://"):
        options["connection_class"] = _HiredisPackingConnection
    return Redis.from_url(
        url,
        decode_responses=True,
        max_connections=max_connections,
        socket_connect_timeout=2,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 0),
        **options,
    )
