"""Every Lua script, read once from the `lua` package, and how Redis is asked to run it.

The scripts that change an account are functions of one library (FUNCTION LOAD, then FCALL):
a library is run once, when it is loaded, where a script's text runs again on every call, and
lua/account.lua's functions with it: 1.8 µs of Redis's script time a deduct
(docs/performance.md). The others go by SHA (EVALSHA). A call Redis cannot place (NOSCRIPT, or
no such function) did not run: it is sent again once the node has what it lacks.
"""

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cache
from importlib.resources import files
from typing import Any

from redis import Redis
from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from engine.errors import UnavailableError
from engine.metrics.registry import SCRIPT_ERRORS
from engine.store.pipelined import Calls, Pipelined, PipelinedCluster
from engine.store.redis import OUTAGES, UNREACHABLE, as_unavailable

# The scripts that change an account share lua/account.lua: one library with it, and put behind
# it for EVAL.
_ACCOUNT_SCRIPTS = ("apply_entry", "hold", "settle_hold", "expire_due", "apply_batch")
# A call Redis could not place is sent again after loading what it lacked; a node that keeps
# losing it (SCRIPT FLUSH, FUNCTION FLUSH) between the two gives up after this many tries.
_LOADS = 5
_FLUSHED = "Redis keeps losing its scripts (SCRIPT FLUSH); retry shortly"

Call = tuple[Sequence[str], Sequence[Any]]  # keys, args


def _text(name: str) -> str:
    return files("lua").joinpath(f"{name}.lua").read_text()


@cache
def source(name: str) -> str:
    """The script as EVAL runs it."""
    if name in _ACCOUNT_SCRIPTS:
        return _text("account") + _text(name)
    return _text(name)


@cache
def _library() -> tuple[str, str]:
    """The account scripts as one library, and the suffix of its and its functions' names: the
    hash of its text, so that two versions of Tally on one Redis each call their own."""
    # Each script's text becomes a function's body. KEYS and ARGV, globals for EVAL, are the
    # library's locals here, set by each call; fresh() forgets what the previous call left.
    bodies = "".join(
        f"redis.register_function('tally_{name}_VERSION', function(keys, args)\n"
        f"KEYS, ARGV = keys, args\nfresh()\n{_text(name)}\nend)\n"
        for name in _ACCOUNT_SCRIPTS
    )
    code = "local KEYS, ARGV\n" + _text("account") + bodies
    version = hashlib.sha1(code.encode()).hexdigest()[:16]
    return f"#!lua name=tally_{version}\n" + code.replace("_VERSION'", f"_{version}'"), version


def library() -> str:
    """What FUNCTION LOAD takes for the account scripts."""
    return _library()[0]


def library_name() -> str:
    return f"tally_{_library()[1]}"


@dataclass(frozen=True, slots=True)
class Lua:
    """One script: `command` runs it (followed by the number of keys, the keys, the
    arguments), `load` makes a node hold it. `sha` names its EVAL form, which the blocking
    sweeps' pipelines use for every script (run_all)."""

    text: str
    sha: str
    command: tuple[str, str]
    load: tuple[str, ...]

    @staticmethod
    def named(name: str) -> "Lua":
        script = Lua.of(source(name))
        if name in _ACCOUNT_SCRIPTS:
            function = ("FCALL", f"tally_{name}_{_library()[1]}")
            load = ("FUNCTION", "LOAD", "REPLACE", library())
            return Lua(script.text, script.sha, function, load)
        return script

    @staticmethod
    def of(text: str) -> "Lua":
        """A script called by SHA."""
        sha = hashlib.sha1(text.encode()).hexdigest()
        return Lua(text, sha, ("EVALSHA", sha), ("SCRIPT", "LOAD", text))


@dataclass(frozen=True, slots=True)
class Scripts:
    apply_entry: Lua
    hydrate: Lua
    repair_account: Lua
    claim_due: Lua
    vouch_account: Lua
    mark_complete: Lua
    hold: Lua
    settle_hold: Lua
    expire_due: Lua
    evict_account: Lua
    apply_batch: Lua

    def all(self) -> list[Lua]:
        return [getattr(self, field.name) for field in fields(self)]


