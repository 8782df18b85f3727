"""X-Request-Id: accepted from the caller (or made here), returned, and bound to every log
line of the request (engine.logs)."""

import itertools
import re
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.logs import request_id

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
