-- Events out (webhook endpoints, events, deliveries), plan limits and API key rate limits.

ALTER TABLE apps
    -- balance.low fires when a user's available credits fall to or below one of these.
    ADD COLUMN low_balance_thresholds bigint[] NOT NULL DEFAULT '{}'
        CHECK (cardinality(low_balance_thresholds) <= 5),
    -- The operator's plan for the app; NULL is unlimited.
    ADD COLUMN plan_max_users bigint CHECK (plan_max_users >= 0),
    ADD COLUMN plan_monthly_operations bigint CHECK (plan_monthly_operations >= 0);

-- Requests per second a key may make (burst twice that); NULL is no limit.
ALTER TABLE api_keys ADD COLUMN rate_limit integer CHECK (rate_limit > 0);

CREATE TABLE webhook_endpoints (
    endpoint_id     text PRIMARY KEY,
    app_id          text NOT NULL REFERENCES apps (app_id),
    url             text NOT NULL,
    -- Subscribed event types; empty is every type.
    events          text[] NOT NULL DEFAULT '{}',
    -- Signing secrets, sealed (engine/vault); the previous one signs too until it retires.
    secret          text NOT NULL,
    previous_secret text,
    previous_secret_expires_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_app ON webhook_endpoints (app_id);

-- What happened, once per event; made only for apps with an endpoint that wants it.
CREATE TABLE events (
    event_id   text PRIMARY KEY,
    app_id     text NOT NULL REFERENCES apps (app_id),
    user_id    text,
    type       text NOT NULL,
    -- The user's ledger seq the event follows: receivers order one user's events by it.
    sequence   bigint,
    data       jsonb NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX events_app ON events (app_id, created_at DESC);

-- One event sent to one endpoint: at least once, retried with back-off, for up to a day.
CREATE TABLE event_deliveries (
    delivery_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        text NOT NULL REFERENCES events (event_id) ON DELETE CASCADE,
    endpoint_id     text NOT NULL REFERENCES webhook_endpoints (endpoint_id) ON DELETE CASCADE,
    -- pending, delivered or failed (gave up after a day of retries).
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    response_code   integer,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- Queued for a worker, or being sent by one, until then: a claim whose job was lost or
    -- whose sender died lapses, and the delivery is claimed again. Only the job carrying the
    -- latest claim sends it.
    claimed_until   timestamptz,
    claim           uuid,
    -- Retried until then: a day after the event, or after a redelivery.
    give_up_at      timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX event_deliveries_due ON event_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX event_deliveries_endpoint ON event_deliveries (endpoint_id, delivery_id DESC);

-- Monthly operations of apps with a plan, as the worker last summed them from Redis's
-- per-shard counters (engine/plans): what survives Redis losing its counters.
CREATE TABLE plan_usage (
    app_id     text NOT NULL REFERENCES apps (app_id),
    month      date NOT NULL,
    operations bigint NOT NULL,
    PRIMARY KEY (app_id, month)
);
