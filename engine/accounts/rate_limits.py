"""Rate limits: a token bucket per API key, and one per end user of client tokens, kept in this
process's memory so the hot path spends no Redis round trip on them.

A limit of `rate` requests per second allows bursts of twice that: the bucket holds `2 * rate`
tokens and refills at `rate` a second. Every API process keeps its own buckets, so each allows
its share, `1 / processes` of the rate (TALLY_RATE_LIMIT_PROCESSES, docs/operations.md#rate-limits).
"""

import math
import time
from collections.abc import Callable, Hashable
from typing import NamedTuple

from engine.errors import RateLimitedError

BURST = 2  # a bucket holds this many seconds of its rate
_MAX_BUCKETS = 100_000
# Float sums of 1/rate drift by far less than this; without it the last token of a full burst
# could be refused by a rounding error.
_EPSILON = 1e-6


class Quota(NamedTuple):  # a tuple, not a frozen dataclass: made on every limited request
    """What a caller has left after a request, as the RateLimit-* headers tell it."""

    limit: int  # the burst: requests a full bucket allows at once
    remaining: int
    reset: int  # whole seconds until the bucket is full again


class RateLimiter:
    """Token buckets by name, each stored as one float: the time it will be full again (the
    generic cell rate algorithm). A bucket that is full is the same as none, so a name not seen
    for a while costs nothing, and the table is bounded by dropping full buckets. Used from the
    event loop only, so nothing is locked."""

    def __init__(
        self,
        processes: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = _MAX_BUCKETS,
    ) -> None:
        self._share = 1 / processes
        self._clock = clock
        self._max_buckets = max_buckets
        self._full_at: dict[Hashable, float] = {}

    def take(self, name: Hashable, rate: float, who: str = "") -> Quota:
        """One request of `name`, limited to `rate` a second across every process; raises
        RateLimitedError, and uses nothing, when its bucket is empty. `who` follows the rate in
        the error's message (" per user")."""
        local = rate * self._share
        interval = 1 / local
        burst = BURST * local
        # At least one whole token, or a small limit split over many processes allows nothing.
        window = (burst if burst > 1 else 1) * interval
        now = self._clock()
        stored = self._full_at.get(name)
        full_at = (stored if stored is not None and stored > now else now) + interval
        ahead = full_at - now  # the bucket's deficit, in seconds of refill
        limit = math.floor(BURST * rate) or 1
        if ahead - window > _EPSILON:
            raise RateLimitedError(
                f"Rate limit exceeded: {rate:g} requests per second{who} (burst {BURST * rate:g})",
                retry_after=math.ceil(ahead - window),
                limit=limit,
                reset=math.ceil(ahead - interval),
            )
        if stored is None and len(self._full_at) >= self._max_buckets:
            self._make_room(now)
        self._full_at[name] = full_at
        # This process's tokens left, told as the whole limit's: exact with one process, an
        # estimate with several (each holds its share).
        left = math.floor((window - ahead) * rate + _EPSILON)
        return Quota(limit, 0 if left < 0 else min(left, limit), math.ceil(ahead))

    def __len__(self) -> int:
        return len(self._full_at)

    def _make_room(self, now: float) -> None:
        """Drop the buckets that are full again; if most are still filling, drop them all
        (each caller gets a fresh burst) rather than sweep a full table on every request."""
        self._full_at = {name: at for name, at in self._full_at.items() if at > now}
        if len(self._full_at) > self._max_buckets // 2:
            self._full_at.clear()
