"""GET /metrics in Prometheus's text format, the middleware that times every request, and the
counts of credit operations per app (docs/operations.md#metrics).

`tally serve --workers N` runs N processes, each counting only what it served. With
PROMETHEUS_MULTIPROC_DIR set, prometheus_client keeps every process's values in files there
and /metrics sums them, whichever process answers; one process counts in its own memory.
"""

import atexit
import os
import shutil
import tempfile
from bisect import bisect_left
from time import perf_counter
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics import Counter, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from redis import Redis
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import status_of
from api.state import engine_of
from engine.errors import TallyError
from engine.metrics.outbox import OutboxCollector
from engine.metrics.registry import CREDIT_OPERATIONS, HTTP_REQUESTS
from engine.models import EntryResult

MEDIA_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes
_MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"
# A request no route took: an unknown path, a CORS preflight, one the edge refused.
UNMATCHED = "unmatched"
# Methods beyond these are one label value: a client must not mint series.
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


def share_across_workers(workers: int) -> None:
    """For `tally serve`, before uvicorn starts its processes: a fresh private directory for
    their values, removed at exit, unless the operator set PROMETHEUS_MULTIPROC_DIR."""
    if workers == 1 or _MULTIPROC in os.environ:
        # One process answers /metrics from its own memory. prometheus_client picks files or
        # memory when first imported, which this process has done already.
        return
    path = tempfile.mkdtemp(prefix="tally-metrics-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ[_MULTIPROC] = path


async def metrics(request: Request) -> Response:
    engine = engine_of(request)
    flush_operations()  # another process's last second shows after its own flush
    # Reading the processes' files and Redis blocks: off the event loop.
    body = await engine.bridge.call(_scrape, engine.sync_redis, os.environ.get(_MULTIPROC))
    return Response(body, media_type=MEDIA_TYPE)


def _scrape(redis: Redis, multiproc_dir: str | None) -> bytes:
    registry = CollectorRegistry()
    if multiproc_dir:
        MultiProcessCollector(registry, multiproc_dir)  # type: ignore[no-untyped-call]
    else:
        registry.register(REGISTRY)
    registry.register(OutboxCollector(redis))
    return generate_latest(registry)


class RequestMetrics:
    """Times every request and counts it by route template, method and status: never the raw
    path, whose ids would make a series each."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        # The metric's child per label values: .labels() checks and locks on every call.
        self._children: dict[tuple[int, str, int], Durations] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, send_with_status)
        finally:
            # Starlette's router leaves the route it matched in the scope.
            route = scope.get("route")
            method = scope["method"]
            if method not in _METHODS:
                method = "OTHER"
            key = (id(route), method, status)
            child = self._children.get(key)
            if child is None:
                child = request_durations(_template(scope, route), method, status)
                self._children[key] = child
            child.observe(perf_counter() - started)


def _template(scope: Scope, route: Any) -> str:
    """The route's path as declared (`/credits/holds/{hold_id}`), behind the mounts it is in."""
    if route is None:
        return UNMATCHED
    root: str = scope.get("root_path", "")
    app_root: str = scope.get("app_root_path", root)
    prefix = root[len(app_root) :]
    if hasattr(route, "routes"):  # a Mount that answered itself (static files, a 404)
        return prefix + "/{path}"
    return prefix + str(route.path_format)


# Operations counted since the last flush: a dict increment on the hot path, where a
# prometheus_client increment (a lock, and a file write with several processes) costs ten times
# as much. Flushed every FLUSH_SECONDS and before this process answers /metrics.
FLUSH_SECONDS = 1.0
_pending: dict[tuple[str, str, str], int] = {}
_operations: dict[tuple[str, str, str], Counter] = {}


def count_operation(app_id: str, operation: str, outcome: EntryResult | TallyError) -> None:
    """One add, deduct or refund of the app: applied, replayed, or refused with a 402 (by the
    error's code: insufficient_credits, plan_limit). Other refusals show in the requests'
    statuses."""
    if outcome.replayed:
        result = "replayed"
    elif isinstance(outcome, TallyError):
        if status_of(outcome) != 402:
            return
        result = outcome.code
    else:
        result = "applied"
    key = (app_id, operation, result)
    _pending[key] = _pending.get(key, 0) + 1


def flush_operations() -> None:
    """Add the operations and request durations counted since the last flush to the exported
    metrics."""
    for key, count in _pending.items():
        child = _operations.get(key)
        if child is None:
            child = _operations[key] = CREDIT_OPERATIONS.labels(*key)
        child.inc(count)
    _pending.clear()
    for durations in _durations.values():
        durations.flush()


class Durations:
    """Request durations of one route, method and status, counted in this process's memory
    and added to the histogram at each flush, as the operations are: the histogram's own
    observe() takes two locks per request (and writes a file with several processes)."""

    def __init__(self, child: Histogram) -> None:
        self._child: Any = child
        self._bounds: list[float] = self._child._upper_bounds
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect_left(self._bounds, seconds)] += 1  # the first bucket it fits
        self._sum += seconds

    def flush(self) -> None:
        counts, self._counts = self._counts, [0] * len(self._bounds)
        for bucket, count in zip(self._child._buckets, counts, strict=True):
            if count:
                bucket.inc(count)
        if any(counts):
            self._child._sum.inc(self._sum)
        self._sum = 0.0


_durations: dict[tuple[str, str, int], Durations] = {}


def request_durations(template: str, method: str, status: int) -> Durations:
    found = _durations.get((template, method, status))
    if found is None:
        child = HTTP_REQUESTS.labels(template, method, str(status))
        found = _durations[(template, method, status)] = Durations(child)
    return found
