"""The hot path's auto-pipelined Redis connection (engine/store/pipelined.py), against a real
redis-server: one write per event-loop turn, and its failure rules."""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.errors import UnavailableError
from engine.store import scripts
from engine.store.keys import account_keys
from engine.store.pipelined import Pipelined
from engine.store.redis import pipelined_client
from engine.store.scripts import SCRIPTS, library_name
from tests.servers import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def admin(own_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=own_redis.port, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
async def node(own_redis: RedisServer) -> AsyncIterator[Pipelined]:
    made = Pipelined("127.0.0.1", own_redis.port, connect_timeout=2, read_timeout=0.5)
    yield made
    await made.aclose()


def _connections(admin: redis.Redis) -> int:
    return int(admin.info("clients")["connected_clients"])


async def test_one_turn_is_one_write_on_one_connection(node: Pipelined, admin: redis.Redis) -> None:
    await node.execute("PING")  # connected
    before = int(admin.info("stats")["total_reads_processed"])
    replies = await asyncio.gather(*(node.execute("INCR", "n") for _ in range(200)))
    assert replies == list(range(1, 201))  # each caller its own reply, in the order asked
    assert _connections(admin) == 2  # the admin's and the pipelined one
    # Redis read the 200 commands at once (the admin's INFO calls are the other reads).
    assert int(admin.info("stats")["total_reads_processed"]) - before <= 3


async def test_replies_in_order_and_errors_to_their_own_caller(node: Pipelined) -> None:
    ok, wrong, after = await asyncio.gather(
        node.execute("SET", "k", "v"),
        node.execute("INCR", "k"),
        node.execute("GET", "k"),
        return_exceptions=True,
    )
    assert ok == "OK" and isinstance(wrong, ResponseError) and after == "v"


async def test_a_caller_that_gives_up_keeps_its_place_in_the_queue(node: Pipelined) -> None:
    # The first caller stops waiting while its command blocks; the replies after it must still reach
    # their own callers, not shift by one.
    slow = node.execute("BLPOP", "never", "0.2")
    first, second = node.execute("SET", "a", "1"), node.execute("INCRBY", "b", "41")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(slow, 0.05)
    assert await first == "OK"
    assert await second == 41
    assert await node.execute("GET", "a") == "1"


async def test_lost_connection_unanswered_fail_answered_kept_never_resent(
    node: Pipelined, admin: redis.Redis
) -> None:
    await node.execute("PING")  # connected
    done = node.execute("INCR", "counted")
    await done
    blocked = node.execute("BLPOP", "never", "0")  # written, never answered
    behind = node.execute("INCR", "counted")  # written behind it: answered after BLPOP only
    await asyncio.sleep(0.05)
    admin.client_kill_filter(_type="normal", skipme=True)
    for future in (blocked, behind):
        with pytest.raises(RedisConnectionError, match="outcome is unknown"):
            await future
    assert done.result() == 1  # the reply that had arrived stays
    # The next command goes out on a new connection. The INCR written behind the blocked call
    # never ran (Redis dropped it with the connection), and it was not sent again: the caller
    # was told its outcome is unknown, and decides.
    assert await node.execute("INCR", "counted") == 2
    assert admin.get("counted") == "2"


async def test_a_stall_aborts_the_connection(node: Pipelined, admin: redis.Redis) -> None:
    await node.execute("PING")
    stalled = node.execute("BLPOP", "never", "3")  # no reply for longer than the read timeout
    with pytest.raises(RedisTimeoutError, match="no reply"):
        await asyncio.wait_for(asyncio.shield(stalled), 2)
    assert await node.execute("PING") == "PONG"  # on a new connection


async def test_commands_queued_while_redis_is_down_fail_as_unreachable() -> None:
    gone = RedisServer().start()
    node = Pipelined("127.0.0.1", gone.port, connect_timeout=1, read_timeout=1)
    gone.stop()
    try:
        with pytest.raises(RedisConnectionError, match="cannot reach Redis"):
            await node.execute("PING")
    finally:
        await node.aclose()


async def test_noscript_is_the_one_resend(node: Pipelined, admin: redis.Redis) -> None:
    script = scripts.Lua.of("return redis.call('INCR', KEYS[1])")
    admin.script_flush()
    with pytest.raises(NoScriptError):
        await node.execute("EVALSHA", script.sha, 1, "x")
    assert await scripts.run(node, script, ["x"], []) == 1  # loaded, then sent again
    admin.script_flush()
    assert await scripts.run(node, script, ["x"], []) == 2
    assert admin.get("x") == "2"


async def test_a_lost_function_is_loaded_and_the_call_sent_again(
    node: Pipelined, admin: redis.Redis
) -> None:
    # The account scripts are functions (FCALL): a node without them answers that it has no
    # such function, which proves the call did not run.
    keys = account_keys("app_p", "nobody").script_keys()
    args = [-1, 0, '{"ledger_id":"x"', "", 60, 1, "x", "", "", "", "", ""]
    admin.function_flush()
    with pytest.raises(ResponseError, match="Function not found"):
        await node.execute(*SCRIPTS.apply_entry.command, len(keys), *keys, *args)
    assert await scripts.run(node, SCRIPTS.apply_entry, keys, args) == ["missing"]
    assert admin.function_list(library=library_name())


async def test_a_lost_connection_is_a_503_for_the_script_call_never_resent(
    node: Pipelined, admin: redis.Redis
) -> None:
    script = scripts.Lua.of("return redis.call('INCR', KEYS[1])")
    await node.execute("SCRIPT", "LOAD", script.text)
    blocked = node.execute("BLPOP", "never", "0")  # the call waits behind it, unanswered
    waiting = asyncio.ensure_future(scripts.run(node, script, ["x"], []))
    await asyncio.sleep(0.1)
    admin.client_kill_filter(_type="normal", skipme=True)
    with pytest.raises(UnavailableError, match="Redis is unavailable"):
        await waiting
    with pytest.raises(RedisConnectionError):
        await blocked
    await asyncio.sleep(0.1)
    assert admin.get("x") is None  # not run, and not sent again on the next connection


async def test_the_calls_of_one_write_share_one_wait(node: Pipelined, admin: redis.Redis) -> None:
    # A WAIT per call would hold each call behind every earlier call's WAIT: with no replica,
    # 50 calls would take 50 timeouts. One WAIT follows the write; each call is unconfirmed.
    script = scripts.Lua.of("return redis.call('INCR', KEYS[1])")
    await node.execute("SCRIPT", "LOAD", script.text)
    admin.config_resetstat()
    acks = scripts.Acks(replicas=1, timeout_ms=300)
    started = time.monotonic()
    replies = await asyncio.gather(
        *(scripts.run(node, script, ["w"], [], acks) for _ in range(50)), return_exceptions=True
    )
    assert time.monotonic() - started < 3
    assert all(isinstance(reply, UnavailableError) for reply in replies)  # outcome unknown
    assert admin.get("w") == "50"  # each ran once: the caller retries with its key
    assert admin.info("commandstats")["cmdstat_wait"]["calls"] == 1


async def test_the_database_is_read_as_redis_py_reads_it(
    own_redis: RedisServer, admin: redis.Redis
) -> None:
    node = pipelined_client(f"redis://127.0.0.1:{own_redis.port}/0?db=2")
    try:
        assert await node.execute("SET", "where", "db2") == "OK"
    finally:
        await node.aclose()
    assert redis.Redis(port=own_redis.port, db=2, decode_responses=True).get("where") == "db2"


async def test_a_closed_connection_fails_what_it_had_queued(node: Pipelined) -> None:
    queued = node.execute("PING")  # not written yet: the connection opens on the next turn
    await node.aclose()
    with pytest.raises(RedisConnectionError):
        await queued
    with pytest.raises(RedisConnectionError):
        await node.execute("PING")
