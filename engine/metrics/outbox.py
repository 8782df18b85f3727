"""The outbox gauges, read from Redis when Prometheus scrapes: a gauge set by the worker would
show what the worker last saw, and nothing at all while the worker is down."""

import logging
from collections.abc import Iterable

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from redis import Redis
from redis.exceptions import RedisError

from engine.ledger.outbox import outbox_lag

log = logging.getLogger(__name__)


class OutboxCollector:
    """tally_outbox_depth and tally_outbox_oldest_age_seconds per shard."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    def collect(self) -> Iterable[Metric]:
        try:
            lags = outbox_lag(self._redis)
        except RedisError as exc:
            # The scrape still answers with the other metrics; the gauges' absence (and
            # GET /readyz) says Redis is away.
            log.debug("no outbox gauges: %s", exc)
            return []
        depth = GaugeMetricFamily(
            "tally_outbox_depth", "Entries not yet persisted to PostgreSQL", labels=["shard"]
        )
        age = GaugeMetricFamily(
            "tally_outbox_oldest_age_seconds",
            "Age of the oldest entry not yet persisted (0 when the shard is empty)",
            labels=["shard"],
        )
        for lag in lags:
            depth.add_metric([str(lag.shard)], lag.depth)
            age.add_metric([str(lag.shard)], lag.oldest_age_seconds)
        return [depth, age]
