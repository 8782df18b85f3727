"""The hot routes (/credits/deduct, /credits/add, /credits/batch, /credits/balance) on a lean
ASGI path: no routing table, no Request or Response objects, no middleware chain.

They answer byte for byte what the same routes answered through Starlette and its middleware
(tests/test_hot.py compares the two): the request id, the edge's refusals, the rate limit
headers, the request metrics and the access log are all done here, in one pass over the
headers. What the routes cost in Python is most of a deduct's CPU (docs/performance.md).
"""

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from time import perf_counter
from typing import Any

import orjson
from starlette.datastructures import QueryParams
from starlette.types import Receive, Scope, Send

from api import credits
from api.batch import apply_batch
from api.credits import MAX_BATCH_BYTES, entry_body
from api.edge import RequestIds, refusal
from api.errors import error_response, log_unavailable
from api.metrics import request_durations
from api.rate_limits import quota_headers
from api.schemas import (
    AddRequest,
    EntryRequest,
    UserQuery,
    check_json_media_type,
    names_in,
    parse_body,
    parse_query,
    plain_entry,
    plain_json,
)
from api.views import balance_view
from engine.container import Engine
from engine.errors import InvalidRequestError, PayloadTooLargeError, TallyError
from engine.logs import request_id
from engine.models import (
    MAX_USER_ID,
    AppContext,
    text_problem,
)

log = logging.getLogger("api.errors")
_access = logging.getLogger("api.access")

Headers = list[tuple[bytes, bytes]]


class ClientLeft(Exception):
    """The client disconnected before its body arrived."""


class Call:
    """One request to a hot route, as far as the routes need it; its body is read by
    `receive` (the ASGI path) or by a subclass (the server's own path, api.server)."""

    __slots__ = ("authorization", "content_type", "idempotency_key", "length", "method", "path",
                 "query", "receive")  # fmt: skip

    def __init__(self, method: str, path: str, query: bytes, receive: Receive | None) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.receive = receive
        self.authorization: str | None = None
        self.content_type: bytes | None = None
        self.idempotency_key: str | None = None
        self.length: bytes | None = None

    async def body(self, limit: int) -> bytes:
        self.check_length(limit)
        assert self.receive is not None
        body = b""
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                raise ClientLeft
            chunk: bytes = message.get("body", b"")
            body += chunk
            if len(body) > limit:
                raise PayloadTooLargeError(f"request body is larger than {limit} bytes")
            if not message.get("more_body", False):
                return body

    def check_length(self, limit: int) -> None:
        """Refuses a body its Content-Length says is too large, before any of it is read."""
        if self.length is not None and self.length.isdigit() and int(self.length) > limit:
            raise PayloadTooLargeError(f"request body is larger than {limit} bytes")

    async def json(self, limit: int) -> bytes:
        body = await self.body(limit)
        check_json_media_type(None if self.content_type is None else self.content_type.decode())
        return body


Answer = tuple[Mapping[str, Any], bool]  # the body, and whether it is a replay
Route = Callable[[Engine, AppContext, Call], Awaitable[Answer]]
Response = tuple[int, Headers, bytes]


class HotRoutes:
    """The hot routes, answered without Starlette (api.app sends every other request to it)."""

    def __init__(self, access_log: bool) -> None:
        self._ids = RequestIds()
        self._access_log = access_log
        self.routes: dict[tuple[str, str], Route] = {
            ("POST", "/credits/deduct"): _deduct,
            ("POST", "/credits/add"): _add,
            ("POST", "/credits/batch"): _batch,
            ("GET", "/credits/balance"): _balance,
        }
        # As an HTTP parser gives a request line's method and path (api.server).
        self.by_bytes = {
            (method.encode(), path.encode()): (method, path, route)
            for (method, path), route in self.routes.items()
        }

    async def serve(self, engine: Engine, route: Route, scope: Scope, receive: Receive,
                    send: Send) -> None:  # fmt: skip
        """The ASGI path: for servers other than `tally serve`'s, and the tests' reference."""
        call = Call(scope["method"], scope["path"], scope["query_string"], receive)
        answered = await self.answer(engine, route, call, scope["headers"])
        if answered is not None:
            status, headers, body = answered
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    async def answer(self, engine: Engine, route: Route, call: Call,
                     headers: Headers) -> Response | None:  # fmt: skip
        """The answer to `call`; None if the client left before its body arrived (nobody
        reads an answer)."""
        started = perf_counter()
        given = None
        authorizations = 0
        # One pass over the headers; the first of a repeated header counts, as for Starlette,
        # except the request id (the edge keeps the last).
        for name, value in headers:
            if name == b"authorization":
                authorizations += 1
                if call.authorization is None:
                    call.authorization = value.decode("latin-1")
            elif name == b"content-type":
                if call.content_type is None:
                    call.content_type = value
            elif name == b"content-length":
                if call.length is None:
                    call.length = value
            elif name == b"idempotency-key":
                if call.idempotency_key is None:
                    call.idempotency_key = value.decode("latin-1")
            elif name == b"x-request-id":
                given = value
        rid = self._ids.of(given)
        token = request_id.set(rid.decode())  # every log line of the request carries it
        try:
            answered = await self._answer(engine, route, call, rid, authorizations)
            if answered is not None:
                status = answered[0]
                request_durations(call.path, call.method, status).observe(perf_counter() - started)
                if self._access_log:
                    elapsed_ms = (perf_counter() - started) * 1000
                    _access.info("%s %s %s %.1f ms", call.method, call.path, status, elapsed_ms)
            return answered
        finally:
            request_id.reset(token)

    async def _answer(self, engine: Engine, route: Route, call: Call, rid: bytes,
                      authorizations: int) -> Response | None:  # fmt: skip
        limits: Headers = []
        try:
            refused = refusal(call.method, call.query, authorizations)
            if refused is not None:
                raise refused
            app = await engine.keys.authenticate(call.authorization)
            if app.rate_limit is not None:
                limits = quota_headers(engine.rate_limiter.take(app.key_id, app.rate_limit))
            answer, replayed = await route(engine, app, call)
            body = orjson.dumps(answer)
            return 200, _json_headers(body, rid, limits, replayed), body
        except TallyError as exc:
            log_unavailable(exc, call.method, call.path)
            return _error(exc, rid, limits)
        except ClientLeft:
            return None
        except Exception:
            # Unlike Starlette's answer to the unexpected, this one has the request's id.
            log.exception("unhandled error on %s %s", call.method, call.path)
            body = b'{"success":false,"error":"Internal server error"}'
            return 500, _json_headers(body, rid, limits), body


