"""Apps and their API keys: creation, rotation, revocation, and the key format."""

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from engine.accounts.client_tokens import new_secret
from engine.accounts.repository import SECRET_COLUMNS, AppRepository
from engine.errors import InvalidRequestError, NotFoundError, SettingsError
from engine.models import MAX_AMOUNT, ApiKey, App, text_problem

KEY_PREFIX = "tally_"
MAX_THRESHOLDS = 5
# tally_ + 43 URL-safe characters (32 random bytes); older or longer keys still parse.
KEY_PATTERN = re.compile(r"tally_[A-Za-z0-9_-]{32,128}")
# What browsers send as Origin: scheme://host[:port].
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")


def hash_key(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode()).digest()


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly made key: `api_key` is shown once and never stored."""

    api_key: str
    key: ApiKey


def _cents(value: Any) -> bool:
    return isinstance(value, int) and 0 <= value <= MAX_AMOUNT


def _limit(value: Any) -> bool:
    return value is None or (isinstance(value, int) and 0 <= value <= MAX_AMOUNT)


def _rate(value: Any) -> bool:
    return value is None or (Decimal(value).is_finite() and Decimal(value) > 0)


# Every rule of one app setting and what it says when broken. The CLI checks its flags with
# these as it parses them; the engine checks the merged settings before anything is saved.
SETTING_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "display_name": (
        lambda v: 1 <= len(v) <= 50,
        "display_name must be a string of 1 to 50 characters",
    ),
    "display_symbol": (
        lambda v: v is None or 1 <= len(v) <= 8,
        "display_symbol must be a string of 1 to 8 characters, or null",
    ),
    "display_symbol_position": (
        lambda v: v in ("left", "right"),
        'display_symbol_position must be "left" or "right"',
    ),
    "display_decimals": (
        lambda v: 0 <= v <= 8,
        "display_decimals must be an integer from 0 to 8",
    ),
    "min_purchase_cents": (_cents, "min_purchase_cents must be an integer of 0 or more"),
    "max_purchase_cents": (_cents, "max_purchase_cents must be an integer of 0 or more"),
    "overdraft_limit": (_cents, f"overdraft_limit must be an integer from 0 to {MAX_AMOUNT}"),
    "currency": (
        lambda v: re.fullmatch(r"[a-z]{3}", v) is not None,
        "currency must be a three-letter ISO code in lower case, e.g. usd",
    ),
    "auto_top_up_daily_limit_cents": (
        _cents,
        "auto_top_up_daily_limit_cents must be an integer of 0 or more",
    ),
    "cors_origins": (
        lambda v: len(v) <= 50 and all(_ORIGIN.fullmatch(origin) for origin in v),
        "cors_origins must be up to 50 origins like https://app.example.com"
        " (scheme, host and optional port; no path, no trailing slash)",
    ),
    "credit_rate": (_rate, "credit_rate must be a number above 0"),
    "low_balance_thresholds": (
        lambda v: len(v) <= MAX_THRESHOLDS and all(abs(t) <= MAX_AMOUNT for t in v),
        f"low_balance_thresholds must be a list of at most {MAX_THRESHOLDS} whole numbers"
        " of credits",
    ),
    "plan_max_users": (_limit, "plan_max_users must be a whole number of 0 or more, or empty"),
    "plan_monthly_operations": (
        _limit,
        "plan_monthly_operations must be a whole number of 0 or more, or empty",
    ),
    "credits_per_dollar": (_rate, "credits_per_dollar must be a number above 0"),
}


MAX_RATE_LIMIT = 1_000_000
RATE_LIMIT_RULE = (
    f"rate_limit must be a whole number of requests per second from 1 to {MAX_RATE_LIMIT}"
)


def rate_limit_problem(value: Any) -> str | None:
    """What is wrong with an API key's rate limit (None is no limit), or None."""
    valid = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_RATE_LIMIT
    return None if value is None or valid else RATE_LIMIT_RULE


def _check_rate_limit(value: Any) -> None:
    problem = rate_limit_problem(value)
    if problem:
        raise InvalidRequestError(problem)


def setting_problem(name: str, value: Any) -> str | None:
    """What is wrong with one setting's value, or None."""
    rule = SETTING_RULES.get(name)
    return None if rule is None or rule[0](value) else rule[1]


