"""The dashboard's routes, and the headers every one of its answers carries."""

from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.dashboard import apps, endpoints, payments, settings, signin, system, users
from api.dashboard.render import HERE

# Scripts and styles from this origin's files only: an injected inline script never runs.
_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        b" connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]
_NO_STORE = (b"cache-control", b"no-store")


class _Guarded:
    """Every dashboard answer with the security headers; pages never cached (they may show
    a key once, or an operator's data after they logged out)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        static = scope["path"].startswith("/dashboard/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = _HEADERS if static else [*_HEADERS, _NO_STORE]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self._app(scope, receive, send_with_headers)


def routes() -> list[BaseRoute]:
    app = "/apps/{app_id}"
    endpoint = f"{app}/endpoints/{{endpoint_id}}"
    pages = [
        Route("/login", signin.login_page, methods=["GET"]),
        Route("/login", signin.login, methods=["POST"]),
        Route("/logout", signin.logout, methods=["POST"]),
        Route("/", apps.home, methods=["GET"]),
        Route("/apps", apps.create_app, methods=["POST"]),
        Route(app, apps.overview, methods=["GET"]),
        Route(f"{app}/keys", apps.keys, methods=["GET"]),
        Route(f"{app}/keys", apps.create_key, methods=["POST"]),
        Route(f"{app}/keys/{{key_id}}/revoke", apps.revoke_key, methods=["POST"]),
        Route(f"{app}/settings", settings.settings_page, methods=["GET"]),
        Route(f"{app}/settings", settings.save_settings, methods=["POST"]),
        Route(f"{app}/users", users.users, methods=["GET"]),
        Route(f"{app}/user", users.user, methods=["GET"]),
        Route(f"{app}/adjust", users.adjust, methods=["POST"]),
        Route(f"{app}/refund", users.refund, methods=["POST"]),
        Route(f"{app}/webhooks", payments.events, methods=["GET"]),
        Route(f"{app}/webhooks/{{event_pk:int}}/payload", payments.payload, methods=["GET"]),
        Route(f"{app}/webhooks/{{event_pk:int}}/retry", payments.retry, methods=["POST"]),
        Route(f"{app}/endpoints", endpoints.endpoints, methods=["GET"]),
        Route(f"{app}/endpoints", endpoints.create_endpoint, methods=["POST"]),
        Route(endpoint, endpoints.deliveries, methods=["GET"]),
        Route(f"{endpoint}/rotate", endpoints.rotate_secret, methods=["POST"]),
        Route(f"{endpoint}/remove", endpoints.remove_endpoint, methods=["POST"]),
        Route(f"{endpoint}/redeliver", endpoints.redeliver, methods=["POST"]),
        Route(f"{app}/health", system.health, methods=["GET"]),
        Route("/audit", system.audit, methods=["GET"]),
        Route("/operators", system.operators, methods=["GET"]),
        Route("/operators", system.create_operator, methods=["POST"]),
        Route("/operators/disable", system.disable_operator, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return [Mount("/dashboard", app=_Guarded(Router(routes=pages)))]
