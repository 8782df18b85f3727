"""GET and PATCH /credits/config: an app's credits configuration."""

from decimal import Decimal
from typing import Annotated

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from api.responses import JSONResponse
from api.schemas import Strict, read_json
from api.state import authenticated
from api.views import config_view
from engine.errors import InvalidRequestError

_NULLABLE = {"display_symbol", "credits_per_dollar"}


class ConfigPatch(Strict):
    """Types only: the rules of each setting are the engine's (engine.accounts.apps)."""

    credits_enabled: bool | None = None
    # JSON numbers: 100 or 0.5 credits per dollar.
    credits_per_dollar: Annotated[float, Field(allow_inf_nan=False)] | None = None
    display_name: str | None = None
    display_symbol: str | None = None
    display_symbol_position: str | None = None
    display_decimals: int | None = None
    min_purchase_cents: int | None = None
    max_purchase_cents: int | None = None
    overdraft_enabled: bool | None = None
    overdraft_limit: int | None = None
    manual_top_up_available: bool | None = None
    auto_top_up_available: bool | None = None
    currency: str | None = None
    low_balance_thresholds: list[int] | None = None


async def get_config(request: Request) -> Response:
    engine, context = await authenticated(request)
    app = await engine.bridge.call(engine.apps.get, context.app_id)
    return JSONResponse(config_view(app))


async def patch_config(request: Request) -> Response:
    engine, context = await authenticated(request)
    body = await read_json(request, ConfigPatch, engine.settings.max_body_bytes)
    changes: dict[str, object] = {}
    for name in body.model_fields_set:
        value = getattr(body, name)
        if value is None and name not in _NULLABLE:
            raise InvalidRequestError(f"{name} cannot be null")
        changes[name] = Decimal(str(value)) if name == "credits_per_dollar" and value else value
    app = await engine.bridge.call(engine.apps.update, context.app_id, changes)
    return JSONResponse(config_view(app))
