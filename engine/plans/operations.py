"""What a script call needs to count one of the app's operations against its plan."""

from engine.models import AppContext
from engine.plans.month import month_of
from engine.store.keys import AccountKeys

_NOT_COUNTED: tuple[list[str], str, str] = ([], "", "")


def counted(app: AppContext, keys: AccountKeys, now_ms: int) -> tuple[list[str], str, str]:
    """(keys to add, mode letter, operations allowed or "") for a script that posts one of the
    app's operations (lua/account.lua plan_refusal): counted for every app's API keys (GET
    /usage), refused only where a plan caps them; Tally's own writes are not counted."""
    if app.key_id is None:
        return _NOT_COUNTED
    allowed = "" if app.plan_monthly_operations is None else str(app.plan_monthly_operations)
    return [keys.plan_usage(app.app_id, month_of(now_ms))], "l", allowed
