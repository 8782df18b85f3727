"""Every Lua script, read once from the `lua` package and registered once per Redis client.

The same files serve the hot path's async client and the workers' blocking one; calls go by
SHA and reload on NOSCRIPT.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any, Generic, TypeVar

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.commands.core import AsyncScript, Script
from redis.exceptions import AskError, MovedError, NoScriptError, RedisError, TryAgainError

from engine.errors import UnavailableError
from engine.metrics.registry import SCRIPT_ERRORS
from engine.store.redis import OUTAGES, UNREACHABLE, as_unavailable, is_cluster

S = TypeVar("S", Script, AsyncScript)

_NAMES = (
    "apply_entry", "hydrate", "repair_account", "claim_due", "vouch_account", "mark_complete",
    "hold", "settle_hold", "expire_due", "evict_account",
)  # fmt: skip
# The scripts that change an account share lua/account.lua, put in front of their own text.
_ACCOUNT_SCRIPTS = frozenset(("apply_entry", "hold", "settle_hold", "expire_due"))
# NOSCRIPT means the call did not run, so it is sent again after loading the script; a script
# cache flushed again and again between the two gives up after this many tries.
_LOADS = 5
_FLUSHED = "Redis keeps losing its scripts (SCRIPT FLUSH); retry shortly"

Call = tuple[Sequence[str], Sequence[Any]]  # keys, args
AnyScript = Script | AsyncScript


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
    evict_account: S

    @staticmethod
    def register(redis: Redis) -> "Scripts[Script]":
        return Scripts(*(redis.register_script(source(name)) for name in _NAMES))

    @staticmethod
    def register_async(redis: AsyncRedis) -> "Scripts[AsyncScript]":
        return Scripts(*(redis.register_script(source(name)) for name in _NAMES))


@dataclass(frozen=True, slots=True)
class Acks:
    """How many replicas must have a write before it is acknowledged (TALLY_REDIS_WAIT_*)."""

    replicas: int = 0
    timeout_ms: int = 500


NO_ACKS = Acks()
_NOT_REPLICATED = (
    "Redis did not confirm the write on enough replicas in time; it may or may not have been"
    " applied: retry with the same Idempotency-Key"
)
# A resharding moves a slot under a call at most this many times before the caller is told to
# retry; each redirect means the call did not run.
_REDIRECTS = 8
_REDIRECTED = (MovedError, AskError, TryAgainError)


def _evalsha(
    pipe: Any, script: AnyScript, keys: Sequence[str], args: Sequence[Any], **target: Any
) -> None:
    # execute_command, not pipe.evalsha: redis-py refuses the latter in a cluster pipeline,
    # though every key of a Tally script call is in one slot.
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args, **target)


async def run(
    client: AsyncRedis,
    script: AsyncScript,
    keys: Sequence[str],
    args: Sequence[Any],
    acks: Acks = NO_ACKS,
) -> Any:
    """One script call by SHA, loading the script again as often as Redis lost it; with
    `acks`, acknowledged only once that many replicas have it."""
    # try/except rather than outages(): this is every deduct's path, and a context manager
    # costs a generator per call.
    try:
        for _ in range(_LOADS):
            try:
                if acks.replicas or is_cluster(client):
                    return await _run_pipelined(client, script, keys, args, acks)
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


async def _run_pipelined(
    client: AsyncRedis, script: AsyncScript, keys: Sequence[str], args: Sequence[Any], acks: Acks
) -> Any:
    """The call, with `acks` a WAIT behind it on the same connection, in one round trip: WAIT
    counts the replicas that have every write this connection made, the call's included."""
    if not is_cluster(client):
        pipe = client.pipeline(transaction=False)
        _evalsha(pipe, script, keys, args)
        pipe.wait(acks.replicas, acks.timeout_ms)
        return _confirmed(await pipe.execute(raise_on_error=False), acks)
    # On a cluster the call goes to its slot's master by hand, redirects followed here: the
    # client's own would send it again on another connection than the WAIT's, and its
    # single-command path drops and reopens connections under load (measured: 503s at 64
    # requests in flight, none this way).
    cluster: Any = client
    await cluster.initialize()  # reads the topology when new, or after a lost connection
    node = cluster.get_node_from_key(keys[0])
    asking = False
    for _ in range(_REDIRECTS):
        pipe = cluster.pipeline()
        if asking:
            pipe.execute_command("ASKING", target_nodes=node)
        _evalsha(pipe, script, keys, args, target_nodes=node)
        if acks.replicas:
            pipe.execute_command("WAIT", acks.replicas, acks.timeout_ms, target_nodes=node)
        raw = (await _execute_on_cluster(cluster, pipe))[-2 if acks.replicas else -1 :]
        reply = raw[0]  # ASKING's reply dropped: the call's, then the WAIT's
        asking = isinstance(reply, AskError)
        if isinstance(reply, MovedError):
            await cluster.nodes_manager.move_slot(reply)
            node = cluster.get_node_from_key(keys[0])
        elif asking:
            node = cluster.get_node(host=reply.host, port=reply.port)
            if node is None:  # a node new to this client: read the topology, then again
                cluster._initialize = True
                await cluster.initialize()
                node, asking = cluster.get_node_from_key(keys[0]), False
        elif isinstance(reply, TryAgainError):
            await asyncio.sleep(0.05)  # a multi-key call during the slot's migration
        else:
            return _confirmed(raw, acks)
    raise UnavailableError(UNREACHABLE, "redis")


