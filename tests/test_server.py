"""`tally serve`'s HTTP protocol (api/server.py) answers the hot routes itself, and byte for byte
as uvicorn's ASGI cycle answers them: over real sockets, against two servers on one Tally (one
with the protocol, one with uvicorn's own), and in order when requests are pipelined."""

import asyncio
import itertools
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import uvicorn

from api.app import create_app
from api.server import TallyProtocol
from engine.settings import Settings
from tests.conftest import AppUnderTest
from tests.test_hot import _ENTRY_BODIES

pytestmark = pytest.mark.anyio

_ids = itertools.count()
Ask = Callable[[bytes], Awaitable[bytes]]


class _Served:
    """A Tally app on uvicorn in this event loop, and the requests its protocol answered."""

    def __init__(self, server: uvicorn.Server, port: int) -> None:
        self.server = server
        self.port = port
        self.answered = 0


@pytest.fixture
async def servers(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dict[str, _Served]]:
    served: dict[str, _Served] = {}
    serve = TallyProtocol._serve

    async def counted(self: TallyProtocol, *args: Any) -> None:
        served["protocol"].answered += 1
        await serve(self, *args)

    monkeypatch.setattr(TallyProtocol, "_serve", counted)
    tasks = []
    for name, http in (("protocol", TallyProtocol), ("uvicorn", "httptools")):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            create_app(settings), http=http, log_level="warning", access_log=False,
            server_header=False,
        )  # fmt: skip
        server = uvicorn.Server(config)
        served[name] = _Served(server, listener.getsockname()[1])
        tasks.append(asyncio.create_task(server.serve(sockets=[listener])))
    while not all(s.server.started for s in served.values()):
        await asyncio.sleep(0.01)
        for task in tasks:
            if task.done():
                task.result()  # a server that could not start says why
    yield served
    for s in served.values():
        s.server.should_exit = True
    await asyncio.gather(*tasks)


async def _connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _read(reader: asyncio.StreamReader) -> bytes:
    """One response, raw, read by its Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"\r\ncontent-length: (\d+)\r\n", head)
    assert length is not None, head
    return head + await reader.readexactly(int(length[1]))


def _same(raw: bytes) -> bytes:
    """A response without its date, the one header two servers cannot agree on."""
    return re.sub(rb"\r\ndate: [^\r]*", b"", raw)


def _request(method: str, target: str, key: str, body: bytes = b"", **headers: str) -> bytes:
    """A request's bytes; `headers` (Idempotency_Key=...) add to or replace the usual ones."""
    fields = {"Host": "tally", "Authorization": f"Bearer {key}"}
    fields["X-Request-Id"] = f"srv-{next(_ids)}"
    if body:
        fields |= {"Content-Type": "application/json", "Content-Length": str(len(body))}
    fields |= {name.replace("_", "-"): value for name, value in headers.items()}
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.fixture
async def ask(servers: dict[str, _Served]) -> AsyncIterator[dict[str, Ask]]:
    """One keep-alive connection to each server; a request in, its raw response out."""
    asks: dict[str, Ask] = {}
    writers = []
    for name, served in servers.items():
        reader, writer = await _connection(served.port)
        writers.append(writer)

        async def one(request: bytes, reader: Any = reader, writer: Any = writer) -> bytes:
            writer.write(request)
            return _same(await _read(reader))

        asks[name] = one
    yield asks
    for writer in writers:
        writer.close()


async def test_entries_answer_as_uvicorns_cycle_for_every_body(
    ask: dict[str, Ask], servers: dict[str, _Served], test_app: AppUnderTest
) -> None:
    key = test_app.api_key
    await ask["uvicorn"](_request("POST", "/credits/add", key, b'{"user_id":"u1","amount":100}'))
    sent = 0
    for path in ("/credits/deduct", "/credits/add"):
        for body in _ENTRY_BODIES:
            # The uvicorn server applies; both then replay it: the same bytes, the same id.
            request = _request("POST", path, key, body, Idempotency_Key=f"k-{next(_ids)}")
            await ask["uvicorn"](request)
            assert await ask["protocol"](request) == await ask["uvicorn"](request), body
            sent += 1
    assert servers["protocol"].answered == sent  # by the protocol's own path, every one


async def test_the_protocol_answers_the_hot_routes_itself(
    servers: dict[str, _Served], test_app: AppUnderTest
) -> None:
    """A differential test is only worth something if the protocol's own path ran."""
    key = test_app.api_key
    reader, writer = await _connection(servers["protocol"].port)
    for request in (
        _request("POST", "/credits/add", key, b'{"user_id":"c1","amount":5}'),
        _request("POST", "/credits/deduct", key, b'{"user_id":"c1","amount":2}'),
        _request("POST", "/credits/batch", key, b'{"operations":[]}'),
        _request("GET", "/credits/balance?user_id=c1", key),
        _request("GET", "/healthz", key),  # not a hot route: uvicorn's cycle
        _request("GET", "/credits/balance?user_id=c1#x", key),  # a fragment: uvicorn's cycle
    ):
        writer.write(request)
        await _read(reader)
    writer.close()
    assert servers["protocol"].answered == 4