def _check_settings(settings: dict[str, Any]) -> None:
    """Every rule of an app's settings, checked on the merged result before anything is saved."""
    problems = {
        name: message for name, (ok, message) in SETTING_RULES.items() if not ok(settings[name])
    }
    if "max_purchase_cents" not in problems and (
        settings["max_purchase_cents"] < settings["min_purchase_cents"]
    ):
        problems["max_purchase_cents"] = "max_purchase_cents must not be below min_purchase_cents"
    if problems:
        raise SettingsError(problems)


class Apps:
    def __init__(self, repository: AppRepository) -> None:
        self._repository = repository

    def create(self, name: str) -> tuple[App, NewKey]:
        problem = text_problem("name", name, 200)
        if problem:
            raise InvalidRequestError(problem)
        # Without TALLY_SECRET_KEY the signing secret waits for the app's first client token.
        secret = new_secret() if self._repository.seals else None
        app = self._repository.create_app(f"app_{secrets.token_hex(8)}", name, secret)
        return app, self.create_key(app.app_id)

    def get(self, app_id: str) -> App:
        app = self._repository.get_app(app_id)
        if app is None:
            raise NotFoundError(f"no app {app_id}")
        return app

    def list_apps(self) -> list[App]:
        return self._repository.list_apps()

    def update(self, app_id: str, changes: dict[str, Any]) -> App:
        if not changes:
            raise InvalidRequestError("nothing to update: pass at least one setting")
        current = self.get(app_id)
        # An empty secret removes it: a webhook provider or Stripe account no longer used.
        changes = {k: None if k in SECRET_COLUMNS and v == "" else v for k, v in changes.items()}
        if isinstance(changes.get("low_balance_thresholds"), list):
            # Highest first, each once: the order events fire in as a balance falls.
            changes["low_balance_thresholds"] = sorted(
                set(changes["low_balance_thresholds"]), reverse=True
            )
        if "overdraft_limit" in changes and "overdraft_enabled" not in changes:
            # Setting a limit alone is how overdraft was always switched on.
            changes["overdraft_enabled"] = changes["overdraft_limit"] > 0
        _check_settings(asdict(current) | changes)
        app = self._repository.update_app(app_id, changes)
        if app is None:
            raise NotFoundError(f"no app {app_id}")
        return app

    def client_token_secret(self, app: App) -> str:
        """The app's client token signing secret; made now for an app created without a key."""
        if app.client_token_secret is None:
            app = self._repository.first_client_token_secret(app.app_id, new_secret()) or app
        if app.client_token_secret is None:
            raise NotFoundError(f"no app {app.app_id}")
        return app.client_token_secret

    def rotate_client_secret(self, app_id: str) -> App:
        """A new client token signing secret: every client token issued so far is revoked."""
        app = self._repository.update_app(app_id, {"client_token_secret": new_secret()})
        if app is None:
            raise NotFoundError(f"no app {app_id}")
        return app

    def create_key(self, app_id: str, rate_limit: int | None = None) -> NewKey:
        """A new key; `rate_limit`: requests per second it may make (bursts twice that)."""
        _check_rate_limit(rate_limit)
        self.get(app_id)
        api_key = KEY_PREFIX + secrets.token_urlsafe(32)
        key = self._repository.create_key(
            key_id=f"key_{secrets.token_hex(8)}",
            app_id=app_id,
            key_hash=hash_key(api_key),
            key_prefix=api_key[:10],
            rate_limit=rate_limit,
        )
        return NewKey(api_key=api_key, key=key)

    def set_rate_limit(self, key_id: str, rate_limit: int | None) -> ApiKey:
        """Change a key's rate limit (None: no limit); the API applies it within a second."""
        _check_rate_limit(rate_limit)
        key = self._repository.set_rate_limit(key_id, rate_limit)
        if key is None:
            raise NotFoundError(f"no key {key_id}")
        return key

    def list_keys(self, app_id: str) -> list[ApiKey]:
        self.get(app_id)
        return self._repository.list_keys(app_id)

    def revoke_key(self, key_id: str) -> ApiKey:
        key = self._repository.revoke_key(key_id)
        if key is None:
            raise NotFoundError(f"no key {key_id}")
        return key