def _json_headers(body: bytes, rid: bytes, limits: Headers, replayed: bool = False) -> Headers:
    # In the order Starlette's JSONResponse and the edge give them.
    headers: Headers = [(b"idempotent-replayed", b"true")] if replayed else []
    headers += [
        (b"content-length", b"%d" % len(body)),
        (b"content-type", b"application/json"),
        (b"x-request-id", rid),
        *limits,
    ]
    return headers


def _error(exc: TallyError, rid: bytes, limits: Headers) -> Response:
    response = error_response(exc)
    headers = [*response.raw_headers, (b"x-request-id", rid), *limits]
    return response.status_code, headers, bytes(response.body)


async def _deduct(engine: Engine, app: AppContext, call: Call) -> Answer:
    return await _entry(engine, app, call, "deduct", EntryRequest)


async def _add(engine: Engine, app: AppContext, call: Call) -> Answer:
    return await _entry(engine, app, call, "add", AddRequest)


async def _entry(
    engine: Engine, app: AppContext, call: Call, kind: str, model: type[EntryRequest]
) -> Answer:
    key = credits.checked_idempotency_key(call.idempotency_key)
    fields = _entry_fields(await call.json(engine.settings.max_body_bytes), model)
    result = await credits.post_entry(engine, app, kind, fields, key)
    return entry_body(kind, result), result.replayed


async def _batch(engine: Engine, app: AppContext, call: Call) -> Answer:
    if call.idempotency_key is not None:
        raise InvalidRequestError(credits.BATCH_TAKES_NO_KEY)
    return await apply_batch(engine, app, await call.json(MAX_BATCH_BYTES)), False


async def _balance(engine: Engine, app: AppContext, call: Call) -> Answer:
    user_id = _user_of(call.query)
    if user_id is None:
        user_id = parse_query(UserQuery, QueryParams(call.query)).user_id
    return balance_view(await engine.credits.balance(app, user_id)), False


# What a query parser would read differently: separators, escapes, and bytes outside ASCII
# (which Starlette reads as Latin-1).
_PLAIN_QUERY = re.compile(rb"user_id=([^&%+;#\x80-\xff]*)")


def _user_of(query: bytes) -> str | None:
    """`user_id=<plain text>`, the common query, read without a parser; None for any other."""
    plain = _PLAIN_QUERY.fullmatch(query)
    if plain is None:
        return None
    user_id = plain[1].decode()
    if len(user_id) > MAX_USER_ID or text_problem("user_id", user_id, MAX_USER_ID):
        return None
    return user_id


# What an add's or deduct's body may hold for the hand checks: nothing else pydantic checks.
_ENTRY = frozenset(("user_id", "amount", "description", "reference_id", "metadata"))
_KNOWN = {EntryRequest: _ENTRY, AddRequest: _ENTRY | {"expires_at"}}
_QUOTED = [f'"{name}"'.encode() for name in _KNOWN[AddRequest]]


def _entry_fields(body: bytes, model: type[EntryRequest]) -> dict[str, Any]:
    """An add's or deduct's fields, checked by hand when the body is plain; any other body, and
    any problem, goes to pydantic (api.schemas.parse_body), whose messages stay the API's."""
    fields = _plain_fields(body, _KNOWN[model])
    if fields is not None:
        return fields
    parsed = parse_body(model, body)
    return {name: getattr(parsed, name) for name in model.model_fields}


def _plain_fields(body: bytes, known: frozenset[str]) -> dict[str, Any] | None:
    fields = plain_json(body)
    if type(fields) is not dict or not plain_entry(fields, known):
        return None
    if names_in(body, _QUOTED) != len(fields):
        return None  # a key twice, or a string that reads as a key's name: the model decides
    return fields
