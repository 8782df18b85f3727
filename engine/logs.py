"""Structured logs: one JSON object a line, each carrying the id of the request it belongs to.

Configured once at process entry (`configure`, or `uvicorn_config` for the API's processes);
modules log through `logging.getLogger(__name__)` as usual. Never log keys, secrets,
signatures or whole payloads.
"""

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

# Bound by the API for the length of one request, and copied onto the threads it uses.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = request_id.get()
        if current is not None:
            line["request_id"] = current
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def uvicorn_config(level: str) -> dict[str, Any]:
    """logging.config.dictConfig for uvicorn, which applies it in every process it starts."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": handler},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        # uvicorn's own loggers propagate to the root instead of printing plain text.
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Stripe's debug lines carry whole API bodies: client secrets, card details, customers.
    stripe_level = max(logging.INFO, root.level)
    logging.getLogger("stripe").setLevel(stripe_level)


class Outage:
    """Logs a failing dependency once when it starts failing and once when it is back, not on
    every retry; says how long to wait before the next try (doubling, capped)."""

    def __init__(self, logger: logging.Logger, what: str, cap_seconds: float = 5.0) -> None:
        self._log = logger
        self._what = what
        self._cap = cap_seconds
        self._since: float | None = None
        self._failures = 0

    def failed(self, exc: BaseException) -> float:
        """Record a failure; returns the seconds to wait before trying again."""
        if self._since is None:
            self._since = time.monotonic()
            self._log.warning("%s failing (%s); retrying until it is back", self._what, exc)
        self._failures += 1
        return min(self._cap, 0.1 * (1 << min(self._failures, 10)))

    def ok(self) -> None:
        if self._since is not None:
            down = time.monotonic() - self._since
            self._log.warning("%s back after %.1f s", self._what, down)
            self._since = None
            self._failures = 0
