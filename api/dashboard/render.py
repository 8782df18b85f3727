"""Pages from the dashboard's templates: Jinja2 with autoescaping, so every string a user or
a provider supplied (user ids, descriptions, reasons) is text, never markup."""

from datetime import UTC, datetime
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from api.errors import status_of
from engine.errors import TallyError, TooManyRequestsError
from engine.models import App, LedgerEntry

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


def credits(amount: int, app: App, *, signed: bool = False) -> str:
    """An amount as the app displays credits: "CR 1,250", "1,250.00 credits"."""
    text = f"{abs(amount):,.{app.display_decimals}f}"
    if app.display_symbol:
        text = (
            f"{app.display_symbol} {text}"
            if app.display_symbol_position == "left"
            else f"{text} {app.display_symbol}"
        )
    sign = "-" if amount < 0 else "+" if signed and amount > 0 else ""
    return sign + text


def when(value: datetime | int | None) -> str:
    """A time in UTC to the second; an int is epoch milliseconds."""
    if value is None:
        return "never"
    if isinstance(value, int):
        value = datetime.fromtimestamp(value / 1000, UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def short(identifier: str) -> str:
    """An id's head, enough to tell a user's grants or holds apart: "3f2a9c1e…",
    "hold_5d0c41aa…" (the page puts the whole id in a tooltip)."""
    head = len("hold_") + 8 if identifier.startswith("hold_") else 8
    return identifier if len(identifier) <= head + 1 else identifier[:head] + "…"


# Kinds as an operator reads them; a capture is a deduct that settled a hold.
_KINDS = {
    "hold": "hold",
    "release": "hold released",
    "hold_expire": "hold expired",
    "expire": "grant expired",
    "payment_refund": "payment refund",
}


def kind(entry: LedgerEntry) -> str:
    if entry.kind == "deduct" and entry.hold_id:
        return "capture"
    return _KINDS.get(entry.kind, entry.kind)


templates.env.filters["when"] = when
templates.env.filters["num"] = lambda n: f"{n:,}"
templates.env.filters["short"] = short
templates.env.filters["kind"] = kind
templates.env.globals["credits"] = credits


def error_page(request: Request, exc: TallyError) -> Response:
    headers = {}
    if isinstance(exc, TooManyRequestsError):
        headers["Retry-After"] = str(exc.retry_after)
    return templates.TemplateResponse(
        request, "error.html", {"message": exc.message}, status_code=status_of(exc),
        headers=headers,
    )  # fmt: skip
