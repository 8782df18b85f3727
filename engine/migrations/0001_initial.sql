-- Apps, their API keys and settings, the ledger, and what the workers report.

CREATE TABLE apps (
    app_id                      text PRIMARY KEY,
    name                        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    overdraft_limit             bigint NOT NULL DEFAULT 0
                                CHECK (overdraft_limit BETWEEN 0 AND 9007199254740991),
    -- Credits per one major currency unit of a payment (webhooks without tally_credits).
    credit_rate                 numeric CHECK (credit_rate > 0),
    stripe_webhook_secret       text,
    polar_webhook_secret        text,
    lemonsqueezy_webhook_secret text,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    app_id      text NOT NULL REFERENCES apps (app_id),
    -- SHA-256 of the whole key; the key itself is shown once and never stored.
    key_hash    bytea NOT NULL UNIQUE,
    -- The first characters of the key, so an operator can tell keys apart.
    key_prefix  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_app ON api_keys (app_id);

CREATE TABLE ledger_entries (
    ledger_id       uuid PRIMARY KEY,
    app_id          text NOT NULL REFERENCES apps (app_id),
    user_id         text NOT NULL,
    kind            text NOT NULL,
    amount          bigint NOT NULL CHECK (amount <> 0),
    balance_after   bigint NOT NULL,
    description     text,
    reference_id    text,
    metadata        jsonb,
    idempotency_key text,
    -- One refund per entry. No foreign key: an entry that PostgreSQL would refuse must never
    -- block the outbox behind it; reconciliation reports what does not add up.
    refund_of       uuid UNIQUE,
    -- Position in the account's history, gapless from 1: orders entries written in the same
    -- millisecond, and tells reconciliation whether every entry up to a point has arrived.
    seq             bigint NOT NULL CHECK (seq > 0),
    created_at      timestamptz NOT NULL
);
CREATE INDEX ledger_entries_account ON ledger_entries (app_id, user_id, created_at DESC);
CREATE INDEX ledger_entries_account_seq ON ledger_entries (app_id, user_id, seq DESC);

-- Outbox entries PostgreSQL refused: kept whole, so nothing acknowledged is ever dropped.
CREATE TABLE outbox_dead_letters (
    shard       integer NOT NULL,
    -- The entry's ledger_id, or the stream id of a payload that did not even parse.
    ref         text NOT NULL,
    payload     text NOT NULL,
    error       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard, ref)
);

CREATE TABLE reconciliation_reports (
    report_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz NOT NULL,
    accounts_checked integer NOT NULL,
    accounts_skipped integer NOT NULL,
    drifted          integer NOT NULL,
    repaired         integer NOT NULL,
    -- One object per drifted account: app_id, user_id, redis_balance, ledger_balance, seq, ...
    drift            jsonb NOT NULL
);
