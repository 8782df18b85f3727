"""The hot path's Redis connection: automatic pipelining on one connection per node.

Every command asked for during one event-loop turn, whichever request asked, is packed by
hiredis and written in one `write()`; replies come back in order and are handed to their
callers in order. Under load a single write carries the script calls of dozens of requests,
which is what makes a deduct cheaper than redis-py's per-command path (a pooled connection, a
lock, an encoder and a parser per call).

The failure rules are the design:
- a reply that arrived is kept, whatever happens to the connection after it;
- a command written without a reply when the connection breaks, stalls or sends what cannot
  be parsed fails as "outcome unknown" (ConnectionError: 503, retry with the same
  Idempotency-Key); it is never sent again;
- a command not written yet goes out on the next connection;
- a caller that gives up leaves its place in the reply queue: taking it out would hand every
  later reply (another user's balance) to the wrong caller;
- a stalled connection (no reply for the read timeout while commands wait) is aborted.
NOSCRIPT (or no such function), the one reply that proves a call did not run, is resent by the
caller (engine.store.scripts).
"""

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# The replies' exceptions, as redis-py's own parser makes them (NoScriptError, MovedError, …),
# so that one set of rules (engine.store.redis.OUTAGES) serves both clients.
_ERRORS = BaseParser.parse_error
_LOST = "Redis connection lost with {} commands unanswered: their outcome is unknown"
_STALLED = "Redis sent no reply for {:.0f} s"


class _Connection(asyncio.Protocol):
    """One connection: writes what it is given, matches replies to waiters in order."""

    def __init__(self, read_timeout: float) -> None:
        self._reader = hiredis.Reader(replyError=_ERRORS, encoding="utf-8")
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._transport: Any = None  # asyncio's or uvloop's, which are not its subclasses
        self._read_timeout = read_timeout
        # When the oldest waiter was last helped along: a reply, or the queue filling again.
        self._progress = 0.0
        self._watch: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._watch_stalls()

    def write(self, data: bytes, futures: Iterable["asyncio.Future[Any]"]) -> None:
        if not self._waiting:
            self._progress = time.monotonic()
        self._waiting.extend(futures)
        try:
            self._transport.write(data)
        except Exception as exc:  # a transport closing under us: nobody is left waiting
            self.abort(f"writing to Redis failed ({exc!r})")

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        try:
            reply = self._reader.gets()
            while reply is not False:
                future = waiting.popleft()
                if not future.done():  # done: its caller gave up (cancelled)
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
                reply = self._reader.gets()
        except (hiredis.ProtocolError, IndexError) as exc:
            # Unparseable, or a reply nobody asked for: the stream is out of step.
            self.abort(f"Redis sent what cannot be matched to a command ({exc!r})")
            return
        self._progress = time.monotonic()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(_LOST.format(len(self._waiting))))

    def abort(self, why: str, error: type[Exception] = RedisConnectionError) -> None:
        self._fail(error(f"{why}; {_LOST.format(len(self._waiting))}"))
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def closing(self) -> bool:
        # A transport closing before connection_lost has run drops what is written to it.
        return self._transport is None or self._transport.is_closing()

    def _fail(self, error: Exception) -> None:
        self.closed = True
        if self._watch is not None:
            self._watch.cancel()
        waiting, self._waiting = self._waiting, deque()
        for future in waiting:
            if not future.done():
                future.set_exception(error)

    def _watch_stalls(self) -> None:
        if self.closed:
            return
        if self._waiting and time.monotonic() - self._progress > self._read_timeout:
            self.abort(_STALLED.format(self._read_timeout), RedisTimeoutError)
            return
        loop = asyncio.get_running_loop()
        self._watch = loop.call_later(min(1.0, self._read_timeout / 2), self._watch_stalls)