SCRIPTS = Scripts(*(Lua.named(field.name) for field in fields(Scripts)))


def unloaded(reply: Any) -> bool:
    """Whether a reply says the node lacked the script or function: the call did not run."""
    return isinstance(reply, NoScriptError) or (
        isinstance(reply, ResponseError) and str(reply).startswith("Function not found")
    )


def call(client: Redis, script: Lua, keys: Sequence[str] = (), args: Sequence[Any] = ()) -> Any:
    """One call on a blocking client, loading the script first where Redis lacks it."""
    for _ in range(_LOADS):
        try:
            return client.execute_command(*script.command, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
        except ResponseError as exc:
            if not unloaded(exc):
                raise
        if script.command[0] == "FCALL":  # on a cluster, to every master
            client.function_load(library(), replace=True)
        else:
            client.script_load(script.text)
    raise UnavailableError(_FLUSHED)


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


def _evalsha(pipe: Any, script: Lua, keys: Sequence[str], args: Sequence[Any]) -> None:
    # execute_command, not pipe.evalsha: redis-py refuses the latter in a cluster pipeline,
    # though every key of a Tally script call is in one slot. EVALSHA, not FCALL, for every
    # script: redis-py's cluster pipeline asks a node for FCALL's keys, a round trip a call.
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


async def run(
    client: Calls,
    script: Lua,
    keys: Sequence[str],
    args: Sequence[Any],
    acks: Acks = NO_ACKS,
) -> Any:
    """One script call on the hot path's pipelined connection, loading the script again
    as often as Redis lost it; with `acks`, acknowledged only once that many replicas have it."""
    # try/except rather than outages(): this is every deduct's path, and a context manager
    # costs a generator per call.
    try:
        for _ in range(_LOADS):
            try:
                if isinstance(client, Pipelined):
                    if not acks.replicas:
                        return await client.execute(*script.command, len(keys), *keys, *args)
                    return await _on_node(client, script, keys, args, acks, asking=False)
                return await _on_cluster(client, script, keys, args, acks)
            except ResponseError as exc:
                if not unloaded(exc):
                    raise
                await (await _node_of(client, keys)).execute(*script.load)
    except OUTAGES as exc:
        SCRIPT_ERRORS.labels(type(exc).__name__).inc()
        raise as_unavailable(exc) from exc
    except RedisError as exc:  # the script itself failed
        SCRIPT_ERRORS.labels(type(exc).__name__).inc()
        raise
    raise UnavailableError(_FLUSHED)


async def _on_node(
    node: Pipelined,
    script: Lua,
    keys: Sequence[str],
    args: Sequence[Any],
    acks: Acks,
    *,
    asking: bool,
) -> Any:
    """The call on one node, behind ASKING when a resharding sent it there, with a WAIT behind
    it on the same connection when `acks` asks: WAIT counts the replicas that have every write
    the connection made, the call's included."""
    if asking:
        node.execute("ASKING").add_done_callback(_settle)  # the call's own reply says enough
    reply = node.execute(*script.command, len(keys), *keys, *args)
    if not acks.replicas:
        return await reply
    confirmed = node.wait_after(acks.replicas, acks.timeout_ms)
    confirmed.add_done_callback(_settle)  # read below, unless this caller gives up first
    return _confirmed([await _outcome(reply), await _outcome(confirmed)], acks)


async def _on_cluster(
    cluster: PipelinedCluster,
    script: Lua,
    keys: Sequence[str],
    args: Sequence[Any],
    acks: Acks,
) -> Any:
    """The call sent to its slot's master, redirects followed here (a redirect means it did
    not run). A lost connection makes the topology be read again before the next call: a
    failover has moved the slots to a promoted replica."""
    node, asking = await cluster.node_of(keys[0]), False
    for _ in range(_REDIRECTS):
        try:
            return await _on_node(node, script, keys, args, acks, asking=asking)
        except MovedError as moved:
            await cluster.moved(moved)
            node, asking = await cluster.node_of(keys[0]), False
        except AskError as ask:
            node, asking = cluster.node_at(ask.host, ask.port), True
        except TryAgainError:
            await asyncio.sleep(0.05)  # a multi-key call during the slot's migration
            asking = False
        except OUTAGES:
            cluster.lost()
            raise
        except ResponseError as exc:  # after the outages and redirects, which are ResponseErrors
            if not unloaded(exc):
                raise
            # The node that answered lacks the script (a migration's target, new to it): load
            # it there, and send the call again, which did not run.
            await node.execute(*script.load)
    raise UnavailableError(UNREACHABLE, "redis")


def _settle(future: "asyncio.Future[Any]") -> None:
    if not future.cancelled():
        future.exception()  # retrieved: an ignored reply's error is not logged as lost


async def _outcome(future: "asyncio.Future[Any]") -> Any:
    try:
        return await future
    except RedisError as exc:
        return exc


def _confirmed(raw: list[Any], acks: Acks) -> Any:
    """One call's reply (and its WAIT's), raised if it is an error or not confirmed."""
    reply = _acknowledged(raw, 1, acks)[0]
    if isinstance(reply, Exception):
        raise reply
    return reply


async def run_many(
    client: Calls,
    script: Lua,
    calls: Sequence[Call],
    *,
    each: bool = False,
    acks: Acks = NO_ACKS,
) -> list[Any]:
    """Many calls of one script in one round trip, replies in order. Only the calls the node
    could not place (unloaded) are sent again: the others ran, whatever happened to the cache since.

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
                if unloaded(reply):
                    lost.append(index)
                else:
                    replies[index] = reply
            if not lost:
                break
            try:
                for node in {await _node_of(client, calls[index][0]) for index in lost}:
                    await node.execute(*script.load)
            except OUTAGES as exc:  # FUNCTION LOAD is refused at maxmemory, for one
                if not each:
                    raise
                for index in lost:  # they did not run; the others did and keep their replies
                    replies[index] = exc
                break
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


async def _send(client: Calls, script: Lua, calls: Sequence[Call], acks: Acks) -> list[Any]:
    """The calls written on each node's pipelined connection, with a WAIT behind each node's
    calls when `acks` asks for one; replies (errors included) in order. A node that fails fails
    only its own calls. Calls are not redirected: one whose slot moved is answered with MOVED
    or ASK, and sent again alone (run_many)."""
    groups: dict[Pipelined, list[int]] = {}
    for position, (keys, _) in enumerate(calls):
        groups.setdefault(await _node_of(client, keys), []).append(position)
    sent = []
    for node, positions in groups.items():
        futures = [
            node.execute(*script.command, len(calls[p][0]), *calls[p][0], *calls[p][1])
            for p in positions
        ]
        if acks.replicas:
            futures.append(node.wait_after(acks.replicas, acks.timeout_ms))
        for future in futures:
            future.add_done_callback(_settle)  # read below, unless this caller gives up first
        sent.append((positions, futures))
    replies: list[Any] = [None] * len(calls)
    for positions, futures in sent:
        raw = [await _outcome(future) for future in futures]
        if isinstance(client, PipelinedCluster) and any(isinstance(r, OUTAGES) for r in raw):
            client.lost()
        for position, reply in zip(
            positions, _acknowledged(raw, len(positions), acks), strict=True
        ):
            replies[position] = reply
    return replies


async def _node_of(client: Calls, keys: Sequence[str]) -> Pipelined:
    return client if isinstance(client, Pipelined) else await client.node_of(keys[0])


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


def run_all(client: Redis, script: Lua, calls: Sequence[Call]) -> list[Any]:
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
        client.script_load(script.text)
        pending = lost
    raise UnavailableError(_FLUSHED)
