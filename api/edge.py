"""What every request passes first: its id (X-Request-Id, accepted from the caller or made
here, returned, and bound to every log line of the request), the RateLimit-* headers a route
left for its caller, the rules that refuse it before any route runs, and the access log."""

import itertools
import logging
import re
import secrets
import time
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from api.rate_limits import SCOPE_KEY as RATE_LIMIT
from engine.errors import AuthenticationError, InvalidRequestError, TallyError
from engine.logs import request_id

_access = logging.getLogger("api.access")
# What a caller's id may be: short, no spaces, safe to echo and to log.
_VALID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")


_WRITES = frozenset(("POST", "PUT", "PATCH", "DELETE"))


class RequestIds:
    """A request's id: the caller's X-Request-Id when it is a valid one, else one made here,
    unique per process (a random prefix) and cheap per request (a counter)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4).encode() + b"-"
        self._counter = itertools.count(1)

    def of(self, given: bytes | None) -> bytes:
        if given is not None and _VALID.fullmatch(given):
            return given
        return b"%s%x" % (self._prefix, next(self._counter))


class Edge:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        given = None
        authorizations = 0
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value
            elif name == b"authorization":
                authorizations += 1
        rid = self._ids.of(given)
        token = request_id.set(rid.decode())
        refused = refusal(scope["method"], scope["query_string"], authorizations)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", rid),
                    *scope.get(RATE_LIMIT, ()),  # set by a route for a caller with a limit
                ]
            await send(message)

        try:
            if refused is None:
                await self._app(scope, receive, send_with_id)
            else:
                await error_response(refused)(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


def refusal(method: str, query: bytes, authorizations: int) -> TallyError | None:
    """A request no route may serve: two credentials (which one would act?), or a query
    string on a write (a misspelt field there would be silently dropped)."""
    if authorizations > 1:
        return AuthenticationError("send one Authorization header, not several")
    if query and method in _WRITES:
        text = query.decode("latin-1")
        names = sorted({name for name, _ in parse_qsl(text, keep_blank_values=True)})
        return InvalidRequestError(
            f"unknown query parameter {', '.join(names) or text}:"
            " a write takes its fields in the JSON body"
        )
    return None


class AccessLog:
    """One line per request at INFO (`TALLY_ACCESS_LOG=true`, as `./tally-dev up` runs): off by
    default, because at thousands of requests a second the log would be the bottleneck."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, send_with_status)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            _access.info("%s %s %s %.1f ms", scope["method"], scope["path"], status, elapsed_ms)
