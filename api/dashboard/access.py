"""Who is looking at the dashboard, and what they may do: sessions from the cookie, the CSRF
token every form carries, and roles (a viewer sees everything and changes nothing)."""

import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from api.dashboard.render import error_page, templates
from api.schemas import read_form
from api.state import engine_of
from engine.container import Engine
from engine.errors import ForbiddenError, TallyError
from engine.models import App
from engine.operators.repository import Session

COOKIE = "tally_session"
LOGIN_CSRF_COOKIE = "tally_login_csrf"
PREFIX = "/dashboard"
_MAX_FORM_BYTES = 256 * 1024

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(slots=True)
class Visit:
    """One request of a signed-in operator: the engine, the session, the form if one came."""

    request: Request
    engine: Engine
    session: Session
    form: dict[str, str]
    loaded_app: App | None = None

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A blocking engine call (PostgreSQL), on the engine's threads."""
        return await self.engine.bridge.call(function, *args, **kwargs)

    async def app(self) -> App:
        """The app in the path, read once per request however many parts of the page ask."""
        if self.loaded_app is None:
            self.loaded_app = await self.run(
                self.engine.apps.get, self.request.path_params["app_id"]
            )
        return self.loaded_app

    def audit(self, action: str, app_id: str | None = None, **details: Any) -> Awaitable[None]:
        return self.run(self.engine.audit.record, self.session.email, action, app_id, **details)

    def render(self, template: str, code: int = 200, /, **context: Any) -> Response:
        context |= {"session": self.session, "csrf_token": self.session.csrf_token}
        return templates.TemplateResponse(self.request, template, context, status_code=code)


Handler = Callable[[Visit], Awaitable[Response]]


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A page any signed-in operator may see; without a session, the sign-in page."""
    return _guarded(handler, change=False)


def change(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A form that changes something: needs the session's CSRF token and the admin role."""
    return _guarded(handler, change=True)


def sign_out_form(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Log out: needs the CSRF token, and is every operator's right, viewers' too."""
    return _guarded(handler, change=True, admin_only=False)


def _guarded(
    handler: Handler, *, change: bool, admin_only: bool = True
) -> Callable[[Request], Awaitable[Response]]:
    @wraps(handler)
    async def endpoint(request: Request) -> Response:
        engine = engine_of(request)
        try:
            token = request.cookies.get(COOKIE, "")
            session = await engine.bridge.call(engine.operators.session, token)
            if session is None:
                if change:
                    raise ForbiddenError("sign in first: your session has ended")
                return RedirectResponse(f"{PREFIX}/login", status_code=303)
            form: dict[str, str] = {}
            if change:
                form = await read_form(request, _MAX_FORM_BYTES)
                if not same(form.get("csrf_token", ""), session.csrf_token):
                    raise ForbiddenError("this form has expired: reload the page and try again")
                if admin_only and session.role != "admin":
                    raise ForbiddenError("viewers cannot change anything: ask an admin")
            return await handler(Visit(request, engine, session, form))
        except TallyError as exc:
            return error_page(request, exc)

    return endpoint


def same(given: str, expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def new_token() -> str:
    return secrets.token_urlsafe(32)
