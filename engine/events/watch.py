"""The thresholds the scripts watch for balance.low and balance.depleted (lua/account.lua)."""

import time
from collections.abc import Callable
from functools import lru_cache

from engine.errors import UnavailableError
from engine.models import App, AppContext

_FRESH_SECONDS = 5.0


def watch_arg(app: AppContext) -> str:
    """The scripts' watch argument: "top floor t1 t2 ...", top being the highest of them."""
    return _watch(-app.overdraft_limit, app.low_balance_thresholds)


@lru_cache(maxsize=4096)
def _watch(floor: int, thresholds: tuple[int, ...]) -> str:
    top = max((floor, *thresholds))
    return " ".join(str(n) for n in (top, floor, *thresholds))


class Watches:
    """The apps' watch arguments for blocking code (the worker's expiry sweep): each app read at
    most every few seconds, and the last one known kept while PostgreSQL is away, so that
    expiring grants and holds never waits on it."""

    def __init__(self, load: Callable[[str], App | None], ttl: float = _FRESH_SECONDS) -> None:
        self._load = load
        self._ttl = ttl
        self._known: dict[str, tuple[str, float]] = {}

    def __call__(self, app_id: str) -> str:
        known = self._known.get(app_id)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        try:
            app = self._load(app_id)
        except UnavailableError:
            return known[0] if known else ""
        arg = "" if app is None else watch_arg(app.context())
        self._known[app_id] = (arg, time.monotonic() + self._ttl)
        return arg
