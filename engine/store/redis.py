"""The one place Redis clients are made.

No client ever resends a command on its own: a script whose reply was lost may have run, and
running it again would apply a write twice. The caller gets 503 and retries with its
Idempotency-Key, which is exactly-once.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import hiredis
import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.connection import Connection as AsyncConnection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

from engine.errors import UnavailableError

_CONNECT_TIMEOUT_SECONDS = 2
_READ_TIMEOUT_SECONDS = 5


def _pack(fallback: Any, args: tuple[Any, ...]) -> list[bytes]:
    """Pack a command with hiredis (C) instead of redis-py's Python loop.

    A script call carries a dozen arguments and a flush acknowledges thousands of ids;
    packing them in Python cost more CPU than everything else Tally does (see bench/).
    """
    name = args[0]
    if (isinstance(name, str) and " " in name) or (isinstance(name, bytes) and b" " in name):
        return list(fallback(*args))  # "SCRIPT LOAD" and friends: redis-py splits the name
    return [hiredis.pack_command(args)]


class _PackingAsyncConnection(AsyncConnection):
    def pack_command(self, *args: Any) -> list[bytes]:
        return _pack(super().pack_command, args)


class _PackingConnection(redis.Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        return _pack(super().pack_command, args)


def _options(url: str, connection_class: type) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_connect_timeout": _CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": _READ_TIMEOUT_SECONDS,
        "retry": Retry(NoBackoff(), 0),
        # With maintenance notifications on ("auto"), redis-py skips its check that a pooled
        # connection is still open, so every connection a Redis restart broke failed once.
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }
    if url.startswith("redis://"):  # unix sockets and TLS keep redis-py's own connections
        options["connection_class"] = connection_class
    return options


def async_client(url: str, max_connections: int) -> AsyncRedis:
    """The hot path's client (text replies), used on one event loop."""
    return AsyncRedis.from_url(
        url,
        decode_responses=True,
        max_connections=max_connections,
        **_options(url, _PackingAsyncConnection),
    )


def sync_client(url: str, *, decode: bool = True) -> redis.Redis:
    """A blocking client: text replies, or bytes (`decode=False`) for RQ."""
    return redis.Redis.from_url(url, decode_responses=decode, **_options(url, _PackingConnection))


UNREACHABLE = "Redis is unavailable; retry shortly"
OUT_OF_MEMORY = "Redis is out of memory and refuses writes (nothing was applied); retry shortly"
# The Redis failures that are outages (503, retry), not bugs.
OUTAGES = (RedisConnectionError, RedisTimeoutError, OutOfMemoryError)


def as_unavailable(exc: Exception) -> UnavailableError:
    # With noeviction Redis refuses a script before it runs: out of memory, nothing was written.
    message = OUT_OF_MEMORY if isinstance(exc, OutOfMemoryError) else UNREACHABLE
    return UnavailableError(message, "redis")


@contextmanager
def outages() -> Iterator[None]:
    """Redis unreachable or out of memory, raised as UnavailableError."""
    try:
        yield
    except OUTAGES as exc:
        raise as_unavailable(exc) from exc


def memory_state(client: redis.Redis) -> str:
    """ "oom" when Redis refuses writes for want of memory, else "ok"."""
    info = client.info("memory")
    limit = int(info.get("maxmemory", 0))
    used = int(info.get("used_memory", 0)) - int(info.get("mem_not_counted_for_evict", 0))
    return "oom" if limit and used >= limit else "ok"
