"""GET and PATCH /credits/config: an app's credits configuration."""

import asyncio
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from api.responses import JSONResponse
from api.schemas import Strict, parse_body, read_body
from api.services import services
from engine.errors import InvalidRequestError
from engine.models import CREDITS_CONFIG, MAX_AMOUNT, App

_NULLABLE = {"display_symbol", "credits_per_dollar"}


class ConfigPatch(Strict):
    credits_enabled: bool | None = None
    # JSON numbers: 100 or 0.5 credits per dollar.
    credits_per_dollar: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    display_name: Annotated[str, Field(min_length=1, max_length=50)] | None = None
    display_symbol: Annotated[str, Field(min_length=1, max_length=8)] | None = None
    display_symbol_position: Literal["left", "right"] | None = None
    display_decimals: Annotated[int, Field(ge=0, le=8)] | None = None
    min_purchase_cents: Annotated[int, Field(ge=0, le=MAX_AMOUNT)] | None = None
    max_purchase_cents: Annotated[int, Field(ge=0, le=MAX_AMOUNT)] | None = None
    overdraft_enabled: bool | None = None
    overdraft_limit: Annotated[int, Field(ge=0, le=MAX_AMOUNT)] | None = None
    manual_top_up_available: bool | None = None
    auto_top_up_available: bool | None = None
    currency: Annotated[str, Field(pattern=r"^[a-z]{3}$")] | None = None


async def get_config(request: Request) -> Response:
    svc = services(request)
    context = await svc.auth.authenticate(request.headers.get("authorization"))
    app = await asyncio.to_thread(svc.apps.get, context.app_id)
    return JSONResponse(config_view(app))


async def patch_config(request: Request) -> Response:
    svc = services(request)
    context = await svc.auth.authenticate(request.headers.get("authorization"))
    body = parse_body(ConfigPatch, await read_body(request, svc.settings.max_body_bytes))
    changes: dict[str, object] = {}
    for name in body.model_fields_set:
        value = getattr(body, name)
        if value is None and name not in _NULLABLE:
            raise InvalidRequestError(f"{name} cannot be null")
        changes[name] = Decimal(str(value)) if name == "credits_per_dollar" and value else value
    app = await asyncio.to_thread(svc.apps.update, context.app_id, changes)
    return JSONResponse(config_view(app))


def config_view(app: App) -> dict[str, object]:
    view: dict[str, object] = {name: getattr(app, name) for name in CREDITS_CONFIG}
    rate = app.credits_per_dollar
    view["credits_per_dollar"] = (
        None if rate is None else (int(rate) if rate == int(rate) else float(rate))
    )
    view["overdraft_limit"] = app.overdraft_limit
    return view
