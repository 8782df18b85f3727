"""The one place Redis clients are made.

No client ever resends a command on its own: a script whose reply was lost may have run, and
running it again would apply a write twice. The caller gets 503 and retries with its
Idempotency-Key, which is exactly-once.
"""

import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlparse

import hiredis
import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.connection import Connection as AsyncConnection
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

from engine.errors import UnavailableError
from engine.store.pipelined import Calls, Pipelined, PipelinedCluster

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


def seed_nodes(url: str) -> list[tuple[str, int]]:
    """(host, port) of each node TALLY_REDIS_URL names: one URL, or several comma-separated."""
    nodes = []
    for part in url.split(","):
        parsed = urlparse(part.strip())
        if parsed.scheme != "redis" or not parsed.hostname:
            raise ValueError(f"not a redis:// URL of a cluster node: {part.strip()!r}")
        nodes.append((parsed.hostname, parsed.port or 6379))
    return nodes


def _cluster_options(url: str) -> dict[str, Any]:
    # The cluster clients follow MOVED, ASK and TRYAGAIN themselves (the command did not run),
    # and with no retries a lost connection is raised instead of resent: a failover is a 503
    # until the client's next call reads the new topology.
    return {
        **_credentials(url),
        "socket_connect_timeout": _CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": _READ_TIMEOUT_SECONDS,
        "retry": Retry(NoBackoff(), 0),
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }


def _credentials(url: str) -> dict[str, Any]:
    """The user and password of the first seed node's URL: every node of a cluster shares them."""
    parsed = urlparse(url.split(",")[0].strip())
    return {"username": parsed.username, "password": parsed.password}


def async_client(url: str, max_connections: int, *, cluster: bool = False) -> AsyncRedis:
    """The hot path's client (text replies), used on one event loop."""
    if cluster:
        nodes = [AsyncClusterNode(host, port) for host, port in seed_nodes(url)]
        # Typed as the plain client: every command Tally sends has the same call on both.
        return _AsyncCluster(  # type: ignore[return-value]
            startup_nodes=nodes,
            decode_responses=True,
            max_connections=max_connections,
            **_cluster_options(url),
        )
    return AsyncRedis.from_url(
        url,
        decode_responses=True,
        max_connections=max_connections,
        **_options(url, _PackingAsyncConnection),
    )


def pipelined_client(url: str, cluster: AsyncRedis | None = None) -> Calls:
    """The hot path's script calls (engine.store.pipelined); on a cluster, `cluster` is the
    async cluster client, whose topology routes each call to its node."""
    timeouts = {
        "connect_timeout": _CONNECT_TIMEOUT_SECONDS, "read_timeout": _READ_TIMEOUT_SECONDS
    }  # fmt: skip
    if cluster is not None:
        return PipelinedCluster(cluster, **timeouts)
    # Read as redis-py reads it (a ?db= wins over the path), so that both clients of a process
    # always talk to the same database.
    options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    return Pipelined(
        options.get("host", "localhost"),
        options.get("port", 6379),
        username=options.get("username"),
        password=options.get("password"),
        db=options.get("db", 0),
        path=options.get("path"),
        tls=ssl.create_default_context() if url.startswith("rediss://") else None,
        **timeouts,
    )


def sync_client(url: str, *, decode: bool = True, cluster: bool = False) -> redis.Redis:
    """A blocking client: text replies, or bytes (`decode=False`) for RQ."""
    if cluster:
        seeds, options = seed_nodes(url), _cluster_options(url)

        def connect() -> RedisCluster:
            nodes = [ClusterNode(host, port) for host, port in seeds]  # type: ignore[no-untyped-call]
            return RedisCluster(startup_nodes=nodes, decode_responses=decode, **options)

        return _LazyCluster(connect)  # type: ignore[return-value]
    return redis.Redis.from_url(url, decode_responses=decode, **_options(url, _PackingConnection))


class _AsyncCluster(AsyncRedisCluster):
    async def initialize(self, *args: Any, **kwargs: Any) -> "_AsyncCluster":
        """No node answering is an outage (ConnectionError, a 503), not the generic
        RedisClusterException redis-py raises, which also means a bug (keys across slots)."""
        try:
            await super().initialize(*args, **kwargs)
        except SlotNotCoveredError:
            raise
        except RedisClusterException as exc:
            raise RedisConnectionError(str(exc)) from exc
        return self


