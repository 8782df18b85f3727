"""The worker's GET /metrics, on TALLY_METRICS_HOST:TALLY_METRICS_PORT (docs/operations.md#metrics).

The worker counts in its own memory (`tally worker` drops PROMETHEUS_MULTIPROC_DIR) and serves
its registry from a thread of prometheus_client's, with the outbox gauges read at each scrape.
"""

import logging
from collections.abc import Callable

from prometheus_client import REGISTRY, start_http_server

from engine.container import Engine
from engine.metrics.outbox import OutboxCollector

log = logging.getLogger(__name__)


def serve_metrics(engine: Engine) -> Callable[[], None]:
    """Start serving; returns what stops it. A port already taken is logged, not fatal: the
    worker persists the ledger, which matters more than its metrics."""
    settings = engine.settings
    if not settings.metrics_port:
        return lambda: None
    collector = OutboxCollector(engine.sync_redis)
    REGISTRY.register(collector)
    try:
        server, thread = start_http_server(
            settings.metrics_port, settings.metrics_host, registry=REGISTRY
        )
    except OSError as exc:
        log.error(
            "no metrics: cannot listen on %s:%s (TALLY_METRICS_PORT): %s",
            settings.metrics_host, settings.metrics_port, exc,
        )  # fmt: skip
        REGISTRY.unregister(collector)
        return lambda: None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)
        REGISTRY.unregister(collector)

    return stop
