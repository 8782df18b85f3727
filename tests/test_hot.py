"""The hot routes' lean path (api/hot.py) answers byte for byte what the same routes answer
through Starlette, its routing and its middleware (the reference, kept for every other route):
status, headers and body, for valid requests and for every way a request can be wrong."""

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette

from api.app import TallyApp, create_app
from engine.accounts.apps import Apps
from engine.accounts.repository import AppRepository
from engine.models import MAX_DESCRIPTION, MAX_USER_ID
from engine.settings import Settings
from tests.conftest import AppUnderTest

pytestmark = pytest.mark.anyio

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
Call = Callable[..., Awaitable[Answer]]
_ids = itertools.count()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[TallyApp]:
    made = create_app(settings)
    async with made.router.lifespan_context(made):
        yield made


async def _ask(
    asgi: Callable[..., Awaitable[None]],
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
) -> Answer:
    path, _, query = path.partition("?")
    raw = [(name.lower().encode(), value.encode()) for name, value in headers]
    raw.append((b"x-request-id", b"diff-%d" % next(_ids)))  # both paths echo a caller's id
    if body:
        raw.append((b"content-length", b"%d" % len(body)))
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
        "root_path": "", "headers": raw, "client": ("127.0.0.1", 1), "server": ("tally", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asgi(scope, receive, send)
    start, *chunks = sent
    headers_out = [(n, v) for n, v in start["headers"] if n != b"x-request-id"]
    return start["status"], headers_out, b"".join(c.get("body", b"") for c in chunks)


def _both(app: TallyApp) -> tuple[Call, Call]:
    async def hot(*args: Any) -> Answer:
        return await _ask(app, *args)

    async def reference(*args: Any) -> Answer:
        return await _ask(lambda *a: Starlette.__call__(app, *a), *args)

    return hot, reference


def _json(key: str, **extra: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {key}"), ("Content-Type", "application/json"),
            *extra.items()]  # fmt: skip


# Bodies for POST /credits/deduct and /credits/add, right and wrong in every way we know.
_ENTRY_BODIES = [
    b'{"user_id":"u1","amount":1}',
    b'{"user_id":"u1","amount":1,"description":"d","reference_id":"r"}',
    b'{"user_id":"u1","amount":1,"description":null,"reference_id":null,"metadata":null}',
    b'{"user_id":"u1","amount":1,"metadata":{"a":[1,2],"b":{"c":"d"}}}',
    b'{ "user_id" : "u1" , "amount" : 2 }',
    b'{"user_id":"\\u00e9t\\u00e9","amount":1}',
    b'{"user_id":"u1","amount":1000000000}',  # more than the balance: 402
    b'{"user_id":"u1","amount":"10"}',
    b'{"user_id":"u1","amount":1.0}',
    b'{"user_id":"u1","amount":true}',
    b'{"user_id":"u1","amount":0}',
    b'{"user_id":"u1","amount":-3}',
    b'{"user_id":"u1","amount":9007199254740992}',
    b'{"user_id":"u1","amount":123456789012345678901234567890}',
    b'{"user_id":"u1"}',
    b'{"amount":1}',
    b'{"user_id":"","amount":1}',
    b'{"user_id":" u1","amount":1}',
    b'{"user_id":"u\\n1","amount":1}',
    b'{"user_id":"u\\u00001","amount":1}',
    b'{"user_id":"' + b"x" * (MAX_USER_ID + 1) + b'","amount":1}',
    b'{"user_id":1,"amount":1}',
    b'{"user_id":"u1","amount":1,"amount":2}',
    b'{"user_id":"u1","amount":1,"user_id":"u2"}',
    b'{"user_id":"u1","amount":1,"colour":"red"}',
    b'{"user_id":"u1","amount":1,"description":"' + b"d" * (MAX_DESCRIPTION + 1) + b'"}',
    b'{"user_id":"u1","amount":1,"description":"a\\u0000b"}',
    b'{"user_id":"u1","amount":1,"description":"\\ud800"}',
    b'{"user_id":"u1","amount":1,"description":5}',
    b'{"user_id":"u1","amount":1,"metadata":[1]}',
    b'{"user_id":"u1","amount":1,"metadata":{"n":NaN}}',
    b'{"user_id":"u1","amount":NaN}',
    b'{"user_id":"u1","amount":Infinity}',
    b'{"user_id":"description","amount":1}',
    b"[]",
    b"null",
    b"",
    b"{",
    b'{"user_id":"u1","amount":1}x',
    b"\xff\xfe",
    b"[" * 40 + b"]" * 40,
    b'{"user_id":"u1","amount":1,"expires_at":"2099-01-01T00:00:00Z"}',
    b'{"user_id":"u1","amount":1,"expires_at":"2099-01-01T00:00:00"}',
    b'{"user_id":"u1","amount":1,"expires_at":"tomorrow"}',
    b'{"user_id":"u1","amount":1,"expires_at":null}',
]


@pytest.mark.parametrize("path", ["/credits/deduct", "/credits/add"])
async def test_entry_routes_answer_as_the_reference_for_every_body(
    app: TallyApp, test_app: AppUnderTest, path: str
) -> None:
    hot, reference = _both(app)
    key = test_app.api_key
    await reference("POST", "/credits/add", _json(key), b'{"user_id":"u1","amount":100}')
    for body in _ENTRY_BODIES:
        # The same Idempotency-Key on both: what the first applies, the second replays, so a
        # success answers the same bytes on both paths, and so does every refusal.
        idem = f"k-{next(_ids)}"
        first = await reference("POST", path, _json(key, **{"Idempotency-Key": idem}), body)
        hot_replay = await hot("POST", path, _json(key, **{"Idempotency-Key": idem}), body)
        reference_replay = await reference(
            "POST", path, _json(key, **{"Idempotency-Key": idem}), body
        )
        assert hot_replay == reference_replay, body
        if first[0] != 200:
            assert hot_replay == first, body
        # Without a key, a refusal is the same; an applied entry has the same shape.
        _alike(
            await hot("POST", path, _json(key), body),
            await reference("POST", path, _json(key), body),
        )


def _alike(hot: Answer, reference: Answer) -> None:
    """The same bytes for a refusal; for an entry applied twice (a ledger id, a balance of its
    own each), the same status, header names and fields."""
    if reference[0] != 200:
        assert hot == reference
        return
    assert hot[0] == 200
    assert [name for name, _ in hot[1]] == [name for name, _ in reference[1]]
    assert orjson.loads(hot[2]).keys() == orjson.loads(reference[2]).keys()


async def test_hot_path_first_then_reference_replays_the_same_bytes(
    app: TallyApp, test_app: AppUnderTest
) -> None:
    hot, reference = _both(app)
    key = test_app.api_key
    headers = _json(key, **{"Idempotency-Key": "hot-first"})
    body = b'{"user_id":"u9","amount":7,"description":"first"}'
    applied = await hot("POST", "/credits/add", headers, body)
    assert applied[0] == 200
    assert await hot("POST", "/credits/add", headers, body) == await reference(
        "POST", "/credits/add", headers, body
    )


@pytest.mark.parametrize(
    "headers",
    [
        [],  # no key
        [("Authorization", "Bearer nope")],
        [("Authorization", "Basic dXNlcjpwYXNz")],
        [("Authorization", "Bearer tally_" + "x" * 43)],
        "two keys",
        "no content type",
        [("Content-Type", "text/plain")],
        [("Content-Type", "application/json; charset=utf-8")],
        [("Idempotency-Key", "")],
        [("Idempotency-Key", "k" * 300)],
        [("Idempotency-Key", "caf\u00e9")],
    ],
)
async def test_header_refusals_are_the_references(
    app: TallyApp, test_app: AppUnderTest, headers: Any
) -> None:
    hot, reference = _both(app)
    auth = ("Authorization", f"Bearer {test_app.api_key}")
    if headers == "two keys":
        headers = [auth, auth, ("Content-Type", "application/json")]
    elif headers == "no content type":
        headers = [auth]
    elif not any(name == "Authorization" for name, _ in headers):
        headers = [auth, ("Content-Type", "application/json"), *headers]
        if headers[-1][0] == "Content-Type":
            headers.pop(1)
    body = b'{"user_id":"u1","amount":1}'
    for path in ("/credits/deduct", "/credits/add"):
        _alike(await hot("POST", path, headers, body), await reference("POST", path, headers, body))


async def test_query_strings_and_oversized_bodies_are_refused_alike(
    app: TallyApp, test_app: AppUnderTest
) -> None:
    hot, reference = _both(app)
    key = test_app.api_key
    for path, body in [
        ("/credits/deduct?user_id=u1", b'{"user_id":"u1","amount":1}'),
        ("/credits/add?x=1&y", b'{"user_id":"u1","amount":1}'),
        ("/credits/deduct", b'{"user_id":"u1","amount":1,"description":"' + b"d" * 70_000 + b'"}'),
    ]:
        assert await hot("POST", path, _json(key), body) == await reference(
            "POST", path, _json(key), body
        )


@pytest.mark.parametrize(
    "query",
    [
        "user_id=u1", "user_id=nobody", "user_id=a%20b", "user_id=a+b", "user_id=", "",
        "user_id=u1&user_id=u2", "user_id=u1&limit=3", "userid=u1", "user_id=%FF",
        "user_id=%20u1", "user_id=" + "x" * (MAX_USER_ID + 1), "user_id=caf%C3%A9",
        "user_id=caf\u00e9",
    ],
)  # fmt: skip
async def test_balance_answers_as_the_reference(
    app: TallyApp, test_app: AppUnderTest, query: str
) -> None:
    hot, reference = _both(app)
    key = test_app.api_key
    await reference("POST", "/credits/add", _json(key), b'{"user_id":"u1","amount":5}')
    auth = [("Authorization", f"Bearer {key}")]
    path = f"/credits/balance?{query}" if query else "/credits/balance"
    assert await hot("GET", path, auth) == await reference("GET", path, auth)


async def test_rate_limit_headers_are_the_references(
    app: TallyApp, test_app: AppUnderTest, repository: AppRepository
) -> None:
    limited = Apps(repository).create_key(test_app.app_id, rate_limit=1_000_000)
    hot, reference = _both(app)
    body = b'{"user_id":"u1","amount":1}'
    answers = [
        await ask("POST", "/credits/add", _json(limited.api_key), body) for ask in (hot, reference)
    ]
    names = [[name for name, _ in answer[1]] for answer in answers]
    assert names[0] == names[1] and b"ratelimit-limit" in names[0]
    refused = [
        await ask("POST", "/credits/add", _json(limited.api_key), b"{}") for ask in (hot, reference)
    ]
    assert refused[0][0] == 400 and [n for n, _ in refused[0][1]] == [n for n, _ in refused[1][1]]


@pytest.mark.parametrize(
    "body",
    [
        b'{"operations":[{"type":"add","user_id":"b1","amount":5,"idempotency_key":"%s-1"},'
        b'{"type":"deduct","user_id":"b1","amount":2,"idempotency_key":"%s-2"},'
        b'{"type":"deduct","user_id":"b2","amount":99,"idempotency_key":"%s-3"}]}',
        b'{"operations":[]}',
        b'{"operations":[{"type":"refund","user_id":"b1","amount":1}]}',
        b'{"operations":[{"type":"add","user_id":"b1","amount":1,"amount":2}]}',
        b'{"operations":{}}',
        b"[]",
    ],
)
async def test_batch_answers_as_the_reference(
    app: TallyApp, test_app: AppUnderTest, body: bytes
) -> None:
    hot, reference = _both(app)
    key = test_app.api_key
    if b"%s" in body:  # per-operation keys: the second and third answers replay the first
        body = body.replace(b"%s", b"batch-%d" % next(_ids))
        await reference("POST", "/credits/batch", _json(key), body)
    assert await hot("POST", "/credits/batch", _json(key), body) == await reference(
        "POST", "/credits/batch", _json(key), body
    )
    refused = _json(key, **{"Idempotency-Key": "whole"})
    assert await hot("POST", "/credits/batch", refused, body) == await reference(
        "POST", "/credits/batch", refused, body
    )
