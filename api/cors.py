"""CORS for the browser routes (/client/...): the origins each app allows are its own setting.

A preflight carries no token, so it passes when any app allows the origin; the request itself
is granted only when the token's app allows it (the route answers 403 otherwise, with no grant a
browser could read). Every other route is for servers and gets no CORS headers at all.
"""

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.responses import JSONResponse
from api.state import engine_of
from engine.errors import TallyError

PREFIX = "/client/"
_PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
    "Vary": "Origin",
}
# What a browser's script may read of an answer beyond the safelisted headers.
_EXPOSED = (
    "Idempotent-Replayed, X-Request-Id, Retry-After, RateLimit-Limit, RateLimit-Remaining,"
    " RateLimit-Reset"
)


class ClientCors:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self._app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            await self._app(scope, receive, send)
            return
        app_cache = engine_of(Request(scope)).app_cache
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            if await app_cache.origin_allowed(origin):
                allowed = _PREFLIGHT_HEADERS | {"Access-Control-Allow-Origin": origin}
                response: Response = Response(status_code=204, headers=allowed)
            else:
                body = {"success": False, "error": f"origin {origin} is not allowed"}
                response = JSONResponse(body, status_code=403)
            await response(scope, receive, send)
            return
        try:
            granted = await app_cache.grants_origin(headers.get("authorization"), origin)
        except TallyError:
            granted = False  # the route answers the same failure; unread by the browser
        if not granted:
            await self._app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                response_headers["Access-Control-Allow-Origin"] = origin
                response_headers["Access-Control-Expose-Headers"] = _EXPOSED
                response_headers.add_vary_header("Origin")
            await send(message)

        await self._app(scope, receive, send_with_cors)