class _LazyCluster:
    """A blocking cluster client made at its first command: RedisCluster reads the topology in
    its constructor, and a process must start (and a command fail as an outage, 503 or the
    CLI's one line) while the cluster is down."""

    def __init__(self, connect: Callable[[], RedisCluster]) -> None:
        self._connect = connect
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    try:
                        self._client = self._connect()
                    except RedisClusterException as exc:
                        raise RedisConnectionError(str(exc)) from exc
                client = self._client
        return getattr(client, name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def is_cluster(client: object) -> bool:
    return isinstance(client, (RedisCluster, AsyncRedisCluster, _LazyCluster))


UNREACHABLE = "Redis is unavailable; retry shortly"
OUT_OF_MEMORY = "Redis is out of memory and refuses writes (nothing was applied); retry shortly"
# The Redis failures that are outages (503, retry), not bugs; the cluster's own during a
# failover or a resharding the client could not ride out (ClusterError: redirected too often;
# ReadOnlyError: a write refused by a master that has just become a replica).
OUTAGES = (
    RedisConnectionError, RedisTimeoutError, OutOfMemoryError, ClusterDownError,
    SlotNotCoveredError, MasterDownError, TryAgainError, ClusterError, ReadOnlyError,
)  # fmt: skip


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


def redis_state_of(nodes: "list[NodeState]") -> str:
    """What the nodes that serve data say, as their users see it: one unreachable, out of
    memory or read-only is the state of Redis. Replicas, and a failed master whose slots a
    promoted replica took over, do not decide it."""
    serving = [node for node in nodes if node.serving]
    if not serving:
        return "unavailable"
    for state in ("unavailable", "oom", "readonly"):
        if any(node.state == state for node in serving):
            return state
    return "ok"


@dataclass(frozen=True, slots=True)
class NodeState:
    node: str  # host:port
    role: str  # master or replica
    state: str  # ok, oom, readonly, unavailable
    used_memory: int
    maxmemory: int
    connected_replicas: int
    serving: bool  # holds data users write to: the one Redis, or a master with slots


def node_states(client: redis.Redis) -> list[NodeState]:
    """Every node of a cluster as its topology lists them (failed ones too), or the one Redis:
    GET /healthz and `tally status` show them."""
    if not is_cluster(client):
        host = client.connection_pool.connection_kwargs.get("host", "?")
        port = client.connection_pool.connection_kwargs.get("port", "?")
        state = _node_state(f"{host}:{port}", client, None)
        if state.role == "replica":  # every write would be refused
            state = replace(state, state="readonly")
        return [replace(state, serving=True)]
    cluster: Any = client
    credentials = client.get_connection_kwargs()
    states = []
    # Roles, slots and failures as the cluster sees them (CLUSTER NODES): a dead node's INFO
    # cannot say it was a master, nor that its slots went to a promoted replica.
    for name, node in sorted(cluster.cluster_nodes().items()):
        host, _, port = name.rpartition(":")
        probe = redis.Redis(
            host=host, port=int(port), socket_connect_timeout=1, socket_timeout=1,
            username=credentials.get("username"), password=credentials.get("password"),
        )  # fmt: skip
        try:
            states.append(_node_state(name, probe, node))
        finally:
            probe.close()
    return states


def _node_state(name: str, client: redis.Redis, listed: dict[str, Any] | None) -> NodeState:
    flags = listed["flags"] if listed else ""
    role = "master" if "master" in flags else "replica"
    serving = bool(listed and "master" in flags and listed["slots"])
    if "fail" in flags.split(","):  # the cluster agrees it is down
        return NodeState(name, role, "unavailable", 0, 0, 0, serving)
    try:
        info = client.info()
    except OUTAGES:
        return NodeState(name, role, "unavailable", 0, 0, 0, serving)
    if not listed:
        role = "master" if info.get("role") == "master" else "replica"
    limit = int(info.get("maxmemory", 0))
    used = int(info.get("used_memory", 0)) - int(info.get("mem_not_counted_for_evict", 0))
    state = "oom" if limit and used >= limit else "ok"
    replicas = int(info.get("connected_slaves", 0))
    return NodeState(name, role, state, int(info.get("used_memory", 0)), limit, replicas, serving)
