"""The Redis clients Tally's processes use."""

from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.backoff import NoBackoff
from redis.retry import Retry


class _HiredisPackingConnection(Connection):
    """Packs commands with hiredis (C) instead of redis-py's Python loop.

    A script call carries a dozen arguments; packing them in Python cost more CPU than
    everything else Tally does for a deduct (measured in bench/).
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        if (isinstance(name, str) and " " in name) or (isinstance(name, bytes) and b" " in name):
            return super().pack_command(*args)  # "SCRIPT LOAD" and friends: split by redis-py
        return [hiredis.pack_command(args)]


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
