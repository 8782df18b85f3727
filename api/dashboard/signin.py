"""Signing in and out of the dashboard."""

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from api.dashboard.access import (
    COOKIE,
    LOGIN_CSRF_COOKIE,
    PREFIX,
    Visit,
    new_token,
    same,
    sign_out_form,
)
from api.dashboard.render import templates
from api.errors import status_of
from api.schemas import read_form
from api.state import engine_of
from engine.errors import AuthenticationError, ForbiddenError, TooManyRequestsError
from engine.operators.service import SESSION_SECONDS
from engine.settings import Settings


async def login_page(request: Request) -> Response:
    return _login(request, "", None, 200)


async def login(request: Request) -> Response:
    engine = engine_of(request)
    form = await read_form(request, 4096)
    email = form.get("email", "")
    # Before a session there is no session token to tie the form to: the form and a cookie
    # carry the same random value, which another site can neither read nor set.
    if not same(form.get("csrf_token", ""), request.cookies.get(LOGIN_CSRF_COOKIE, "")):
        return _login(request, email, ForbiddenError("the form expired: try again"), 403)
    try:
        new = await engine.bridge.call(engine.operators.sign_in, email, form.get("password", ""))
    except (AuthenticationError, TooManyRequestsError) as exc:
        return _login(request, email, exc, status_of(exc))
    response = RedirectResponse(f"{PREFIX}/", status_code=303)
    response.set_cookie(
        COOKIE,
        new.token,
        max_age=SESSION_SECONDS,
        path=PREFIX,
        httponly=True,
        samesite="lax",
        secure=_secure(engine.settings),
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=f"{PREFIX}/login")
    return response


@sign_out_form
async def logout(visit: Visit) -> Response:
    await visit.run(visit.engine.operators.sign_out, visit.request.cookies.get(COOKIE, ""))
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE, path=PREFIX)
    return response


def _login(
    request: Request,
    email: str,
    error: AuthenticationError | ForbiddenError | TooManyRequestsError | None,
    status: int,
) -> Response:
    token = new_token()
    headers = {}
    if isinstance(error, TooManyRequestsError):
        headers["Retry-After"] = str(error.retry_after)
    response = templates.TemplateResponse(
        request,
        "login.html",
        {"csrf_token": token, "email": email, "error": error.message if error else None},
        status_code=status,
        headers=headers,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, path=f"{PREFIX}/login", httponly=True, samesite="strict",
        secure=_secure(engine_of(request).settings),
    )  # fmt: skip
    return response


def _secure(settings: Settings) -> bool:
    """Cookies only over https when the dashboard is served over https."""
    return settings.public_url.startswith("https://")