async def _execute_on_cluster(cluster: Any, pipe: Any) -> list[Any]:
    """A pipeline of commands sent to their nodes by hand. A lost connection makes the client
    read the topology again before its next command, as its own commands do (a failover has
    moved the slots to a promoted replica)."""
    try:
        replies: list[Any] = await pipe.execute(raise_on_error=False, allow_redirections=False)
    except OUTAGES:
        cluster._initialize = True  # redis-py's own flag for "read the slots again"
        raise
    for reply in replies:
        if isinstance(reply, OUTAGES):
            cluster._initialize = True
    return replies


def _confirmed(raw: list[Any], acks: Acks) -> Any:
    """One call's reply (and its WAIT's), raised if it is an error or not confirmed."""
    reply = _acknowledged(raw, 1, acks)[0]
    if isinstance(reply, Exception):
        raise reply
    return reply


async def run_many(
    client: AsyncRedis,
    script: AsyncScript,
    calls: Sequence[Call],
    *,
    each: bool = False,
    acks: Acks = NO_ACKS,
) -> list[Any]:
    """Many calls of one script in one round trip, replies in order. Only the calls refused
    with NOSCRIPT are sent again: the others ran, whatever happened to the cache since.

    A call Redis refused as an outage (out of memory) raises UnavailableError, unless `each`:
    then its reply is that error, and the calls that ran keep theirs (a batch must not report
    applied operations as failed). With `acks`, a WAIT follows the calls on each node; where
    too few replicas confirm, each call of that node is an outage, outcome unknown."""
    replies: list[Any] = [None] * len(calls)
    pending = list(range(len(calls)))
    try:
        for _ in range(_LOADS):
            lost = []
            sent = await _send(client, script, [calls[index] for index in pending], acks)
            for index, reply in zip(pending, sent, strict=True):
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
        if isinstance(reply, _REDIRECTED):
            # The slot moved under the call (a resharding), so it did not run: alone, it
            # follows the slot.
            try:
                replies[index] = await run(client, script, *calls[index], acks)
            except UnavailableError as exc:
                if not each:
                    raise
                replies[index] = exc
        elif isinstance(reply, OUTAGES):
            SCRIPT_ERRORS.labels(type(reply).__name__).inc()
            if not each:
                raise as_unavailable(reply)
            replies[index] = as_unavailable(reply)
        elif isinstance(reply, UnavailableError):
            if not each:
                raise reply
        elif isinstance(reply, Exception):
            SCRIPT_ERRORS.labels(type(reply).__name__).inc()
            raise reply
    return replies


async def _send(
    client: AsyncRedis, script: AsyncScript, calls: Sequence[Call], acks: Acks
) -> list[Any]:
    """The calls in one pipeline per node, with a WAIT behind each node's calls on the same
    connection when `acks` asks for one; replies (errors included) in order."""
    if not is_cluster(client):
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            _evalsha(pipe, script, keys, args)
        if acks.replicas:
            pipe.wait(acks.replicas, acks.timeout_ms)
        return _acknowledged(await pipe.execute(raise_on_error=False), len(calls), acks)
    # Each node's pipeline is sent and answered on its own: a node that fails fails only its
    # own calls, and the calls the other nodes ran keep their replies. Calls go to their slot's
    # node by hand and are not redirected: a call whose slot moved is answered with MOVED or
    # ASK, and sent again alone (run_many).
    cluster: Any = client
    await cluster.initialize()  # reads the topology when new, or after a lost connection
    groups: dict[str, tuple[Any, list[int]]] = {}
    for position, (keys, _) in enumerate(calls):
        node = cluster.get_node_from_key(keys[0])
        groups.setdefault(node.name, (node, []))[1].append(position)

    async def send(node: Any, positions: list[int]) -> list[Any]:
        pipe = cluster.pipeline()
        for position in positions:
            _evalsha(pipe, script, *calls[position], target_nodes=node)
        if acks.replicas:
            pipe.execute_command("WAIT", acks.replicas, acks.timeout_ms, target_nodes=node)
        return _acknowledged(await _execute_on_cluster(cluster, pipe), len(positions), acks)

    answers = await asyncio.gather(
        *(send(node, positions) for node, positions in groups.values()), return_exceptions=True
    )
    replies: list[Any] = [None] * len(calls)
    for (_, positions), answer in zip(groups.values(), answers, strict=True):
        for index, position in enumerate(positions):
            replies[position] = answer if isinstance(answer, BaseException) else answer[index]
    return replies


def _acknowledged(raw: list[Any], calls: int, acks: Acks) -> list[Any]:
    """The calls' replies; with acks, a call that ran is an outage (outcome unknown) when its
    node's WAIT, the reply after them, did not confirm it."""
    replies = raw[:calls]
    if not acks.replicas:
        return replies
    confirmed = raw[calls]
    if not isinstance(confirmed, Exception) and int(confirmed) >= acks.replicas:
        return replies
    for index, reply in enumerate(replies):
        if not isinstance(reply, Exception):
            SCRIPT_ERRORS.labels("NotReplicated").inc()
            replies[index] = UnavailableError(_NOT_REPLICATED, "redis")
    return replies


def run_all(client: Redis, script: Script, calls: Sequence[Call]) -> list[Any]:
    """run_many for blocking code (the worker's sweeps), raising the first error; no acks:
    what the worker writes in Redis it can write again, and the ledger's flush waits for the
    replicas of what it persists (engine.ledger.outbox)."""
    replies: list[Any] = [None] * len(calls)
    pending = list(range(len(calls)))
    for _ in range(_LOADS):
        pipe: Any = client.pipeline(transaction=False)
        for index in pending:
            _evalsha(pipe, script, *calls[index])
        lost = []
        for index, reply in zip(pending, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(reply, NoScriptError):
                lost.append(index)
            elif isinstance(reply, Exception):
                raise reply
            else:
                replies[index] = reply
        if not lost:
            return replies
        client.script_load(script.script)
        pending = lost
    raise UnavailableError(_FLUSHED)
