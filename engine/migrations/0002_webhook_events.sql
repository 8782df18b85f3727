-- Every verified payment webhook, kept for audit and applied by a worker.

CREATE TABLE webhook_events (
    event_pk        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id          text NOT NULL REFERENCES apps (app_id),
    provider        text NOT NULL,
    event_id        text NOT NULL,
    event_type      text NOT NULL,
    -- credit, take_back or ignore: what the event means for the ledger.
    action          text NOT NULL,
    payment_id      text,
    user_id         text,
    -- Credits added (credit) or taken back (take_back), once applied.
    credits         bigint,
    -- Credits a refund should have taken back but could not (balance at its floor).
    shortfall       bigint NOT NULL DEFAULT 0,
    -- pending, credited, taken_back, duplicate, ignored or failed.
    status          text NOT NULL,
    reason          text,
    ledger_id       uuid,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    -- The raw body exactly as received and verified.
    payload         bytea NOT NULL,
    deliveries      integer NOT NULL DEFAULT 1,
    received_at     timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (app_id, provider, event_id)
);
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_events_payment ON webhook_events (app_id, provider, payment_id);
CREATE INDEX webhook_events_app ON webhook_events (app_id, received_at DESC);
