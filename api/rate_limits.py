"""The RateLimit-Limit, -Remaining and -Reset headers (IETF draft-ietf-httpapi-ratelimit-headers,
revision 06): on a 429, and on every other answer to a caller that has a rate limit."""

from starlette.requests import Request

from engine.accounts.rate_limits import Quota

# Where a route leaves the headers for the edge (api.edge) to add to whatever it answers.
SCOPE_KEY = "tally.rate_limit"


_NAMES = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
_LIMIT, _REMAINING, _RESET = (name.lower().encode() for name in _NAMES)


def rate_limit_headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    return dict(zip(_NAMES, (str(limit), str(remaining), str(reset)), strict=True))


def limited(request: Request, quota: Quota) -> None:
    """Tell the caller what is left of its limit, on the answer to this request."""
    request.scope[SCOPE_KEY] = quota_headers(quota)


def quota_headers(quota: Quota) -> list[tuple[bytes, bytes]]:
    return [
        (_LIMIT, b"%d" % quota.limit),
        (_REMAINING, b"%d" % quota.remaining),
        (_RESET, b"%d" % quota.reset),
    ]
