"""The calendar month (UTC) plan operations are counted in."""

import calendar
import time

# (first ms, first ms of the next month, "YYYY-MM") of the month last asked for: every write of
# an app with a plan asks, and nearly always for the same month.
_last = (0, 0, "")


def month_of(epoch_ms: int) -> str:
    """YYYY-MM of an instant, in UTC: the month its operations count towards."""
    global _last
    start, end, text = _last
    if start <= epoch_ms < end:
        return text
    t = time.gmtime(epoch_ms // 1000)
    start = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)) * 1000
    following = (t.tm_year + t.tm_mon // 12, t.tm_mon % 12 + 1, 1, 0, 0, 0)
    text = f"{t.tm_year:04d}-{t.tm_mon:02d}"
    _last = (start, calendar.timegm(following) * 1000, text)
    return text
