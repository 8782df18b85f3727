"""Every metric Tally exports: names, labels and buckets (docs/operations.md#metrics).

The outbox gauges are not here: they are read from Redis at scrape time (engine.metrics.outbox).
Labels take few values: route templates, app ids, outcomes; never a user id or a raw path,
each of which would make a series per value.
"""

from prometheus_client import Counter, Gauge, Histogram

# Few buckets: an observation costs the same whatever their number, but every bucket is a
# series per route, method and status. The hot path answers in well under a millisecond.
HTTP_REQUESTS = Histogram(
    "tally_http_request_duration_seconds",
    "Time to answer a request inside the API, by route template, method and status;"
    " its _count counts requests",
    ["route", "method", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)

CREDIT_OPERATIONS = Counter(
    "tally_credit_operations_total",
    "Adds, deducts and refunds per app (batch operations each count): applied, replayed"
    " (an Idempotency-Key answered with the first answer) or insufficient_credits (402)",
    ["app_id", "operation", "result"],
)

SCRIPT_ERRORS = Counter(
    "tally_script_errors_total",
    "Redis script calls that raised, by exception (ConnectionError, OutOfMemoryError, ...)",
    ["error"],
)

ENTRIES_PERSISTED = Counter(
    "tally_entries_persisted_total", "Ledger entries the worker wrote to PostgreSQL"
)

FLUSH_SECONDS = Histogram(
    "tally_flush_duration_seconds",
    "One flush job of the worker: reading the outboxes, writing PostgreSQL, acknowledging",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

WEBHOOK_EVENTS = Counter(
    "tally_webhook_events_total",
    "Payment provider webhook events the worker applied, by the status they ended in",
    ["provider", "status"],
)

# Outgoing webhooks (engine/events): "delivered"; "failed", an attempt failed and will be
# retried; "gave_up", the last attempt failed.
EVENT_DELIVERIES = Counter(
    "tally_event_deliveries_total",
    "Attempts to deliver an event to an app's endpoint: delivered, failed (retried later), gave_up",
    ["result"],
)

ACCOUNTS_EVICTED = Counter(
    "tally_accounts_evicted_total",
    "Idle accounts the worker took out of Redis (the ledger rebuilds them when next used)",
)

AUTO_TOP_UPS = Counter(
    "tally_auto_top_ups_total",
    "Auto top-up rounds by outcome (succeeded, retrying, paused, capped, not_needed, ...)",
    ["result"],
)

# "max": with PROMETHEUS_MULTIPROC_DIR set, processes that never reconcile report 0.
RECONCILE_DRIFTED = Gauge(
    "tally_reconcile_drifted_accounts",
    "Accounts whose Redis balance differed from the ledger at the worker's last reconciliation",
    multiprocess_mode="max",
)
