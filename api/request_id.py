"""X-Request-Id: accepted from the caller (or made here), returned, and bound to every log
line of the request (engine.logs); and the access log."""

import itertools
import logging
import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.logs import request_id

_access = logging.getLogger("api.access")
# What a caller's id may be: short, no spaces, safe to echo and to log.
_VALID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")


class RequestId:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        # Ids made here: unique per process (a random prefix), cheap per request (a counter).
        self._prefix = secrets.token_hex(4).encode() + b"-"
        self._counter = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value if _VALID.fullmatch(value) else None
                break
        if rid is None:
            rid = b"%s%x" % (self._prefix, next(self._counter))
        token = request_id.set(rid.decode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


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