@pytest.mark.parametrize(
    "target, body, headers",
    [
        ("/credits/deduct?user_id=u1", b'{"user_id":"u1","amount":1}', {}),
        ("/credits/deduct", b'{"user_id":"u1","amount":1,"description":"' + b"d" * 70_000 + b'"}',
         {}),
        ("/credits/deduct", b'{"user_id":"u1","amount":1}', {"Content_Type": "text/plain"}),
        ("/credits/deduct", b'{"user_id":"u1","amount":1}', {"Idempotency_Key": "k" * 300}),
        ("/credits/deduct", b'{"user_id":"u1","amount":1}', {"Authorization": "Bearer nope"}),
        ("/credits/%64educt", b'{"user_id":"u1","amount":1000000000}', {}),
        ("/credits/deduct/", b'{"user_id":"u1","amount":1}', {}),
        ("/credits/batch", b'{"operations":{}}', {}),
        ("/credits/batch", b'{"operations":[]}', {"Idempotency_Key": "whole"}),
        ("/credits/balance?user_id=u1", b"", {}),
        ("/credits/balance?user_id=a%20b", b"", {}),
        ("/credits/balance?user_id=u1&user_id=u2", b"", {}),
        ("/credits/balance?user_id=u1#frag", b"", {}),
        ("/credits/balance", b"", {}),
    ],
)  # fmt: skip
async def test_refusals_and_reads_answer_as_uvicorns_cycle(
    ask: dict[str, Ask], test_app: AppUnderTest, target: str, body: bytes,
    headers: dict[str, str],
) -> None:  # fmt: skip
    key = test_app.api_key
    await ask["uvicorn"](_request("POST", "/credits/add", key, b'{"user_id":"u1","amount":5}'))
    method = "POST" if body else "GET"
    request = _request(method, target, key, body, **headers)
    assert await ask["protocol"](request) == await ask["uvicorn"](request)
    # The connection is still good for the next request.
    balance = _request("GET", "/credits/balance?user_id=u1", key)
    assert await ask["protocol"](balance) == await ask["uvicorn"](balance)


def _chunked(key: str, path: str, chunks: list[bytes], idempotency_key: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: tally\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        f"X-Request-Id: chunked-{idempotency_key}\r\nIdempotency-Key: {idempotency_key}\r\n\r\n"
    ).encode()
    return head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


async def test_chunked_bodies_answer_as_uvicorns_cycle(
    ask: dict[str, Ask], test_app: AppUnderTest
) -> None:
    key = test_app.api_key
    await ask["uvicorn"](_request("POST", "/credits/add", key, b'{"user_id":"u1","amount":5}'))
    applied = _chunked(key, "/credits/deduct", [b'{"user_id":"u1",', b'"amount":2}'], "ch-1")
    first = await ask["protocol"](applied)
    assert b" 200 OK" in first and b'"balance_after":3' in first
    assert await ask["protocol"](applied) == await ask["uvicorn"](applied)
    too_large = _chunked(key, "/credits/deduct", [b"x" * 40_000] * 30, "ch-2")
    refused = await ask["protocol"](too_large)
    assert b" 413 " in refused
    assert refused == await ask["uvicorn"](too_large)


async def test_http_1_0_is_answered_and_closed_as_uvicorn_does(
    servers: dict[str, _Served], test_app: AppUnderTest
) -> None:
    request = _request("GET", "/credits/balance?user_id=u1", test_app.api_key).replace(
        b"HTTP/1.1", b"HTTP/1.0", 1
    )
    answers = []
    for name in ("protocol", "uvicorn"):
        reader, writer = await _connection(servers[name].port)
        writer.write(request)
        answers.append(_same(await reader.read()))  # to the end: the server closes
        writer.close()
    assert b"\r\nconnection: close\r\n" in answers[0]
    assert answers[0] == answers[1]


async def test_pipelined_requests_are_answered_in_order(
    servers: dict[str, _Served], test_app: AppUnderTest
) -> None:
    key = test_app.api_key
    reader, writer = await _connection(servers["protocol"].port)

    def entry(kind: str, amount: int, rid: str) -> bytes:
        body = b'{"user_id":"p1","amount":%d}' % amount
        return _request("POST", f"/credits/{kind}", key, body, X_Request_Id=rid)

    requests = [
        entry("add", 10, "p-1"),
        entry("deduct", 3, "p-2"),
        _request("GET", "/healthz", key, X_Request_Id="p-3"),
        entry("deduct", 4, "p-4"),
        _request("GET", "/credits/balance?user_id=p1", key, X_Request_Id="p-5"),
    ]
    writer.write(b"".join(requests))  # one write: the server reads them all at once
    answers = [await _read(reader) for _ in requests]
    writer.close()
    ids = [re.search(rb"\r\nx-request-id: ([^\r]*)", a)[1] for a in answers]  # type: ignore[index]
    assert ids == [b"p-1", b"p-2", b"p-3", b"p-4", b"p-5"]
    bodies = [orjson.loads(a.partition(b"\r\n\r\n")[2]) for a in answers]
    assert [b.get("balance_after", b.get("balance")) for b in bodies] == [10, 7, None, 3, 3]


async def test_a_client_that_leaves_mid_body_applies_nothing(
    servers: dict[str, _Served], test_app: AppUnderTest
) -> None:
    key = test_app.api_key
    port = servers["protocol"].port
    reader, writer = await _connection(port)
    body = b'{"user_id":"gone","amount":7}'
    writer.write(_request("POST", "/credits/add", key, body)[:-10])
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()
    await asyncio.sleep(0.05)
    reader, writer = await _connection(port)
    writer.write(_request("GET", "/credits/balance?user_id=gone", key))
    assert b'"balance":0' in await _read(reader)
    writer.close()


async def test_expect_100_continue_is_left_to_uvicorn(
    servers: dict[str, _Served], test_app: AppUnderTest
) -> None:
    request = _request(
        "POST", "/credits/add", test_app.api_key, b'{"user_id":"e1","amount":4}',
        Expect="100-continue",
    )  # fmt: skip
    head, _, body = request.partition(b"\r\n\r\n")
    reader, writer = await _connection(servers["protocol"].port)
    writer.write(head + b"\r\n\r\n")
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    assert b'"balance_after":4' in await _read(reader)
    writer.close()