class Pipelined:
    """One Redis node, one connection, commands auto-pipelined (see the module)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        path: str | None = None,
        tls: ssl.SSLContext | None = None,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self.name = path or f"{host}:{port}"
        self._address = (host, port)
        self._path = path
        self._tls = tls
        self._handshake: list[tuple[Any, ...]] = []
        if password:
            self._handshake.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self._handshake.append(("SELECT", db))
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._unsent: list[bytes] = []
        self._unsent_futures: list[asyncio.Future[Any]] = []
        self._scheduled = False
        # The WAIT that ends the next write, shared by every call of it that asked for one.
        self._wait: tuple[int, int] | None = None
        self._wait_future: asyncio.Future[Any] | None = None
        self._closed = False

    def execute(self, *args: Any) -> "asyncio.Future[Any]":
        """Queue one command for this turn's write; await the result for its reply."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._closed:
            future.set_exception(RedisConnectionError("the Redis connection is closed"))
            return future
        self._unsent.append(hiredis.pack_command(args))
        self._unsent_futures.append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def wait_after(self, replicas: int, timeout_ms: int) -> "asyncio.Future[Any]":
        """A WAIT written after every command of this turn's write: one for all of them (WAIT
        counts the replicas that have every write the connection made before it). A WAIT per
        call would hold each call behind every earlier call's replica round trip: Redis answers
        nothing else on a connection waiting in WAIT."""
        if self._wait_future is None or self._wait_future.done():
            self._wait_future = asyncio.get_running_loop().create_future()
            self._wait = (replicas, timeout_ms)
        else:
            held = self._wait or (0, 0)
            self._wait = (max(held[0], replicas), max(held[1], timeout_ms))
        return self._wait_future

    def _flush(self) -> None:
        self._scheduled = False
        connection = self._connection
        if connection is None or connection.closed or connection.closing():
            if self._connecting is None and not self._closed:
                self._connecting = asyncio.ensure_future(self._connect())
            return  # written once connected
        if self._wait_future is not None and not self._wait_future.done() and self._wait:
            wait: tuple[Any, ...] = ("WAIT", *self._wait)
            self._unsent.append(hiredis.pack_command(wait))
            self._unsent_futures.append(self._wait_future)
            self._wait_future = self._wait = None
        if not self._unsent:
            return
        data, futures = b"".join(self._unsent), self._unsent_futures
        self._unsent, self._unsent_futures = [], []
        connection.write(data, futures)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        connection = None
        try:
            made = _Connection(self._read_timeout)
            opening = (
                loop.create_unix_connection(lambda: made, self._path)
                if self._path
                else loop.create_connection(lambda: made, *self._address, ssl=self._tls)
            )
            await asyncio.wait_for(opening, self._connect_timeout)
            connection = made
            for command in self._handshake:  # AUTH, SELECT: before anything queued
                future = loop.create_future()
                connection.write(hiredis.pack_command(command), (future,))
                await future
        except BaseException as exc:
            # Nothing queued was written: every caller is told, none is left waiting (a close
            # that cancelled this too).
            if connection is not None:
                connection.close()
            error = exc
            if isinstance(exc, OSError | TimeoutError | asyncio.CancelledError):
                error = RedisConnectionError(f"cannot reach Redis at {self.name}: {exc!r}")
            self._fail_unsent(error)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._connecting = None
        self._connection = connection
        if self._closed:
            connection.close()
            return
        self._flush()

    def _fail_unsent(self, error: BaseException) -> None:
        futures, self._unsent, self._unsent_futures = self._unsent_futures, [], []
        if self._wait_future is not None:
            futures.append(self._wait_future)
            self._wait_future = self._wait = None
        for future in futures:
            if not future.done():
                future.set_exception(error)

    async def aclose(self) -> None:
        self._closed = True
        self._fail_unsent(RedisConnectionError("the Redis connection is closed"))
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def drop(self, why: str) -> None:
        """Abort the connection (a test's, or a stall seen by a caller): waiters fail."""
        if self._connection is not None:
            self._connection.abort(why)


class PipelinedCluster:
    """A Redis Cluster: one pipelined connection per node, each call sent to its slot's master
    as redis-py's cluster client knows the topology (read again after a lost connection)."""

    def __init__(self, topology: Any, connect_timeout: float, read_timeout: float) -> None:
        self.topology = topology  # redis.asyncio.RedisCluster
        self._options = topology.get_connection_kwargs()
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._nodes: dict[tuple[str, int], Pipelined] = {}

    async def node_of(self, key: str) -> Pipelined:
        await self.topology.initialize()  # reads the slots when new or after a lost connection
        node = self.topology.get_node_from_key(key)
        return self.node_at(node.host, node.port)

    def node_at(self, host: str, port: int) -> Pipelined:
        node = self._nodes.get((host, port))
        if node is None:
            node = self._nodes[(host, port)] = Pipelined(
                host, port, username=self._options.get("username"),
                password=self._options.get("password"), connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
            )  # fmt: skip
        return node

    async def moved(self, error: Any) -> None:
        await self.topology.nodes_manager.move_slot(error)

    def lost(self) -> None:
        # redis-py's own flag for "read the slots again": a failover moved them.
        self.topology._initialize = True

    async def aclose(self) -> None:
        for node in self._nodes.values():
            await node.aclose()


Calls = Pipelined | PipelinedCluster
